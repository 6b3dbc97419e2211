r"""Pareto tail index :math:`\hat k` of importance weights (PSIS diagnostic).

Pareto smoothed importance sampling (Vehtari, Simpson, Gelman, Yao, Gabry: "Pareto
Smoothed Importance Sampling", JMLR 25, 2024) fits a generalized Pareto distribution
(GPD) to the largest :math:`M = \lceil\min(N/5, 3\sqrt N)\rceil` of N weights, as
exceedances over the next largest weight. Its shape :math:`\hat k` estimates how many
moments the weights have (:math:`E w^{1/k}` is the first infinite one):

- :math:`\hat k < 0.5`: finite variance, the importance-sampling estimates converge at
  the usual :math:`N^{-1/2}` rate (good);
- :math:`0.5 \le \hat k \le 0.7`: infinite variance, yet usable in practice (ok);
- :math:`\hat k > 0.7`: the estimates and the ESS are unreliable at any practical N.

The fit is Zhang & Stephens' (Technometrics 51, 316, 2009) empirical-Bayes estimate
with PSIS's weakly informative prior, which pulls :math:`\hat k` towards 0.5 with the
weight of 10 observations.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

#: Upper bounds of the readings "good" and "ok"; above the second, "unreliable".
K_GOOD, K_OK = 0.5, 0.7

_PRIOR_K_STRENGTH = 10  # observations' worth of the prior towards k = 0.5 (PSIS)
_PRIOR_SCALE = 3  # Zhang & Stephens' prior scale, in units of the first quartile


@dataclasses.dataclass
class ParetoTail:
    """A GPD fit to the largest importance weights.

    Attributes
    ----------
    k : float
        Shape :math:`\\hat k` (``inf`` when the tail spans more than float64's range).
    sigma : float
        Scale, relative to the largest weight.
    tail_length : int
        Number M of weights in the fit.
    n : int
        Number of finite weights.
    """

    k: float
    sigma: float
    tail_length: int
    n: int

    @property
    def reading(self) -> str:
        """``"good"`` (k < 0.5), ``"ok"`` (0.5 to 0.7) or ``"unreliable"`` (k > 0.7)."""
        return pareto_k_reading(self.k)


def pareto_k_reading(k: float) -> str:
    """The usual reading of a Pareto :math:`\\hat k`: good, ok or unreliable."""
    if not k <= K_OK:  # nan and inf read as unreliable
        return "unreliable"
    return "good" if k < K_GOOD else "ok"


def gpd_fit(exceedances) -> tuple[float, float]:
    """Zhang & Stephens' estimate of a GPD's (shape k, scale sigma), with PSIS's prior on k.

    Parameters
    ----------
    exceedances : array_like
        At least 5 non-negative values (weights minus the threshold), not all zero.

    Returns
    -------
    (k, sigma) : tuple of float
        Shape (positive for a heavy tail) and scale.
    """
    x = np.sort(np.asarray(exceedances, dtype=np.float64).reshape(-1))
    n = x.size
    if n < 5 or not np.isfinite(x).all() or x[0] < 0:
        raise ValueError(f"gpd_fit needs at least 5 finite non-negative exceedances, got {n}")
    quartile = x[int(n / 4 + 0.5) - 1]
    if not (x[-1] > 0 and quartile > 0):
        raise ValueError("gpd_fit needs exceedances whose first quartile is positive")
    # Grid of theta = -k / sigma around the profile-likelihood mode (Zhang & Stephens, eq. 9).
    m = 30 + int(math.sqrt(n))
    theta = 1.0 / x[-1] + (1.0 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))) / (_PRIOR_SCALE * quartile)
    k_of_theta = np.log1p(-theta[:, None] * x[None, :]).mean(axis=1)
    profile = n * (np.log(-theta / k_of_theta) - k_of_theta - 1.0)
    # Posterior weights of the grid points (a softmax of the profile log-likelihood).
    weights = np.exp(profile - profile.max())
    weights /= weights.sum()
    keep = weights >= 10 * np.finfo(float).eps
    theta, weights = theta[keep], weights[keep] / weights[keep].sum()
    theta_post = float(np.sum(theta * weights))
    k = float(np.log1p(-theta_post * x).mean())
    sigma = -k / theta_post
    k = (n * k + _PRIOR_K_STRENGTH * 0.5) / (n + _PRIOR_K_STRENGTH)
    return k, float(sigma)


def tail_length(n: int) -> int:
    """PSIS's tail size :math:`\\lceil\\min(n/5, 3\\sqrt n)\\rceil` for n independent draws."""
    return int(math.ceil(min(0.2 * n, 3.0 * math.sqrt(n))))


def pareto_khat(log_w) -> ParetoTail:
    """Pareto :math:`\\hat k` of importance weights given as log-weights (nats).

    Non-finite log-weights (-inf: zero weight) are left out. ValueError with fewer than
    25 finite ones (PSIS needs a tail of at least 5).
    """
    lw = np.asarray(log_w, dtype=np.float64).reshape(-1)
    if np.isnan(lw).any() or (lw == np.inf).any():
        raise ValueError("log-weights must not contain NaN or +inf")
    lw = np.sort(lw[np.isfinite(lw)])
    n = lw.size
    if n < 25:
        raise ValueError(f"the Pareto k diagnostic needs at least 25 finite log-weights, got {n}")
    m = tail_length(n)
    tail, cutoff = lw[-m:], lw[-m - 1]
    # Exceedances w - w_cutoff, scaled by the largest weight (the shape is scale-free).
    exceedances = np.exp(tail - lw[-1]) - np.exp(cutoff - lw[-1])
    if exceedances[-1] <= 0:  # the M + 1 largest weights are equal: a bounded tail
        return ParetoTail(-math.inf, 0.0, m, n)
    if tail[int(m / 4 + 0.5) - 1] - lw[-1] < -700.0:
        # The tail spans more than float64's range (a quarter of it would underflow):
        # no finite moment can be estimated from it.
        return ParetoTail(math.inf, math.nan, m, n)
    try:
        k, sigma = gpd_fit(exceedances)
    except ValueError:  # ties at the threshold fill the first quartile: no fit
        return ParetoTail(math.nan, math.nan, m, n)
    return ParetoTail(k, sigma, m, n)
