"""bench flow (eager vs compiled side by side) and bench energy (fair OpenMM loop baselines)."""

import json

import pytest

import openmm_cmt  # noqa: F401  (torch before openmm)
from openmm_cmt.bench.energy import busy_cores
from openmm_cmt.cli import main
from openmm_cmt.cmt import compiled as compiled_module


def test_bench_flow_reports_eager_and_compiled_side_by_side(tmp_path, monkeypatch):
    # An exact stand-in for torch.compile keeps the test fast; the real one is covered
    # by tests/test_compiled.py.
    monkeypatch.setattr(compiled_module.torch, "compile", lambda fn, **kw: fn)
    out = tmp_path / "flow.json"
    argv = ["bench", "flow", "--device", "cpu", "--presets", "laptop", "--n", "64", "--steps", "1",
            "--repeats", "2", "--seed", "1", "--modes", "eager", "compiled", "compiled-regional", "compiled-cudagraphs", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    laptop = report["presets"]["laptop"]
    assert laptop["batch_size"] == 512 and laptop["params"] > 0
    for mode in ("eager", "compiled", "compiled-regional", "compiled-cudagraphs"):
        figures = laptop["modes"][mode]
        for key in ("train_samples_per_s", "sample_per_s", "log_prob_per_s", "train_samples_per_cpu_s"):
            assert figures[key] > 0
        assert figures["fallback"] == []
    for mode in ("compiled", "compiled-regional", "compiled-cudagraphs"):
        assert laptop["modes"][mode]["compiled"] == {"loss": True, "log_prob": True, "sample": True}
    for key in ("speedup", "speedup_regional", "speedup_cudagraphs"):
        assert set(laptop[key]) >= {"train_samples_per_s", "sample_per_s", "log_prob_per_s"}
    assert report["seed"] == 1 and "load_before" in report and "load_after" in report


def test_bench_flow_batch_size_replaces_the_presets_minibatch(tmp_path, monkeypatch):
    monkeypatch.setattr(compiled_module.torch, "compile", lambda fn, **kw: fn)
    out = tmp_path / "flow.json"
    argv = ["bench", "flow", "--device", "cpu", "--presets", "laptop", "--batch-size", "96", "--n", "32",
            "--steps", "1", "--repeats", "1", "--modes", "eager", "--json", str(out)]
    assert main(argv) == 0
    assert json.loads(out.read_text())["presets"]["laptop"]["batch_size"] == 96


def test_bench_flow_rejects_a_minibatch_below_one(capsys):
    assert main(["bench", "flow", "--device", "cpu", "--batch-size", "0"]) != 0
    assert "--batch-size must be positive, got 0" in capsys.readouterr().err


def test_bench_flow_rejects_unknown_presets(capsys):
    assert main(["bench", "flow", "--device", "cpu", "--presets", "phone"]) != 0
    assert "unknown presets ['phone']" in capsys.readouterr().err


def test_busy_cores_start_and_are_killed():
    with busy_cores(1) as busy:
        procs = list(busy.procs)
        assert len(procs) == 1 and procs[0].poll() is None
    assert all(p.poll() is not None for p in procs)


def test_bench_energy_times_the_loop_idle_and_busy_against_the_best_loop(tmp_path):
    out = tmp_path / "energy.json"
    argv = ["bench", "energy", "--n", "40", "--loop-seconds", "0.3", "--n-workers", "1",
            "--engines", "openmm-loop-CPU", "openmm-loop-CPU-busy", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    names = [e["name"] for e in report["engines"]]
    assert names == ["openmm-loop-CPU", "openmm-loop-CPU-busy"]
    ratios = [e["vs_best_loop"] for e in report["engines"]]
    assert max(ratios) == pytest.approx(1.0) and min(ratios) > 0
    assert report["best_loop_evals_per_s"] == pytest.approx(max(e["evals_per_s"] for e in report["engines"]))
    assert all(e["max_rel_err"] < 1e-5 for e in report["engines"])
