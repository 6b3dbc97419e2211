"""Metrics against values computed by hand (and mdtraj / scipy where independent)."""

import math

import mdtraj
import numpy as np
import pytest
import torch
from scipy import stats

from openmm_cmt.metrics import (
    clip_log_weights,
    dihedrals,
    energy_histogram_distance,
    eubo,
    forward_ess,
    log_z_estimate,
    nll,
    phi_psi,
    ramachandran_histogram,
    ramachandran_kl,
    ramachandran_tv,
    reverse_ess,
    wasserstein_1d,
)


def test_reverse_ess_by_hand():
    # w = 1, 2, 3: (6)^2 / (3 * 14); shifting log-weights changes nothing
    log_w = torch.log(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)) + 100.0
    assert reverse_ess(log_w) == pytest.approx(36 / 42, rel=1e-12)
    assert reverse_ess(torch.zeros(5)) == pytest.approx(1.0)


def test_clipped_ess_by_hand():
    # N = 10, fraction 0.1: the largest weight (10) is clamped to the next (9)
    log_w = torch.log(torch.arange(1.0, 11.0, dtype=torch.float64))
    clipped = torch.exp(clip_log_weights(log_w, 0.1))
    assert clipped.tolist() == pytest.approx([1, 2, 3, 4, 5, 6, 7, 8, 9, 9])
    w = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 9.0])
    assert reverse_ess(log_w, clip_fraction=0.1) == pytest.approx(w.sum() ** 2 / (10 * (w**2).sum()))
    # below one sample's worth nothing is clipped (TA-BG's 1e-4 on 10 samples)
    assert reverse_ess(log_w, clip_fraction=1e-4) == pytest.approx(reverse_ess(log_w))
    with pytest.raises(ValueError, match="NaN"):
        reverse_ess(torch.tensor([0.0, float("nan")]))


def test_forward_ess_eubo_nll_by_hand():
    # w = p~/q = 1, 2, 4 on reference samples: 1 / (mean w * mean 1/w) = 1 / (7/3 * 1.75/3)
    log_w = torch.log(torch.tensor([1.0, 2.0, 4.0]))
    assert forward_ess(log_w) == pytest.approx(1 / (7 / 3 * 1.75 / 3))
    assert forward_ess(torch.full((4,), 3.0)) == pytest.approx(1.0)
    log_p, log_q = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.0, 1.0])
    assert eubo(log_p, log_q) == pytest.approx((0.5 + 2 + 2) / 3)
    assert nll(log_q) == pytest.approx(-0.5)
    assert log_z_estimate(torch.log(torch.tensor([1.0, 3.0]))) == pytest.approx(math.log(2.0))
    with pytest.raises(ValueError):
        eubo(log_p, log_q[:2])


def test_dihedral_by_hand_and_against_mdtraj():
    # p0 on +x, axis p1 -> p2 along +y, p3 on +z: -90 degrees in the IUPAC convention
    x = np.array([[[1.0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 1, 1]]])
    assert dihedrals(x, [[0, 1, 2, 3]])[0, 0] == pytest.approx(-math.pi / 2)
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 4, 3))
    ref = mdtraj.compute_dihedrals(mdtraj.Trajectory(y, None), [[0, 1, 2, 3]], periodic=False)
    assert dihedrals(y, [[0, 1, 2, 3]]) == pytest.approx(ref.astype(np.float64), abs=1e-5)


def test_phi_psi_alanine_dipeptide_matches_mdtraj():
    from openmm_cmt.systems import alanine_dipeptide

    aldp = alanine_dipeptide()
    rng = np.random.default_rng(1)
    x = aldp.positions[None] + 0.02 * rng.normal(size=(8, 22, 3))
    angles = phi_psi(torch.tensor(x), aldp.topology)
    traj = mdtraj.Trajectory(x, mdtraj.Topology.from_openmm(aldp.topology))
    assert angles.shape == (8, 2)
    assert angles[:, 0] == pytest.approx(mdtraj.compute_phi(traj)[1][:, 0], abs=1e-5)
    assert angles[:, 1] == pytest.approx(mdtraj.compute_psi(traj)[1][:, 0], abs=1e-5)


