"""Energies/s of ML-potential targets (openmm-ml) on alanine dipeptide, per path.

Paths:
    openmm-inprocess   OpenMMEnergy(n_workers=0): one Context, one conformation per call
    openmm-pool        OpenMMEnergy(n_workers="auto"): worker processes (the PythonForce is
                       rebuilt in each worker from the System XML)
    batched-<device>   TorchEnergyEngine, float32: the torchani model on whole batches (ANI only)

Potentials:
    ase-emt            openmm-ml's 'ase' potential with ASE's EMT calculator (no download)
    ani2x              ANI-2x; with real weights when torchani finds them, otherwise with
                       random weights of the same architecture (same cost, meaningless
                       energies; reported as 'ani2x (random weights)')

Usage: python examples/ml_energy_benchmark.py [--n 256] [--json out.json]
Runs in about a minute on a 2-core CPU machine; ``--quick`` (8 conformations, 2 per
sample) in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from openmm_cmt.energy.openmm_energy import OpenMMEnergy
from openmm_cmt.energy.torch_energy import TorchEnergyEngine
from openmm_cmt.systems import MolecularSystem, alanine_dipeptide
from openmm_cmt.systems import ml

from _quick import add_quick_argument


def conformations(molsys, n: int, seed: int = 0, noise: float = 0.01) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return molsys.positions[None] + noise * rng.standard_normal((n, molsys.n_atoms, 3))


def rate(engine, x: np.ndarray) -> float:
    """Conformations per second of one call over ``x`` after a one-conformation warm-up."""
    engine.energy(x[:1])
    start = time.perf_counter()
    engine.energy(x)
    return x.shape[0] / (time.perf_counter() - start)


def ani2x_system(aldp):
    """ANI-2x on alanine dipeptide, and whether its weights are the real ones."""
    path, _, _ = ml.weights_location("ani2x")
    if os.path.isfile(path):
        return MolecularSystem.from_ml_potential(aldp.topology, aldp.positions, "ani2x", download=False), True
    from torchani.arch import Assembler
    from torchani.utils import SYMBOLS_2X

    # The ANI-2x architecture as torchani.models.ANI2x assembles it, with random weights.
    asm = Assembler(periodic_table_index=True)
    asm.set_symbols(SYMBOLS_2X)
    asm.set_global_cutoff_fn("cosine")
    asm.set_aev_computer(radial="ani2x", angular="ani2x", strategy="pyaev")
    asm.set_atomic_networks(ctor="ani2x")
    asm.set_neighborlist("all_pairs")
    asm.set_gsaes_as_self_energies("wb97x-631gd")
    data_dir = tempfile.mkdtemp(prefix="torchani-")
    os.makedirs(os.path.join(data_dir, "StateDicts"))
    torch.save(asm.assemble(8).state_dict(), os.path.join(data_dir, "StateDicts", "ani2x_state_dict.pt"))
    os.environ["TORCHANI_DATA_DIR"] = data_dir
    return MolecularSystem.from_ml_potential(aldp.topology, aldp.positions, "ani2x", download=False), False


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=None, help="conformations per measurement (default 256; 8 with --quick)")
    parser.add_argument("--n-per-sample", type=int, default=None,
                        help="conformations for ANI per-sample paths (default 32; 2 with --quick)")
    parser.add_argument("--json", default=None, help="write the rows here")
    add_quick_argument(parser)
    args = parser.parse_args(argv)
    args.n = args.n or (8 if args.quick else 256)
    args.n_per_sample = args.n_per_sample or (2 if args.quick else 32)
    from ase.calculators.emt import EMT

    aldp = alanine_dipeptide()
    rows = []

    def record(potential, path, value):
        rows.append({"potential": potential, "path": path, "energies_per_s": round(value, 1)})
        print(f"{potential:28s} {path:20s} {value:12.1f} energies/s", flush=True)

    emt = MolecularSystem.from_ml_potential(aldp.topology, aldp.positions, "ase", calculator=EMT())
    x = conformations(emt, args.n)
    with OpenMMEnergy(emt, platform="CPU", n_workers=0) as engine:
        record("ase-emt", "openmm-inprocess", rate(engine, x))
    with OpenMMEnergy(emt, platform="CPU", n_workers="auto") as engine:
        record("ase-emt", f"openmm-pool-{engine.n_workers}", rate(engine, x))

    try:
        ani, real = ani2x_system(aldp)
    except ImportError as err:
        print(f"ani2x skipped: {err}")
    else:
        label = "ani2x" if real else "ani2x (random weights)"
        x = conformations(ani, args.n)
        with OpenMMEnergy(ani, platform="CPU", n_workers=0) as engine:
            record(label, "openmm-inprocess", rate(engine, x[: args.n_per_sample]))
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            engine = TorchEnergyEngine(ani, device=device, dtype=torch.float32)  # as openmm-ml runs ANI
            record(label, f"batched-{device}", rate(engine, x))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return rows

if __name__ == "__main__":
    main()
