r"""Toy targets with exact samples and normalising constants (torch, float64).

Each exposes an *unnormalised* ``unnormalized_log_prob`` (what training sees, through
``target()``), its exact ``log_z``, the normalised ``log_prob`` and exact ``sample``.

- :func:`gmm40`: FAB's 2-D mixture of 40 equally weighted isotropic Gaussians (Midgley et
  al. 2023): means uniform in [-40, 40]^2 drawn from a fixed seed, standard deviation
  softplus(1) ~ 1.313 in each dimension (FAB's ``log_var_scaling = 1`` through a
  softplus). :math:`\log\tilde p(x) = \mathrm{logsumexp}_k(-|x-\mu_k|^2/2\sigma^2)`, so
  :math:`Z = K (2\pi\sigma^2)^{d/2}`.
- :class:`ManyWell`: FAB's many-well, a product of d/2 independent pairs with
  :math:`\log\tilde p(x_1, x_2) = -x_1^4 + 6x_1^2 + x_1/2 - x_2^2/2`; 2^{d/2} modes (the
  sign of each x_1). Z is a product of 1-D integrals (quadrature to double precision);
  x_1 is sampled exactly by rejection from a Gaussian with an exact envelope constant.

They test the trainer where the answer is known; none is a molecular system.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from openmm_cmt.cmt.target import FunctionTarget


def _as_batch(x, dim: int) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"x must have shape [batch, {dim}], got {tuple(x.shape)}")
    return x


def modes_covered(samples, means, std: float, weights=None, radius: float = 3.0, min_fraction: float | None = None) -> int:
    """Number of modes holding at least ``min_fraction`` of the (weighted) samples within
    ``radius * std`` (Euclidean) of their mean.

    The default threshold is a quarter of a mode's share under equal weights,
    ``0.25 / n_modes``: a 2-D Gaussian holds 98.9 % of its mass within 3 sigma, so a
    correctly weighted mode sits near ``1 / n_modes``, and a quarter of that separates a
    mode that is present from one the sampler has lost (at 10k samples and 40 modes,
    250 expected versus a threshold of 62).
    """
    x = torch.as_tensor(samples, dtype=torch.float64)
    means = torch.as_tensor(means, dtype=torch.float64)
    if x.ndim != 2 or means.ndim != 2 or x.shape[1] != means.shape[1] or x.shape[0] == 0:
        raise ValueError(f"samples [B, d] and means [K, d] must agree in d, got {tuple(x.shape)} and {tuple(means.shape)}")
    n_modes = means.shape[0]
    if weights is None:
        w = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64)
    else:
        w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if w.shape[0] != x.shape[0] or (w < 0).any() or not w.sum() > 0:
            raise ValueError("weights must be non-negative, one per sample, not all zero")
        w = w / w.sum()
    threshold = 0.25 / n_modes if min_fraction is None else float(min_fraction)
    near = torch.cdist(x, means) <= radius * std  # [B, K]
    mass = (w[:, None] * near).sum(0)
    return int((mass >= threshold).sum())


class GaussianMixture:
    """Equally weighted isotropic Gaussians with means [K, d] and one standard deviation."""

    def __init__(self, means, std: float):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2 or self.means.shape[0] < 1:
            raise ValueError(f"means must have shape [n_modes, dim], got {tuple(self.means.shape)}")
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        self.std = float(std)
        self.n_modes, self.dim = self.means.shape

    @property
    def log_z(self) -> float:
        return math.log(self.n_modes) + 0.5 * self.dim * math.log(2 * math.pi * self.std**2)

    def unnormalized_log_prob(self, x) -> torch.Tensor:
        x = _as_batch(x, self.dim)
        sq = torch.cdist(x, self.means) ** 2
        return torch.logsumexp(-0.5 * sq / self.std**2, dim=1)

    def log_prob(self, x) -> torch.Tensor:
        return self.unnormalized_log_prob(x) - self.log_z

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.randint(self.n_modes, (n,), generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.std * eps

    def target(self) -> FunctionTarget:
        """The unnormalised density as a counting training target."""
        return FunctionTarget(self.unnormalized_log_prob)

    def modes_covered(self, samples, weights=None, radius: float = 3.0, min_fraction: float | None = None) -> int:
        return modes_covered(samples, self.means, self.std, weights, radius, min_fraction)


def gmm40(seed: int = 0, n_modes: int = 40, loc_scaling: float = 40.0) -> GaussianMixture:
    """FAB's 2-D, 40-mode mixture (means from ``seed``; see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n_modes, 2, generator=g, dtype=torch.float64) * 2 - 1) * loc_scaling
    return GaussianMixture(means, std=math.log1p(math.e))  # softplus(1)


class ManyWell:
    """Product of ``dim // 2`` double wells (see the module docstring); ``dim`` even."""

    #: Gaussian proposal scale for rejection sampling of x_1.
    PROPOSAL_STD = 1.5

    def __init__(self, dim: int = 32):
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even number >= 2, got {dim}")
        self.dim, self.n_pairs = dim, dim // 2
        from scipy import integrate

        value, _ = integrate.quad(lambda t: math.exp(self._log_well(t)), -8.0, 8.0, points=[-1.7, 1.7], epsabs=0, epsrel=1e-13, limit=500)
        self.log_z_well = math.log(value)
        # Exact envelope: max_t log p~(t) - log N(t; 0, s^2) (without N's constant) is at a
        # root of -4 t^3 + (12 + 1/s^2) t + 1/2.
        s = self.PROPOSAL_STD
        roots = np.roots([-4.0, 0.0, 12.0 + 1.0 / s**2, 0.5])
        real = roots[np.abs(roots.imag) < 1e-9].real
        self._log_envelope = max(self._log_well(t) + t * t / (2 * s * s) for t in real)

    @staticmethod
    def _log_well(t):
        return -(t**4) + 6.0 * t**2 + 0.5 * t

    @property
    def log_z(self) -> float:
        return self.n_pairs * (self.log_z_well + 0.5 * math.log(2 * math.pi))

    def unnormalized_log_prob(self, x) -> torch.Tensor:
        x = _as_batch(x, self.dim)
        x1, x2 = x[:, 0::2], x[:, 1::2]
        return (self._log_well(x1) - 0.5 * x2**2).sum(1)

    def log_prob(self, x) -> torch.Tensor:
        return self.unnormalized_log_prob(x) - self.log_z

    def _sample_wells(self, n: int, generator) -> torch.Tensor:
        s, out, have = self.PROPOSAL_STD, [], 0
        while have < n:
            t = s * torch.randn(2 * (n - have) + 64, generator=generator, dtype=torch.float64)
            log_u = torch.log(torch.rand(t.shape[0], generator=generator, dtype=torch.float64))
            keep = t[log_u < self._log_well(t) + t * t / (2 * s * s) - self._log_envelope]
            out.append(keep)
            have += keep.numel()
        return torch.cat(out)[:n]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        x = torch.empty(n, self.dim, dtype=torch.float64)
        x[:, 0::2] = self._sample_wells(n * self.n_pairs, generator).reshape(n, self.n_pairs)
        x[:, 1::2] = torch.randn(n, self.n_pairs, generator=generator, dtype=torch.float64)
        return x

    def mode_index(self, x) -> torch.Tensor:
        """Integer id of each sample's mode: bit j set when x_1 of pair j is positive."""
        x = _as_batch(x, self.dim)
        bits = (x[:, 0::2] > 0).to(torch.int64)
        return (bits << torch.arange(self.n_pairs)).sum(1)

    def target(self) -> FunctionTarget:
        return FunctionTarget(self.unnormalized_log_prob)
