r"""Langevin dynamics with a temperature per copy, for replicated Systems.

BAOAB splitting (Leimkuhler and Matthews, Appl. Math. Res. Express 2013, 34) of the
Langevin equation with friction gamma, one step of length h:

.. math::
    v \leftarrow v + \tfrac{h}{2} f/m,\quad x \leftarrow x + \tfrac{h}{2} v,\quad
    v \leftarrow a v + \sqrt{1-a^2}\,\sqrt{kT/m}\,\xi,\quad
    x \leftarrow x + \tfrac{h}{2} v,\quad v \leftarrow v + \tfrac{h}{2} f/m

with :math:`a = e^{-\gamma h}`. The thermal energy ``kT`` is a per-degree-of-freedom
variable of the ``CustomIntegrator``, set per particle, so each copy of a replicated
System has its own temperature and replica exchange only has to change that variable.
"""

from __future__ import annotations

import math

import numpy as np
import openmm

from openmm_cmt import units

#: Name of the per-DOF thermal-energy variable (kJ/mol).
KT = "kT"


def per_copy_langevin_integrator(timestep: float = 0.001, collision_rate: float = 1.0) -> openmm.CustomIntegrator:
    """A BAOAB Langevin ``CustomIntegrator`` whose temperature is the per-DOF variable
    ``kT`` (kJ/mol), zero until :func:`set_copy_temperatures` is called.

    Parameters
    ----------
    timestep
        ps.
    collision_rate
        friction gamma in 1/ps.
    """
    if not timestep > 0:
        raise ValueError(f"timestep must be positive (ps), got {timestep}")
    if not collision_rate >= 0:
        raise ValueError(f"collision_rate must be >= 0 (1/ps), got {collision_rate}")
    a = math.exp(-collision_rate * timestep)
    integrator = openmm.CustomIntegrator(timestep)
    integrator.addPerDofVariable(KT, 0.0)
    integrator.addGlobalVariable("a", a)
    integrator.addGlobalVariable("b", math.sqrt(1.0 - a * a))
    integrator.addPerDofVariable("x1", 0.0)
    integrator.addUpdateContextState()
    integrator.addComputePerDof("v", "v + 0.5*dt*f/m")
    integrator.addConstrainVelocities()
    integrator.addComputePerDof("x", "x + 0.5*dt*v")
    integrator.addComputePerDof("v", f"a*v + b*sqrt({KT}/m)*gaussian")
    integrator.addComputePerDof("x", "x + 0.5*dt*v")
    # Constraints: project positions, then fold the correction into the velocities.
    integrator.addComputePerDof("x1", "x")
    integrator.addConstrainPositions()
    integrator.addComputePerDof("v", "v + (x - x1)/dt")
    integrator.addComputePerDof("v", "v + 0.5*dt*f/m")
    integrator.addConstrainVelocities()
    return integrator


def set_copy_temperatures(integrator: openmm.CustomIntegrator, temperatures, n_atoms: int) -> None:
    """Give copy ``c`` (particles ``c*n_atoms ..``) the temperature ``temperatures[c]`` K.

    The integrator must be bound to a Context (``kT`` has one entry per particle)."""
    kT = np.repeat(units.kT(np.asarray(temperatures, dtype=np.float64).reshape(-1)), n_atoms)
    integrator.setPerDofVariableByName(KT, [openmm.Vec3(k, k, k) for k in kT])


def copy_velocities(masses, temperatures, rng: np.random.Generator) -> np.ndarray:
    """Maxwell-Boltzmann velocities ``[n_copies, n_atoms, 3]`` nm/ps for copy
    temperatures ``[n_copies]`` K and per-atom ``masses`` [n_atoms] in dalton."""
    m = np.asarray(masses, dtype=np.float64)
    if np.any(m <= 0):
        raise ValueError("every particle needs a positive mass (virtual sites are not supported)")
    kT = units.kT(np.asarray(temperatures, dtype=np.float64).reshape(-1))
    sd = np.sqrt(kT[:, None] / m[None, :])
    return sd[:, :, None] * rng.standard_normal((kT.size, m.size, 3))


def kinetic_temperatures(velocities, masses, n_dof_per_copy: int | None = None) -> np.ndarray:
    """Instantaneous kinetic temperature of each copy, ``2 K / (n_dof R)`` in K, for
    velocities ``[n_copies, n_atoms, 3]`` nm/ps (default ``n_dof = 3 n_atoms``)."""
    v = np.asarray(velocities, dtype=np.float64)
    m = np.asarray(masses, dtype=np.float64)
    kinetic = 0.5 * (m[None, :, None] * v**2).sum(axis=(1, 2))
    n_dof = 3 * m.size if n_dof_per_copy is None else n_dof_per_copy
    return 2.0 * kinetic / (n_dof * units.MOLAR_GAS_CONSTANT)


__all__ = [
    "KT",
    "copy_velocities",
    "kinetic_temperatures",
    "per_copy_langevin_integrator",
    "set_copy_temperatures",
]
