"""Metrics of a Boltzmann generator: ESS, EUBO, NLL, Ramachandran and energy distances."""

from openmm_cmt.metrics.divergences import (
    SampleDistance,
    energy_histogram_distance,
    kl_divergence,
    total_variation,
    wasserstein_1d,
)
from openmm_cmt.metrics.ess import clip_log_weights, eubo, forward_ess, log_z_estimate, nll, reverse_ess
from openmm_cmt.metrics.ramachandran import (
    backbone_dihedral_indices,
    dihedrals,
    phi_psi,
    ramachandran_histogram,
    ramachandran_kl,
    ramachandran_tv,
)

__all__ = [
    "SampleDistance",
    "backbone_dihedral_indices",
    "clip_log_weights",
    "dihedrals",
    "energy_histogram_distance",
    "eubo",
    "forward_ess",
    "kl_divergence",
    "log_z_estimate",
    "nll",
    "phi_psi",
    "ramachandran_histogram",
    "ramachandran_kl",
    "ramachandran_tv",
    "reverse_ess",
    "total_variation",
    "wasserstein_1d",
]
