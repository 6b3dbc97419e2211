"""Pareto k, reverse ESS and basin populations against closed forms.

Tolerances are multiples of the estimators' standard errors (asymptotic, from closed-form
moments), so every check fails when the estimate is off by a few standard errors.
"""

import math

import numpy as np
import pytest
from scipy import stats

from openmm_cmt.metrics import (
    BASINS,
    basin_index,
    basin_populations,
    gpd_fit,
    mode_collapse,
    pareto_k_reading,
    pareto_khat,
    population_bounds,
    reverse_ess,
    weighted_mean,
)
from openmm_cmt.metrics.pareto import tail_length


def pareto_log_weights(rng, k, n):
    """Proposal U(0, 1), target p(x) = (1 - k)(1 - x)^-k on (0, 1): the weights
    w = p / q have an exact Pareto tail, P(w > t) = ((1 - k) / t)^(1/k)."""
    u = rng.random(n)  # 1 - x, also uniform
    return math.log(1 - k) - k * np.log(u)


def gaussian_log_weights(rng, s2, n, d=1):
    """Proposal N(0, 1), target N(0, s2) in d dimensions: log p(x) - log q(x)."""
    x = rng.standard_normal((n, d))
    return (0.5 * (1 - 1 / s2) * x**2 - 0.5 * math.log(s2)).sum(axis=1)


@pytest.mark.parametrize("k", [0.3, 0.8])
def test_pareto_k_of_an_exact_pareto_tail(k):
    rng = np.random.default_rng(1)
    n, reps = 20_000, 20
    m = tail_length(n)
    estimates = [pareto_khat(pareto_log_weights(rng, k, n)).k for _ in range(reps)]
    # The tail exceedances are exactly GPD(k); the fit's sd is (1 + k) / sqrt(M)
    # (maximum likelihood), and PSIS's prior moves the mean to (M k + 5) / (M + 10).
    expected = (m * k + 5) / (m + 10)
    se_mean = (1 + k) / math.sqrt(m * reps)
    assert abs(np.mean(estimates) - expected) < 4 * se_mean
    assert np.std(estimates, ddof=1) < 1.5 * (1 + k) / math.sqrt(m)
    assert pareto_khat(pareto_log_weights(rng, k, n)).tail_length == m == math.ceil(3 * math.sqrt(n))


@pytest.mark.parametrize("s2", [1.5, 4.0])
def test_pareto_k_of_gaussians_with_different_widths(s2):
    # w = p / q grows like exp(c x^2 / 2), c = 1 - 1/s2: a Pareto tail of index k = c, with
    # a slowly varying factor. At the threshold |x| = u of the fitted tail the local index
    # is c u Phi(-u) / phi(u) < c (Mills ratio); the fit averages the local index above
    # the threshold, so its mean lies between the two.
    rng = np.random.default_rng(2)
    n, reps = 100_000, 10
    c = 1 - 1 / s2
    m = tail_length(n)
    u = stats.norm.isf(m / (2 * n))
    local = c * u * stats.norm.sf(u) / stats.norm.pdf(u)
    estimates = [pareto_khat(gaussian_log_weights(rng, s2, n)).k for _ in range(reps)]
    se_mean = (1 + c) / math.sqrt(m * reps)
    assert local - 4 * se_mean < np.mean(estimates) < c + 4 * se_mean
    assert (c - local) < 0.15  # the bracket itself is narrow enough to mean something


def test_reverse_ess_of_gaussians_matches_the_closed_form():
    # E_q w^m = prod over dims of s^-m / sqrt(m / s2 - m + 1); ESS = (E w)^2 / E w^2
    # = (s sqrt(2 - s2))^d. With s2 = 1.2 the fourth moment is finite, so the Kish
    # estimator is asymptotically normal with the delta-method variance below.
    s2, d, n = 1.2, 5, 200_000
    s = math.sqrt(s2)

    def mu(m):
        return (s**-m / math.sqrt(m / s2 - m + 1)) ** d

    exact = (s * math.sqrt(2 - s2)) ** d
    assert exact == pytest.approx(mu(1) ** 2 / mu(2))
    grad = np.array([2 * mu(1) / mu(2), -mu(1) ** 2 / mu(2) ** 2])
    cov = np.array([[mu(2) - mu(1) ** 2, mu(3) - mu(1) * mu(2)], [mu(3) - mu(1) * mu(2), mu(4) - mu(2) ** 2]])
    se = math.sqrt(grad @ cov @ grad / n)
    log_w = gaussian_log_weights(np.random.default_rng(3), s2, n, d)
    assert abs(reverse_ess(log_w) - exact) < 4 * se
    assert se < 0.01  # the test resolves the ESS to better than 1 %
    k = pareto_khat(log_w)
    assert k.reading == "good" and k.k < 0.5


