"""``openmm-cmt bench flow``: size and speed of a system's Generator.

Reports, for one Generator (float32, preset ``--preset``, default the TA-BG-sized "gpu"):

    params            trainable parameters;
    sample_per_s      ``sample(n)`` under no_grad, n = the largest ``--batches`` entry;
    log_prob_per_s    ``log_prob(x)`` under no_grad on those samples;
    train_step_ms     one forward-KL step per batch size: ``-log_prob(x).mean()`` on
                      flow samples drawn beforehand, backward, Adam step;
    roundtrip_max_err max |z - positions_to_latent(latent_to_positions(z))| over 4096
                      prior draws (torsions compared modulo 2 pi).

Each timing is the median of ``--repeats`` runs after one warm-up run, with the device
synchronised around it. On CPU, ``--preset cpu --batches 4096`` keeps the run short.
"""

from __future__ import annotations

import math
import platform as _platform
import statistics
import time

import torch


def add_arguments(parser) -> None:
    parser.add_argument("--system", default="alanine-dipeptide", help="a registered system or a PDB file")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--preset", default="gpu", choices=("cpu", "gpu"), help="generator size (default gpu: TA-BG capacity)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, metavar="B",
                        help="training-step batch sizes (default 4096 65536 on cuda, 4096 on cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (default 3)")
    parser.add_argument("--compile", action="store_true", help="time the training step under torch.compile")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 is fastest on a loaded machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON here")


def run(args) -> int:
    from openmm_cmt.flows import CIRCULAR, Generator, maybe_compile
    from openmm_cmt.systems import resolve

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but CUDA is not available")
    if args.batches is None:
        # A TA-BG-sized step at batch 65,536 takes minutes on a laptop CPU.
        args.batches = [4096, 65536] if device.type == "cuda" else [4096]
    if args.repeats < 1 or min(args.batches) < 1:
        raise ValueError("--repeats and every --batches entry must be positive")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    molsys = resolve(args.system)
    generator = Generator.from_system(molsys, preset=args.preset, seed=args.seed).to(device)
    n_params = generator.n_parameters()
    print(f"system {molsys.name}: {molsys.n_atoms} atoms, {generator.dim} ICs; preset {args.preset}, "
          f"{n_params:,} parameters; device {device}")

    def timed(fn) -> float:
        fn()
        seconds = []
        for _ in range(args.repeats):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds)

    n_max = max(args.batches)
    with torch.no_grad():
        t_sample = timed(lambda: generator.sample(n_max))
        x, _ = generator.sample(n_max)
        t_log_prob = timed(lambda: generator.log_prob(x))
        z = generator.sample_latent(4096)
        z_back, _ = generator.positions_to_latent(generator.latent_to_positions(z)[0])
        diff = z_back - z
        circular = generator.flow.kinds == CIRCULAR
        diff = torch.where(circular, torch.remainder(diff + math.pi, 2 * math.pi) - math.pi, diff)
        roundtrip = diff.abs().max().item()
    print(f"sample   {n_max / t_sample:,.0f} /s (batch {n_max})")
    print(f"log_prob {n_max / t_log_prob:,.0f} /s")
    print(f"round trip max |dz| {roundtrip:.2e} (float32)")

    log_prob = maybe_compile(generator.log_prob, enabled=args.compile)
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-4)

    def train_step(batch):
        optimizer.zero_grad(set_to_none=True)
        loss = -log_prob(batch).mean()
        loss.backward()
        optimizer.step()

    train_ms = {}
    for batch_size in args.batches:
        with torch.no_grad():
            batch, _ = generator.sample(batch_size)
        train_ms[str(batch_size)] = 1e3 * timed(lambda: train_step(batch))
        print(f"train step batch {batch_size}: {train_ms[str(batch_size)]:.1f} ms")

    report = {
        "system": molsys.name,
        "device": _device_name(device),
        "params": n_params,
        "sample_per_s": n_max / t_sample,
        "log_prob_per_s": n_max / t_log_prob,
        "train_step_ms": train_ms,
        "roundtrip_max_err": roundtrip,
        "preset": args.preset,
        "config": generator.build_config,
        "dtype": "float32",
        "compile": bool(args.compile),
        "repeats": args.repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if args.json:
        from openmm_cmt.checkpoint import atomic_write_json

        atomic_write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({_platform.processor() or _platform.machine()}, {torch.get_num_threads()} threads)"
