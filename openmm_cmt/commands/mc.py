"""openmm-cmt mc RUN: hybrid MD / Boltzmann-generator Monte Carlo with a trained generator.

Runs ``--n-chains`` independent chains in one replicated OpenMM Context
(``ManyChainHybridMC``): ``--md-steps`` Langevin steps, then one generator proposal per
chain, ``--n-cycles`` times. ``--plain-md`` runs the same chains without proposals (the
baseline at equal MD cost). Writes positions after every cycle, per-cycle acceptances and
timings to ``--out`` and prints the acceptance rate and the throughput.

An ``.npz`` output keeps the arrays' shapes (positions ``[n_cycles, n_chains, N, 3]``);
``.h5``, ``.dcd``, ``.xtc`` and ``.pdb`` hold one trajectory, chain after chain, with
per-frame ``chain``, ``cycle`` and ``accepted`` beside the settings
(:mod:`openmm_cmt.trajectory_io`).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from openmm_cmt.commands import add_trust_argument, non_negative_float, non_negative_int, positive_float, positive_int
from openmm_cmt.trajectory_io import FORMATS, trajectory_format


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="run folder written by openmm-cmt train")
    add_trust_argument(p)
    p.add_argument("--n-cycles", type=positive_int, default=100, help="MD + proposal cycles (default 100)")
    p.add_argument("--md-steps", type=non_negative_int, default=1000,
                   help="Langevin steps per cycle (default 1000; 0: proposals only)")
    p.add_argument("--n-chains", type=positive_int, default=1, help="independent chains in one Context (default 1)")
    p.add_argument("--timestep", type=positive_float, default=0.001, help="ps (default 0.001)")
    p.add_argument("--collision-rate", type=non_negative_float, default=1.0, help="1/ps (default 1)")
    p.add_argument("--platform", default="auto", help="OpenMM platform for MD: auto (CUDA, else CPU, else Reference), CPU, CUDA, ...")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="generator and energy device (default cpu)")
    p.add_argument("--energy", default="auto", choices=["auto", "torch", "openmm"], help="per-chain energy engine")
    p.add_argument("--no-compile", action="store_true", help="no torch.compile for the torch energy engine")
    p.add_argument("--plain-md", action="store_true", help="no generator proposals (baseline)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", default=None,
                   help=f"output file, format by extension ({', '.join(FORMATS)}); .npz: positions "
                        "[n_cycles, n_chains, N, 3] nm, accepted, settings and timings")


def _energy_engine(molsys, kind: str, device: str, compile_: bool):
    import torch

    from openmm_cmt.energy import create_energy

    return create_energy(molsys, engine=kind, device=device, dtype=torch.float64, compile="auto" if compile_ else False)


def run(args) -> int:
    from openmm_cmt.io import CheckpointError
    from openmm_cmt.mcmc.many_chains import ManyChainHybridMC
    from openmm_cmt.sampler import BoltzmannGeneratorSampler

    for name in ("n_cycles", "n_chains"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.md_steps < 0 or (args.plain_md and args.md_steps == 0):
        raise ValueError("--md-steps must be >= 0, and > 0 with --plain-md")
    if args.out:
        trajectory_format(args.out)  # an unknown extension fails before any work
    try:
        sampler = BoltzmannGeneratorSampler.load(args.run, device=args.device, trust_run=args.trust_run)
    except CheckpointError as err:
        print(f"openmm-cmt mc: error: {err}", file=sys.stderr)
        return 2
    energy = _energy_engine(sampler.molsys, args.energy, args.device, not args.no_compile)
    chains = ManyChainHybridMC(
        sampler.molsys, sampler.generator, args.n_chains, md_steps=args.md_steps, timestep=args.timestep,
        collision_rate=args.collision_rate, platform=args.platform, energy=energy, seed=args.seed,
    )  # fmt: skip
    frames, accepted = [], []

    def record(mc):
        frames.append(mc.positions().astype(np.float32))
        accepted.append(mc.last.get("accepted", np.zeros(mc.n_chains, bool)).copy())

    start = time.perf_counter()
    chains.run(args.n_cycles, callback=record, proposals=not args.plain_md)
    wall = time.perf_counter() - start
    stats = chains.statistics
    summary = (
        f"{args.n_chains} chains x {args.n_cycles} cycles x {args.md_steps} MD steps on {chains.platform_name} "
        f"in {wall:.1f} s"
    )
    if not args.plain_md:
        summary += (
            f"; acceptance {stats['acceptance_rate']:.4f}; {stats['proposals_per_second']:.0f} proposals/s "
            f"(chains x proposals per second of proposal rounds), {stats['n_proposed'] / wall:.0f} per second overall"
        )
    print(summary)
    if args.out:
        settings = dict(
            md_steps=args.md_steps, timestep_ps=args.timestep, temperature_K=sampler.molsys.temperature,
            wall_seconds=wall, md_seconds=stats["md_seconds"], proposal_seconds=stats["proposal_seconds"],
            acceptance_rate=stats["acceptance_rate"], plain_md=args.plain_md,
        )  # fmt: skip
        written = _write(args.out, sampler.molsys.topology, np.stack(frames), np.stack(accepted), settings)
        print(f"-> {' + '.join(written)}")
    energy.close()
    sampler.close()
    return 0


def _write(path, topology, positions, accepted, settings) -> list[str]:
    """positions [cycles, chains, N, 3] and accepted [cycles, chains]: as they are in an
    .npz, chain after chain in a trajectory format."""
    from openmm_cmt.trajectory_io import write_frames

    cycles, chains = accepted.shape
    per_frame = {
        "chain": np.repeat(np.arange(chains), cycles),
        "cycle": np.tile(np.arange(cycles), chains),
        "accepted": accepted.T.reshape(-1),
    }
    frames = positions.transpose(1, 0, 2, 3).reshape(chains * cycles, *positions.shape[2:])
    return write_frames(path, topology, frames, {**per_frame, **settings},
                        npz={"positions": positions, "accepted": accepted, **settings})
