"""Normalizing flows: rational-quadratic spline couplings, priors, and the Generator."""

from openmm_cmt.flows.coupling import BOUNDED, CIRCULAR, UNBOUNDED, SplineCoupling, SplineFlow, TorsionShift, coupling_masks, maybe_compile
from openmm_cmt.flows.euclidean import EuclideanFlow
from openmm_cmt.flows.config import FLOW_SIZES, GeneratorConfig
from openmm_cmt.flows.generator import Generator
from openmm_cmt.flows.priors import IndependentPrior

__all__ = [
    "BOUNDED",
    "CIRCULAR",
    "UNBOUNDED",
    "FLOW_SIZES",
    "EuclideanFlow",
    "Generator",
    "GeneratorConfig",
    "IndependentPrior",
    "SplineCoupling",
    "SplineFlow",
    "TorsionShift",
    "coupling_masks",
    "maybe_compile",
]