def test_pareto_k_readings_edge_cases_and_errors():
    assert [pareto_k_reading(k) for k in (0.2, 0.5, 0.7, 0.71, math.inf, math.nan)] == [
        "good", "ok", "ok", "unreliable", "unreliable", "unreliable"]
    # equal weights: a bounded tail
    tail = pareto_khat(np.zeros(100))
    assert tail.k == -math.inf and tail.reading == "good"
    # -inf log-weights (zero weight) are left out; too few finite ones are refused
    lw = np.concatenate([pareto_log_weights(np.random.default_rng(4), 0.3, 1000), np.full(10, -np.inf)])
    assert pareto_khat(lw).n == 1000
    with pytest.raises(ValueError, match="at least 25"):
        pareto_khat(np.zeros(24))
    with pytest.raises(ValueError, match="NaN"):
        pareto_khat(np.array([0.0] * 30 + [np.nan]))
    # a tail wider than float64's range reads as unreliable, not as an error or a NaN
    wild = pareto_khat(np.concatenate([np.zeros(900), np.linspace(0, 5000, 100)]))
    assert wild.k == math.inf and wild.reading == "unreliable"
    with pytest.raises(ValueError):
        gpd_fit([1.0, 2.0, 3.0])


def test_gpd_fit_recovers_shape_and_scale():
    rng = np.random.default_rng(5)
    k, sigma, n = 0.4, 2.0, 20_000
    x = stats.genpareto.rvs(k, scale=sigma, size=n, random_state=rng)
    k_hat, sigma_hat = gpd_fit(x)
    assert abs(k_hat - k) < 4 * (1 + k) / math.sqrt(n)
    # asymptotic sd of log sigma: sqrt(2 (1 + k) / n)
    assert abs(math.log(sigma_hat / sigma)) < 4 * math.sqrt(2 * (1 + k) / n)


def test_basin_definitions():
    deg = np.deg2rad
    phi = deg(np.array([-63, -75, -80, -150, 60, 75, -60, -60, 0.0, 1e-3]))
    psi = deg(np.array([-43, 145, -170, 160, 40, -60, 50, 50.01, -40, -40]))
    names = [BASINS[i] for i in basin_index(phi, psi)]
    assert names == ["alpha_R", "beta/PPII", "beta/PPII", "beta/PPII", "alpha_L/C7ax", "alpha_L/C7ax",
                     "alpha_R", "beta/PPII", "alpha_R", "alpha_L/C7ax"]


def test_basin_populations_and_bounds_of_an_empty_basin():
    deg = np.deg2rad
    n = 1000
    phi = deg(np.r_[np.full(700, -63.0), np.full(300, -75.0)])
    psi = deg(np.r_[np.full(700, -43.0), np.full(300, 145.0)])
    pops = basin_populations(phi, psi)
    assert pops["alpha_R"].population == pytest.approx(0.7)
    assert pops["alpha_R"].stderr == pytest.approx(math.sqrt(0.7 * 0.3 / n))  # delta method, equal weights
    empty = pops["alpha_L/C7ax"]
    assert empty.population == 0 and empty.stderr == 0 and empty.n_samples == 0
    # the bound does not vanish: the rule of three, 1 - 0.05^(1/ESS) ~ 3 / ESS
    assert empty.upper95 == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-9)
    assert 2.9 / n < empty.upper95 < 3.1 / n
    # half the samples with zero weight: ESS halves, the bound doubles
    log_w = np.where(np.arange(n) % 2 == 0, 0.0, -np.inf)
    assert basin_populations(phi, psi, log_w)["alpha_L/C7ax"].upper95 == pytest.approx(1 - 0.05 ** (2 / n), rel=1e-9)


