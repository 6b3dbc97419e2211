"""The CMT dual against closed forms (Gaussians), brute force and autograd."""

import math
import types

import numpy as np
import pytest
import torch
from scipy import optimize
from scipy.special import logsumexp

from openmm_cmt.cmt.dual import _Dual, annealing_step, solve_dual
from openmm_cmt.cmt.paths import PATHS, geometric_exponents, ladder_betas, make_path

# q_i = N(0, V0); p~(x) = exp(-(x - M)^2 / (2 V)) (unnormalised), in 1-D.
V0, M, V = 25.0, 3.0, 0.25


def quadrature():
    """Points and base log-weights that integrate smooth functions against q_i to ~1e-12."""
    x = torch.linspace(-60.0, 60.0, 24001, dtype=torch.float64)
    log_q = -0.5 * x**2 / V0 - 0.5 * math.log(2 * math.pi * V0)
    log_p = -0.5 * (x - M) ** 2 / V
    return log_q, log_p


def closed_form(lam, eta):
    """Z, KL(q_{i+1} || q_i) and H(q_i) - H(q_{i+1}) for Gaussians, by hand."""
    s = 1 + lam + eta
    alpha, beta = lam / s, 1 / s
    prec = alpha / V0 + beta / V
    mean = beta * M / V / prec
    var = 1 / prec
    # Z = int q_i^alpha p~^beta = (2 pi V0)^(-alpha/2) int exp(-prec x^2/2 + J x - C/2)
    j, c = beta * M / V, beta * M**2 / V
    log_z = -0.5 * alpha * math.log(2 * math.pi * V0) + 0.5 * math.log(2 * math.pi / prec) + j * j / (2 * prec) - c / 2
    kl = 0.5 * (var / V0 + mean**2 / V0 - 1 - math.log(var / V0))
    drop = 0.5 * math.log(V0 / var)
    return log_z, kl, drop


def kkt_solution(eps_tr, eps_ent):
    """Optimal (lam, eta) from the closed forms: the constraint(s) that bind hold with
    equality; found by root finding, independent of the solver."""
    _, kl0, drop0 = closed_form(0.0, 0.0)
    if kl0 <= eps_tr and drop0 <= eps_ent:
        return 0.0, 0.0
    # entropy alone
    eta = optimize.brentq(lambda e: closed_form(0.0, e)[2] - eps_ent, 0.0, 1e6) if drop0 > eps_ent else 0.0
    if closed_form(0.0, eta)[1] <= eps_tr:
        return 0.0, eta
    lam = optimize.brentq(lambda l: closed_form(l, 0.0)[1] - eps_tr, 0.0, 1e6)
    if closed_form(lam, 0.0)[2] <= eps_ent:
        return lam, 0.0
    sol = optimize.fsolve(
        lambda v: [closed_form(math.exp(v[0]), math.exp(v[1]))[1] - eps_tr, closed_form(math.exp(v[0]), math.exp(v[1]))[2] - eps_ent],
        [0.0, 0.0], xtol=1e-13,
    )
    return math.exp(sol[0]), math.exp(sol[1])


@pytest.mark.parametrize(
    "eps_tr, eps_ent, active",
    [(0.2, 0.3, "both"), (0.5, 5.0, "trust-region"), (5.0, 0.3, "entropy"), (50.0, 50.0, "final")],
)
def test_gaussian_closed_form(eps_tr, eps_ent, active):
    log_q, log_p = quadrature()
    sol = solve_dual(log_q, log_p, eps_tr, eps_ent, log_weights=log_q)
    lam, eta = kkt_solution(eps_tr, eps_ent)
    assert sol.converged
    assert {"both": lam > 0 and eta > 0, "trust-region": lam > 0 and eta == 0,
            "entropy": lam == 0 and eta > 0, "final": lam == eta == 0}[active]
    assert sol.lam == pytest.approx(lam, rel=1e-6, abs=1e-9)
    assert sol.eta == pytest.approx(eta, rel=1e-6, abs=1e-9)
    assert sol.is_final == (active == "final")
    log_z, kl, drop = closed_form(lam, eta)
    assert sol.log_z == pytest.approx(log_z, abs=1e-8)
    assert sol.kl == pytest.approx(kl, abs=1e-8)
    assert sol.entropy_drop == pytest.approx(drop, abs=1e-8)
    assert sol.entropy == pytest.approx(0.5 * math.log(2 * math.pi * math.e * V0), abs=1e-10)
    assert sol.alpha == pytest.approx(lam / (1 + lam + eta)) and sol.beta == pytest.approx(1 / (1 + lam + eta))
    assert float(torch.logsumexp(sol.log_weights, 0)) == pytest.approx(0.0, abs=1e-12)


