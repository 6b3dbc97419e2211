"""``reverse-kl``: no intermediate densities; the model is fitted to p directly by
reparameterised reverse KL."""

from __future__ import annotations

import dataclasses

from openmm_cmt.cmt.dual import DualSolution, annealing_step
from openmm_cmt.cmt.paths.base import AnnealingPath


@dataclasses.dataclass
class ReverseKLPath(AnnealingPath):
    """Its step is the (alpha, beta) = (0, 1) step, whose ESS is the reverse ESS of the
    current model (diagnostics only: the trainer fits by reverse KL)."""

    reverse_kl = True

    def step(self, log_q, log_p, index: int, init: tuple[float, float] = (1.0, 1.0)) -> DualSolution:
        return annealing_step(log_q, log_p, 0.0, 1.0)
