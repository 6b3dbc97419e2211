"""Hybrid MD / Boltzmann-generator Monte Carlo on a user's ``openmm.app.Simulation``.

MD explores a basin; a generator proposal (``proposals`` module: independence
Metropolis-Hastings with the exact energies of the Simulation's own Context) jumps
between basins in one move. Nothing else in the user's script changes::

    hybrid = HybridMC(simulation, "generator.pt", md_steps=1000)
    hybrid.step(1_000_000)                   # instead of simulation.step(1_000_000)
    print(hybrid.acceptance_rate)

or, leaving the script's own ``simulation.step`` calls alone::

    simulation.reporters.append(HybridMC(simulation, "generator.pt", md_steps=1000).reporter())

The integrator must sample the canonical ensemble at ``temperature`` (a Langevin
integrator, say) for the combined chain to be exact. With bond constraints
(``constraints=HBonds``) it samples it on the constraint manifold, with respect to the
mass-weighted surface measure; a generator built from the same System holds those bonds
fixed and reports its density with respect to that measure, so the chain stays exact
(:mod:`openmm_cmt.coordinates.constraints`).
"""

from __future__ import annotations

import time

import numpy as np
from openmm import unit

from openmm_cmt import units
from openmm_cmt.mcmc.proposals import (
    GeneratorProposal,
    centre_of_mass,
    check_system,
    log_acceptance,
    maxwell_boltzmann,
    split_seed,
    system_masses,
)


