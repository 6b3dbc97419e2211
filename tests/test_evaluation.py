"""evaluate() end to end on generators whose samples are known: reference frames drawn
with or without a basin, and a peptide with several residues."""

import copy
import json
import os

import numpy as np
import pytest

from openmm_cmt import metrics, systems
from openmm_cmt.evaluation import evaluate, summary_lines
from openmm_cmt.reference import ReferenceSamples, bundled_reference, load_reference, reference_metadata
from openmm_cmt.sampler import Samples


class FrameSampler:
    """A generator that draws stored frames: exact Boltzmann samples (constant weights)
    when the frames are a reference and ``keep`` selects all of them."""

    def __init__(self, molsys, frames, energies, keep=None, seed=0, history=()):
        self.molsys = molsys
        self.frames = np.asarray(frames, dtype=np.float64)
        self.energies = np.asarray(energies, dtype=np.float64)
        self.pool = np.flatnonzero(np.ones(len(frames), bool) if keep is None else keep)
        self.rng = np.random.default_rng(seed)
        self.history = list(history)
        self.n_evaluations = 0
        self.trainer = None

    def sample(self, n, generator=None):
        idx = self.rng.choice(self.pool, n)
        e = self.energies[idx]
        log_q = -e / self.molsys.kT - 3.0  # q proportional to the Boltzmann density
        return Samples(self.frames[idx], -e / self.molsys.kT - log_q, log_q, e)

    def log_prob(self, x):
        return np.zeros(len(x))


@pytest.fixture(scope="module")
def aldp():
    molsys = systems.get("alanine-dipeptide")
    ref = load_reference(bundled_reference("alanine-dipeptide"))
    basin = metrics.basin_index(ref["phi"][:, 0], ref["psi"][:, 0])
    return molsys, ref, basin


def phase_history(n):
    return [{"step": i, "reverse_ess": 0.1 * i, "evaluations": 1000 * (i + 1), "wall_s": 2.0 * (i + 1),
             "phase_s": {"sample": 0.5, "energy": 0.2, "dual": 0.01, "buffer": 0.05, "fit": 1.0, "checkpoint": 0.1}}
            for i in range(n)]


def test_good_generator_is_not_flagged_and_report_is_complete(aldp, tmp_path):
    molsys, ref, _ = aldp
    sampler = FrameSampler(molsys, ref["frames"], ref["energies"], history=phase_history(4))
    m = evaluate(sampler, tmp_path, n_samples=4000, n_draws=3)
    assert m["mode_collapse"] is False and m["mode_collapse_basins"] == []
    assert m["n_draws"] == 3 and m["draw_size"] == 4000 and m["n_samples"] == 12_000
    assert len(m["reverse_ess_draws"]) == 3 and m["reverse_ess"] == pytest.approx(1.0)
    assert m["reverse_ess_min"] <= m["reverse_ess"] <= m["reverse_ess_max"]
    assert m["pareto_k_reading"] == "good" and len(m["pareto_k_draws"]) == 3
    (res,) = m["residues"]
    assert res["residue"] == "ALA2"
    for basin in metrics.BASINS:
        b = res["basins"][basin]
        # resampled reference frames: populations agree within the binomial error
        sd = np.sqrt(b["reference"] * (1 - b["reference"]) / 12_000) + 3 * b["reference_stderr"]
        assert abs(b["population"] - b["reference"]) < 4 * sd + 1e-12
        assert b["lower95"] <= b["population"] <= b["upper95"]
    assert sum(res["basins"][b]["population"] for b in metrics.BASINS) == pytest.approx(1.0)
    # phi > 0 population and mean energy: estimate over all draws, delta error, spread over draws
    for name in ("phi_positive_fraction", "mean_energy"):
        assert len(m[name + "_draws"]) == 3 and m[name + "_draw_spread"] >= 0 and m[name + "_draw_stderr"] > 0
    assert m["phi_positive_fraction"] == pytest.approx(res["basins"]["alpha_L/C7ax"]["population"])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["mode_collapse"] is False and on_disk["reverse_ess_draws"] == m["reverse_ess_draws"]
    page = (tmp_path / "report.html").read_text()
    for image in ("ess.png", "weights.png", "ramachandran.png", "energy.png", "phases.png"):
        assert (tmp_path / image).stat().st_size > 1000 and f'alt="{image}"' in page
    # self-contained: every plot is embedded, none is referenced by file name
    assert page.count('src="data:image/png;base64,') == page.count("<img ") >= 5 and 'src="ess.png"' not in page
    assert "alpha_L/C7ax" in page and "Backbone basins" in page
    assert any("mode collapse: no" in line for line in summary_lines(m))


