"""One process of a data-parallel test job, started by torchrun (tests/test_distributed.py).

``toy OUT PATH DROP STEPS [FIT_ORDER]``: trains the 40-mode mixture with DistributedCMTTrainer and writes
rank<r>.json (the history's dual solutions and the flow's parameters).
``cli DIE_RANK DIE_STEP ARGS...``: runs ``openmm-cmt ARGS``, rank DIE_RANK dying abruptly
(os._exit) at the start of annealing step DIE_STEP (-1: never), once the run folder holds the
checkpoint of the steps before it; every process first writes
its pid to pid<r> in the folder named by the environment variable DIST_TEST_PIDS.
"""

import json
import os
import sys

import torch

from openmm_cmt.cmt import distributed
from openmm_cmt.cmt.distributed import DistributedCMTTrainer


def toy_config(path: str, drop: float, steps: int, seed: int = 0, fit_order: float = 1.0):
    from openmm_cmt.cmt import CMTConfig

    # buffer and minibatch of the whole step: the one-process reference then fits on the same rows
    return CMTConfig(path=path, n_steps=steps, samples_per_step=301, buffer_size=301, batch_size=301,
                     grad_steps_per_step=6, drop_top_energy_fraction=drop, lr=5e-3, seed=seed, compile=False,
                     fit_order=fit_order)


def toy_flow():
    from openmm_cmt.flows import EuclideanFlow

    return EuclideanFlow(2, n_layers=2, hidden=16, n_bins=8, prior_scale=20.0, tail_bound=60.0, seed=0)


def summary(trainer) -> dict:
    keys = ("lam", "eta", "alpha", "beta", "log_z", "ess", "loss", "evaluations", "reverse_ess")
    return {"history": [{k: r[k] for k in keys} for r in trainer.history],
            "params": [p.detach().double().flatten().tolist() for p in trainer.flow.parameters()],
            "buffer_log_p": trainer.buffer.log_p.tolist()}


def toy(out: str, path: str, drop: float, steps: int, fit_order: float = 1.0) -> None:
    from openmm_cmt.cmt.toy_targets import gmm40

    distributed.init_process_group("cpu", timeout_s=60)
    trainer = DistributedCMTTrainer(toy_flow(), gmm40().target(), toy_config(path, drop, steps, fit_order=fit_order))
    trainer.run()
    with open(os.path.join(out, f"rank{trainer.rank}.json"), "w") as f:
        json.dump(summary(trainer), f)
    distributed.shutdown()


def cli(die_rank: int, die_step: int, argv: list[str]) -> int:
    from openmm_cmt.cli import main

    rank = int(os.environ["RANK"])
    with open(os.path.join(os.environ["DIST_TEST_PIDS"], f"pid{rank}"), "w") as f:
        f.write(str(os.getpid()))
    if rank == die_rank:
        step = DistributedCMTTrainer.step

        out = argv[argv.index("--out") + 1] if "--out" in argv else None

        def dying_step(self):
            if self.step_index == die_step:
                # Die once the main process has committed the previous step's checkpoint:
                # torchrun stops the others at once, and the test checks what was saved,
                # not whether a save in progress beat the stop.
                if out is not None:
                    _wait_for_checkpoint(out, die_step)
                os._exit(3)
            return step(self)

        DistributedCMTTrainer.step = dying_step
    return main(argv)


def stored_trainer_state(run: str) -> dict:
    """The trainer state of the run folder's current checkpoint."""
    from openmm_cmt.checkpoint import safe_torch_load
    from openmm_cmt.io import run_snapshot

    return safe_torch_load(os.path.join(run_snapshot(run), "checkpoint.pt"))["trainer"]


def _wait_for_checkpoint(run: str, n_steps: int, timeout_s: float = 60.0) -> None:
    """Wait until the run folder's checkpoint holds ``n_steps`` annealing steps."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if len(stored_trainer_state(run)["history"]) >= n_steps:
                return
        except Exception:  # not written yet, or being replaced
            pass
        time.sleep(0.05)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "toy":
        toy(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), *map(float, sys.argv[6:7]))
    else:
        sys.exit(cli(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]))
