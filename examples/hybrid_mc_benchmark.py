"""Hybrid MD/BG Monte Carlo against plain MD at the same number of MD steps.

Reads two trajectories written by ``openmm-cmt mc RUN --out ...`` (one with proposals,
one with ``--plain-md``) and prints acceptance, transitions per ns into and out of the
left-handed basin (C7ax / alpha_L, 0 < phi < 2.5 rad: the beta basin around phi = -pi
wraps past +pi, so a bare phi > 0 would count its wrap-around as a transition) and how
that basin's population approaches the reference::

    openmm-cmt mc RUN --n-chains 64 --n-cycles 200 --md-steps 50 --out hybrid.npz
    openmm-cmt mc RUN --n-chains 64 --n-cycles 200 --md-steps 50 --plain-md --out md.npz
    python examples/hybrid_mc_benchmark.py hybrid.npz md.npz

``--quick`` (smoke mode, seconds) trains a tiny generator, runs both short chains itself
and summarises them.
"""

import argparse
import json
import os
import tempfile

import numpy as np

import openmm_cmt  # noqa: F401
from openmm_cmt import metrics
from openmm_cmt.reference import bundled_reference, load_reference
from openmm_cmt.systems import alanine_dipeptide

from _quick import add_quick_argument, training_config


LEFT_HANDED_MAX = 2.5  # rad


def summarise(path, topology, reference_fraction):
    d = np.load(path)
    x = d["positions"]  # [cycles, chains, N, 3]
    cycles, chains = x.shape[:2]
    phi = metrics.phi_psi(x.reshape(-1, *x.shape[2:]).astype(np.float64), topology)[:, 0].reshape(cycles, chains)
    positive = (phi > 0) & (phi < LEFT_HANDED_MAX)
    flips = (positive[1:] != positive[:-1]).sum()
    ns = cycles * chains * float(d["md_steps"]) * float(d["timestep_ps"]) / 1000.0
    running = np.cumsum(positive.mean(1)) / np.arange(1, cycles + 1)
    within = np.abs(running - reference_fraction) <= max(0.5 * reference_fraction, 1e-3)
    # First cycle after which the running phi > 0 fraction stays within 50 % of the reference.
    settled = next((i for i in range(cycles) if within[i:].all()), None)
    return {
        "file": path,
        "plain_md": bool(d["plain_md"]),
        "chains": chains,
        "cycles": cycles,
        "aggregate_ns": ns,
        "wall_s": float(d["wall_seconds"]),
        "acceptance_rate": None if bool(d["plain_md"]) else float(d["acceptance_rate"]),
        "phi_basin_transitions_per_ns": flips / ns if ns else float("nan"),
        "left_handed_fraction": float(positive.mean()),
        "settled_after_ns": None if settled is None else (settled + 1) * chains * float(d["md_steps"]) * float(d["timestep_ps"]) / 1000.0,
    }


def quick_trajectories(folder: str) -> list[str]:
    """A tiny trained run and two short ``openmm-cmt mc`` trajectories of it, with and
    without generator proposals."""
    from openmm_cmt import BoltzmannGeneratorSampler
    from openmm_cmt.cli import main as cli

    sampler = BoltzmannGeneratorSampler.from_name("alanine-dipeptide", training_config(quick=True))
    sampler.train(progress=False)
    run = os.path.join(folder, "run")
    sampler.save(run)
    sampler.close()
    common = ["mc", run, "--n-chains", "2", "--n-cycles", "4", "--md-steps", "5", "--platform", "CPU",
              "--energy", "torch", "--no-compile"]
    paths = [os.path.join(folder, "hybrid.npz"), os.path.join(folder, "md.npz")]
    for path, extra in zip(paths, ([], ["--plain-md"])):
        if cli([*common, *extra, "--out", path]) != 0:
            raise RuntimeError(f"openmm-cmt {' '.join(common + extra)} failed")
    return paths


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trajectories", nargs="*", help=".npz files from openmm-cmt mc --out")
    p.add_argument("--json", default=None)
    add_quick_argument(p)
    args = p.parse_args()
    if not args.trajectories and not args.quick:
        p.error("give the trajectories of openmm-cmt mc (or --quick)")
    with tempfile.TemporaryDirectory() as folder:
        trajectories = args.trajectories or quick_trajectories(folder)
        ref = load_reference(bundled_reference("alanine-dipeptide"))
        phi_ref = ref["phi_psi"][:, 0]
        fraction = float(((phi_ref > 0) & (phi_ref < LEFT_HANDED_MAX)).mean())
        topology = alanine_dipeptide().topology
        rows = [summarise(t, topology, fraction) for t in trajectories]
    print(f"reference left-handed (0 < phi < {LEFT_HANDED_MAX}) fraction: {fraction:.5f}")
    for r in rows:
        print(json.dumps(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reference_left_handed_fraction": fraction, "runs": rows}, f, indent=2)


if __name__ == "__main__":
    main()
