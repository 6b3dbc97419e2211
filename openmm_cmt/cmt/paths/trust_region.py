"""``trust-region``: eta = 0, the auto-scheduled geometric path of the CMT paper."""

from __future__ import annotations

import dataclasses

from openmm_cmt.cmt.dual import DualSolution, solve_dual
from openmm_cmt.cmt.paths.base import AnnealingPath, check_positive


@dataclasses.dataclass
class TrustRegionPath(AnnealingPath):
    """Largest step with KL(q_{i+1} || q_i) <= ``eps_tr`` (nats), no entropy constraint."""

    eps_tr: float = 0.5

    def __post_init__(self):
        check_positive(eps_tr=self.eps_tr)

    def step(self, log_q, log_p, index: int, init: tuple[float, float] = (1.0, 1.0)) -> DualSolution:
        return solve_dual(log_q, log_p, self.eps_tr, None, init=init)