def test_population_bounds_cover_at_the_stated_level():
    # One-sided 95 % bounds of a binomial proportion: Clopper-Pearson covers at least 95 %.
    rng = np.random.default_rng(6)
    p, n, reps = 0.01, 500, 2000
    counts = rng.binomial(n, p, reps)
    bounds = np.array([population_bounds(c / n, n) for c in counts])
    floor = 0.95 - 3 * math.sqrt(0.95 * 0.05 / reps)
    assert np.mean(bounds[:, 1] >= p) >= floor and np.mean(bounds[:, 0] <= p) >= floor
    # and they are not trivially wide: the upper bound is below 3x the truth on average
    assert np.mean(bounds[:, 1]) < 3 * p
    with pytest.raises(ValueError):
        population_bounds(0.5, 0.0)


def test_weighted_mean_by_hand():
    values = np.array([1.0, 2.0, 4.0, np.inf])
    log_w = np.array([0.0, 0.0, math.log(2.0), -np.inf])  # the inf value has zero weight
    mean, se = weighted_mean(values, log_w)
    w = np.array([0.25, 0.25, 0.5])
    assert mean == pytest.approx(2.75)
    assert se == pytest.approx(math.sqrt(np.sum(w**2 * (values[:3] - 2.75) ** 2)))


def _torus_mixture(rng, n, centres, masses, width):
    """(phi, psi) from a mixture of wrapped Gaussians, and its log density (unnormalised
    mixture over the plane, accurate when the widths are small)."""
    comp = rng.choice(len(masses), n, p=masses)
    x = np.asarray(centres)[comp] + width * rng.standard_normal((n, 2))
    x = (x + np.pi) % (2 * np.pi) - np.pi
    return x


def _mixture_log_density(x, centres, masses, width):
    d = x[:, None, :] - np.asarray(centres)[None]
    d = (d + np.pi) % (2 * np.pi) - np.pi
    log_comp = -0.5 * (d**2).sum(-1) / width**2 - np.log(2 * np.pi * width**2)
    with np.errstate(divide="ignore"):
        return np.logaddexp.reduce(log_comp + np.log(np.asarray(masses))[None], axis=1)


def test_mode_collapse_flags_a_collapsed_generator_and_not_a_good_one():
    rng = np.random.default_rng(7)
    centres = np.deg2rad([[-65.0, -40.0], [-80.0, 150.0], [60.0, 40.0]])  # alpha_R, beta, alpha_L
    masses = [0.6, 0.37, 0.03]
    ref = _torus_mixture(rng, 20_000, centres, masses, 0.25)
    ref_pops = {"ALA2": dict(zip(BASINS, np.bincount(basin_index(ref[:, 0], ref[:, 1]), minlength=3) / len(ref)))}

    def reweighted(q_masses, q_width, n=20_000):
        x = _torus_mixture(rng, n, centres, q_masses, q_width)
        log_w = _mixture_log_density(x, centres, masses, 0.25) - _mixture_log_density(x, centres, q_masses, q_width)
        return {"ALA2": basin_populations(x[:, 0], x[:, 1], log_w)}

    good = reweighted([0.5, 0.4, 0.1], 0.3)  # broader, other masses: reweighting repairs it
    assert mode_collapse(ref_pops, good) == []
    assert good["ALA2"]["alpha_L/C7ax"].population == pytest.approx(0.03, abs=0.01)
    missing = reweighted([0.6, 0.4, 0.0], 0.3)  # never visits alpha_L: no sample there
    flagged = mode_collapse(ref_pops, missing)
    assert [(c["residue"], c["basin"], c["n_samples"]) for c in flagged] == [("ALA2", "alpha_L/C7ax", 0)]
    assert missing["ALA2"]["alpha_L/C7ax"].upper95 > 0  # the bound says how little was seen
    # a basin the generator visits but (wrongly weighted) gives under a third of its mass
    biased = {"ALA2": dict(good["ALA2"])}
    biased["ALA2"]["alpha_L/C7ax"] = type(good["ALA2"]["alpha_L/C7ax"])(0.005, 0.001, 0.003, 0.008, 50)
    assert [c["basin"] for c in mode_collapse(ref_pops, biased)] == ["alpha_L/C7ax"]
    # a reference basin under 0.5 % of the mass is not required
    small = {"ALA2": dict(ref_pops["ALA2"], **{"alpha_L/C7ax": 0.004})}
    assert mode_collapse(small, missing) == []
