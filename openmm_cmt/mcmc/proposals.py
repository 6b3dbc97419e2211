r"""Independence Metropolis-Hastings proposals from a Boltzmann generator.

The generator proposes :math:`x' \sim q` independently of the current state :math:`x`.
Its density is defined on conformations modulo rigid motions (``log_prob`` is invariant
to rotation and translation), so each proposal gets a uniformly random proper rotation
about its centre of mass and is moved to the current centre of mass. The proposal
density of the placed :math:`x'` is then :math:`q(x')` times a constant (the Haar measure
on SO(3)), the same in both directions, and the Metropolis-Hastings acceptance
probability (Hastings 1970; Tierney 1994, independence sampler) is

.. math::
    \alpha(x \to x') = \min\left(1, \frac{e^{-u(x')}\, q(x)}{e^{-u(x)}\, q(x')}\right),
    \qquad u = E / kT,

which leaves :math:`e^{-u}` invariant for any ``q``, whether or not :math:`u` itself is
invariant to rotation (the ratio holds on every fibre of fixed centre of mass; MD moves
the centre of mass). A state outside the generator's support (:math:`q(x) = 0`) is never
left by these moves: that is the exact rule, not an error. Velocities are redrawn from
Maxwell-Boltzmann after an accepted jump; a fresh draw of :math:`v` is itself invariant,
so the joint chain on :math:`(x, v)` keeps :math:`e^{-u(x) - K(v)/kT}`.

With bond constraints (``constraints=HBonds``), the generator holds the constrained bonds
at the System's distances, so every proposal lies on the constraint manifold, and its
``log q`` is a density with respect to the mass-weighted surface measure on which
constrained MD samples :math:`e^{-u}` (:mod:`openmm_cmt.coordinates.constraints`): the
same ratio is then exact for the constrained chain. Velocities must then be redrawn
after a jump (the old ones are not tangent to the manifold at the new point) and are
projected onto the tangent space with the mass-weighted projection
(``Context.applyVelocityConstraints``), which turns Maxwell-Boltzmann velocities into the
constrained ones.

Proposals are drawn in batches (one ``generator.sample(batch_size)`` call) and consumed
one by one: they do not depend on the chain, so drawing them ahead changes nothing.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
import openmm
from openmm import unit

from openmm_cmt.mcmc.compatibility import check_constraints, generator_constraints


def split_seed(seed, n: int) -> list:
    """``n`` independent ``SeedSequence`` children of ``seed`` (an int or a SeedSequence),
    or ``n`` Nones for ``seed=None`` (fresh entropy)."""
    if seed is None:
        return [None] * n
    sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return sequence.spawn(n)


def system_masses(system: openmm.System) -> np.ndarray:
    """Particle masses ``[N]`` in dalton."""
    return np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())])


def check_system(system: openmm.System, generator=None) -> dict:
    """Raise ValueError unless every particle of ``system`` is a massive atom and the
    System's constraints are exactly the bonds ``generator`` holds fixed (same atom pairs
    and distances): the proposals then lie on the constraint manifold and their densities
    refer to the measure constrained MD samples (:mod:`openmm_cmt.coordinates.constraints`).
    Returns the constraints ``{(i, j): distance_nm}``."""
    for i in range(system.getNumParticles()):
        if system.isVirtualSite(i):
            raise ValueError(f"particle {i} is a virtual site; generator moves need a System without virtual sites")
        if system.getParticleMass(i).value_in_unit(unit.dalton) <= 0:
            raise ValueError(f"particle {i} has zero mass; generator moves need every particle to move")
    held = {} if generator is None else generator_constraints(generator)
    constraints = check_constraints(system, held)
    metric = getattr(getattr(generator, "generator", generator), "metric", None)
    masses = getattr(metric, "masses", None)
    if constraints and masses is not None:
        # With constraints the measure depends on the masses (hydrogen mass repartitioning).
        expected = masses.detach().cpu().double().numpy()
        atoms = sorted({a for pair in constraints for a in pair})
        actual = system_masses(system)
        wrong = [a for a in atoms if abs(actual[a] - expected[a]) > 1e-3]
        if wrong:
            a = wrong[0]
            raise ValueError(
                f"particle {a} has mass {actual[a]:.3f} Da in the System but {expected[a]:.3f} Da in the generator; "
                "with constraints the sampled measure depends on the masses: use the generator built for this System"
            )
    return constraints


def as_generator(source, system: openmm.System | None = None, topology=None) -> torch.nn.Module:
    """A module with ``sample(n, generator=None)`` and ``log_prob(x)`` from ``source``: a
    ``Generator`` (or any module with that contract), the path of an exported file, or a
    sampler with a ``generator`` attribute. Checked against ``system`` (and ``topology``)
    when given."""
    if isinstance(source, (str, os.PathLike)):
        from openmm_cmt.mcmc.export import load_generator

        return load_generator(source, system, topology)
    module = getattr(source, "generator", source)
    if not (isinstance(module, torch.nn.Module) and hasattr(module, "sample") and hasattr(module, "log_prob")):
        raise TypeError(
            "generator must be a Generator module, the path of an exported generator file, or a "
            f"BoltzmannGeneratorSampler; got {type(source).__name__}"
        )
    n = getattr(module, "n_atoms", None)
    if system is not None and n is not None and n != system.getNumParticles():
        raise ValueError(f"the generator has {n} atoms, the System has {system.getNumParticles()} particles")
    if topology is not None and hasattr(module, "elements"):
        elements = [a.element.symbol if a.element is not None else "X" for a in topology.atoms()]
        if list(module.elements) != elements:
            raise ValueError("the topology's element order differs from the generator's")
    return module


def generator_archive(module: torch.nn.Module) -> bytes:
    """The TorchScript archive of ``module`` (scripted first if needed), as bytes."""
    scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return buffer.getvalue()


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rotation matrices ``[n, 3, 3]`` uniform on SO(3) (Haar): unit quaternions
    uniform on the 3-sphere, i.e. normalised 4-D Gaussians (Shoemake 1992)."""
    q = rng.standard_normal((n, 4))
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def centre_of_mass(x: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Centres of mass ``[..., 3]`` of positions ``[..., N, 3]``."""
    return np.einsum("...ij,i->...j", x, masses) / masses.sum()


def maxwell_boltzmann(masses: np.ndarray, kT: float, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Velocities in nm/ps, ``[N, 3]`` (or ``[n, N, 3]``), each component normal with
    variance kT/m (kJ/mol over g/mol is (nm/ps)^2)."""
    shape = (len(masses), 3) if n is None else (n, len(masses), 3)
    return rng.standard_normal(shape) * np.sqrt(kT / masses)[:, None]


def log_acceptance(u_old, u_new, log_q_old, log_q_new) -> np.ndarray:
    r""":math:`\log[e^{-u(x')} q(x) / (e^{-u(x)} q(x'))]`, with NaN (undefined ratios,
    e.g. a non-finite energy) mapped to -inf: such proposals are rejected."""
    with np.errstate(invalid="ignore"):
        log_a = -(np.asarray(u_new, float) - np.asarray(u_old, float)) + (
            np.asarray(log_q_old, float) - np.asarray(log_q_new, float)
        )
    return np.where(np.isnan(log_a), -np.inf, log_a)


class GeneratorProposal:
    """Rotated, re-centred draws from a generator, and its log densities.

    Parameters
    ----------
    generator
        see :func:`as_generator`.
    batch_size
        proposals drawn per ``generator.sample`` call.
    seed
        an int or ``numpy.random.SeedSequence``; seeds the rotations (numpy) and the
        generator's draws (a ``torch.Generator`` of its own: the global RNG is untouched).
        None uses fresh entropy for the rotations and torch's global RNG for the draws.
    system, topology
        checked against the generator when given.
    """

    def __init__(self, generator, batch_size: int = 256, seed: int | None = None, system=None, topology=None):
        if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.generator = as_generator(generator, system, topology)
        parameter = next(iter(self.generator.parameters()), None)
        self.dtype = parameter.dtype if parameter is not None else torch.float64
        self.device = parameter.device if parameter is not None else torch.device("cpu")
        self.batch_size = int(batch_size)
        rotations, draws = split_seed(seed, 2)
        self.rng = np.random.default_rng(rotations)
        self.torch_rng = None
        if draws is not None:
            self.torch_rng = torch.Generator(device=self.device)
            self.torch_rng.manual_seed(int(draws.generate_state(1)[0]))
        self._x = np.zeros((0, 0, 3))
        self._log_q = np.zeros(0)
        self._known_x = None
        self._known_log_q = None

    @torch.no_grad()
    def _sample(self, n: int):
        # Unseeded proposals call sample(n) alone, so that modules with only that
        # signature (files exported by earlier versions) keep working.
        if self.torch_rng is None:
            x, log_q = self.generator.sample(n)
        else:
            x, log_q = self.generator.sample(n, self.torch_rng)
        return x.detach().double().cpu().numpy(), log_q.detach().double().cpu().numpy()

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws ``(x [n, N, 3] nm, log_q [n])`` in the generator's frame."""
        while len(self._log_q) < n:
            x, log_q = self._sample(max(self.batch_size, n - len(self._log_q)))
            self._x = x if len(self._log_q) == 0 else np.concatenate([self._x, x])
            self._log_q = np.concatenate([self._log_q, log_q])
        x, log_q = self._x[:n], self._log_q[:n]
        self._x, self._log_q = self._x[n:], self._log_q[n:]
        return x, log_q

    def propose(self, centres: np.ndarray, masses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One proposal per row of ``centres [n, 3]`` (nm): a draw, rotated uniformly about
        its centre of mass, which is moved to the row. Returns ``(x [n, N, 3], log_q [n])``;
        ``log_q`` is unchanged by the rigid motion."""
        centres = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
        x, log_q = self.draw(len(centres))
        if x.shape[1] != len(masses):
            raise ValueError(f"the generator proposes {x.shape[1]} atoms, the System has {len(masses)}")
        rotations = random_rotations(len(centres), self.rng)
        x = x - centre_of_mass(x, masses)[:, None, :]
        x = np.einsum("nij,naj->nai", rotations, x) + centres[:, None, :]
        return x, log_q

    @torch.no_grad()
    def log_prob(self, x) -> np.ndarray:
        """``log q(x)`` ``[B]`` in nats (float64) for positions ``[B, N, 3]`` nm."""
        t = torch.as_tensor(np.asarray(x, dtype=np.float64)).to(device=self.device, dtype=self.dtype)
        return self.generator.log_prob(t).detach().double().cpu().numpy()

    def current_log_prob(self, x) -> np.ndarray:
        """``log q`` ``[K]`` of chain states ``x [K, N, 3]``, reusing the values stored by
        ``remember`` for rows whose positions are bit-for-bit unchanged (a state left by
        the last proposal round: no MD since). Other rows are evaluated in one batch."""
        x = np.asarray(x, dtype=np.float64)
        out = np.full(len(x), np.nan)
        if self._known_x is not None and self._known_x.shape == x.shape:
            same = (x == self._known_x).reshape(len(x), -1).all(1)
            out[same] = self._known_log_q[same]
        missing = np.isnan(out)
        if missing.any():
            out[missing] = self.log_prob(x[missing])
        return out

    def remember(self, x, log_q) -> None:
        """Store ``log q`` ``[K]`` of the chain states ``x [K, N, 3]`` for ``current_log_prob``."""
        self._known_x = np.array(x, dtype=np.float64)
        self._known_log_q = np.array(log_q, dtype=np.float64)
