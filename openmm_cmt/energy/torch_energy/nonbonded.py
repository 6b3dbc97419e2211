"""NonbondedForce: Coulomb and Lennard-Jones over all non-excluded pairs plus exceptions.

Supported methods: NoCutoff, and CutoffNonPeriodic and CutoffPeriodic with OpenMM's
reaction field (Tironi et al., J. Chem. Phys. 102, 5451 (1995)) and optional LJ switching
function; CutoffPeriodic uses minimum-image distances in the System's default box
(rectangular or triclinic) and adds the long-range dispersion correction when enabled.
Ewald, PME and LJPME are refused.
Pairs are a static index list (all pairs within the molecule, no neighbour list), so
the cost is O(N^2) per conformation: intended for molecules, not boxes of solvent.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from openmm_cmt.energy.torch_energy._params import index_buffer, periodic_box, real_buffer
from openmm_cmt.energy.torch_energy.errors import UnsupportedSystemError
from openmm_cmt.energy.torch_energy.geometry import attach_box, distance, energy_sum
from openmm_cmt.units import md_value

#: 1/(4 pi eps0) in kJ nm / (mol e^2), the CODATA 2018 value OpenMM 8 uses.
ONE_4PI_EPS0 = 138.93545764438198


def lennard_jones(r: torch.Tensor, sigma: torch.Tensor, epsilon: torch.Tensor) -> torch.Tensor:
    r""":math:`4\epsilon (s^{12} - s^6)`, :math:`s = \sigma/r`; written with
    :math:`s^6` rather than :math:`r^{-12}` so that float32 overflows only at much
    closer contacts."""
    s2 = (sigma / r) ** 2
    s6 = s2 * s2 * s2
    return 4.0 * epsilon * s6 * (s6 - 1.0)


class PlainPairs(nn.Module):
    r"""NoCutoff pairs and every exception: :math:`E = \sum_{p} q_p/r_p + 4\epsilon_p(s_p^{12} - s_p^6)`
    with :math:`q_p` the charge product times :math:`1/(4\pi\epsilon_0)`; minimum-image
    distances when a periodic ``box`` is given (exceptions of a periodic force that asks
    for it)."""

    def __init__(self, i, j, qq, sigma, epsilon, box=None):
        super().__init__()
        self.register_buffer("i", i)
        self.register_buffer("j", j)
        self.register_buffer("qq", qq)
        self.register_buffer("sigma", sigma)
        self.register_buffer("epsilon", epsilon)
        attach_box(self, box)
        self.work_elements = 10 * len(i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        box: Optional[torch.Tensor] = None
        if self.periodic:
            box = self.box
        r = distance(x, self.i, self.j, box)
        return energy_sum(self.qq / r + lennard_jones(r, self.sigma, self.epsilon))


class ReactionFieldPairs(nn.Module):
    r"""CutoffNonPeriodic pairs, zero beyond the cutoff :math:`r_c`:

    .. math::
        E = \sum_{r_p < r_c} q_p \Big(\frac{1}{r_p} + k_{rf} r_p^2 - c_{rf}\Big)
            + 4\epsilon_p(s_p^{12} - s_p^6)\, S(r_p),

    :math:`k_{rf} = r_c^{-3} (\epsilon_{rf} - 1)/(2\epsilon_{rf} + 1)`,
    :math:`c_{rf} = r_c^{-1} 3\epsilon_{rf}/(2\epsilon_{rf} + 1)`, and the switching
    function :math:`S = 1 - 10t^3 + 15t^4 - 6t^5`, :math:`t = (r - r_s)/(r_c - r_s)`
    above the switching distance :math:`r_s` (S = 1 without switching).
    """

    def __init__(self, i, j, qq, sigma, epsilon, cutoff: float, dielectric: float, switch: float, box=None):
        super().__init__()
        attach_box(self, box)
        self.register_buffer("i", i)
        self.register_buffer("j", j)
        self.register_buffer("qq", qq)
        self.register_buffer("sigma", sigma)
        self.register_buffer("epsilon", epsilon)
        self.cutoff = float(cutoff)
        self.krf = float(cutoff**-3 * (dielectric - 1.0) / (2.0 * dielectric + 1.0))
        self.crf = float(3.0 * dielectric / (cutoff * (2.0 * dielectric + 1.0)))
        # 1/r + krf r^2 - crf = (rc - r)(1/(r rc) - krf (r + rc)) + offset, offset = 0 up to
        # rounding: no cancellation near the cutoff, where the pair energy vanishes
        self.offset = float(1.0 / cutoff + self.krf * cutoff**2 - self.crf)
        self.switch = float(switch)  # >= cutoff: no switching
        self.work_elements = 16 * len(i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        box: Optional[torch.Tensor] = None
        if self.periodic:
            box = self.box
        r = distance(x, self.i, self.j, box)
        inside = r < self.cutoff
        # pairs beyond the cutoff get r = cutoff so that no inf/NaN reaches the gradient
        r = torch.where(inside, r, torch.full_like(r, self.cutoff))
        gap = self.cutoff - r
        coulomb = self.qq * (gap * (1.0 / (r * self.cutoff) - self.krf * (r + self.cutoff)) + self.offset)
        lj = lennard_jones(r, self.sigma, self.epsilon)
        if self.switch < self.cutoff:
            t = torch.clamp((r - self.switch) / (self.cutoff - self.switch), min=0.0)
            lj = lj * (1.0 + t * t * t * (-10.0 + t * (15.0 - 6.0 * t)))
        return energy_sum(torch.where(inside, coulomb + lj, torch.zeros_like(r)))


class Nonbonded(nn.Module):
    """A NonbondedForce: regular pairs (plain or reaction field) plus exceptions, plus a
    constant (the long-range dispersion correction of a periodic box)."""

    def __init__(self, pairs: nn.Module, exceptions: nn.Module, constant: float = 0.0):
        super().__init__()
        self.pairs = pairs
        self.exceptions = exceptions
        self.constant = float(constant)
        self.work_elements = pairs.work_elements + exceptions.work_elements

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pairs(x) + self.exceptions(x) + self.constant


def _switch_integral(sigma: float, switch: float, cutoff: float) -> float:
    r""":math:`\int_{r_s}^{r_c} r^2 (\sigma^{12} r^{-12} - \sigma^6 r^{-6}) (1 - S(r))\, dr` by
    Gauss-Legendre quadrature (a smooth integrand on a finite interval: 64 nodes reach
    float64 rounding)."""
    nodes, weights = np.polynomial.legendre.leggauss(64)
    half = 0.5 * (cutoff - switch)
    r = switch + half * (nodes + 1.0)
    t = (r - switch) / (cutoff - switch)
    one_minus_s = -(t**3) * (-10.0 + t * (15.0 - 6.0 * t))
    s6 = (sigma / r) ** 6
    return float(half * np.sum(weights * r**2 * (s6 * s6 - s6) * one_minus_s))


def dispersion_correction(sigma: np.ndarray, epsilon: np.ndarray, cutoff: float, switch: "float | None",
                          volume: float) -> float:
    r"""OpenMM's long-range dispersion correction of a periodic NonbondedForce (kJ/mol):
    the Lennard-Jones energy beyond the cutoff (and lost to the switching function) for a
    uniform fluid, averaged over particle classes (equal sigma and epsilon) with
    Lorentz-Berthelot mixing,

    .. math::
        E = \frac{8\pi N^2}{V} \Big(\frac{\langle\epsilon\sigma^{12}\rangle}{9 r_c^9}
            - \frac{\langle\epsilon\sigma^6\rangle}{3 r_c^3} + \langle\epsilon I_s(\sigma)\rangle\Big),

    averages over the N(N+1)/2 unordered pairs of particles including self pairs, and
    :math:`I_s` the switching integral (``_switch_integral``).
    """
    classes, counts = np.unique(np.stack([sigma, epsilon], axis=1), axis=0, return_counts=True)
    n = float(len(sigma))
    sums = np.zeros(3)
    for a in range(len(classes)):
        for b in range(a + 1):
            if a == b:
                count = counts[a] * (counts[a] + 1) / 2.0
                sig, eps = classes[a]
            else:
                count = float(counts[a]) * float(counts[b])
                sig = 0.5 * (classes[a][0] + classes[b][0])
                eps = np.sqrt(classes[a][1] * classes[b][1])
            s6 = sig**6
            sums += count * eps * np.array([s6 * s6, s6, _switch_integral(sig, switch, cutoff) if switch is not None
                                            else 0.0])
    sums /= n * (n + 1) / 2.0
    return float(8.0 * n * n * np.pi * (sums[0] / (9.0 * cutoff**9) - sums[1] / (3.0 * cutoff**3) + sums[2]) / volume)


def _global_defaults(force) -> dict[str, float]:
    return {force.getGlobalParameterName(n): force.getGlobalParameterDefaultValue(n)
            for n in range(force.getNumGlobalParameters())}


def _particle_parameters(force) -> np.ndarray:
    """[N, 3] (charge, sigma, epsilon) with parameter offsets applied at the global
    parameters' default values (the values a fresh Context uses)."""
    params = np.array([[md_value(v) for v in force.getParticleParameters(n)] for n in range(force.getNumParticles())],
                      dtype=np.float64).reshape(-1, 3)
    defaults = _global_defaults(force)
    for n in range(force.getNumParticleParameterOffsets()):
        name, particle, dq, dsigma, deps = force.getParticleParameterOffset(n)
        params[particle] += defaults[name] * np.array([dq, dsigma, deps])
    return params


