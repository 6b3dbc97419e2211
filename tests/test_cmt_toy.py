"""Toy targets are exact; CMT covers the 40 modes of FAB's mixture where reverse KL collapses."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from openmm_cmt.cmt import CMTConfig, CMTTrainer
from openmm_cmt.flows import EuclideanFlow
from openmm_cmt.metrics import log_z_estimate
from openmm_cmt.cmt.toy_targets import ManyWell, gmm40, modes_covered




def test_gmm40_density_and_samples_are_exact():
    gmm = gmm40()
    assert gmm.means.shape == (40, 2) and gmm.means.abs().max() <= 40
    assert gmm.std == pytest.approx(math.log(1 + math.e))
    # normalised density against scipy, and its integral by quadrature over the box
    x = torch.tensor(np.random.default_rng(0).uniform(-45, 45, size=(100, 2)))
    ref = np.log(np.mean([stats.multivariate_normal(m, gmm.std**2).pdf(x.numpy()) for m in gmm.means.numpy()], axis=0))
    assert gmm.log_prob(x).numpy() == pytest.approx(ref, abs=1e-9)
    h = 0.1
    t = torch.arange(-50, 50, h, dtype=torch.float64)
    grid = torch.cartesian_prod(t, t)
    assert float(torch.exp(gmm.unnormalized_log_prob(grid)).sum() * h * h) == pytest.approx(math.exp(gmm.log_z), rel=1e-6)
    # samples: equal mode counts (chi-square) and all modes covered
    s = gmm.sample(20000, torch.Generator().manual_seed(0))
    nearest = torch.cdist(s, gmm.means).argmin(1)
    counts = torch.bincount(nearest, minlength=40).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3
    assert gmm.modes_covered(s) == 40


def test_modes_covered_by_hand():
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    # 3 sigma with sigma = 1: the points at distance 2.9 count, at 3.1 do not
    x = torch.tensor([[2.9, 0.0], [0.0, 0.5], [10.0, 3.1], [0.0, 10.0]])
    assert modes_covered(x, means, 1.0, min_fraction=0.25) == 2
    assert modes_covered(x, means, 1.0, weights=[1.0, 1.0, 1.0, 0.0], min_fraction=0.25) == 1


def test_many_well_normaliser_and_samples_are_exact():
    mw = ManyWell(4)
    f = lambda t: np.exp(-(t**4) + 6 * t**2 + 0.5 * t)  # noqa: E731
    t = np.linspace(-6, 6, 200001)
    z_well = np.trapezoid(f(t), t) if hasattr(np, "trapezoid") else np.trapz(f(t), t)
    assert mw.log_z == pytest.approx(2 * (math.log(z_well) + 0.5 * math.log(2 * math.pi)), abs=1e-9)
    x = mw.sample(20000, torch.Generator().manual_seed(0))
    assert mw.log_prob(x).shape == (20000,)
    cdf_grid = integrate.cumulative_trapezoid(f(t), t, initial=0.0) / z_well
    for column in (0, 2):
        assert stats.kstest(x[:, column].numpy(), lambda v: np.interp(v, t, cdf_grid)).pvalue > 1e-3
    assert stats.kstest(x[:, 1].numpy(), "norm").pvalue > 1e-3
    assert set(mw.mode_index(x).tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="even"):
        ManyWell(3)


def train(path: str):
    gmm = gmm40()
    # q_0 = N(0, 20^2 I) covers [-40, 40]^2; a small spline flow with enough bins for 40 modes.
    flow = EuclideanFlow(2, n_layers=4, hidden=32, n_bins=24, prior_scale=20.0, tail_bound=60.0, seed=0)
    config = CMTConfig(
        path=path, eps_tr=1.0, eps_ent=1.0, n_steps=8, samples_per_step=1500, buffer_size=4500,
        grad_steps_per_step=80, batch_size=500, lr=5e-3, seed=0,
    )
    trainer = CMTTrainer(flow, gmm.target(), config)
    trainer.run()
    with torch.no_grad():
        x, log_q = flow.sample(10000, trainer.rng)
    log_w = gmm.unnormalized_log_prob(x) - log_q.double()
    return gmm.modes_covered(x), log_z_estimate(log_w) - gmm.log_z, trainer


def test_cmt_covers_gmm40_and_reverse_kl_collapses():
    cmt_modes, cmt_log_z_error, cmt = train("cmt")
    rkl_modes, _, rkl = train("reverse-kl")
    assert cmt.n_evaluations == rkl.n_evaluations == 8 * 1500
    assert cmt_modes >= 38
    assert abs(cmt_log_z_error) < 0.1
    assert rkl_modes <= 20
    # the annealing path reached the target within the budget
    assert cmt.history[-1]["is_final"] and cmt.history[0]["kl"] == pytest.approx(1.0, abs=1e-6)


def test_bench_toy_command_writes_the_documented_json(tmp_path):
    from openmm_cmt.cli import main

    out = tmp_path / "toy.json"
    argv = ["bench", "toy", "--paths", "cmt", "reverse-kl", "--steps", "1", "--samples-per-step", "200",
            "--eval-samples", "500", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["target"] == "gmm40" and [v["path"] for v in report["variants"]] == ["cmt", "reverse-kl"]
    for v in report["variants"]:
        assert {"path", "ess", "modes_covered", "log_z_error", "evaluations", "wall_s"} <= set(v)
        assert v["evaluations"] == 200 and 0 <= v["modes_covered"] <= 40 and 0 < v["ess"] <= 1
