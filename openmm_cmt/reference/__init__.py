"""Reference samples by replica exchange: many ladders of copies in one OpenMM Context,
or in one torch batch with TorchEnergy forces."""

from openmm_cmt.reference.bundled import bundled_reference
from openmm_cmt.reference.metadata import check_reference, reference_metadata, system_fingerprint
from openmm_cmt.reference.replica_exchange import ReferenceSamples, ReplicaExchange, load_reference, residue_diagnostics
from openmm_cmt.reference.swaps import geometric_temperatures
from openmm_cmt.reference.torch_replicas import TorchReplicas

__all__ = [
    "ReferenceSamples",
    "ReplicaExchange",
    "TorchReplicas",
    "bundled_reference",
    "check_reference",
    "geometric_temperatures",
    "load_reference",
    "reference_metadata",
    "residue_diagnostics",
    "system_fingerprint",
]
