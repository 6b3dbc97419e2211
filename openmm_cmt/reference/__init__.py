"""Reference samples by replica exchange: many ladders of copies in one OpenMM Context,
or in one torch batch with TorchEnergy forces."""

from openmm_cmt.reference.bundled import bundled_reference
from openmm_cmt.reference.integrator import (
    copy_velocities,
    kinetic_temperatures,
    per_copy_langevin_integrator,
    set_copy_temperatures,
)
from openmm_cmt.reference.metadata import check_reference, reference_metadata, system_fingerprint
from openmm_cmt.reference.replica_exchange import ReferenceSamples, ReplicaExchange, load_reference
from openmm_cmt.reference.replicate import grid_offsets, obc_as_custom_gb, replicate_system
from openmm_cmt.reference.replicated_context import ReplicatedContext
from openmm_cmt.reference.swaps import geometric_temperatures
from openmm_cmt.reference.torch_replicas import TorchReplicas

__all__ = [
    "ReferenceSamples",
    "ReplicaExchange",
    "ReplicatedContext",
    "TorchReplicas",
    "bundled_reference",
    "check_reference",
    "copy_velocities",
    "geometric_temperatures",
    "grid_offsets",
    "kinetic_temperatures",
    "load_reference",
    "obc_as_custom_gb",
    "per_copy_langevin_integrator",
    "reference_metadata",
    "replicate_system",
    "set_copy_temperatures",
    "system_fingerprint",
]
