r"""A spline coupling flow on R^dim with a Gaussian prior, for toy targets.

Model: ``x = s f(z)``, ``z ~ N(0, I)``, where ``s = prior_scale`` and ``f`` is a stack of
coupling layers with unbounded rational-quadratic splines (identity tails, Durkan et al.
2019). The flow works on standardised coordinates ``v = x / s``, so that conditioners
see inputs of order one whatever the target's scale; the spline interval is
``[-tail_bound, tail_bound]`` in x units. Density:

    log q(x) = log N(f^{-1}(x / s); 0, I) + log|det d f^{-1}/dv| - dim log s.

A freshly built flow is the identity, so ``q`` starts as ``N(0, s^2 I)``.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import nn

from openmm_cmt.flows.coupling import UNBOUNDED, SplineFlow
from openmm_cmt.flows.priors import IndependentPrior


class EuclideanFlow(nn.Module):
    """Normalizing flow on R^dim (see the module docstring).

    Parameters
    ----------
    dim
        dimension, at least 2.
    n_layers
        coupling layers.
    hidden
        conditioner MLP width.
    n_blocks
        conditioner MLP hidden layers.
    n_bins
        spline bins.
    tail_bound
        half-width of the spline interval in x units (identity outside);
        default ``5 * prior_scale``.
    prior_scale
        standard deviation of the Gaussian prior in every dimension.
    masking
        ``"alternating"`` (default; with dim 2, one coordinate at a time),
        ``"random"`` or ``"all2all"``.
    seed
        seeds masks and initial weights.
    """

    def __init__(
        self,
        dim: int,
        n_layers: int = 8,
        hidden: int = 128,
        n_blocks: int = 2,
        n_bins: int = 8,
        tail_bound: Optional[float] = None,
        prior_scale: float = 1.0,
        masking: str = "alternating",
        seed: int = 0,
    ):
        super().__init__()
        if not prior_scale > 0:
            raise ValueError(f"prior_scale must be positive, got {prior_scale}")
        if tail_bound is None:
            tail_bound = 5.0 * prior_scale
        if not tail_bound > 0:
            raise ValueError(f"tail_bound must be positive, got {tail_bound}")
        self.dim = int(dim)
        self.prior_scale = float(prior_scale)
        self.log_scale = self.dim * math.log(self.prior_scale)
        kinds = [UNBOUNDED] * self.dim
        self.flow = SplineFlow(kinds, n_layers, hidden, n_blocks, n_bins, masking, False, tail_bound / prior_scale, seed)
        self.prior = IndependentPrior(kinds)

    def forward(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Latent ``z [B, dim]`` to ``(x, log|det dx/dz|)``."""
        v, logdet = self.flow(z)
        return v * self.prior_scale, logdet + self.log_scale

    @torch.jit.unused
    def compile_regions(self) -> List[Tuple[nn.Module, str]]:
        """The coupling layers of the spline flow (``SplineFlow.compile_regions``)."""
        return self.flow.compile_regions()

    @torch.jit.export
    def inverse(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x [B, dim]`` to ``(z, log|det dz/dx|)``."""
        z, logdet = self.flow.inverse(x / self.prior_scale)
        return z, logdet - self.log_scale

    @torch.jit.export
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(x [n, dim], log q(x) [n])``, reparameterised: differentiable w.r.t. the
        flow parameters (for reverse KL). Draws from ``generator`` (default: torch's
        global RNG)."""
        z = self.prior.sample(n, generator)
        x, logdet = self.forward(z)
        return x, self.prior.log_prob(z) - logdet

    @torch.jit.export
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log q(x)``, ``[B]`` for ``x [B, dim]``."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [batch, {self.dim}], got {list(x.shape)}")
        z, logdet = self.inverse(x)
        return self.prior.log_prob(z) + logdet
