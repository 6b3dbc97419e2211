"""Metrics of a Boltzmann generator: ESS, Pareto k, EUBO, NLL, basin populations,
Ramachandran and energy distances."""

from openmm_cmt.metrics.basins import (
    BASINS,
    BasinPopulation,
    basin_index,
    basin_populations,
    basin_shares,
    mode_collapse,
    population_bounds,
    weighted_mean,
)
from openmm_cmt.metrics.divergences import (
    SampleDistance,
    energy_histogram_distance,
    kl_divergence,
    total_variation,
    wasserstein_1d,
)
from openmm_cmt.metrics.ess import clip_log_weights, eubo, forward_ess, log_z_estimate, nll, reverse_ess
from openmm_cmt.metrics.pareto import ParetoTail, gpd_fit, pareto_k_reading, pareto_khat
from openmm_cmt.metrics.ramachandran import (
    backbone_residue_labels,
    backbone_dihedral_indices,
    dihedrals,
    phi_psi,
    ramachandran_histogram,
    ramachandran_kl,
    ramachandran_tv,
)

__all__ = [
    "BASINS",
    "BasinPopulation",
    "ParetoTail",
    "backbone_residue_labels",
    "basin_index",
    "basin_populations",
    "basin_shares",
    "gpd_fit",
    "mode_collapse",
    "pareto_k_reading",
    "pareto_khat",
    "population_bounds",
    "weighted_mean",
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