def test_gaussian_monte_carlo():
    """Plain samples of q_i (the trainer's use) agree with the closed form within noise."""
    g = torch.Generator().manual_seed(0)
    x = math.sqrt(V0) * torch.randn(200_000, generator=g, dtype=torch.float64)
    log_q = -0.5 * x**2 / V0 - 0.5 * math.log(2 * math.pi * V0)
    sol = solve_dual(log_q, -0.5 * (x - M) ** 2 / V, 0.2, 0.3)
    lam, eta = kkt_solution(0.2, 0.3)
    assert sol.lam == pytest.approx(lam, rel=0.05) and sol.eta == pytest.approx(eta, rel=0.05)
    assert sol.kl == pytest.approx(0.2, abs=1e-8) and sol.entropy_drop == pytest.approx(0.3, abs=1e-8)
    # ESS of the weights: 1 / E_{q_i}[(q_{i+1}/q_i)^2] with the exact density ratio
    s = 1 + lam + eta
    log_z, _, _ = closed_form(lam, eta)
    ratio = (lam / s - 1) * log_q + (-0.5 * (x - M) ** 2 / V) / s - log_z
    ess_true = 1.0 / float(torch.exp(2 * ratio).mean())
    assert sol.ess == pytest.approx(ess_true, rel=0.05)


def numpy_dual(a, b, lam, eta, eps_tr, eps_ent):
    """g(lam, eta) written independently with numpy/scipy."""
    lam, eta = np.asarray(lam, dtype=float), np.asarray(eta, dtype=float)
    s = 1 + lam + eta
    log_z = logsumexp((b - (1 + eta[..., None]) * a) / s[..., None], axis=-1) - math.log(len(a))
    return -s * log_z - lam * eps_tr + eta * (-a.mean() - eps_ent)


def test_matches_brute_force_grid():
    """Random problems (target log-density correlated with log q_i, as when p is narrower
    than q_i); the seeds cover lambda only, eta only and both active."""
    kinds = set()
    for seed in range(8):
        rng = np.random.default_rng(seed)
        a = rng.normal(-1.0, 1.0, 40)
        b = rng.uniform(0.5, 3.0) * a + rng.normal(0.0, 1.0, 40)
        eps_tr, eps_ent = rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.2)
        sol = solve_dual(torch.tensor(a), torch.tensor(b), eps_tr, eps_ent)
        assert sol.converged
        check_against_grid(a, b, eps_tr, eps_ent, sol)
        kinds.add((sol.lam > 0, sol.eta > 0))
    assert kinds == {(True, False), (False, True), (True, True)}


def check_against_grid(a, b, eps_tr, eps_ent, sol):
    grid = np.concatenate([[0.0], np.logspace(-3, 3, 241)])
    lam_grid, eta_grid = np.meshgrid(grid, grid, indexing="ij")
    values = numpy_dual(a, b, lam_grid, eta_grid, eps_tr, eps_ent)
    i, j = np.unravel_index(values.argmax(), values.shape)
    best = float(numpy_dual(a, b, sol.lam, sol.eta, eps_tr, eps_ent))
    assert best >= values.max() - 1e-12
    assert best - values.max() < 1e-3 * (1 + abs(best))
    # polishing the grid maximiser with a bounded quasi-Newton lands on the same point
    polished = optimize.minimize(
        lambda v: -float(numpy_dual(a, b, v[0], v[1], eps_tr, eps_ent)), [grid[i], grid[j]],
        method="L-BFGS-B", bounds=[(0, None), (0, None)], options={"ftol": 1e-15, "gtol": 1e-11},
    )
    assert polished.x == pytest.approx([sol.lam, sol.eta], abs=1e-4)


