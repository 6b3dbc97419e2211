"""Reference samples by replica exchange: many ladders of copies in one OpenMM Context."""

from openmm_cmt.reference.bundled import bundled_reference
from openmm_cmt.reference.metadata import check_reference, reference_metadata, system_fingerprint
from openmm_cmt.reference.replica_exchange import ReferenceSamples, ReplicaExchange, load_reference
from openmm_cmt.reference.swaps import geometric_temperatures

__all__ = [
    "ReferenceSamples",
    "ReplicaExchange",
    "bundled_reference",
    "check_reference",
    "geometric_temperatures",
    "load_reference",
    "reference_metadata",
    "system_fingerprint",
]
