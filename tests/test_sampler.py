"""BoltzmannGeneratorSampler end to end: training, sampling, checkpoints, CLI errors."""

import json
import os

import numpy as np
import pytest
import torch

import openmm_cmt  # noqa: F401  (torch before openmm)
from openmm_cmt.io import CheckpointError
from openmm_cmt.cli import main
from openmm_cmt.presets import preset
from openmm_cmt.sampler import BoltzmannGeneratorSampler


def tiny_config(n_steps=2, seed=0):
    return preset(
        "laptop",
        generator=dict(n_layers=2, hidden=16, depth=1, seed=seed),
        cmt=dict(n_steps=n_steps, samples_per_step=256, buffer_size=512, grad_steps_per_step=3, batch_size=128, seed=seed),
        energy_compile=False,
        device="cpu",
        checkpoint_every=1,
        eval_samples=512,
    )




@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    sampler = BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config=tiny_config(n_steps=3))
    sampler.train(checkpoint_dir=out, progress=False)
    return sampler, out


def test_smoke_training_counts_every_evaluation(trained):
    sampler, out = trained
    cfg = sampler.config.cmt_config()
    assert len(sampler.history) == 3
    assert sampler.n_evaluations == 3 * cfg.samples_per_step
    assert sampler.energy_engine().n_evaluations == sampler.n_evaluations
    for record in sampler.history:
        assert np.isfinite(record["loss"])
        assert 0.0 < record["ess"] <= 1.0
    assert os.path.isfile(out / "checkpoint.pt")


def test_sample_returns_weighted_positions(trained):
    sampler, _ = trained
    torch.manual_seed(1)
    s = sampler.sample(300)
    assert s.positions.shape == (300, 22, 3)
    x, log_w = s
    assert np.isfinite(log_w).mean() > 0.5
    # log_w = -u - log q, u from an exact float64 OpenMM-equivalent engine
    ok = np.isfinite(s.energies)
    assert np.allclose(log_w[ok], -s.energies[ok] / sampler.molsys.kT - s.log_q[ok])
    # log_prob agrees with the density reported at sampling time
    assert np.allclose(sampler.log_prob(x[:50]), s.log_q[:50], atol=2e-3)


def test_sampling_after_training_reuses_the_compiled_sampler(tmp_path, monkeypatch):
    """After training in this process, ``sample`` draws through the trainer's compiled and
    checked sampling graph (counted by a stand-in for torch.compile); a sampler loaded from
    the run folder has compiled nothing and samples eagerly."""
    from openmm_cmt.cmt import compiled as compiled_module

    graph_calls = []

    def fake_compile(fn, **kwargs):
        def run(*args):
            graph_calls.append(fn.__name__)
            return fn(*args)
        return run

    monkeypatch.setattr(compiled_module.torch, "compile", fake_compile)
    config = tiny_config()
    config.cmt["compile"] = True
    sampler = BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config=config)
    sampler.train(checkpoint_dir=tmp_path, progress=False)
    calls = sampler.trainer.calls
    assert "sample" in calls.checked
    n = calls.chunk_size + 100  # two chunks, the second padded
    before = graph_calls.count("_eager_latent_map")
    s = sampler.sample(n, generator=torch.Generator().manual_seed(5))
    assert graph_calls.count("_eager_latent_map") == before + 2
    rng = torch.Generator().manual_seed(5)
    x, log_q = (torch.cat(t) for t in zip(calls.sample(calls.chunk_size, rng), calls.sample(100, rng)))
    assert np.array_equal(s.positions, x.double().numpy()) and np.array_equal(s.log_q, log_q.double().numpy())
    ok = np.isfinite(s.energies)
    assert ok.mean() > 0.5 and np.allclose(s.log_weights[ok], -s.energies[ok] / sampler.molsys.kT - s.log_q[ok])
    before = len(graph_calls)
    sampler.sample(300)  # less than a chunk: eager
    assert len(graph_calls) == before

    loaded = BoltzmannGeneratorSampler.load(tmp_path)
    t = loaded.sample(n, generator=torch.Generator().manual_seed(5))
    assert len(graph_calls) == before
    assert np.allclose(t.log_q[:50], loaded.log_prob(t.positions[:50]), atol=2e-3)


