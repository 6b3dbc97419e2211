"""``openmm-cmt reference SYSTEM --out ref.npz``: replica-exchange reference samples.

Runs ``--n-ladders`` independent temperature ladders in one OpenMM Context and writes
the frames at the lowest temperature, their phi/psi and energies, the settings and the
convergence diagnostics (swap acceptance, round trips, split-half Ramachandran TV).
On a GPU, e.g. ``--platform CUDA --n-ladders 300 --n-temps 16``. ``--engine torch``
integrates all copies in one torch batch with float64 TorchEnergy forces instead (no
constraints or virtual sites), on ``--device``.

The ``.npz`` is what ``evaluate --reference`` reads; ``.h5``, ``.dcd``, ``.xtc`` and
``.pdb`` write the frames for other tools with the rest beside them
(:mod:`openmm_cmt.trajectory_io`).
"""

from __future__ import annotations

import json
import time

from openmm_cmt.commands import add_trust_argument, non_negative_float, non_negative_int, positive_float, positive_int
from openmm_cmt.systems import add_system_arguments, system_from_args
from openmm_cmt.trajectory_io import FORMATS, trajectory_format


def add_arguments(parser) -> None:
    add_system_arguments(parser)
    add_trust_argument(parser)
    parser.add_argument("--out", required=True,
                        help=f"output file, format by extension ({', '.join(FORMATS)}); "
                             "evaluate --reference reads the .npz")
    parser.add_argument("--platform", default="auto", help="OpenMM platform for the dynamics: auto (CUDA, else CPU, else Reference), CPU, CUDA, ...")
    parser.add_argument("--engine", default="openmm", choices=["openmm", "torch"],
                        help="dynamics in an OpenMM Context (default) or in torch with TorchEnergy forces")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="torch device of --engine torch (auto: CUDA when available)")
    parser.add_argument("--compile", default="auto", choices=["auto", "true", "false"],
                        help="torch.compile the forces of --engine torch (auto: on CUDA, and on CPU with a C++ compiler)")
    parser.add_argument("--n-ladders", type=positive_int, default=2, help="independent temperature ladders (default 2)")
    parser.add_argument(
        "--temperatures", default=None, help="comma-separated increasing temperatures in K (overrides --t-max/--n-temps)"
    )
    parser.add_argument("--t-max", type=positive_float, default=1200.0, help="highest temperature, K (default 1200)")
    parser.add_argument("--n-temps", type=positive_int, default=8, help="temperatures, geometric from the system's to --t-max (default 8)")
    parser.add_argument("--time-ps", type=positive_float, default=50.0, help="production time per copy, ps (default 50)")
    parser.add_argument("--equilibration-ps", type=non_negative_float, default=5.0, help="time before frames are kept, ps (default 5)")
    parser.add_argument("--timestep-fs", type=positive_float, default=1.0, help="fs (default 1)")
    parser.add_argument("--collision-rate", type=non_negative_float, default=1.0, help="Langevin friction, 1/ps (default 1)")
    parser.add_argument("--swap-interval-ps", type=positive_float, default=2.0, help="ps between swap rounds (default 2)")
    parser.add_argument("--save-interval-ps", type=positive_float, default=0.5, help="ps between saved frames (default 0.5)")
    parser.add_argument("--recentre-interval-ps", type=positive_float, default=1.0, help="ps between re-centrings (default 1)")
    parser.add_argument("--spacing", type=positive_float, default=5.0, help="grid spacing of the copies, nm (default 5)")
    parser.add_argument("--cutoff", type=positive_float, default=1.5, help="pairwise cutoff in the replicated System, nm (default 1.5)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _temperatures(args, t_min: float) -> list[float]:
    from openmm_cmt.reference import geometric_temperatures

    if args.temperatures:
        try:
            return [float(t) for t in args.temperatures.split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"--temperatures must be comma-separated numbers in K, got {args.temperatures!r}") from None
    if args.n_temps < 1 or not args.t_max >= t_min:
        raise ValueError(f"need --n-temps >= 1 and --t-max >= {t_min} K, got {args.n_temps} and {args.t_max}")
    return geometric_temperatures(t_min, args.t_max, args.n_temps).tolist()


def run(args) -> int:
    from openmm_cmt.reference import ReplicaExchange
    from openmm_cmt.trajectory_io import write_frames

    molsys = system_from_args(args)
    temperatures = _temperatures(args, molsys.temperature)
    trajectory_format(args.out)  # an unknown extension fails before any work
    timestep = args.timestep_fs / 1000.0
    print(
        f"reference: {molsys.name}, {args.n_ladders} ladders x {len(temperatures)} temperatures "
        f"({temperatures[0]:.0f}-{temperatures[-1]:.0f} K), {args.equilibration_ps} + {args.time_ps} ps",
        flush=True,
    )
    last = [0.0]

    def progress(info):
        if args.quiet or time.perf_counter() - last[0] < 10.0:
            return
        last[0] = time.perf_counter()
        acc = ", ".join("-" if a is None else f"{a:.2f}" for a in info["acceptance"])
        print(
            f"  {info['time_ps']:8.1f} / {info['total_ps']:.1f} ps  frames {info['frames']:7d}  "
            f"wall {info['wall_s']:7.1f} s  acceptance [{acc}]",
            flush=True,
        )

    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    with ReplicaExchange(
        molsys,
        temperatures,
        n_ladders=args.n_ladders,
        timestep=timestep,
        collision_rate=args.collision_rate,
        swap_interval=args.swap_interval_ps,
        save_interval=args.save_interval_ps,
        recentre_interval=args.recentre_interval_ps,
        platform=args.platform,
        spacing=args.spacing,
        cutoff=args.cutoff,
        seed=args.seed,
        engine=args.engine,
        device=device,
        compile={"auto": "auto", "true": True, "false": False}[args.compile],
    ) as rex:
        print(f"  platform {rex.settings['platform']}, energies from {rex.settings['energy_engine']}", flush=True)
        samples = rex.run(args.time_ps, equilibration_ps=args.equilibration_ps, progress=progress)
    arrays = samples.arrays()
    frames = arrays.pop("frames")
    written = write_frames(args.out, molsys.topology, frames, arrays, npz=samples.arrays())
    print(json.dumps(samples.diagnostics, indent=1))
    print(f"wrote {frames.shape[0]} frames to {' + '.join(written)}")
    return 0
