"""openmm-cmt bench parallel: annealing-step phases of data-parallel training, 1 vs N processes.

For each process count P of ``--nprocs`` it trains the same fresh run
(``openmm-cmt train SYSTEM --nproc P --steps S --no-evaluate`` with the ``--set``
overrides) in a temporary folder and reads the phase timings of its history (rank 0's
``phase_s``: sample, energy, dual, buffer, fit, checkpoint). The first step (first calls,
start-up) is reported apart from the mean over the others. With P processes every phase
measures rank 0's wall time; the ``dual`` phase includes the all-gather, and so any wait
for a slower process's energies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from openmm_cmt.cmt.trainer import PHASES


def add_arguments(parser) -> None:
    parser.add_argument("--system", default="alanine-dipeptide", help="system to train (default alanine-dipeptide)")
    parser.add_argument("--preset", default="laptop", help="training preset (default laptop)")
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2], help="process counts (default 1 2)")
    parser.add_argument("--steps", type=int, default=5, help="annealing steps per run (default 5)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="preset override passed to train (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the runs")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON here")


def phase_summary(history: list[dict]) -> dict:
    """Seconds per phase and per step: the first step, and the mean over the later ones."""
    def row(records):
        if not records:
            return None
        out = {p: float(np.mean([r["phase_s"].get(p, 0.0) for r in records])) for p in PHASES}
        out["step"] = float(np.mean([r["step_wall_s"] for r in records]))
        return out

    return {"first": row(history[:1]), "later_mean": row(history[1:]), "steps": len(history)}


def run(args) -> int:
    from openmm_cmt.bench.energy import machine_description
    from openmm_cmt.checkpoint import safe_torch_load
    from openmm_cmt.io import run_snapshot

    if any(p < 1 for p in args.nprocs):
        raise ValueError(f"--nprocs must be positive process counts, got {args.nprocs}")
    report = {"machine": machine_description(), "system": args.system, "preset": args.preset, "steps": args.steps,
              "set": args.set, "seed": args.seed, "load_before": os.getloadavg(), "runs": {}}
    settings = [a for item in args.set for a in ("--set", item)]
    for nproc in args.nprocs:
        with tempfile.TemporaryDirectory(prefix="openmm-cmt-bench-parallel-") as tmp:
            out = os.path.join(tmp, "run")
            cmd = [sys.executable, "-m", "openmm_cmt", "train", args.system, "--preset", args.preset, "--out", out,
                   "--steps", str(args.steps), "--seed", str(args.seed), "--device", "cpu", "--quiet",
                   "--no-evaluate", "--nproc", str(nproc), *settings]
            done = subprocess.run(cmd)
            if done.returncode != 0:
                print(f"openmm-cmt bench parallel: training with {nproc} process(es) failed", file=sys.stderr)
                return done.returncode
            history = safe_torch_load(os.path.join(run_snapshot(out), "checkpoint.pt"))["trainer"]["history"]
        report["runs"][str(nproc)] = phase_summary(history)
    report["load_after"] = os.getloadavg()
    _print_table(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def _print_table(report: dict) -> None:
    print(f"{report['machine']}; load average before {report['load_before'][0]:.1f}, "
          f"after {report['load_after'][0]:.1f}")
    print("procs  steps      " + " ".join(f"{p:>10s}" for p in (*PHASES, "step")))
    for nproc, summary in report["runs"].items():
        for label in ("first", "later_mean"):
            row = summary[label]
            if row is not None:
                print(f"{nproc:>5s}  {label:10s} " + " ".join(f"{row[p]:10.2f}" for p in (*PHASES, "step")))
