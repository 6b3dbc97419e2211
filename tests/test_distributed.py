"""Data-parallel CMT (gloo, two processes under torchrun) computes the one-process path."""

import json
import os
import subprocess
import sys

import pytest
import torch

from openmm_cmt.cmt import CMTTrainer
from openmm_cmt.cmt.distributed import drawing_from, shard

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dist_worker  # noqa: E402

ROOT = os.path.dirname(HERE)


def torchrun(nproc: int, *args, timeout=240, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           os.path.join(HERE, "dist_worker.py"), *args]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
           **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def draw_as_ranks(trainer: CMTTrainer, n_ranks: int) -> None:
    """Make ``trainer``'s flow draw what ``n_ranks`` processes draw together: rank r's share
    from the stream seeded seed + r, concatenated in rank order."""
    streams = [torch.Generator().manual_seed(trainer.config.seed + r) for r in range(n_ranks)]
    own_sample = trainer.flow.sample

    def sample(n):
        parts = []
        for r, stream in enumerate(streams):
            with drawing_from(stream):
                parts.append(own_sample(len(shard(n, r, n_ranks))))
        return tuple(torch.cat(t) for t in zip(*parts))

    trainer.flow.sample = sample


def test_shard_splits_rows_in_rank_order():
    assert [shard(10, r, 3) for r in range(3)] == [range(0, 4), range(4, 7), range(7, 10)]
    assert sum(len(shard(7, r, 4)) for r in range(4)) == 7


@pytest.mark.parametrize("path, drop, steps", [("cmt", 0.0, 3), ("reverse-kl", 0.0, 3), ("cmt", 0.2, 1)])
def test_two_processes_follow_the_one_process_path(tmp_path, path, drop, steps):
    """Per-process FIFO shards hold the one-process buffer when each step fills them
    alike; with an energy cut the kept counts differ by process, so one step checks it."""
    from openmm_cmt.systems.toy import gmm40

    done = torchrun(2, "toy", str(tmp_path), path, str(drop), str(steps))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # every process holds the same history and, bit for bit, the same flow
    assert ranks[0]["history"] == ranks[1]["history"] and ranks[0]["params"] == ranks[1]["params"]
    reference = CMTTrainer(dist_worker.toy_flow(), gmm40().target(), dist_worker.toy_config(path, drop, steps))
    draw_as_ranks(reference, 2)
    reference.run()
    expected = dist_worker.summary(reference)
    got = ranks[0]
    assert [r["evaluations"] for r in got["history"]] == [r["evaluations"] for r in expected["history"]]
    for g, e in zip(got["history"], expected["history"]):
        for key in ("lam", "eta", "alpha", "beta", "log_z", "ess", "loss"):
            # the same samples and arithmetic up to the order of sums: rounding only
            assert g[key] == pytest.approx(e[key], rel=1e-6, abs=1e-9), key
    # a float32 flow after 18 Adam steps: a few float32 roundings (eps 1.2e-7) apart
    for g, e in zip(got["params"], expected["params"]):
        assert g == pytest.approx(e, rel=1e-5, abs=1e-6)
    if steps == 1:  # the energy cut is global: the shards together hold the rows one process keeps
        assert ranks[0]["buffer_log_p"] + ranks[1]["buffer_log_p"] == pytest.approx(expected["buffer_log_p"], rel=1e-12)


# -- alanine dipeptide through the command line ------------------------------------------

TINY = {"generator.n_layers": 2, "generator.hidden": 16, "generator.depth": 1, "generator.scaling": "fixed",
        "cmt.samples_per_step": 128, "cmt.buffer_size": 128, "cmt.batch_size": 128, "cmt.grad_steps_per_step": 2,
        "energy_compile": "false", "checkpoint_every": 1}
TINY_ARGS = ["--device", "cpu", "--quiet", "--no-evaluate"] + [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]


def openmm_cmt(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "openmm_cmt", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def stored_trainer_state(run) -> dict:
    from openmm_cmt.checkpoint import run_snapshot, safe_torch_load

    return safe_torch_load(os.path.join(run_snapshot(run), "checkpoint.pt"))["trainer"]


def test_alanine_dipeptide_two_processes_resume_and_match_one_process(tmp_path):
    from openmm_cmt.presets import preset
    from openmm_cmt.sampler import BoltzmannGeneratorSampler

    run = str(tmp_path / "run")
    done = openmm_cmt("train", "alanine-dipeptide", "--out", run, "--steps", "2", "--nproc", "2", *TINY_ARGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert stored_trainer_state(run)["distributed"]["world_size"] == 2
    # another world size cannot continue the per-process buffer shards and streams (the
    # path --resume takes)
    with pytest.raises(ValueError, match=r"written by 2 training process\(es\).*--nproc 2"):
        BoltzmannGeneratorSampler.load(run)
    done = openmm_cmt("train", "alanine-dipeptide", "--out", run, "--resume", "--steps", "3", "--nproc", "2",
                      "--device", "cpu", "--quiet", "--no-evaluate")
    assert done.returncode == 0, done.stderr[-3000:]
    history = stored_trainer_state(run)["history"]
    assert [r["evaluations"] for r in history] == [128, 256, 384]

    cmt = {k.split(".")[1]: v for k, v in TINY.items() if k.startswith("cmt.")}
    generator = {k.split(".")[1]: v for k, v in TINY.items() if k.startswith("generator.")}
    config = preset("laptop", cmt=dict(cmt, n_steps=3), generator=generator, energy_compile=False, device="cpu")
    sampler = BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config=config)
    reference = sampler._make_trainer()
    draw_as_ranks(reference, 2)
    expected = reference.run()
    for got, want in zip(history, expected):
        # Step 0: the same samples and energies, the dual on the same vectors. Later steps:
        # the gradient summed over two processes differs from the one-batch gradient by
        # float32 rounding, and Adam's first steps (g / sqrt(g^2)) turn that into parameter
        # differences of up to lr where a component is nearly zero: close, not equal, paths.
        rel = 1e-6 if got["step"] == 0 else 1e-2
        for key in ("lam", "eta", "log_z", "ess"):
            assert got[key] == pytest.approx(want[key], rel=rel, abs=rel), (got["step"], key)
    sampler.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_dying_process_ends_the_job_and_keeps_the_last_checkpoint(tmp_path):
    run, pids = tmp_path / "run", tmp_path / "pids"
    pids.mkdir()
    argv = ["train", "alanine-dipeptide", "--out", str(run), "--steps", "5", "--dist-timeout", "20", *TINY_ARGS]
    done = torchrun(2, "cli", "1", "2", *argv, timeout=180, env={"DIST_TEST_PIDS": str(pids)})
    assert done.returncode != 0
    assert "exitcode  : 3" in done.stderr and "rank      : 1" in done.stderr  # torchrun names the process
    for name in ("pid0", "pid1"):
        assert not _alive(int((pids / name).read_text()))
    state = stored_trainer_state(run)  # complete and matching its manifest
    assert len(state["history"]) == 2 and state["distributed"]["world_size"] == 2
