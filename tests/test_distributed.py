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
