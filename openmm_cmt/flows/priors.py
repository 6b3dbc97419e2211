r"""Latent distributions: independent per dimension, matched to the dimension kinds.

* UNBOUNDED: standard normal, ``log p = -z^2/2 - log(2 pi)/2``.
* CIRCULAR: uniform on the circle ``[-pi, pi)``, ``log p = -log(2 pi)``.
* BOUNDED: on ``[-1, 1]``, either uniform (``log p = -log 2``) or a normal of standard
  deviation ``sigma`` truncated to ``[-1, 1]`` (TA-BG's choice for scaled bonds and
  angles): ``log p = -z^2/(2 sigma^2) - log(sigma sqrt(2 pi)) - log(2 Phi(1/sigma) - 1)``.
  Outside ``[-1, 1]`` the density is 0 (log -inf). Truncated-normal samples come from
  the inverse CDF, ``z = sigma sqrt(2) erfinv(u)``, ``u ~ U(-a, a)``, ``a = erf(1/(sigma sqrt 2))``.

All samples are drawn without gradient (the prior has no parameters); the flow makes
them reparameterised.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from openmm_cmt.flows.coupling import BOUNDED, CIRCULAR, UNBOUNDED, _as_kinds

BOUNDED_PRIORS = ("uniform", "truncated_normal")


class IndependentPrior(nn.Module):
    """Product of one-dimensional priors chosen by kind (see the module docstring).

    Parameters
    ----------
    kinds
        ``[dim]`` of UNBOUNDED / BOUNDED / CIRCULAR.
    bounded
        ``"uniform"`` or ``"truncated_normal"`` for BOUNDED dimensions.
    sigma
        standard deviation of the truncated normal (before truncation).
    """

    def __init__(self, kinds: Sequence[int], bounded: str = "uniform", sigma: float = 0.5):
        super().__init__()
        kinds = _as_kinds(kinds)
        if bounded not in BOUNDED_PRIORS:
            raise ValueError(f"bounded prior must be one of {BOUNDED_PRIORS}, got {bounded!r}")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.dim = len(kinds)
        self.truncated_normal = bounded == "truncated_normal"
        self.sigma = float(sigma)
        self.erf_bound = math.erf(1.0 / (self.sigma * math.sqrt(2.0)))
        bounded_log_norm = (
            math.log(self.sigma * math.sqrt(2.0 * math.pi)) + math.log(self.erf_bound) if self.truncated_normal else math.log(2.0)
        )
        self.register_buffer("kinds", torch.tensor(kinds, dtype=torch.long))
        self.register_buffer("is_circular", self.kinds == CIRCULAR)
        self.register_buffer("is_bounded", self.kinds == BOUNDED)
        self.register_buffer("is_unbounded", self.kinds == UNBOUNDED)
        # The normalising constants sum to one Python float (exact in float64); the
        # empty buffer only carries the module's dtype and device.
        self.log_norm = (
            kinds.count(CIRCULAR) * math.log(2.0 * math.pi)
            + kinds.count(BOUNDED) * bounded_log_norm
            + kinds.count(UNBOUNDED) * 0.5 * math.log(2.0 * math.pi)
        )
        self.register_buffer("anchor", torch.zeros(0))

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``[n, dim]`` latent samples (no gradient), drawn from ``generator`` (a
        ``torch.Generator`` on the prior's device; default: torch's global RNG)."""
        if n < 0:
            raise ValueError(f"number of samples must be non-negative, got {n}")
        ref = self.anchor
        with torch.no_grad():
            u = torch.rand(n, self.dim, dtype=ref.dtype, device=ref.device, generator=generator) * 2.0 - 1.0
            if self.truncated_normal:
                # erfinv(+-1) is infinite: keep u strictly inside (-a, a).
                bounded = self.sigma * math.sqrt(2.0) * torch.erfinv(u * self.erf_bound)
                bounded = torch.clamp(bounded, -1.0, 1.0)
            else:
                bounded = u
            normal = torch.randn(n, self.dim, dtype=ref.dtype, device=ref.device, generator=generator)
            z = torch.where(self.is_bounded, bounded, normal)
            z = torch.where(self.is_circular, u * math.pi, z)
        return z

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``[B]`` log density; ``-inf`` where a BOUNDED coordinate lies outside ``[-1, 1]``
        or a CIRCULAR one outside ``[-pi, pi]``."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"latent must have shape [batch, {self.dim}], got {list(z.shape)}")
        quadratic = torch.zeros_like(z)
        if self.truncated_normal:
            quadratic = torch.where(self.is_bounded, 0.5 * (z / self.sigma) ** 2, quadratic)
        quadratic = torch.where(self.is_unbounded, 0.5 * z * z, quadratic)
        log_p = -quadratic.sum(1) - self.log_norm
        outside = (self.is_bounded & (z.abs() > 1.0)) | (self.is_circular & (z.abs() > math.pi))
        return torch.where(outside.any(1), torch.full_like(log_p, -math.inf), log_p)