def test_collapsed_generator_is_flagged(aldp, tmp_path):
    molsys, ref, basin = aldp
    # never visits alpha_R (12 % of the reference) yet claims Boltzmann weights elsewhere
    sampler = FrameSampler(molsys, ref["frames"], ref["energies"], keep=basin != 0)
    m = evaluate(sampler, tmp_path, n_samples=3000, n_draws=2, plots=False)
    assert m["mode_collapse"] is True
    assert [(c["residue"], c["basin"], c["n_samples"]) for c in m["mode_collapse_basins"]] == [("ALA2", "alpha_R", 0)]
    empty = m["residues"][0]["basins"]["alpha_R"]
    assert empty["population"] == 0 and empty["upper95"] == pytest.approx(1 - 0.05 ** (1 / 6000))
    assert any("YES (ALA2 alpha_R)" in line for line in summary_lines(m))
    assert not os.path.exists(tmp_path / "report.html")


def test_reference_of_another_system_or_temperature_is_refused(aldp, tmp_path):
    molsys, ref, _ = aldp
    sampler = FrameSampler(molsys, ref["frames"], ref["energies"])
    warm = copy.copy(molsys)
    warm.temperature = 310.0
    with pytest.raises(ValueError, match="300.0 K, but the run targets 310.0 K"):
        evaluate(FrameSampler(warm, ref["frames"], ref["energies"]), tmp_path, n_samples=100, n_draws=1)
    # same atoms, one charge changed: another System
    other = copy.copy(molsys)
    other.system = copy.deepcopy(molsys.system)
    nb = next(f for f in other.system.getForces() if f.__class__.__name__ == "NonbondedForce")
    q, sigma, eps = nb.getParticleParameters(0)
    nb.setParticleParameters(0, q * 1.01, sigma, eps)
    with pytest.raises(ValueError, match="another System"):
        evaluate(FrameSampler(other, ref["frames"], ref["energies"]), tmp_path, n_samples=100, n_draws=1)
    # a reference that does not say what it was sampled from
    settings = {k: v for k, v in ref["settings"].items() if k != "system_fingerprint"}
    old = _write_reference(tmp_path / "old.npz", ref["frames"][:50], ref["energies"][:50], settings)
    with pytest.raises(ValueError, match="does not record the System"):
        evaluate(sampler, tmp_path, n_samples=100, n_draws=1, reference=str(old))
    with pytest.raises(ValueError, match="n_draws"):
        evaluate(sampler, tmp_path, n_samples=100, n_draws=0)
    assert not (tmp_path / "metrics.json").exists()


def _write_reference(path, frames, energies, settings, phi=None, psi=None):
    k = 0 if phi is None else phi.shape[1]
    n = len(frames)
    ReferenceSamples(
        frames=np.asarray(frames, np.float32), energies=np.asarray(energies), ladder=np.zeros(n, int),
        time_ps=np.arange(n, dtype=float), phi=np.zeros((n, 0)) if phi is None else phi,
        psi=np.zeros((n, 0)) if psi is None else psi, round_trips=np.zeros((1, 1), int),
        settings=dict(settings, temperatures=[300.0]), diagnostics={},
    ).save(path)
    assert k == np.shape(load_reference(path)["phi"])[1]
    return path


def test_every_residue_of_a_tetrapeptide(tmp_path):
    molsys = systems.get("alanine-tetrapeptide")
    rng = np.random.default_rng(0)
    frames = molsys.positions[None] + 0.01 * rng.standard_normal((400, molsys.n_atoms, 3))
    energies = rng.normal(-100.0, 5.0, 400)
    settings = dict(system=molsys.name, **reference_metadata(molsys.system, molsys.temperature))
    path = _write_reference(tmp_path / "ref.npz", frames, energies, settings)  # angles computed from frames
    m = evaluate(FrameSampler(molsys, frames, energies), tmp_path, n_samples=500, n_draws=2, reference=str(path))
    assert [r["residue"] for r in m["residues"]] == ["ALA2", "ALA3", "ALA4"]
    angles = metrics.phi_psi(frames, molsys.topology, per_residue=True)
    for r, res in enumerate(m["residues"]):
        truth = np.bincount(metrics.basin_index(angles[:, r, 0], angles[:, r, 1]), minlength=3) / 400
        assert [res["basins"][b]["reference"] for b in metrics.BASINS] == pytest.approx(truth.tolist())
        assert 0 <= res["ramachandran_tv"] <= 1
    assert m["mode_collapse"] is False
    assert "phi_positive_fraction" not in m  # one figure per residue instead: the alpha_L/C7ax basin
    assert (tmp_path / "ramachandran.png").is_file()
    # the alanine dipeptide reference belongs to another System
    with pytest.raises(ValueError, match="another System"):
        evaluate(FrameSampler(molsys, frames, energies), tmp_path, n_samples=100, n_draws=1,
                 reference=bundled_reference("alanine-dipeptide"))


