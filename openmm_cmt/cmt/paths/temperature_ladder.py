r"""``temperature-ladder``: TA-BG's fixed ladder, :math:`q_{i+1}\propto\tilde p^{T/T_{i+1}}`,
with temperatures geometric from :math:`T_{high}` down to T, reached by reweighting the
current model's samples."""

from __future__ import annotations

import dataclasses

from openmm_cmt.cmt.dual import DualSolution, annealing_step
from openmm_cmt.cmt.paths.base import AnnealingPath


def ladder_betas(t_high_factor: float, n_temperatures: int) -> list[float]:
    """Inverse-temperature ratios T/T_k of a geometric ladder from T_high = factor * T to T."""
    if not t_high_factor >= 1.0:
        raise ValueError(f"t_high_factor = T_high / T must be >= 1, got {t_high_factor}")
    if n_temperatures < 1:
        raise ValueError(f"the ladder needs n_temperatures >= 1, got {n_temperatures}")
    if n_temperatures == 1:
        return [1.0]
    return [t_high_factor ** -(1.0 - k / (n_temperatures - 1)) for k in range(n_temperatures)]


@dataclasses.dataclass
class TemperatureLadderPath(AnnealingPath):
    """``n_temperatures`` rungs from T_high = ``t_high_factor`` * T down to T; steps past
    the last rung stay at T."""

    t_high_factor: float = 4.0
    n_temperatures: int = 5

    def __post_init__(self):
        self.betas = ladder_betas(self.t_high_factor, self.n_temperatures)

    def step(self, log_q, log_p, index: int, init: tuple[float, float] = (1.0, 1.0)) -> DualSolution:
        return annealing_step(log_q, log_p, 0.0, self.betas[min(index, len(self.betas) - 1)])
