r"""``geometric-linear``: the fixed schedule :math:`q_{i+1}\propto q_0^{1-b_{i+1}}\tilde p^{b_{i+1}}`,
:math:`b_i = \min(i/n, 1)`.

Taking :math:`q_i = q_0^{1-b_i}\tilde p^{b_i}` (up to its normaliser) gives
:math:`q_{i+1}\propto q_i^{(1-b_{i+1})/(1-b_i)}\tilde p^{(b_{i+1}-b_i)/(1-b_i)}`, which needs
only the current model.
"""

from __future__ import annotations

import dataclasses

from openmm_cmt.cmt.dual import DualSolution, annealing_step
from openmm_cmt.cmt.paths.base import AnnealingPath


def geometric_exponents(index: int, n_schedule: int) -> tuple[float, float]:
    """(alpha, beta) of step ``index`` (0-based) of the linear schedule b_i = min(i/n, 1)."""
    if n_schedule < 1:
        raise ValueError(f"the geometric schedule needs n_schedule >= 1 steps, got {n_schedule}")
    b0, b1 = min(index / n_schedule, 1.0), min((index + 1) / n_schedule, 1.0)
    if b0 >= 1.0:
        return 0.0, 1.0
    return (1.0 - b1) / (1.0 - b0), (b1 - b0) / (1.0 - b0)


@dataclasses.dataclass
class GeometricLinearPath(AnnealingPath):
    """Reaches the target in ``n_geometric`` steps (``CMTConfig.n_geometric``, by default
    its ``n_steps``) and stays there."""

    n_geometric: int = 10

    def __post_init__(self):
        if not (isinstance(self.n_geometric, int) and self.n_geometric >= 1):
            raise ValueError(f"n_geometric must be a positive integer, got {self.n_geometric!r}")

    @classmethod
    def from_config(cls, config) -> "GeometricLinearPath":
        return cls(n_geometric=config.n_geometric or config.n_steps)

    def step(self, log_q, log_p, index: int, init: tuple[float, float] = (1.0, 1.0)) -> DualSolution:
        return annealing_step(log_q, log_p, *geometric_exponents(index, self.n_geometric))
