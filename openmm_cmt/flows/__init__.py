"""Normalizing flows: rational-quadratic spline couplings, priors, and the Generator."""

from openmm_cmt.flows.coupling import BOUNDED, CIRCULAR, UNBOUNDED, SplineCoupling, SplineFlow, TorsionShift, coupling_masks, maybe_compile
from openmm_cmt.flows.euclidean import EuclideanFlow
from openmm_cmt.flows.generator import PRESETS, Generator
from openmm_cmt.flows.priors import IndependentPrior

__all__ = [
    "BOUNDED",
    "CIRCULAR",
    "UNBOUNDED",
    "EuclideanFlow",
    "Generator",
    "IndependentPrior",
    "PRESETS",
    "SplineCoupling",
    "SplineFlow",
    "TorsionShift",
    "coupling_masks",
    "maybe_compile",
]