def test_save_load_sample_identical(trained, tmp_path):
    sampler, _ = trained
    sampler.save(tmp_path)
    loaded = BoltzmannGeneratorSampler.load(tmp_path)
    torch.manual_seed(7)
    a = sampler.sample(200)
    torch.manual_seed(7)
    b = loaded.sample(200)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.log_q, b.log_q)
    assert loaded.history == sampler.history


def test_resumed_training_equals_uninterrupted(tmp_path):
    full = BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config=tiny_config(n_steps=4, seed=3))
    full.train(progress=False)

    part = BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config=tiny_config(n_steps=4, seed=3))
    part.train(n_steps=2, progress=False)
    part.save(tmp_path)
    resumed = BoltzmannGeneratorSampler.load(tmp_path)
    resumed.train(progress=False)

    assert len(resumed.history) == 4
    for key in ("lam", "eta", "log_z", "loss", "evaluations"):
        assert [r[key] for r in resumed.history] == [r[key] for r in full.history]
    for (k, a), (_, b) in zip(full.generator.state_dict().items(), resumed.generator.state_dict().items()):
        assert torch.equal(a, b), k


def test_training_past_the_configured_steps_extends_the_saved_run(tmp_path):
    sampler = BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config=tiny_config(n_steps=2, seed=3))
    sampler.train(progress=False)
    sampler.train(n_steps=3, progress=False)
    assert sampler.config.cmt["n_steps"] == sampler.trainer.config.n_steps == 3
    sampler.save(tmp_path)
    loaded = BoltzmannGeneratorSampler.load(tmp_path)
    assert loaded.config.cmt_config().n_steps == 3
    assert loaded._make_trainer().total_grad_steps == sampler.trainer.total_grad_steps


def test_training_that_ends_short_of_the_target_says_so():
    import warnings

    from openmm_cmt.sampler import AnnealingIncompleteWarning, _warn_if_not_annealed

    sampler = BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config=tiny_config(n_steps=1))
    with pytest.warns(AnnealingIncompleteWarning, match=r"annealing ended at beta = 0\.\d{3} .* after 1 steps"):
        sampler.train(progress=False)
    assert sampler.history[-1]["beta"] < 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_not_annealed([{"beta": 0.5, "alpha": 0.2}, {"beta": 1.0, "alpha": 0.0}])
        _warn_if_not_annealed([])
    with pytest.warns(AnnealingIncompleteWarning, match="alpha = 0.100"):
        _warn_if_not_annealed([{"beta": 1.0, "alpha": 0.1}])


def test_steps_on_few_effective_samples_warn_once():
    import warnings

    from openmm_cmt.sampler import (
        FEW_EFFECTIVE_STEPS, MIN_EFFECTIVE_SAMPLES, FewEffectiveSamplesWarning, _few_effective_samples,
    )  # fmt: skip

    n = 65536
    thin = [{"ess": 0.0005}, {"ess": 0.001}, {"ess": 0.0004}, {"ess": 0.0008}, {"ess": 0.0012}]
    assert len(thin) == FEW_EFFECTIVE_STEPS and MIN_EFFECTIVE_SAMPLES == 100
    text = _few_effective_samples([{"ess": 0.5}] + thin, n)
    assert "rest on 26-79 effective samples of 65536" in text and "cmt.eps_tr" in text
    assert _few_effective_samples(thin[1:], n) is None  # too few steps to judge
    assert _few_effective_samples(thin[:-1] + [{"ess": 100 / n}], n) is None  # one step with enough
    assert _few_effective_samples(thin[:-1] + [{"ess": float("nan")}], n) is None

    # 64 draws per step can never hold 100 effective samples: seven steps warn once.
    config = tiny_config(n_steps=7)
    config.cmt.update(samples_per_step=64, buffer_size=128, batch_size=32)
    sampler = BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config=config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler.train(progress=False)
    few = [w for w in caught if issubclass(w.category, FewEffectiveSamplesWarning)]
    assert len(few) == 1 and "effective samples of 64" in str(few[0].message)


