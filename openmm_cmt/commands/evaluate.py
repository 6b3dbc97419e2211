"""openmm-cmt evaluate RUN: metrics, plots and report of a trained run."""

from __future__ import annotations

import os

from openmm_cmt.commands import add_trust_argument, non_negative_int, positive_int


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="run folder written by openmm-cmt train")
    add_trust_argument(p)
    p.add_argument("--reference", default="auto",
                   help=".npz from openmm-cmt reference; auto: the one shipped for the system, if any; none: skip")
    p.add_argument("--n-samples", "--draw-size", dest="n_samples", type=positive_int, default=None,
                   help="generator samples per draw (default: the run's eval_samples)")
    p.add_argument("--draws", type=positive_int, default=5,
                   help="independent draws: ESS median/min/max and Pareto k per draw, observables over all (default 5)")
    p.add_argument("--bins", type=positive_int, default=100, help="Ramachandran histogram bins per axis")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--seed", type=non_negative_int, default=0)


def run(args) -> int:
    import torch

    from openmm_cmt.commands.train import _print_metrics
    from openmm_cmt.evaluation import evaluate, summary_lines
    from openmm_cmt.sampler import BoltzmannGeneratorSampler

    sampler = BoltzmannGeneratorSampler.load(args.run, device=args.device, trust_run=args.trust_run)
    n = args.n_samples or sampler.config.eval_samples
    m = evaluate(sampler, args.run, n_samples=n, reference=args.reference, bins=args.bins, n_draws=args.draws,
                 generator=torch.Generator(sampler.device).manual_seed(args.seed))
    _print_metrics(m)
    for line in summary_lines(m):
        print(line)
    print(f"metrics: {os.path.join(args.run, 'metrics.json')}")
    print(f"report: {os.path.join(args.run, 'report.html')}")
    sampler.close()
    return 0
