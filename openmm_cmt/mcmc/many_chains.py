"""K independent hybrid MD / generator chains in one replicated OpenMM Context.

Copy ``c`` of the molecule (``ReplicatedContext``) is chain ``c``. One
cycle is ``md_steps`` Langevin steps of the whole Context, then one batched proposal
round: ``K`` draws from one ``generator.sample`` call, ``2K`` exact per-copy energies
(current and proposed) from one energy-engine call, ``K`` independent accept/reject
decisions by the rule of the ``proposals`` module, and the accepted copies written back
at their grid points with fresh Maxwell-Boltzmann velocities. Every chain is exactly the
single-chain ``HybridMC`` with the same MD integrator; the batching only buys
throughput (chains x proposals per second).
"""

from __future__ import annotations

import time

import numpy as np
import openmm
from openmm import unit

from openmm_cmt.mcmc.proposals import (
    GeneratorProposal,
    centre_of_mass,
    check_system,
    log_acceptance,
    maxwell_boltzmann,
    split_seed,
)
from openmm_cmt.replicas.replicated_context import ReplicatedContext


class ManyChainHybridMC:
    """``n_chains`` hybrid chains of ``molsys`` run side by side.

    Parameters
    ----------
    molsys
        a ``MolecularSystem`` (no virtual sites; its bond constraints, if any,
        must be the ones the generator holds fixed).
    generator
        a ``Generator``, the path of an exported file, or a sampler.
    n_chains
        K.
    md_steps
        Langevin steps between proposal rounds (0: generator moves only).
    timestep, collision_rate
        ps and 1/ps (``LangevinMiddleIntegrator`` at ``molsys.temperature``).
    platform
        OpenMM platform name or ``"auto"`` (:mod:`openmm_cmt.energy.platforms`).
    energy
        an ``EnergyEngine`` for ``molsys`` giving exact per-copy energies; default
        ``create_energy(molsys)``.
    positions
        starting conformation ``[N, 3]`` nm (default ``molsys.positions``) or
        one per chain ``[K, N, 3]``.
    seed
        seeds proposals, acceptance draws, velocities and the integrator.
    spacing, cutoff, properties
        of the ``ReplicatedContext``.

    Attributes
    ----------
    n_proposed, n_accepted
        per-chain counts ``[K]``.
    last
        the last round's ``u_old``, ``u_new``, ``log_q_old``, ``log_q_new``,
        ``log_acceptance``, ``uniform`` (the draws compared with the acceptance
        probability), ``accepted``, ``x_old``, ``x_new`` (all per chain).
    md_seconds, proposal_seconds
        wall time spent in each part.
    replicas
        the ``ReplicatedContext``; move the chains through ``run`` and
        ``propose`` only (they keep track of which states MD has changed).
    """

    def __init__(
        self,
        molsys,
        generator,
        n_chains: int,
        md_steps: int = 1000,
        timestep: float = 0.001,
        collision_rate: float = 1.0,
        platform: str = "auto",
        energy=None,
        positions=None,
        seed: int | None = None,
        spacing: float = 5.0,
        cutoff: float = 1.5,
        properties: dict | None = None,
    ):
        if not (isinstance(n_chains, (int, np.integer)) and n_chains >= 1):
            raise ValueError(f"n_chains must be a positive integer, got {n_chains!r}")
        if not (isinstance(md_steps, (int, np.integer)) and md_steps >= 0):
            raise ValueError(f"md_steps must be a non-negative integer, got {md_steps!r}")
        self.molsys = molsys
        self.n_chains = int(n_chains)
        self.md_steps = int(md_steps)
        self.kT = molsys.kT
        self.masses = molsys.masses
        seeds = split_seed(seed, 3)
        self.proposal = GeneratorProposal(generator, self.n_chains, seeds[0], molsys.system, molsys.topology)
        self.constrained = bool(check_system(molsys.system, self.proposal.generator))
        self.rng = np.random.default_rng(seeds[1])
        integrator = openmm.LangevinMiddleIntegrator(
            molsys.temperature * unit.kelvin, collision_rate / unit.picosecond, timestep * unit.picoseconds
        )
        if seed is not None:
            integrator.setRandomNumberSeed(int(seeds[2].generate_state(1)[0] % 2**31))
        start = molsys.positions if positions is None else np.asarray(positions, dtype=np.float64)
        n = molsys.n_atoms
        if start.shape not in ((n, 3), (self.n_chains, n, 3)):
            raise ValueError(f"positions must have shape ({n}, 3) or ({self.n_chains}, {n}, 3), got {start.shape}")
        first = start if start.ndim == 2 else start[0]
        self.replicas = ReplicatedContext(
            molsys.system, first, self.n_chains, integrator, platform, spacing, cutoff, properties
        )
        if start.ndim == 3:
            self.replicas.set_positions(start)
        if self.constrained:  # start on the constraint manifold
            self.replicas.context.applyConstraints(integrator.getConstraintTolerance())
        self.replicas.set_velocities(maxwell_boltzmann(self.masses, self.kT, self.rng, self.n_chains))
        self._project_velocities()
        if energy is None:
            from openmm_cmt.energy import create_energy

            energy = create_energy(molsys)
        if energy.n_atoms != n:
            raise ValueError(f"the energy engine is for {energy.n_atoms} atoms, the molecule has {n}")
        self.energy = energy
        self.n_proposed = np.zeros(self.n_chains, dtype=np.int64)
        self.n_accepted = np.zeros(self.n_chains, dtype=np.int64)
        self.md_seconds = 0.0
        self.proposal_seconds = 0.0
        self.last: dict = {}
        self._current_log_q = None  # log q of the chain states, while no MD has moved them

    def _project_velocities(self) -> None:
        """Constrained Maxwell-Boltzmann velocities: the mass-weighted projection onto the
        tangent space (a no-op, to the tolerance, for copies whose velocities came from
        constrained MD)."""
        if self.constrained:
            self.replicas.context.applyVelocityConstraints(self.replicas.integrator.getConstraintTolerance())

    @property
    def platform_name(self) -> str:
        return self.replicas.platform_name

    @property
    def acceptance_rate(self) -> float:
        """Accepted over proposed, all chains together."""
        total = int(self.n_proposed.sum())
        return int(self.n_accepted.sum()) / total if total else float("nan")

    def positions(self) -> np.ndarray:
        """Positions ``[K, N, 3]`` nm of every chain, relative to its grid point."""
        return self.replicas.get_positions()

    def propose(self) -> np.ndarray:
        """One proposal per chain; returns the accepted mask ``[K]``."""
        start = time.perf_counter()
        x = self.replicas.recentre()
        x_new, log_q_new = self.proposal.propose(centre_of_mass(x, self.masses), self.masses)
        if self._current_log_q is None:
            log_q_old = self.proposal.log_prob(x)
        else:  # no MD since the last round: each chain sits where that round left it
            log_q_old = self._current_log_q
        u = np.asarray(self.energy.reduced_energy(np.concatenate([x, x_new])), dtype=np.float64)
        K = self.n_chains
        log_a = log_acceptance(u[:K], u[K:], log_q_old, log_q_new)
        uniform = self.rng.random(K)
        accepted = np.log(uniform) < log_a
        self._current_log_q = np.where(accepted, log_q_new, log_q_old)
        if accepted.any():
            self.replicas.set_positions(np.where(accepted[:, None, None], x_new, x))
            v = self.replicas.get_velocities()
            v[accepted] = maxwell_boltzmann(self.masses, self.kT, self.rng, int(accepted.sum()))
            self.replicas.set_velocities(v)
            self._project_velocities()
        self.n_proposed += 1
        self.n_accepted += accepted
        self.last = {
            "u_old": u[:K], "u_new": u[K:], "log_q_old": log_q_old, "log_q_new": log_q_new,
            "log_acceptance": log_a, "uniform": uniform, "accepted": accepted, "x_old": x, "x_new": x_new,
        }  # fmt: skip
        self.proposal_seconds += time.perf_counter() - start
        return accepted

    def run(self, n_cycles: int, callback=None, proposals: bool = True) -> dict:
        """``n_cycles`` rounds of MD then proposals; ``callback(self)`` after each.
        ``proposals=False`` runs the same MD without generator moves (the baseline at
        equal MD cost). Returns ``statistics``."""
        if not (isinstance(n_cycles, (int, np.integer)) and n_cycles >= 0):
            raise ValueError(f"n_cycles must be a non-negative integer, got {n_cycles!r}")
        if not proposals and self.md_steps == 0:
            raise ValueError("proposals=False needs md_steps > 0")
        for _ in range(int(n_cycles)):
            if self.md_steps:
                start = time.perf_counter()
                self.replicas.step(self.md_steps)
                self._current_log_q = None
                if not proposals:
                    self.replicas.recentre()
                self.md_seconds += time.perf_counter() - start
            if proposals:
                self.propose()
            if callback is not None:
                callback(self)
        return self.statistics

    @property
    def statistics(self) -> dict:
        """Counts, acceptance rate and throughput: proposals per second (all chains, in
        proposal rounds only) and chain-cycles per second (MD included)."""
        proposals = int(self.n_proposed.sum())
        total = self.md_seconds + self.proposal_seconds
        return {
            "n_chains": self.n_chains,
            "n_proposed": proposals,
            "n_accepted": int(self.n_accepted.sum()),
            "acceptance_rate": self.acceptance_rate,
            "proposals_per_second": proposals / self.proposal_seconds if self.proposal_seconds else float("nan"),
            "chain_cycles_per_second": proposals / total if total else float("nan"),
            "md_seconds": self.md_seconds,
            "proposal_seconds": self.proposal_seconds,
            "platform": self.platform_name,
        }
