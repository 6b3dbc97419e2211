"""Many independent copies of one molecule in one OpenMM Context: the replicated System,
the Context that moves copies in and out, and a Langevin integrator with a temperature
per copy. Replica exchange (:mod:`openmm_cmt.reference`) and many-chain hybrid Monte
Carlo (:mod:`openmm_cmt.mcmc`) both run on it."""

from openmm_cmt.replicas.integrator import (
    copy_velocities,
    kinetic_temperatures,
    per_copy_langevin_integrator,
    set_copy_temperatures,
)
from openmm_cmt.replicas.replicate import check_geometry, grid_offsets, obc_as_custom_gb, replicate_system
from openmm_cmt.replicas.replicated_context import ReplicatedContext

__all__ = [
    "ReplicatedContext",
    "check_geometry",
    "copy_velocities",
    "grid_offsets",
    "kinetic_temperatures",
    "obc_as_custom_gb",
    "per_copy_langevin_integrator",
    "replicate_system",
    "set_copy_temperatures",
]