def _exception_parameters(force) -> tuple[np.ndarray, np.ndarray]:
    """Exception pairs [M, 2] and (charge product, sigma, epsilon) [M, 3], offsets applied."""
    rows = [force.getExceptionParameters(n) for n in range(force.getNumExceptions())]
    pairs = np.array([r[:2] for r in rows], dtype=np.int64).reshape(-1, 2)
    params = np.array([[md_value(v) for v in r[2:]] for r in rows], dtype=np.float64).reshape(-1, 3)
    defaults = _global_defaults(force)
    for n in range(force.getNumExceptionParameterOffsets()):
        name, exception, dqq, dsigma, deps = force.getExceptionParameterOffset(n)
        params[exception] += defaults[name] * np.array([dqq, dsigma, deps])
    return pairs, params


def build_nonbonded(force, system, dtype):
    method = force.getNonbondedMethod()
    names = {force.NoCutoff: "NoCutoff", force.CutoffNonPeriodic: "CutoffNonPeriodic",
             force.CutoffPeriodic: "CutoffPeriodic", force.Ewald: "Ewald", force.PME: "PME", force.LJPME: "LJPME"}
    if method not in (force.NoCutoff, force.CutoffNonPeriodic, force.CutoffPeriodic):
        raise UnsupportedSystemError(
            f"nonbonded method {names.get(method, method)} is not supported (Ewald sums are not implemented; "
            "NoCutoff, CutoffNonPeriodic and CutoffPeriodic are)")
    periodic = method == force.CutoffPeriodic
    box = periodic_box(system, md_value(force.getCutoffDistance()), "NonbondedForce") if periodic else None
    n_atoms = force.getNumParticles()
    q, sigma, eps = _particle_parameters(force).T
    exc_pairs, exc = _exception_parameters(force)

    # regular pairs: all i < j that are not exceptions, and that interact at all
    i, j = np.triu_indices(n_atoms, k=1)
    excluded = np.zeros((n_atoms, n_atoms), dtype=bool)
    excluded[exc_pairs[:, 0], exc_pairs[:, 1]] = True
    excluded[exc_pairs[:, 1], exc_pairs[:, 0]] = True
    qq = ONE_4PI_EPS0 * q[i] * q[j]
    eps_ij = np.sqrt(eps[i] * eps[j])
    keep = ~excluded[i, j] & ((qq != 0) | (eps_ij != 0))
    i, j, qq, eps_ij = i[keep], j[keep], qq[keep], eps_ij[keep]
    sigma_ij = 0.5 * (sigma[i] + sigma[j])
    args = (index_buffer(i), index_buffer(j), real_buffer(qq, dtype), real_buffer(sigma_ij, dtype),
            real_buffer(eps_ij, dtype))
    if method == force.NoCutoff:
        pairs = PlainPairs(*args)
    else:
        cutoff = md_value(force.getCutoffDistance())
        switch = md_value(force.getSwitchingDistance()) if force.getUseSwitchingFunction() else cutoff
        pairs = ReactionFieldPairs(*args, cutoff=cutoff, dielectric=force.getReactionFieldDielectric(), switch=switch,
                                   box=box)

    # exceptions: plain Coulomb + LJ, never cut off (as OpenMM's ReferenceLJCoulomb14)
    live = (exc[:, 0] != 0) | (exc[:, 2] != 0)
    exc_pairs, exc = exc_pairs[live], exc[live]
    exceptions = PlainPairs(index_buffer(exc_pairs[:, 0]), index_buffer(exc_pairs[:, 1]),
                            real_buffer(ONE_4PI_EPS0 * exc[:, 0], dtype), real_buffer(exc[:, 1], dtype),
                            real_buffer(exc[:, 2], dtype),
                            box=box if periodic and force.getExceptionsUsePeriodicBoundaryConditions() else None)
    if method == force.NoCutoff:
        # one list: exceptions differ from regular pairs only in their parameters
        merged = [torch.cat([a, b]) for a, b in zip(args, (exceptions.i, exceptions.j, exceptions.qq,
                                                           exceptions.sigma, exceptions.epsilon))]
        return PlainPairs(*merged) if len(merged[0]) else None
    constant = 0.0
    if periodic and force.getUseDispersionCorrection():
        switch = md_value(force.getSwitchingDistance()) if force.getUseSwitchingFunction() else None
        constant = dispersion_correction(sigma, eps, md_value(force.getCutoffDistance()), switch, float(np.prod(np.diag(box))))
    return Nonbonded(pairs, exceptions, constant)
