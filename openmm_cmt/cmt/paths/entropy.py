r"""``entropy``: lambda = 0, the temperature path :math:`q_{i+1}\propto\tilde p^{1/(1+\eta)}`."""

from __future__ import annotations

import dataclasses

from openmm_cmt.cmt.dual import DualSolution, solve_dual
from openmm_cmt.cmt.paths.base import AnnealingPath, check_positive


@dataclasses.dataclass
class EntropyPath(AnnealingPath):
    """Largest step with an entropy drop <= ``eps_ent`` (nats), no trust region."""

    eps_ent: float = 1.0

    def __post_init__(self):
        check_positive(eps_ent=self.eps_ent)

    def step(self, log_q, log_p, index: int, init: tuple[float, float] = (1.0, 1.0)) -> DualSolution:
        return solve_dual(log_q, log_p, None, self.eps_ent, init=init)