def test_a_saved_run_matches_the_shipped_reference(aldp, tmp_path):
    # A run folder stores its System as XML; read back, it must keep the fingerprint
    # that the shipped reference records, or evaluate would refuse every saved run.
    from openmm_cmt.systems.files import load_system, save_system
    from openmm_cmt.reference import check_reference, system_fingerprint

    molsys, ref, _ = aldp
    save_system(molsys, tmp_path)
    loaded = load_system(tmp_path)
    assert system_fingerprint(loaded.system) == ref["settings"]["system_fingerprint"]
    check_reference(ref["settings"], loaded)


def test_phase_plot_handles_histories_with_and_without_timings(tmp_path):
    from openmm_cmt import report

    assert not report.phase_plot(tmp_path / "a.png", [{"step": 0}, {"step": 1}])
    assert not report.phase_plot(tmp_path / "a.png", [])
    mixed = [{"step": 0}] + phase_history(3)  # an older step without timings, then new ones
    mixed[-1]["phase_s"]["compile"] = 3.0  # a phase the plot does not know is still drawn
    assert report.phase_plot(tmp_path / "b.png", mixed) and (tmp_path / "b.png").stat().st_size > 1000


@pytest.mark.parametrize("name, labels", [
    ("alanine-dipeptide", ["ALA2"]),
    ("alanine-hexapeptide", ["ALA2", "ALA3", "ALA4", "ALA5", "ALA6"]),
    ("elil", ["LEU2", "ILE3"]),  # charged termini: the end residues lack phi or psi
])
def test_per_residue_phi_psi_of_registered_peptides_match_mdtraj(name, labels):
    import mdtraj

    molsys = systems.get(name)
    assert metrics.backbone_residue_labels(molsys.topology) == labels
    x = molsys.positions[None] + 0.02 * np.random.default_rng(0).standard_normal((5, molsys.n_atoms, 3))
    angles = metrics.phi_psi(x, molsys.topology, per_residue=True)
    assert angles.shape == (5, len(labels), 2)
    traj = mdtraj.Trajectory(x, mdtraj.Topology.from_openmm(molsys.topology))
    phi_idx, phi = mdtraj.compute_phi(traj)
    psi_idx, psi = mdtraj.compute_psi(traj)
    # mdtraj lists every phi and psi; keep those of residues that have both
    res_of = {int(q[2]): i for i, q in enumerate(phi_idx)}  # CA of phi
    both = [(res_of[int(q[1])], j) for j, q in enumerate(psi_idx) if int(q[1]) in res_of]
    expected = np.stack([np.stack([phi[:, i], psi[:, j]], -1) for i, j in both], 1)
    np.testing.assert_allclose(angles, expected, atol=1e-5)


def test_weights_plot_survives_clashes_and_zero_weights(tmp_path):
    from openmm_cmt import report

    rng = np.random.default_rng(0)
    log_w = rng.standard_normal(5000)
    log_w[:2] = [-1e23, -np.inf]  # a clash, and a non-finite energy
    angles = rng.uniform(-np.pi, np.pi, (5000, 2, 2))
    assert report.weights_plot(tmp_path / "w.png", log_w, angles, ["LEU2", "ILE3"])
    assert (tmp_path / "w.png").stat().st_size > 1000


def _set_phi(molsys, x, residue, phi):
    """``x`` with the phi of backbone residue ``residue`` (index into the phi/psi
    residues) set to ``phi`` by turning the C-side of its N-CA bond, all else unchanged."""
    quad = metrics.backbone_dihedral_indices(molsys.topology)[residue, 0]
    n, ca = int(quad[1]), int(quad[2])
    neighbours = {i: set() for i in range(molsys.n_atoms)}
    for a, b in molsys.topology.bonds():
        neighbours[a.index].add(b.index)
        neighbours[b.index].add(a.index)
    moving, todo = {ca}, [ca]
    while todo:  # atoms reached from CA without crossing N-CA
        for j in neighbours[todo.pop()] - moving - {n}:
            moving.add(j)
            todo.append(j)
    moving = sorted(moving - {ca})
    angle = phi - metrics.dihedrals(x[None], quad[None])[0, 0]
    axis = (x[ca] - x[n]) / np.linalg.norm(x[ca] - x[n])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k  # Rodrigues
    y = x.copy()
    y[moving] = (x[moving] - x[ca]) @ rot.T + x[ca]
    return y


