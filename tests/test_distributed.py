"""Data-parallel CMT (gloo, two processes under torchrun) computes the one-process path."""

import json
import os
import subprocess
import sys

import pytest
import torch

from openmm_cmt.cmt import CMTTrainer
from openmm_cmt.cmt.distributed import shard

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


def draw_as_ranks(trainer: CMTTrainer, streams: list[torch.Generator]) -> None:
    """Make ``trainer``'s flow draw what ``len(streams)`` processes draw together: rank r's
    share from its stream (seeded seed + r), concatenated in rank order. A flow with a
    latent split is sampled through its latent draw (``FlowCalls.sample``), others whole."""
    own_sample = trainer.flow.sample

    def sample(n, generator=None):
        parts = [own_sample(len(shard(n, r, len(streams))), generator=stream) for r, stream in enumerate(streams)]
        return tuple(torch.cat(t) for t in zip(*parts))

    trainer.flow.sample = sample
    if hasattr(trainer.flow, "sample_latent"):
        own_latent = trainer.flow.sample_latent

        def sample_latent(n, generator=None):
            return torch.cat([own_latent(len(shard(n, r, len(streams))), stream) for r, stream in enumerate(streams)])

        trainer.flow.sample_latent = sample_latent


class AsRanks(CMTTrainer):
    """One process doing, in the same order, the arithmetic of ``n_ranks`` processes of
    DistributedCMTTrainer, for configs whose buffer and minibatch are the step's samples
    (no energy cut): per-rank draws, energies and log densities; each gradient step the
    per-rank minibatch losses, with weights normalised over all (and, for a tilted fit,
    scaled by each rank's share of the tilted mass), summed as the all-reduce sums them."""

    def __init__(self, flow, target, config, n_ranks=2):
        super().__init__(flow, target, config)
        assert config.buffer_size == config.batch_size == config.samples_per_step
        assert config.drop_top_energy_fraction == 0
        self.n_ranks = n_ranks
        # One stream per rank serves its draws and its minibatches, as in each process.
        self.streams = [torch.Generator().manual_seed(config.seed + r) for r in range(n_ranks)]
        draw_as_ranks(self, self.streams)

    def _per_rank(self, fn, x):
        parts = [shard(x.shape[0], r, self.n_ranks) for r in range(self.n_ranks)]
        return torch.cat([fn(x[part.start : part.stop]) for part in parts])

    def _log_p(self, x):
        return self._per_rank(super()._log_p, x)

    def _log_q(self, x):
        return self._per_rank(super()._log_q, x)

    def _fit_steps(self, buf_x, log_w):  # inside _fit, which swaps in the optimised parameters
        parts = [shard(buf_x.shape[0], r, self.n_ranks) for r in range(self.n_ranks)]
        losses = []
        for _ in range(self.config.grad_steps_per_step):
            rows = [part.start + torch.randperm(len(part), generator=g) for part, g in zip(parts, self.streams)]
            log_norm = torch.logsumexp(torch.stack([torch.logsumexp(log_w[i], 0) for i in rows]), 0)
            pieces = []
            for i in rows:
                pieces.append((*self.calls.loss_and_grads(buf_x[i], torch.exp(log_w[i] - log_norm)), self.calls.log_mass))
            if self.calls.tilt:  # each part's share of the tilted mass, as the processes exchange it
                total = torch.logsumexp(torch.cat([m.reshape(1) for *_, m in pieces]), 0)
                pieces = [(part_loss * torch.exp(m - total).to(part_loss.dtype),
                          [None if g is None else g * torch.exp(m - total).to(g.dtype) for g in part_grads], m)
                         for part_loss, part_grads, m in pieces]
            loss, grads = None, None
            for part_loss, part_grads, _ in pieces:
                loss = part_loss if loss is None else loss + part_loss
                grads = part_grads if grads is None else [a + b for a, b in zip(grads, part_grads)]
            losses.append(self._apply(loss, grads))
        return losses


def test_shard_splits_rows_in_rank_order():
    assert [shard(10, r, 3) for r in range(3)] == [range(0, 4), range(4, 7), range(7, 10)]
    assert sum(len(shard(7, r, 4)) for r in range(4)) == 7


@pytest.mark.parametrize("path, drop, steps, fit_order",
                         [("cmt", 0.0, 3, 1.0), ("reverse-kl", 0.0, 3, 1.0), ("cmt", 0.2, 1, 1.0), ("cmt", 0.0, 1, 2.0)])