class HybridMC:
    """Interleaves ``simulation.step(md_steps)`` with generator proposals.

    Parameters
    ----------
    simulation
        an ``openmm.app.Simulation`` (System without virtual sites; its bond
        constraints, if any, must be the ones the generator holds fixed).
    generator
        a ``Generator``, the path of an exported file, or a sampler.
    md_steps
        MD steps between proposals (0: generator moves only).
    temperature
        K; default the integrator's ``getTemperature()``.
    batch_size
        proposals drawn per generator call.
    seed
        seeds proposals, acceptance draws and velocities.
    redraw_velocities
        draw Maxwell-Boltzmann velocities after an accepted jump
        (required with constraints; they are then projected onto the manifold).

    Attributes
    ----------
    n_proposed, n_accepted
        counts; ``acceptance_rate`` is their ratio.
    last
        the last proposal's ``u_old``, ``u_new``, ``log_q_old``, ``log_q_new``,
        ``log_acceptance``, ``accepted`` (reduced energies; nats).
    """

    def __init__(
        self,
        simulation,
        generator,
        md_steps: int = 1000,
        temperature: float | None = None,
        batch_size: int = 256,
        seed: int | None = None,
        redraw_velocities: bool = True,
    ):
        if not (isinstance(md_steps, (int, np.integer)) and md_steps >= 0):
            raise ValueError(f"md_steps must be a non-negative integer, got {md_steps!r}")
        self.simulation = simulation
        self.context = simulation.context
        system = self.context.getSystem()
        if temperature is None:
            getter = getattr(simulation.integrator, "getTemperature", None)
            if getter is None:
                raise ValueError("the Simulation's integrator has no temperature; pass temperature= in K")
            temperature = getter()
        self.temperature = units.kelvin(temperature)
        self.kT = units.kT(self.temperature)
        self.md_steps = int(md_steps)
        self.masses = system_masses(system)
        proposal_seed, own_seed = split_seed(seed, 2)
        self.proposal = GeneratorProposal(generator, batch_size, proposal_seed, system, getattr(simulation, "topology", None))
        self.constrained = bool(check_system(system, self.proposal.generator))
        if self.constrained and not redraw_velocities:
            raise ValueError(
                "the System has constraints: velocities must be redrawn after a jump (redraw_velocities=True), "
                "since the old ones are not tangent to the constraint manifold at the new positions"
            )
        self.rng = np.random.default_rng(own_seed)
        self.redraw_velocities = bool(redraw_velocities)
        self.n_proposed = 0
        self.n_accepted = 0
        self.proposal_seconds = 0.0
        self.last: dict = {}

    @property
    def acceptance_rate(self) -> float:
        return self.n_accepted / self.n_proposed if self.n_proposed else float("nan")

    @property
    def statistics(self) -> dict:
        return {
            "n_proposed": self.n_proposed, "n_accepted": self.n_accepted, "acceptance_rate": self.acceptance_rate,
            "proposal_seconds": self.proposal_seconds,
        }  # fmt: skip

    def _reduced_energy(self, x: np.ndarray) -> float:
        self.context.setPositions(x)
        energy = self.context.getState(getEnergy=True).getPotentialEnergy()
        return energy.value_in_unit(unit.kilojoule_per_mole) / self.kT

    def _constraint_tolerance(self) -> float:
        getter = getattr(self.simulation.integrator, "getConstraintTolerance", None)
        return float(getter()) if getter is not None else 1e-5

    def positions(self) -> np.ndarray:
        """Current positions ``[N, 3]`` nm of the Simulation."""
        state = self.context.getState(getPositions=True)
        return np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)

    def log_acceptance_ratio(self, x: np.ndarray, x_new: np.ndarray, log_q_old=None, log_q_new=None) -> dict:
        """Log acceptance ratio of the jump ``x -> x_new`` (both ``[N, 3]`` nm) with the
        Simulation's energies and the generator's densities (evaluated unless given);
        leaves the Context at ``x_new``. Returns a dict with ``u_old``, ``u_new``,
        ``log_q_old``, ``log_q_new`` and ``log_acceptance``."""
        if log_q_old is None:
            log_q_old = self.proposal.log_prob(x[None])[0]
        if log_q_new is None:
            log_q_new = self.proposal.log_prob(x_new[None])[0]
        u_old = self._reduced_energy(x)
        u_new = self._reduced_energy(x_new)
        return {
            "u_old": u_old, "u_new": u_new, "log_q_old": float(log_q_old), "log_q_new": float(log_q_new),
            "log_acceptance": float(log_acceptance(u_old, u_new, log_q_old, log_q_new)),
        }  # fmt: skip

    def propose(self) -> bool:
        """One generator proposal on the Simulation's current state; True if accepted.

        On acceptance the Context gets the new positions (and fresh velocities); on
        rejection it is left exactly as it was."""
        start = time.perf_counter()
        x = self.positions()
        log_q_old = self.proposal.current_log_prob(x[None])[0]
        x_new, log_q_new = self.proposal.propose(centre_of_mass(x, self.masses)[None], self.masses)
        record = self.log_acceptance_ratio(x, x_new[0], log_q_old, log_q_new[0])
        accepted = bool(np.log(self.rng.random()) < record["log_acceptance"])
        if accepted:
            if self.redraw_velocities:
                self.context.setVelocities(maxwell_boltzmann(self.masses, self.kT, self.rng))
                if self.constrained:
                    self.context.applyVelocityConstraints(self._constraint_tolerance())
            self.proposal.remember(x_new, log_q_new)
            self.n_accepted += 1
        else:
            self.context.setPositions(x)
            self.proposal.remember(x[None], [log_q_old])
        self.n_proposed += 1
        record["accepted"] = accepted
        self.last = record
        self.proposal_seconds += time.perf_counter() - start
        return accepted

    def run(self, n_cycles: int, callback=None) -> dict:
        """``n_cycles`` times: ``md_steps`` MD steps, then one proposal. ``callback(self)``
        is called after each cycle. Returns ``statistics``."""
        if not (isinstance(n_cycles, (int, np.integer)) and n_cycles >= 0):
            raise ValueError(f"n_cycles must be a non-negative integer, got {n_cycles!r}")
        for _ in range(int(n_cycles)):
            if self.md_steps:
                self.simulation.step(self.md_steps)
            self.propose()
            if callback is not None:
                callback(self)
        return self.statistics

    def step(self, n_steps: int) -> None:
        """Drop-in for ``simulation.step(n_steps)``: the same number of MD steps, with a
        proposal after every ``md_steps`` of them (counted from this call)."""
        if not (isinstance(n_steps, (int, np.integer)) and n_steps >= 0):
            raise ValueError(f"n_steps must be a non-negative integer, got {n_steps!r}")
        if self.md_steps == 0:
            raise ValueError("step() needs md_steps > 0; use run(n_cycles) for generator moves only")
        remaining = int(n_steps)
        while remaining >= self.md_steps:
            self.simulation.step(self.md_steps)
            self.propose()
            remaining -= self.md_steps
        if remaining:
            self.simulation.step(remaining)

    def reporter(self, interval: int | None = None) -> "HybridMCReporter":
        """A reporter that makes a proposal every ``interval`` (default ``md_steps``) steps
        of the Simulation: append it to ``simulation.reporters``."""
        return HybridMCReporter(self, self.md_steps if interval is None else interval)


class HybridMCReporter:
    """OpenMM reporter that calls ``hybrid.propose()`` every ``interval`` steps.

    Reporters later in ``simulation.reporters`` that fire at the same step see the state
    from before the proposal (OpenMM computes it once for all of them).
    """

    def __init__(self, hybrid: HybridMC, interval: int):
        if not (isinstance(interval, (int, np.integer)) and interval >= 1):
            raise ValueError(f"interval must be a positive integer, got {interval!r}")
        self.hybrid = hybrid
        self.interval = int(interval)

    def describeNextReport(self, simulation):
        steps = self.interval - simulation.currentStep % self.interval
        return {"steps": steps, "periodic": None, "include": []}

    def report(self, simulation, state) -> None:
        self.hybrid.propose()
