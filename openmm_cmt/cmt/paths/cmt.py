"""``cmt``: trust region and entropy constraint, (alpha, beta) from the 2-D dual (the CMT
paper's constrained sub-problem; Learning Boltzmann Generators via Constrained Mass
Transport, ICLR 2026)."""

from __future__ import annotations

import dataclasses

from openmm_cmt.cmt.dual import DualSolution, solve_dual
from openmm_cmt.cmt.paths.base import AnnealingPath, check_positive


@dataclasses.dataclass
class CMTPath(AnnealingPath):
    """Largest step with KL(q_{i+1} || q_i) <= ``eps_tr`` and an entropy drop <= ``eps_ent`` (nats)."""

    eps_tr: float = 0.5
    eps_ent: float = 1.0

    def __post_init__(self):
        check_positive(eps_tr=self.eps_tr, eps_ent=self.eps_ent)

    def step(self, log_q, log_p, index: int, init: tuple[float, float] = (1.0, 1.0)) -> DualSolution:
        return solve_dual(log_q, log_p, self.eps_tr, self.eps_ent, init=init)