def test_two_processes_follow_the_one_process_path(tmp_path, path, drop, steps, fit_order):
    """Per-process FIFO shards hold the one-process buffer when each step fills them
    alike; with an energy cut the kept counts differ by process, so one step checks it.
    So does one step of a tilted fit (fit_order 2), whose weights are normalised over both
    processes' rows."""
    from openmm_cmt.cmt.toy_targets import gmm40

    done = torchrun(2, "toy", str(tmp_path), path, str(drop), str(steps), str(fit_order))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # every process holds the same history and, bit for bit, the same flow
    assert ranks[0]["history"] == ranks[1]["history"] and ranks[0]["params"] == ranks[1]["params"]
    config = dist_worker.toy_config(path, drop, steps, fit_order=fit_order)
    if path == "cmt" and drop == 0 and fit_order == 1:
        reference = AsRanks(dist_worker.toy_flow(), gmm40().target(), config)
        reference.run()
        # the same arithmetic in the same order: equal to the last bit
        assert ranks[0] == dist_worker.summary(reference) | {"buffer_log_p": ranks[0]["buffer_log_p"]}
        return
    reference = CMTTrainer(dist_worker.toy_flow(), gmm40().target(), config)
    draw_as_ranks(reference, [torch.Generator().manual_seed(config.seed + r) for r in range(2)])
    reference.run()
    expected = dist_worker.summary(reference)
    got = ranks[0]
    assert [r["evaluations"] for r in got["history"]] == [r["evaluations"] for r in expected["history"]]
    for g, e in zip(got["history"], expected["history"]):
        for key in ("lam", "eta", "alpha", "beta", "log_z", "ess", "loss"):
            # the same samples, sums in another order: rounding only
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


def test_alanine_dipeptide_two_processes_resume_and_match_one_process(tmp_path):
    from openmm_cmt.presets import preset
    from openmm_cmt.sampler import BoltzmannGeneratorSampler

    run = str(tmp_path / "run")
    done = openmm_cmt("train", "alanine-dipeptide", "--out", run, "--steps", "2", "--nproc", "2", *TINY_ARGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert dist_worker.stored_trainer_state(run)["distributed"]["world_size"] == 2
    # another world size cannot continue the per-process buffer shards and streams (the
    # path --resume takes)
    with pytest.raises(ValueError, match=r"written by 2 training process\(es\).*--nproc 2"):
        BoltzmannGeneratorSampler.load(run)
    # a time budget (ample here) takes a collective each step: rank 0's estimate for all
    done = openmm_cmt("train", "alanine-dipeptide", "--out", run, "--resume", "--steps", "3", "--nproc", "2",
                      "--device", "cpu", "--quiet", "--no-evaluate", "--max-minutes", "30")
    assert done.returncode == 0, done.stderr[-3000:]
    history = dist_worker.stored_trainer_state(run)["history"]
    assert [r["evaluations"] for r in history] == [128, 256, 384]

    cmt = {k.split(".")[1]: v for k, v in TINY.items() if k.startswith("cmt.")}
    generator = {k.split(".")[1]: v for k, v in TINY.items() if k.startswith("generator.")}
    # the run was configured for n_steps = 2; the resume extends it by a third step
    config = preset("laptop", cmt=dict(cmt, n_steps=2), generator=generator, energy_compile=False, device="cpu")
    sampler = BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config=config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each training process: the same kernels, the same rounding
    try:
        reference = AsRanks(sampler.generator, sampler._target(), config.cmt_config())
        reference.run(2)
        expected = reference.run(3)
    finally:
        torch.set_num_threads(threads)
        sampler.close()
    keys = ("lam", "eta", "alpha", "beta", "log_z", "ess", "kl", "entropy_drop", "loss", "evaluations")
    assert [{k: r[k] for k in keys} for r in history] == [{k: r[k] for k in keys} for r in expected]


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
    state = dist_worker.stored_trainer_state(run)  # complete and matching its manifest
    assert len(state["history"]) == 2 and state["distributed"]["world_size"] == 2


def test_bench_parallel_summarises_phases_apart_from_the_first_step():
    from openmm_cmt.bench.parallel import phase_summary
    from openmm_cmt.cmt.trainer import PHASES

    history = [{"step_wall_s": 3.0 * (i + 1), "phase_s": {p: float(i + k) for k, p in enumerate(PHASES)}}
               for i in range(3)]
    summary = phase_summary(history)
    assert summary["steps"] == 3
    assert summary["first"] == {**{p: float(k) for k, p in enumerate(PHASES)}, "step": 3.0}
    assert summary["later_mean"] == {**{p: 1.5 + k for k, p in enumerate(PHASES)}, "step": 7.5}
    assert phase_summary(history[:1])["later_mean"] is None


def test_one_process_group_draws_what_the_plain_trainer_draws(tmp_path):
    import torch.distributed as dist

    from openmm_cmt.cmt.distributed import DistributedCMTTrainer
    from openmm_cmt.cmt.toy_targets import gmm40

    config = dist_worker.toy_config("cmt", 0.0, 2)
    plain = CMTTrainer(dist_worker.toy_flow(), gmm40().target(), config)
    plain.run()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        one = DistributedCMTTrainer(dist_worker.toy_flow(), gmm40().target(), config)
        one.run()
    finally:
        dist.destroy_process_group()
    # the same samples, so the same first dual; later the weights are normalised as
    # exp(log w - logsumexp) instead of softmax: rounding apart
    assert one.history[0]["lam"] == plain.history[0]["lam"] and one.history[0]["eta"] == plain.history[0]["eta"]
    assert one.history[1]["lam"] == pytest.approx(plain.history[1]["lam"], rel=1e-6)
    assert one.history[1]["evaluations"] == plain.history[1]["evaluations"]
