"""Clash regularisation of reduced energies.

Random conformations early in training can overlap atoms and reach energies of 1e30
kT, which would dominate any gradient. FAB and TA-BG (bgflow's ``LinLogCutEnergy``)
continue the energy linearly up to a threshold and logarithmically above it. The raw
energies stay available from the engines; this is applied only where training asks.
"""

from __future__ import annotations

import torch


def linlog_cut(u: torch.Tensor, high: float = 1e8, maximum: float = 1e20) -> torch.Tensor:
    r"""Linear-log cut of reduced energies.

    .. math::
        \mathrm{cut}(u) = \begin{cases} u & u \le h \\ h + \log(1 + u - h) & u > h \end{cases}

    then clamped at ``maximum``; NaN and +inf map to ``maximum``. Monotonic, continuous
    and with derivative 1 at ``high``, so the order of samples is unchanged.
    """
    u = torch.nan_to_num(u, nan=maximum, posinf=maximum)
    above = u > high
    cut = torch.where(above, high + torch.log1p(torch.clamp(u - high, min=0.0)), u)
    return torch.clamp(cut, max=maximum)