def test_corrupt_and_mismatched_checkpoints_are_refused(trained, tmp_path):
    sampler, _ = trained
    sampler.save(tmp_path)
    ckpt = tmp_path / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        BoltzmannGeneratorSampler.load(tmp_path)
    ckpt.write_bytes(data)
    xml = (tmp_path / "system.xml").read_text()
    (tmp_path / "system.xml").write_text(xml.replace("<Particle mass=", "<Particle  mass=", 1).replace('mass="1.008"', 'mass="2.016"', 1))
    with pytest.raises(CheckpointError):
        BoltzmannGeneratorSampler.load(tmp_path)


def test_evaluate_writes_metrics_and_report(trained, tmp_path):
    from openmm_cmt.evaluation import evaluate

    sampler, _ = trained
    m = evaluate(sampler, tmp_path, n_samples=400)
    for key in ("reverse_ess", "reverse_ess_clipped", "target_evaluations", "wall_s", "phi_positive_fraction", "mean_energy"):
        assert key in m
    assert m["target_evaluations"] == sampler.n_evaluations
    assert 0.0 <= m["reverse_ess_clipped"] <= 1.0
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["reverse_ess"] == pytest.approx(m["reverse_ess"])
    assert (tmp_path / "report.html").is_file()
    assert len(json.loads((tmp_path / "history.json").read_text())) == len(sampler.history)


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["train", "no-such-molecule", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "unknown system 'no-such-molecule'" in err and "alanine-dipeptide" in err

    bad = tmp_path / "bad.pdb"
    bad.write_text("this is not a PDB file\n")
    assert main(["train", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "bad.pdb" in capsys.readouterr().err

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"garbage")
    assert main(["evaluate", str(run)]) == 2
    assert "openmm-cmt evaluate: error:" in capsys.readouterr().err


def test_every_step_records_where_its_draws_put_the_backbone(trained):
    from openmm_cmt import metrics

    sampler, out = trained
    for record in sampler.history:
        (label,) = record["basins"]
        assert label == "ALA2" and set(record["basins"][label]) == set(metrics.BASINS)
        shares, populations = zip(*record["basins"][label].values())
        assert sum(shares) == pytest.approx(1.0) and sum(populations) == pytest.approx(1.0)
    # the last record describes the last step's own draws, unweighted and reweighted
    x, log_q, log_p = sampler.trainer.last_draws
    assert x.shape == (sampler.config.cmt["samples_per_step"], 22, 3)
    angles = metrics.phi_psi(x, sampler.molsys.topology, per_residue=True)
    expected = metrics.basin_shares(angles, ["ALA2"], (log_p - log_q).numpy())
    assert sampler.history[-1]["basins"] == expected
    assert BoltzmannGeneratorSampler.load(out).history[-1]["basins"] == expected  # kept in the checkpoint


def test_a_system_without_a_backbone_has_no_basin_trace():
    import openmm
    import openmm.app as app
    from openmm import unit

    from openmm_cmt.sampler import _basin_trace
    from openmm_cmt.systems import MolecularSystem

    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    for i in range(4):
        topology.addAtom(f"C{i}", app.Element.getBySymbol("C"), residue)
    system = openmm.System()
    for _ in range(4):
        system.addParticle(12.0 * unit.amu)
    positions = np.array([[0, 0, 0], [0.15, 0, 0], [0.2, 0.14, 0], [0.35, 0.15, 0.05]], dtype=float)
    assert _basin_trace(MolecularSystem("four", topology, system, positions, 300.0)) is None
