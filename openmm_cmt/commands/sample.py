"""openmm-cmt sample RUN: weighted samples from a trained generator."""

from __future__ import annotations

import numpy as np

from openmm_cmt.commands import add_trust_argument, non_negative_int, positive_int
from openmm_cmt.trajectory_io import FORMATS, SIDECAR_SUFFIX, trajectory_format

OUT_HELP = (f"output file, format by extension ({', '.join(FORMATS)}): .npz holds positions [n, N, 3] nm, "
            f"log_weights, log_q, energies (kJ/mol); .h5 (mdtraj HDF5) holds them in its /openmm_cmt group; "
            f".dcd/.xtc/.pdb write the frames and the arrays to FILE{SIDECAR_SUFFIX}")


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="run folder written by openmm-cmt train")
    add_trust_argument(p)
    p.add_argument("--n", type=positive_int, default=10_000, help="number of samples")
    p.add_argument("--out", required=True, help=OUT_HELP)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])


def run(args) -> int:
    import torch

    from openmm_cmt.metrics import reverse_ess
    from openmm_cmt.sampler import BoltzmannGeneratorSampler

    trajectory_format(args.out)  # an unknown extension fails before any work
    sampler = BoltzmannGeneratorSampler.load(args.run, device=args.device, trust_run=args.trust_run)
    s = sampler.sample(args.n, generator=torch.Generator(sampler.device).manual_seed(args.seed))
    written = s.save(args.out)
    ok = np.isfinite(s.log_weights)
    print(f"{args.n} samples -> {' + '.join(written)}; reverse ESS {reverse_ess(s.log_weights[ok]) * ok.mean():.4f}")
    sampler.close()
    return 0
