"""openmm-cmt sample RUN: weighted samples from a trained generator."""

from __future__ import annotations

import io

import numpy as np

from openmm_cmt.commands import add_trust_argument, non_negative_int, positive_int


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="run folder written by openmm-cmt train")
    add_trust_argument(p)
    p.add_argument("--n", type=positive_int, default=10_000, help="number of samples")
    p.add_argument("--out", required=True, help="output .npz: positions [n, N, 3] nm, log_weights, log_q, energies")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])


def run(args) -> int:
    import torch

    from openmm_cmt.checkpoint import atomic_write_bytes
    from openmm_cmt.metrics import reverse_ess
    from openmm_cmt.sampler import BoltzmannGeneratorSampler

    sampler = BoltzmannGeneratorSampler.load(args.run, device=args.device, trust_run=args.trust_run)
    s = sampler.sample(args.n, generator=torch.Generator(sampler.device).manual_seed(args.seed))
    buf = io.BytesIO()
    np.savez(buf, positions=s.positions, log_weights=s.log_weights, log_q=s.log_q, energies=s.energies)
    atomic_write_bytes(args.out, buf.getvalue())
    ok = np.isfinite(s.log_weights)
    print(f"{args.n} samples -> {args.out}; reverse ESS {reverse_ess(s.log_weights[ok]) * ok.mean():.4f}")
    sampler.close()
    return 0