def test_a_residue_that_loses_its_alpha_l_basin_is_flagged(tmp_path):
    # Reference: 2 % of the frames have ALA3 (the middle residue) in alpha_L; a generator
    # that never draws those frames is flagged for ALA3 alone, one that draws all is not.
    molsys = systems.get("alanine-tetrapeptide")
    rng = np.random.default_rng(1)
    n = 1000
    x0 = molsys.positions.astype(np.float64)
    turned = _set_phi(molsys, x0, 1, np.deg2rad(60.0))
    left = np.arange(n) < n // 50
    frames = np.where(left[:, None, None], turned[None], x0[None]) + 0.003 * rng.standard_normal((n, molsys.n_atoms, 3))
    angles = metrics.phi_psi(frames, molsys.topology, per_residue=True)
    np.testing.assert_array_equal(angles[:, 1, 0] > 0, left)  # only ALA3's phi moved
    assert not (angles[:, [0, 2], 0] > 0).any()
    energies = rng.normal(-100.0, 5.0, n)
    settings = dict(system=molsys.name, **reference_metadata(molsys.system, molsys.temperature))
    path = str(_write_reference(tmp_path / "ref.npz", frames, energies, settings))
    collapsed = evaluate(FrameSampler(molsys, frames, energies, keep=~left), tmp_path / "bad", n_samples=2000,
                         n_draws=2, reference=path, plots=False)
    assert collapsed["mode_collapse"] is True
    assert [(c["residue"], c["basin"], c["n_samples"]) for c in collapsed["mode_collapse_basins"]] == [
        ("ALA3", "alpha_L/C7ax", 0)]
    empty = collapsed["residues"][1]["basins"]["alpha_L/C7ax"]
    assert empty["reference"] == pytest.approx(0.02) and empty["population"] == 0
    assert empty["upper95"] == pytest.approx(1 - 0.05 ** (1 / 4000))  # ESS 4000: not zero
    assert any("YES (ALA3 alpha_L/C7ax)" in line for line in summary_lines(collapsed))
    good = evaluate(FrameSampler(molsys, frames, energies, seed=2), tmp_path / "good", n_samples=2000, n_draws=2,
                    reference=path, plots=False)
    assert good["mode_collapse"] is False and good["mode_collapse_basins"] == []
    found = good["residues"][1]["basins"]["alpha_L/C7ax"]
    assert found["lower95"] <= 0.02 <= found["upper95"]
    on_disk = json.loads((tmp_path / "bad" / "metrics.json").read_text())
    assert [r["residue"] for r in on_disk["residues"]] == ["ALA2", "ALA3", "ALA4"]
    assert all("ramachandran_tv" in r for r in on_disk["residues"]) and on_disk["mode_collapse"] is True


def test_without_a_reference_only_generator_populations_per_residue(tmp_path):
    molsys = systems.get("alanine-tetrapeptide")
    rng = np.random.default_rng(3)
    frames = molsys.positions[None] + 0.01 * rng.standard_normal((300, molsys.n_atoms, 3))
    m = evaluate(FrameSampler(molsys, frames, rng.normal(-100.0, 5.0, 300)), tmp_path, n_samples=500, n_draws=2,
                 reference="none", plots=False)
    assert [r["residue"] for r in m["residues"]] == ["ALA2", "ALA3", "ALA4"]
    for res in m["residues"]:
        assert set(res["basins"]) == set(metrics.BASINS) and "ramachandran_tv" not in res
        assert sum(b["population"] for b in res["basins"].values()) == pytest.approx(1.0)
        assert all(b["upper95"] > 0 and "reference" not in b for b in res["basins"].values())
    assert "mode_collapse" not in m and "reference" not in m
    lines = summary_lines(m)
    assert [line.split(":")[0].strip() for line in lines[2:]] == ["ALA2", "ALA3", "ALA4"]


