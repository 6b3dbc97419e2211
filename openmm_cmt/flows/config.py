"""The settings of a molecule's Boltzmann generator: ``GeneratorConfig`` and the flow sizes.

``Generator.from_system(molsys, GeneratorConfig(...))`` builds a generator; its
``build_config`` (``dataclasses.asdict`` of the config with the sizes filled in) is what
run folders store and what rebuilds it (``GeneratorConfig(**build_config)``).
"""

from __future__ import annotations

import dataclasses

from openmm_cmt.flows.coupling import MASKING_SCHEMES
from openmm_cmt.flows.priors import BOUNDED_PRIORS

#: Flow sizes (``GeneratorConfig.preset``). "gpu" is close to TA-BG (8 ALL->ALL blocks and
#: their reverses, MLP 5 x 256, 8 bins; 7.4 M parameters for alanine dipeptide); "cpu" is
#: a laptop-sized default (0.94 M parameters for alanine dipeptide).
FLOW_SIZES: dict[str, dict[str, int]] = {
    "cpu": {"n_layers": 8, "hidden": 128, "depth": 2},
    "gpu": {"n_layers": 16, "hidden": 256, "depth": 5},
}

SCALINGS = ("fixed", "harmonic")


@dataclasses.dataclass
class GeneratorConfig:
    """Architecture and internal-coordinate scaling of a ``Generator``.

    Attributes
    ----------
    preset
        flow size, a key of ``FLOW_SIZES`` (``"cpu"`` or ``"gpu"``);
        ``n_layers``, ``hidden`` and ``depth`` override it.
    n_layers
        coupling layers (``"all2all"`` pairs a random split with its reverse).
    hidden, depth
        conditioner MLP width and hidden-layer count.
    n_bins
        spline bins.
    masking
        ``"all2all"``, ``"alternating"`` or ``"random"``.
    torsion_shifts
        fixed random phase shifts of the torsions between layers.
    seed
        seeds masks, shifts and initial weights.
    fix_methyl_permutation
        keep equivalent terminal hydrogens from swapping labels
        (constrains their improper dihedrals, as for stereocentres).
    bond_width
        nm, half-width of each bond's interval around the reference.
    angle_width
        rad, half-width of each angle's interval (cut inside (0, pi)).
    prior
        ``"truncated_normal"`` or ``"uniform"`` for the bounded dimensions.
    prior_sigma
        standard deviation of the truncated normal in scaled units.
    scaling
        ``"fixed"`` (the widths above) or ``"harmonic"``: widths from the
        energy's curvature at the reference, impropers bounded
        (:mod:`openmm_cmt.flows.scaling`; 2D + 1 exact energy evaluations).
    width_factor
        harmonic half-width in conditional standard deviations.
    """

    preset: str = "cpu"
    n_layers: int | None = None
    hidden: int | None = None
    depth: int | None = None
    n_bins: int = 8
    masking: str = "all2all"
    torsion_shifts: bool = True
    seed: int = 0
    fix_methyl_permutation: bool = False
    bond_width: float = 0.04
    angle_width: float = 0.6
    prior: str = "truncated_normal"
    prior_sigma: float = 0.5
    scaling: str = "fixed"
    width_factor: float = 10.0

    def __post_init__(self):
        if self.preset not in FLOW_SIZES:
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {sorted(FLOW_SIZES)}")
        if not self.bond_width > 0 or not self.angle_width > 0:
            raise ValueError(f"bond_width and angle_width must be positive, got {self.bond_width}, {self.angle_width}")
        if self.masking not in MASKING_SCHEMES:
            raise ValueError(f"masking must be one of {', '.join(MASKING_SCHEMES)}; got {self.masking!r}")
        if self.prior not in BOUNDED_PRIORS:
            raise ValueError(f"prior must be one of {', '.join(BOUNDED_PRIORS)}; got {self.prior!r}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be 'fixed' or 'harmonic', got {self.scaling!r}")
        for name in ("n_layers", "hidden", "depth"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")

    def sized(self) -> "GeneratorConfig":
        """A copy with ``n_layers``, ``hidden`` and ``depth`` filled in from ``FLOW_SIZES``."""
        size = FLOW_SIZES[self.preset]
        return dataclasses.replace(self, **{k: v if getattr(self, k) is None else getattr(self, k) for k, v in size.items()})
