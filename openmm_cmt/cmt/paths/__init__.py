r"""Annealing paths: which intermediate density the next step targets (``CMTConfig.path``).

Every path gives the next density as :math:`q_{i+1} \propto q_i^{\alpha}\tilde p^{\beta}`
relative to the current model :math:`q_i`, so all of them share
:class:`~openmm_cmt.cmt.dual.DualSolution` and the same weighted forward-KL update. One
module per path:

- ``cmt`` (:mod:`.cmt`): trust region and entropy constraint, the CMT dual;
- ``trust-region`` (:mod:`.trust_region`): eta = 0;
- ``entropy`` (:mod:`.entropy`): lambda = 0, a temperature path;
- ``geometric-linear`` (:mod:`.geometric_linear`): a fixed geometric schedule from q_0;
- ``temperature-ladder`` (:mod:`.temperature_ladder`): TA-BG's fixed temperature ladder;
- ``reverse-kl`` (:mod:`.reverse_kl`): no intermediate densities, reverse KL to p.

A new path is a subclass of :class:`AnnealingPath` (a dataclass whose fields are its
settings) registered under a name with :func:`register_path`; ``CMTConfig(path=name)``
then trains along it.
"""

from __future__ import annotations

from openmm_cmt.cmt.paths.base import AnnealingPath
from openmm_cmt.cmt.paths.cmt import CMTPath
from openmm_cmt.cmt.paths.entropy import EntropyPath
from openmm_cmt.cmt.paths.geometric_linear import GeometricLinearPath, geometric_exponents
from openmm_cmt.cmt.paths.reverse_kl import ReverseKLPath
from openmm_cmt.cmt.paths.temperature_ladder import TemperatureLadderPath, ladder_betas
from openmm_cmt.cmt.paths.trust_region import TrustRegionPath

#: Path name -> its class, in registration order.
PATHS: dict[str, type[AnnealingPath]] = {}


def register_path(name: str, cls: type[AnnealingPath]) -> None:
    """Make ``cls`` (a subclass of :class:`AnnealingPath`) the path called ``name``.

    Raises ValueError for an empty name, a name already taken by another class, or a
    class that is not an ``AnnealingPath``.
    """
    if not (isinstance(name, str) and name):
        raise ValueError(f"a path name must be a non-empty string, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, AnnealingPath)):
        raise ValueError(f"path {name!r} must be a subclass of AnnealingPath, got {cls!r}")
    if PATHS.get(name, cls) is not cls:
        raise ValueError(f"path {name!r} is already registered as {PATHS[name].__name__}")
    PATHS[name] = cls


def check_path(name: str) -> str:
    """``name`` if it is a registered path, else ValueError naming the known ones."""
    if name not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}; got {name!r}")
    return name


def make_path(config) -> AnnealingPath:
    """The path ``config.path`` with its settings from ``config`` (a ``CMTConfig``)."""
    return PATHS[check_path(config.path)].from_config(config)


register_path("cmt", CMTPath)
register_path("trust-region", TrustRegionPath)
register_path("entropy", EntropyPath)
register_path("geometric-linear", GeometricLinearPath)
register_path("temperature-ladder", TemperatureLadderPath)
register_path("reverse-kl", ReverseKLPath)

__all__ = [
    "PATHS",
    "AnnealingPath",
    "CMTPath",
    "EntropyPath",
    "GeometricLinearPath",
    "ReverseKLPath",
    "TemperatureLadderPath",
    "TrustRegionPath",
    "check_path",
    "geometric_exponents",
    "ladder_betas",
    "make_path",
    "register_path",
]