def test_ramachandran_histogram_tv_kl_by_hand():
    # 2 x 2 bins: (-pi, 0] and (0, pi] per axis; 0 itself belongs to the lower bin
    a = np.array([[-1.0, -1.0], [-1.0, -1.0], [1.0, 2.0], [0.0, math.pi]])
    h = ramachandran_histogram(a, bins=2)
    assert h.tolist() == [[0.5, 0.25], [0.0, 0.25]]
    b = np.array([[-1.0, -1.0], [1.0, 1.0]])  # [[0.5, 0], [0, 0.5]]
    tv = ramachandran_tv(a, b, bins=2)
    assert tv.value == pytest.approx(0.5 * (0 + 0.25 + 0 + 0.25))
    assert (tv.n_a, tv.n_b, tv.bins) == (4, 2, 2)
    # weights: P = [[.4, .1], [.3, .2]], Q = [[.25, .25], [.25, .25]]
    p_pts = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1.0]])
    kl = ramachandran_kl(p_pts, p_pts, bins=2, weights_ref=[4, 1, 3, 2], eps=0.0)
    p = np.array([0.4, 0.1, 0.3, 0.2])
    assert kl.value == pytest.approx(float((p * np.log(p / 0.25)).sum()))
    assert kl.ess_a == pytest.approx(1 / (p**2).sum()) and kl.ess_b == pytest.approx(4)
    with pytest.raises(ValueError, match="batch, 2"):
        ramachandran_tv(np.zeros((3, 3)), b)


def test_energy_distances_by_hand_and_scipy():
    out = energy_histogram_distance([0.0, 1.0], [1.0, 2.0], bins=2, range=(0.0, 2.0))
    # bins [0, 1), [1, 2]: a -> (1/2, 1/2), b -> (0, 1): TV = 1/2; W1 = shift of 1
    assert out["tv"].value == pytest.approx(0.5)
    assert out["w1"].value == pytest.approx(1.0)
    rng = np.random.default_rng(2)
    u, v = rng.normal(size=200), rng.normal(0.5, 2.0, size=150)
    wu, wv = rng.uniform(size=200), rng.uniform(size=150)
    assert wasserstein_1d(u, v, wu, wv) == pytest.approx(stats.wasserstein_distance(u, v, wu, wv), rel=1e-10)
    with pytest.raises(ValueError, match="finite"):
        energy_histogram_distance([0.0, np.inf], [1.0])


def test_basin_shares_count_the_draws_and_reweight_them():
    from openmm_cmt.metrics import basin_shares

    deg = np.deg2rad
    # residue A: alpha_R, alpha_R, beta, alpha_L; residue B: beta everywhere
    angles = np.array([[[deg(-60), deg(-40)], [deg(-170), deg(170)]],
                       [[deg(-70), deg(-30)], [deg(-80), deg(150)]],
                       [[deg(-120), deg(130)], [deg(-150), deg(-150)]],
                       [[deg(60), deg(40)], [deg(-60), deg(120)]]])
    log_w = np.log([1.0, 1.0, 2.0, 4.0])
    out = basin_shares(angles, ["A", "B"], log_w)
    assert out["A"] == {"alpha_R": [0.5, pytest.approx(0.25)], "beta/PPII": [0.25, pytest.approx(0.25)],
                        "alpha_L/C7ax": [0.25, pytest.approx(0.5)]}
    assert out["B"]["beta/PPII"] == [1.0, pytest.approx(1.0)] and out["B"]["alpha_L/C7ax"] == [0.0, 0.0]
    # a sample of zero weight still counts as drawn, but not in the reweighted population
    out = basin_shares(angles, ["A", "B"], np.log([1.0, 1.0, 2.0, 0.0]))
    assert out["A"]["alpha_L/C7ax"] == [0.25, 0.0] and out["A"]["beta/PPII"][1] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"shape \[N > 0, 3 residues, 2\]"):
        basin_shares(angles, ["A", "B", "C"], log_w)
    with pytest.raises(ValueError, match="one entry per sample"):
        basin_shares(angles, ["A", "B"], log_w[:3])
    with pytest.raises(ValueError, match="NaN"):
        basin_shares(angles, ["A", "B"], np.array([0.0, np.nan, 0.0, 0.0]))