def test_derivatives_match_autograd():
    rng = np.random.default_rng(5)
    a, b = torch.tensor(rng.normal(-1, 1, 30)), torch.tensor(rng.normal(0, 2, 30))
    lw0 = torch.full((30,), -math.log(30), dtype=torch.float64)
    dual = _Dual(a, b, lw0, 0.3, 0.2)

    def g(v):
        s = 1 + v[0] + v[1]
        log_z = torch.logsumexp(lw0 + (b - (1 + v[1]) * a) / s, 0)
        return -s * log_z - v[0] * 0.3 + v[1] * (dual.entropy - 0.2)

    v = torch.tensor([0.7, 1.3], dtype=torch.float64)
    value, grad, hess, _ = dual(0.7, 1.3)
    assert value == pytest.approx(float(g(v)), abs=1e-12)
    assert torch.allclose(grad, torch.autograd.functional.jacobian(g, v), atol=1e-10)
    assert torch.allclose(hess, torch.autograd.functional.hessian(g, v), atol=1e-10)


def test_single_constraint_paths():
    log_q, log_p = quadrature()
    tr = solve_dual(log_q, log_p, 0.5, None, log_weights=log_q)
    ent = solve_dual(log_q, log_p, None, 0.3, log_weights=log_q)
    assert tr.eta == 0 and tr.kl == pytest.approx(0.5, abs=1e-8)
    assert ent.lam == 0 and ent.entropy_drop == pytest.approx(0.3, abs=1e-8)
    # temperature path: q_{i+1} = p~^beta is N(M, V / beta); entropy drop fixes beta
    assert V / ent.beta == pytest.approx(V0 * math.exp(-0.6), rel=1e-7)


def test_fixed_exponent_steps():
    log_q, log_p = quadrature()
    # geometric schedule: q_i = q0^(1-b_i) p^(b_i) composes to q0^(1-b_{i+1}) p^(b_{i+1})
    n = 7
    for i in range(n + 2):
        alpha, beta = geometric_exponents(i, n)
        b0, b1 = min(i / n, 1), min((i + 1) / n, 1)
        assert alpha * (1 - b0) == pytest.approx(1 - b1, abs=1e-12)
        assert alpha * b0 + beta == pytest.approx(b1, abs=1e-12)
    betas = ladder_betas(4.0, 5)
    assert betas[0] == pytest.approx(0.25) and betas[-1] == 1.0 and np.all(np.diff(betas) > 0)
    # a fixed step reproduces the dual's estimates at the dual's own exponents
    sol = solve_dual(log_q, log_p, 0.2, 0.3, log_weights=log_q)
    fixed = annealing_step(log_q, log_p, sol.alpha, sol.beta, log_weights=log_q)
    assert fixed.lam == pytest.approx(sol.lam) and fixed.eta == pytest.approx(sol.eta)
    assert fixed.kl == pytest.approx(sol.kl, abs=1e-10) and fixed.log_z == pytest.approx(sol.log_z, abs=1e-12)
    rkl = PATHS["reverse-kl"]().step(log_q, log_p, 0)
    assert rkl.is_final and rkl.beta == 1.0


def test_bad_input():
    log_q, log_p = quadrature()
    with pytest.raises(ValueError, match="finite"):
        solve_dual(log_q, log_p.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match="equal length"):
        solve_dual(log_q, log_p[:-1])
    with pytest.raises(ValueError, match="eps_tr"):
        solve_dual(log_q, log_p, eps_tr=-1.0)
    with pytest.raises(ValueError, match="exponents"):
        annealing_step(log_q, log_p, 0.9, 0.5)
    with pytest.raises(ValueError, match="path"):
        make_path(types.SimpleNamespace(path="simulated-annealing"))
