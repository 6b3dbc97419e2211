"""openmm-cmt export RUN --out generator.pt: the generator as TorchScript for TorchForce.

The same as ``BoltzmannGeneratorSampler.load(RUN).export(path)``: forward(positions
[n_atoms, 3] nm) -> E_BG = -kT log q(x) kJ/mol, plus scripted sample/log_prob and metadata.
"""

from __future__ import annotations

import sys

from openmm_cmt.commands import add_trust_argument


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="run folder written by openmm-cmt train")
    add_trust_argument(p)
    p.add_argument("--out", required=True, help="output TorchScript file (e.g. generator.pt)")


def run(args) -> int:
    from openmm_cmt.io import CheckpointError
    from openmm_cmt.sampler import BoltzmannGeneratorSampler

    try:
        sampler = BoltzmannGeneratorSampler.load(args.run, device="cpu", trust_run=args.trust_run)
    except CheckpointError as err:
        print(f"openmm-cmt export: error: {err}", file=sys.stderr)
        return 2
    try:
        metadata = sampler.export(args.out)
    finally:
        sampler.close()
    print(
        f"{args.out}: E_BG = -kT log q for {metadata['system']} ({metadata['n_atoms']} atoms, "
        f"{metadata['temperature_K']} K, {metadata['dtype']}); load with "
        "openmm_cmt.mcmc.load_generator_force(path, system) or generator_python_force(path, system)"
    )
    return 0
