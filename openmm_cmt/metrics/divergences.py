r"""Distances between two (weighted) sample sets: histograms on a shared grid, and the
exact 1-Wasserstein distance of 1-D samples (energies)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class SampleDistance:
    """A distance together with what it was measured on.

    Attributes
    ----------
    value
        the distance.
    n_a, n_b
        numbers of samples.
    ess_a, ess_b
        their Kish effective sizes (equal to n when unweighted). A histogram distance
        has a noise floor that grows with bins / ess, so report these next to it.
    bins
        histogram bins per axis (None where no histogram is involved).
    """

    value: float
    n_a: int
    n_b: int
    ess_a: float
    ess_b: float
    bins: int | None = None

    def __float__(self) -> float:
        return self.value


def normalized_weights(weights, n: int) -> np.ndarray:
    """Weights summing to one (uniform when None); ValueError for negative or empty."""
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (n,):
        raise ValueError(f"weights must have one entry per sample ({n}), got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    return w / w.sum()


def kish_ess(w: np.ndarray) -> float:
    return float(w.sum() ** 2 / (w**2).sum())


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """``0.5 * sum |p - q|`` of two normalised histograms."""
    return 0.5 * float(np.abs(p - q).sum())


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-10) -> float:
    """sum p log(p/q) of two normalised histograms; ``eps`` is added to every bin of both
    (then renormalised) so that empty bins of q give a large finite value."""
    p = (p + eps) / (p + eps).sum()
    q = (q + eps) / (q + eps).sum()
    return float((p * np.log(p / q)).sum())


def wasserstein_1d(a, b, weights_a=None, weights_b=None) -> float:
    r"""Exact :math:`W_1 = \int |F_a(t) - F_b(t)|\,dt` of two weighted 1-D samples."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.size == 0 or b.size == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("both samples must be non-empty and finite")
    wa, wb = normalized_weights(weights_a, a.size), normalized_weights(weights_b, b.size)
    t = np.concatenate([a, b])
    order = np.argsort(t, kind="stable")
    t = t[order]
    mass = np.concatenate([wa, -wb])[order]
    cdf_diff = np.cumsum(mass)[:-1]
    return float(np.sum(np.abs(cdf_diff) * np.diff(t)))


def energy_histogram_distance(u_a, u_b, weights_a=None, weights_b=None, bins: int = 100, range=None) -> dict:
    """Distances between two (weighted) energy distributions, e.g. reweighted generator
    samples against reference MD energies (reduced units in, same units out).

    Returns ``{"tv": SampleDistance, "w1": SampleDistance}``: the total variation of
    histograms on ``bins`` shared bins over ``range`` (default: the 0.1 % to 99.9 %
    quantiles of the pooled samples; mass outside is counted in the edge bins), and the
    exact 1-Wasserstein distance of the samples themselves (no binning).
    """
    a = np.asarray(u_a, dtype=np.float64).reshape(-1)
    b = np.asarray(u_b, dtype=np.float64).reshape(-1)
    if a.size == 0 or b.size == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("energies must be non-empty and finite (drop or cut clashes first)")
    wa, wb = normalized_weights(weights_a, a.size), normalized_weights(weights_b, b.size)
    if range is None:
        pooled = np.concatenate([a, b])
        range = (np.quantile(pooled, 0.001), np.quantile(pooled, 0.999))
    lo, hi = float(range[0]), float(range[1])
    if not hi > lo:
        raise ValueError(f"range must have high > low, got {range}")
    edges = np.linspace(lo, hi, bins + 1)
    ha = np.histogram(np.clip(a, lo, hi), edges, weights=wa)[0]
    hb = np.histogram(np.clip(b, lo, hi), edges, weights=wb)[0]
    sizes = dict(n_a=a.size, n_b=b.size, ess_a=kish_ess(wa), ess_b=kish_ess(wb))
    return {
        "tv": SampleDistance(total_variation(ha, hb), bins=bins, **sizes),
        "w1": SampleDistance(wasserstein_1d(a, b, wa, wb), **sizes),
    }
