"""openmm-cmt bench toy: every annealing path on FAB's 40-mode Gaussian mixture.

Each path trains the same small spline flow from the same q_0 = N(0, 20^2 I) (which
covers [-40, 40]^2) with the same number of target evaluations. Metrics come from
``--eval-samples`` fresh flow samples (not counted as training evaluations):

- ess: reverse Kish ESS fraction (unclipped);
- modes_covered: modes holding at least a quarter of their share of the samples within
  3 sigma (``openmm_cmt.cmt.toy_targets.modes_covered``);
- log_z_error: importance-sampling estimate of log Z minus the exact value (a mode-dropping
  model underestimates it);
- max_step_entropy_drop, max_step_kl, min_step_ess: over the annealing steps, from the
  run history (for reverse-kl: of the model against p at each step's start).
"""

from __future__ import annotations

import json
import time

import torch

from openmm_cmt.cmt.paths import PATHS
from openmm_cmt.cmt.trainer import CMTConfig, CMTTrainer
from openmm_cmt.metrics import log_z_estimate, reverse_ess
from openmm_cmt.cmt.toy_targets import gmm40

# Per-path schedule settings; the budget and the optimiser are shared.
_PATH_SETTINGS = {
    "geometric-linear": {"n_geometric": 8},  # reach p with a few steps left to refine
    "temperature-ladder": {"t_high_factor": 100.0, "n_temperatures": 8},  # sigma 1.3 -> 13 at T_high
}


def add_arguments(parser) -> None:
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the flow and the trainer (the mixture is fixed)")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS, help="paths to run (default all)")
    parser.add_argument("--steps", type=int, default=12, help="annealing steps per path (default 12)")
    parser.add_argument("--samples-per-step", type=int, default=2000, help="target evaluations per step (default 2000)")
    parser.add_argument("--eval-samples", type=int, default=10000, help="flow samples for the metrics (default 10000)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the flow is tiny)")


def run_path(path: str, seed: int = 0, n_steps: int = 12, samples_per_step: int = 2000, eval_samples: int = 10000) -> dict:
    """Train one path on GMM-40 and measure it; returns the JSON record of that path."""
    from openmm_cmt.flows import EuclideanFlow

    gmm = gmm40()
    flow = EuclideanFlow(2, n_layers=4, hidden=64, n_bins=24, prior_scale=20.0, tail_bound=60.0, seed=seed)
    config = CMTConfig(
        path=path, eps_tr=1.0, eps_ent=1.0, n_steps=n_steps, samples_per_step=samples_per_step,
        buffer_size=3 * samples_per_step, grad_steps_per_step=100, batch_size=500, lr=5e-3, seed=seed,
        **_PATH_SETTINGS.get(path, {}),
    )
    trainer = CMTTrainer(flow, gmm.target(), config)
    t0 = time.perf_counter()
    trainer.run()
    wall = time.perf_counter() - t0
    with torch.no_grad():
        x, log_q = flow.sample(eval_samples)
    log_w = gmm.unnormalized_log_prob(x) - log_q.to(torch.float64)
    return {
        "path": path,
        "ess": reverse_ess(log_w),
        "modes_covered": gmm.modes_covered(x),
        "log_z_error": log_z_estimate(log_w) - gmm.log_z,
        "evaluations": trainer.n_evaluations,
        "wall_s": wall,
        # The ablation reading: a large entropy drop in one step is mass teleportation, a
        # large step KL (small step ESS) is lost overlap between q_i and q_{i+1}.
        "max_step_entropy_drop": max(r["entropy_drop"] for r in trainer.history),
        "max_step_kl": max(r["kl"] for r in trainer.history),
        "min_step_ess": min(r["ess"] for r in trainer.history),
    }


def run(args) -> int:
    if args.steps < 1 or args.samples_per_step < 2 or args.eval_samples < 2:
        raise ValueError("--steps must be >= 1, --samples-per-step and --eval-samples >= 2")
    torch.set_num_threads(args.threads)
    print(f"GMM-40 (2-D, 40 modes); {args.steps} steps x {args.samples_per_step} evaluations per path, "
          f"seed {args.seed}, {torch.get_num_threads()} thread(s)")
    print(f"{'path':<20} {'ESS':>7} {'modes':>6} {'logZ err':>9} {'evals':>8} {'wall s':>7}"
          f" {'max dH':>7} {'max KL':>7} {'min step ESS':>12}")
    variants = []
    for path in args.paths:
        r = run_path(path, args.seed, args.steps, args.samples_per_step, args.eval_samples)
        variants.append(r)
        print(f"{r['path']:<20} {r['ess']:7.3f} {r['modes_covered']:>3d}/40 {r['log_z_error']:9.3f} "
              f"{r['evaluations']:8d} {r['wall_s']:7.1f} {r['max_step_entropy_drop']:7.2f} "
              f"{r['max_step_kl']:7.2f} {r['min_step_ess']:12.3f}", flush=True)
    if args.json:
        report = {"target": "gmm40", "variants": variants}
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"wrote {args.json}")
    return 0
