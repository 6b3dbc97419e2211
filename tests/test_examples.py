"""Every script in examples/ runs end to end in its --quick smoke mode."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SCRIPTS = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py") and not f.startswith("_"))


def _json(path):
    with open(path) as handle:
        return json.load(handle)


def _check_fes(folder):
    with open(folder / "fes.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    from openmm_cmt.trajectory_io import read_frames

    trajectory, arrays = read_frames(folder / "samples.h5")
    assert trajectory.n_frames == 2000 and arrays["log_weights"].shape == (2000,)


def _check_benchmark(folder):
    runs = _json(folder / "bench.json")["runs"]
    assert [r["plain_md"] for r in runs] == [False, True] and all(r["cycles"] == 4 for r in runs)


def _check_ml(folder):
    rows = {(r["potential"], r["path"]): r["energies_per_s"] for r in _json(folder / "ml.json")}
    assert rows[("ase-emt", "openmm-inprocess")] > 0 and any(p.startswith("ani2x") for p, _ in rows)


def _check_moves(name):
    def check(folder):
        summary = _json(folder / name)
        assert summary["n_proposed"] == 5 and 0 <= summary["n_accepted"] <= 5
    return check


#: script -> (arguments besides --quick, check of what it wrote into the working folder)
RUNS = {
    "reweighted_fes.py": (["--out", "fes.png", "--samples", "samples.h5"], _check_fes),
    "add_generator_moves.py": (["--out", "hybrid.json"], _check_moves("hybrid.json")),
    "openmmtools_mcmc.py": (["--out", "mcmc.json"], _check_moves("mcmc.json")),
    "hybrid_mc_benchmark.py": (["--json", "bench.json"], _check_benchmark),
    "ml_energy_benchmark.py": (["--json", "ml.json"], _check_ml),
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_in_quick_mode(script, tmp_path):
    assert script in RUNS, f"examples/{script} has no --quick run in tests/test_examples.py"
    arguments, check = RUNS[script]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
           "OPENMM_CPU_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), "--quick", *arguments], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    check(tmp_path)


def test_every_example_has_a_quick_run():
    assert sorted(RUNS) == SCRIPTS
    assert np.all([os.path.isfile(os.path.join(EXAMPLES, s)) for s in RUNS])