def test_energy_plot_of_weights_massed_beyond_the_plotted_range(tmp_path):
    import warnings

    from openmm_cmt import report

    rng = np.random.default_rng(0)
    energies = rng.normal(0.0, 1.0, 10_000)
    energies[0] = -1e4  # below the plotted range, with (nearly) all the weight
    log_w = np.where(np.arange(10_000) == 0, 0.0, -700.0)
    log_w[1] = -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert report.energy_plot(tmp_path / "e.png", energies, log_w)
    assert (tmp_path / "e.png").stat().st_size > 1000


@pytest.mark.parametrize("name", ["alanine-dipeptide", "alanine-tetrapeptide", "alanine-hexapeptide"])
def test_shipped_references_belong_to_their_systems(name, openmm_reference_energies):
    from openmm_cmt.reference import check_reference

    molsys = systems.get(name)
    ref = load_reference(bundled_reference(name))
    check_reference(ref["settings"], molsys)
    n_residues = ref["phi"].shape[1]
    assert ref["frames"].shape[1:] == (molsys.n_atoms, 3) and ref["psi"].shape[1] == n_residues
    # the stored energies are those of the System at the stored (float32) frames
    picks = np.linspace(0, len(ref["frames"]) - 1, 8).astype(int)
    e = openmm_reference_energies(molsys.system, ref["frames"][picks].astype(np.float64))
    np.testing.assert_allclose(ref["energies"][picks], e, rtol=1e-4, atol=1e-2)
    # and the stored angles are those of the frames
    angles = metrics.phi_psi(ref["frames"][picks].astype(np.float64), molsys.topology, per_residue=True)
    angles = angles.reshape(len(picks), n_residues, 2)
    stored = np.stack([ref["phi"][picks], ref["psi"][picks]], axis=-1)
    assert np.abs(np.angle(np.exp(1j * (stored - angles)))).max() < 1e-4


@pytest.mark.parametrize("name", ["alanine-tetrapeptide", "alanine-hexapeptide"])
def test_peptide_reference_frames_pass_their_own_evaluation(name, tmp_path):
    # exact Boltzmann samples (the reference's own frames) are not collapsed, and each
    # basin's reference error is the spread between ladders that the file records
    molsys = systems.get(name)
    path = bundled_reference(molsys.name)
    ref = load_reference(path)
    m = evaluate(FrameSampler(molsys, ref["frames"], ref["energies"]), tmp_path, n_samples=4000, n_draws=2,
                 reference=path, plots=False)
    assert m["mode_collapse"] is False
    for row, ladders in zip(m["residues"], ref["diagnostics"]["residues"], strict=True):
        for basin in metrics.BASINS:
            assert row["basins"][basin]["reference_stderr"] == ladders["basins"][basin]["sem"]
            assert row["basins"][basin]["reference"] == pytest.approx(ladders["basins"][basin]["population"])


def test_basin_trace_plot_draws_lost_basins_and_skips_untraced_histories(tmp_path):
    from openmm_cmt import report

    assert not report.basin_trace_plot(tmp_path / "a.png", phase_history(3))
    assert not report.basin_trace_plot(tmp_path / "a.png", [])
    history = [{"step": 0}] + [  # an older record without a trace, then a basin that empties
        {"step": i, "basins": {"ALA2": {"alpha_R": [0.7, 0.6], "beta/PPII": [0.3 - 0.01 * i, 0.39],
                                        "alpha_L/C7ax": [0.01 * i if i < 3 else 0.0, 0.01]},
                               "ALA3": {"alpha_R": [0.5, 0.5], "beta/PPII": [0.5, 0.5], "alpha_L/C7ax": [0.0, 0.0]}}}
        for i in range(1, 6)]
    reference = {"ALA2": {"alpha_R": 0.6, "beta/PPII": 0.38, "alpha_L/C7ax": 0.02}}
    assert report.basin_trace_plot(tmp_path / "b.png", history, reference)
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_report_of_a_traced_training_shows_the_basin_trace(aldp, tmp_path):
    molsys, ref, _ = aldp
    history = phase_history(3)
    for record in history:
        record["basins"] = {"ALA2": {"alpha_R": [0.2, 0.1], "beta/PPII": [0.79, 0.89], "alpha_L/C7ax": [0.01, 0.01]}}
    evaluate(FrameSampler(molsys, ref["frames"], ref["energies"], history=history), tmp_path, n_samples=2000,
             n_draws=2)
    page = (tmp_path / "report.html").read_text()
    assert 'alt="basins.png"' in page and (tmp_path / "basins.png").stat().st_size > 1000
    assert json.loads((tmp_path / "history.json").read_text())[-1]["basins"] == history[-1]["basins"]
