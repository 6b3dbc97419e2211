"""``BoltzmannGeneratorMove``: generator jumps as an openmmtools ``MCMCMove``.

Composes with the other openmmtools moves, e.g.::

    move = SequenceMove([LangevinDynamicsMove(n_steps=500), BoltzmannGeneratorMove("generator.pt")])
    MCMCSampler(thermodynamic_state, sampler_state, move).run(1000)

Independence Metropolis-Hastings with the rule of the ``proposals`` module; energies are
the thermodynamic state's own reduced potential, ``thermodynamic_state.reduced_potential``
on a Context from the context cache (so a barostat's pV term or an alchemical state is
honoured exactly).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from openmm import unit

with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    # openmmtools prints banners (and warnings about optional packages) on import.
    from openmmtools.mcmc import MCMCMove

from openmm_cmt.mcmc.proposals import (
    GeneratorProposal,
    centre_of_mass,
    check_system,
    generator_archive,
    log_acceptance,
    maxwell_boltzmann,
    split_seed,
    system_masses,
)


class BoltzmannGeneratorMove(MCMCMove):
    """Independence Metropolis-Hastings move with proposals from a Boltzmann generator.

    Parameters
    ----------
    generator
        a ``Generator``, the path of an exported file, or a sampler.
    batch_size
        proposals drawn per generator call.
    seed
        seeds the proposals, the acceptance draws and the velocities.
    redraw_velocities
        draw Maxwell-Boltzmann velocities after an accepted jump.

    Attributes
    ----------
    n_proposed, n_accepted
        counts, also as ``statistics`` (openmmtools convention).
    last
        the last proposal's reduced energies, log densities, log acceptance ratio
        and decision.
    """

    def __init__(self, generator, batch_size: int = 256, seed: int | None = None, redraw_velocities: bool = True):
        super().__init__()
        proposal_seed, own_seed = split_seed(seed, 2)
        self.proposal = GeneratorProposal(generator, batch_size, proposal_seed)
        self.rng = np.random.default_rng(own_seed)
        self.redraw_velocities = bool(redraw_velocities)
        self.n_proposed = 0
        self.n_accepted = 0
        self.last: dict = {}
        self._checked_context = None

    @property
    def statistics(self) -> dict:
        """The acceptance statistics as a dictionary."""
        return {"n_accepted": self.n_accepted, "n_proposed": self.n_proposed}

    @statistics.setter
    def statistics(self, value: dict) -> None:
        self.n_accepted = int(value["n_accepted"])
        self.n_proposed = int(value["n_proposed"])

    @property
    def acceptance_rate(self) -> float:
        return self.n_accepted / self.n_proposed if self.n_proposed else float("nan")

    def apply(self, thermodynamic_state, sampler_state, context_cache=None):
        """One proposal; ``sampler_state`` gets the new positions (and velocities) when
        it is accepted and is left unchanged otherwise."""
        context, _ = self._get_context_cache(context_cache).get_context(thermodynamic_state)
        if self._checked_context is not context:
            system = context.getSystem()
            self._constrained = bool(check_system(system, self.proposal.generator))
            if self._constrained and not self.redraw_velocities:
                raise ValueError(
                    "the System has constraints: velocities must be redrawn after a jump (redraw_velocities=True)"
                )
            n_atoms = getattr(self.proposal.generator, "n_atoms", system.getNumParticles())
            if n_atoms != system.getNumParticles():
                raise ValueError(f"the generator has {n_atoms} atoms, the System has {system.getNumParticles()} particles")
            self._masses = system_masses(system)
            self._checked_context = context
        masses = self._masses
        sampler_state.apply_to_context(context, ignore_velocities=True)
        u_old = thermodynamic_state.reduced_potential(context)
        x = np.asarray(sampler_state.positions.value_in_unit(unit.nanometer), dtype=np.float64)
        log_q_old = self.proposal.current_log_prob(x[None])[0]
        x_new, log_q_new = self.proposal.propose(centre_of_mass(x, masses)[None], masses)
        x_new, log_q_new = x_new[0], log_q_new[0]
        context.setPositions(x_new)
        u_new = thermodynamic_state.reduced_potential(context)
        log_a = float(log_acceptance(u_old, u_new, log_q_old, log_q_new))
        accepted = bool(np.log(self.rng.random()) < log_a)
        if accepted:
            if self.redraw_velocities:
                kT = thermodynamic_state.kT.value_in_unit(unit.kilojoule_per_mole)
                context.setVelocities(maxwell_boltzmann(masses, kT, self.rng))
                if self._constrained:  # mass-weighted projection onto the tangent space
                    context.applyVelocityConstraints(context.getIntegrator().getConstraintTolerance())
            sampler_state.update_from_context(context, ignore_velocities=not self.redraw_velocities)
            self.proposal.remember(x_new[None], [log_q_new])
            self.n_accepted += 1
        else:
            self.proposal.remember(x[None], [log_q_old])
        self.n_proposed += 1
        self.last = {
            "u_old": float(u_old), "u_new": float(u_new), "log_q_old": float(log_q_old),
            "log_q_new": float(log_q_new), "log_acceptance": log_a, "accepted": accepted,
        }  # fmt: skip

    def __getstate__(self):
        return {
            "generator": generator_archive(self.proposal.generator),
            "batch_size": self.proposal.batch_size,
            "redraw_velocities": self.redraw_velocities,
            **self.statistics,
        }

    def __setstate__(self, serialization):
        generator = torch.jit.load(io.BytesIO(serialization["generator"]), map_location="cpu")
        self.__init__(generator, serialization["batch_size"], None, serialization["redraw_velocities"])
        self.statistics = serialization
