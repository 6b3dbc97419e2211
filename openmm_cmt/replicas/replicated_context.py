"""An OpenMM Context that integrates many independent copies of one molecule.

The reusable piece behind replica exchange and hybrid MC with many chains: positions
and velocities go in and out as ``[n_copies, n_atoms, 3]`` arrays relative to each
copy's grid point, and ``recentre`` moves drifting copies back before they could meet.
"""

from __future__ import annotations

import numpy as np
import openmm
from openmm import unit

from openmm_cmt import units
from openmm_cmt.energy.platforms import create_context
from openmm_cmt.replicas.replicate import check_geometry, replicate_system
from openmm_cmt.replicas.integrator import set_copy_temperatures


class ReplicatedContext:
    """``n_copies`` non-interacting copies of a molecule in one Context.

    Parameters
    ----------
    system
        the single-molecule ``openmm.System`` (NoCutoff forces).
    positions
        one conformation ``[n_atoms, 3]`` nm that every copy starts from.
    n_copies
        number of copies.
    integrator
        an OpenMM integrator for the replicated System (e.g.
        :func:`~openmm_cmt.replicas.integrator.per_copy_langevin_integrator`).
    platform
        an OpenMM platform name or ``"auto"``
        (:mod:`openmm_cmt.energy.platforms`: CUDA, else CPU, else Reference).
    spacing, cutoff
        grid spacing and pairwise cutoff in nm (see
        :func:`~openmm_cmt.replicas.replicate.replicate_system`).
    properties
        platform properties.

    Attributes
    ----------
    offsets
        grid points ``[n_copies, 3]`` nm.
    platform_name
        the platform used.
    masses
        ``[n_atoms]`` dalton.
    """

    def __init__(
        self,
        system: openmm.System,
        positions,
        n_copies: int,
        integrator,
        platform: str = "auto",
        spacing: float = 5.0,
        cutoff: float = 1.5,
        properties: dict | None = None,
    ):
        x0 = units.nanometers(positions)
        self.n_atoms = system.getNumParticles()
        self.n_copies = int(n_copies)
        self.spacing = float(spacing)
        self.cutoff = float(cutoff)
        self.masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(self.n_atoms)])
        self.system, self.offsets = replicate_system(system, n_copies, spacing, cutoff, positions=x0)
        self.integrator = integrator
        self.context, self.platform_name = create_context(self.system, integrator, platform, properties)
        self.set_positions(np.broadcast_to(x0, (self.n_copies, self.n_atoms, 3)))

    def _check_shape(self, x, what: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.n_copies, self.n_atoms, 3):
            raise ValueError(f"{what} must have shape ({self.n_copies}, {self.n_atoms}, 3), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{what} contain non-finite values")
        return x

    def set_positions(self, x) -> None:
        """Place copy ``c`` at ``x[c]`` with its centroid moved to its grid point."""
        x = self._check_shape(x, "positions")
        placed = x - x.mean(axis=1, keepdims=True) + self.offsets[:, None, :]
        check_geometry(placed, self.offsets, self.spacing, self.cutoff)
        self.context.setPositions(placed.reshape(-1, 3))

    def _absolute_positions(self) -> np.ndarray:
        state = self.context.getState(getPositions=True)
        x = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        return np.asarray(x, dtype=np.float64).reshape(self.n_copies, self.n_atoms, 3)

    def get_positions(self) -> np.ndarray:
        """Positions ``[n_copies, n_atoms, 3]`` nm relative to each copy's grid point."""
        return self._absolute_positions() - self.offsets[:, None, :]

    def get_velocities(self) -> np.ndarray:
        """Velocities ``[n_copies, n_atoms, 3]`` nm/ps."""
        v = self.context.getState(getVelocities=True).getVelocities(asNumpy=True)
        return np.asarray(v.value_in_unit(unit.nanometer / unit.picosecond)).reshape(self.n_copies, self.n_atoms, 3)

    def set_velocities(self, v) -> None:
        self.context.setVelocities(self._check_shape(v, "velocities").reshape(-1, 3))

    def recentre(self) -> np.ndarray:
        """Check that no copy has grown past the cutoff or drifted near another copy
        since the last call (ValueError otherwise: the dynamics would have been wrong),
        move each copy's centroid back to its grid point, and return the positions
        ``[n_copies, n_atoms, 3]`` relative to the grid points."""
        x = self._absolute_positions()
        check_geometry(x, self.offsets, self.spacing, self.cutoff)
        self.context.setPositions((x - x.mean(axis=1, keepdims=True) + self.offsets[:, None, :]).reshape(-1, 3))
        return x - self.offsets[:, None, :]

    def step(self, n_steps: int) -> None:
        self.integrator.step(int(n_steps))

    def set_temperatures(self, temperatures) -> None:
        """Temperature of each copy, ``[n_copies]`` K, for an integrator of
        :func:`~openmm_cmt.replicas.integrator.per_copy_langevin_integrator`."""
        set_copy_temperatures(self.integrator, temperatures, self.n_atoms)

    def potential_energy(self) -> float:
        """Total potential energy of all copies, kJ/mol."""
        e = self.context.getState(getEnergy=True).getPotentialEnergy()
        return e.value_in_unit(unit.kilojoule_per_mole)
