r"""Importance-sampling diagnostics of a generator q against a target p~ (all in nats).

With :math:`w = \tilde p/q`:

- reverse ESS (Kish) over samples of q: :math:`(\sum w)^2 / (N\sum w^2)`;
- forward ESS over samples of p (FAB): :math:`1/(\overline{w}\;\overline{w^{-1}})`, which
  estimates the same quantity since :math:`E_q w^2 / (E_q w)^2 = E_p w\,E_p w^{-1}`;
- EUBO over samples of p: :math:`E_p[\log\tilde p - \log q] \ge \log Z` (lower is better);
- NLL of samples of p: :math:`-E_p \log q`.
"""

from __future__ import annotations

import math

import torch


def _log_weights(log_w) -> torch.Tensor:
    log_w = torch.as_tensor(log_w, dtype=torch.float64).reshape(-1)
    if log_w.numel() == 0:
        raise ValueError("log-weights must not be empty")
    if torch.isnan(log_w).any() or (log_w == float("inf")).any():
        raise ValueError("log-weights must not contain NaN or +inf")
    if not torch.isfinite(log_w).any():
        raise ValueError("every log-weight is -inf: no sample has positive weight")
    return log_w


def clip_log_weights(log_w, clip_fraction: float) -> torch.Tensor:
    """Clamp the largest ``floor(clip_fraction * N)`` log-weights to the next largest
    one (TA-BG clips the top 1e-4 fraction before computing the ESS)."""
    log_w = _log_weights(log_w)
    if not 0.0 <= clip_fraction < 1.0:
        raise ValueError(f"clip_fraction must be in [0, 1), got {clip_fraction}")
    k = int(math.floor(clip_fraction * log_w.numel()))
    if k == 0:
        return log_w
    threshold = torch.topk(log_w, k + 1).values[-1]
    return torch.clamp(log_w, max=threshold)


def reverse_ess(log_w, clip_fraction: float | None = None) -> float:
    """Kish ESS fraction of log-weights log p~(x) - log q(x), x ~ q; with
    ``clip_fraction`` (e.g. 1e-4) the largest log-weights are clamped first."""
    log_w = _log_weights(log_w) if clip_fraction is None else clip_log_weights(log_w, clip_fraction)
    return float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)) / log_w.numel())


def forward_ess(log_w_on_reference_samples) -> float:
    """ESS fraction estimated from log-weights log p~(x) - log q(x) at x ~ p."""
    log_w = torch.as_tensor(log_w_on_reference_samples, dtype=torch.float64).reshape(-1)
    if log_w.numel() == 0 or not torch.isfinite(log_w).all():
        raise ValueError("forward_ess needs finite log-weights on reference samples (q > 0 on every one)")
    log_n = math.log(log_w.numel())
    return float(torch.exp(-(torch.logsumexp(log_w, 0) - log_n) - (torch.logsumexp(-log_w, 0) - log_n)))


def eubo(log_p_ref, log_q_ref) -> float:
    """mean over reference samples x ~ p of log p~(x) - log q(x)."""
    log_p = torch.as_tensor(log_p_ref, dtype=torch.float64).reshape(-1)
    log_q = torch.as_tensor(log_q_ref, dtype=torch.float64).reshape(-1)
    if log_p.shape != log_q.shape or log_p.numel() == 0:
        raise ValueError(f"log_p_ref and log_q_ref must have the same non-zero length, got {log_p.numel()}, {log_q.numel()}")
    return float((log_p - log_q).mean())


def nll(log_q_ref) -> float:
    """Negative mean log-likelihood of reference samples under q."""
    log_q = torch.as_tensor(log_q_ref, dtype=torch.float64).reshape(-1)
    if log_q.numel() == 0:
        raise ValueError("nll needs at least one reference sample")
    return float(-log_q.mean())


def log_z_estimate(log_w) -> float:
    """Importance-sampling estimate log mean exp(log w) of log Z from x ~ q."""
    log_w = _log_weights(log_w)
    return float(torch.logsumexp(log_w, 0) - math.log(log_w.numel()))
