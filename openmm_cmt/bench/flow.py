"""``openmm-cmt bench flow``: the training presets' flows, eager and compiled side by side.

For each training preset (``--presets``, the ``generator`` and ``cmt.batch_size`` of
``openmm_cmt.presets.PRESETS``) the Generator of ``--system`` is built in float32 and
timed through the trainer's own flow calls (``openmm_cmt.cmt.compiled.FlowCalls``),
in the same process, in each of ``--modes``: ``eager``, ``compiled`` (the trainer's
way: each call as one graph), ``compiled-regional`` (each coupling layer and the
coordinate transform as its own graph, ``FlowCalls(regional=KINDS)``) and
``compiled-cudagraphs`` (one graph per call replayed as a CUDA graph,
``FlowCalls(mode="reduce-overhead")``; on a CPU the same as ``compiled``):

    train_samples_per_s   weighted forward-KL steps (log_prob of a minibatch of the
                          preset's batch size or ``--batch-size``, loss, backward,
                          Adam step), samples/s;
    sample_per_s          ``sample(n)`` without gradient, n = ``--n`` (fixed chunks);
    log_prob_per_s        ``log_prob`` of those n samples without gradient;
    *_cpu                 the same per second of this process's CPU time, which other
                          jobs on a shared machine disturb less than wall time;
    compile_s             wall time of the first call of each kind (compilation, and
                          the check against eager);
    fallback              kinds whose compiled call failed its check (then eager).

Eager and compiled blocks alternate ``--repeats`` times and each figure is the median,
so both modes see the same machine load; the load average (1 min) is reported before
and after. ``speedup`` is compiled / eager per figure (``speedup_regional`` and
``speedup_cudagraphs`` the same for the other compiled modes). A mode compiled second
in the process finds Inductor's one-off start-up already paid, so compare
``compile_s`` across separate runs.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
import warnings

import torch

#: ``--modes``: the flow calls' eager and compiled variants (module docstring).
MODES = ("eager", "compiled", "compiled-regional", "compiled-cudagraphs")


def add_arguments(parser) -> None:
    parser.add_argument("--system", default="alanine-dipeptide", help="a registered system or a PDB file")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--presets", nargs="+", default=None, metavar="NAME",
                        help="training presets whose flows to time (default: laptop on cpu, laptop gpu on cuda)")
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=MODES)
    parser.add_argument("--n", type=int, default=8192, help="samples per sampling/log_prob call (default 8192)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="training minibatch size (default: each preset's cmt.batch_size)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed block (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per mode and figure (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON here")


def run(args) -> int:
    from openmm_cmt.presets import PRESETS
    from openmm_cmt.systems import resolve

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but CUDA is not available")
    presets = args.presets or (["laptop", "gpu"] if device.type == "cuda" else ["laptop"])
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise ValueError(f"unknown presets {unknown}; expected some of {sorted(PRESETS)}")
    if min(args.n, args.steps, args.repeats) < 1:
        raise ValueError("--n, --steps and --repeats must be positive")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    molsys = resolve(args.system)
    report = {
        "system": molsys.name, "device": _device_name(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "seed": args.seed, "n": args.n, "steps": args.steps,
        "repeats": args.repeats, "load_before": _load(), "presets": {},
    }
    print(f"system {molsys.name}; device {report['device']}; torch {torch.__version__}; "
          f"load average {report['load_before']}")
    for name in presets:
        report["presets"][name] = _bench_preset(molsys, name, PRESETS[name], device, args)
    report["load_after"] = _load()
    print(f"load average after: {report['load_after']}")
    if args.json:
        from openmm_cmt.io import atomic_write_json

        atomic_write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def _bench_preset(molsys, name: str, preset: dict, device: torch.device, args) -> dict:
    from openmm_cmt.cmt.compiled import KINDS, REGIONAL_KINDS, FlowCalls
    from openmm_cmt.cmt.trainer import CMTConfig, make_optimizer
    from openmm_cmt.flows import Generator, GeneratorConfig

    batch = int(args.batch_size or preset["cmt"]["batch_size"])
    gen_kwargs = dict(preset["generator"], seed=args.seed)
    rng = torch.Generator(device=device).manual_seed(args.seed)
    base = Generator.from_system(molsys, GeneratorConfig(**gen_kwargs)).to(device)
    with torch.no_grad():
        x_all, _ = base.sample(max(args.n, batch), rng)
    weights = torch.softmax(torch.randn(batch, dtype=torch.float64, device=device, generator=rng), 0)
    modes = {}
    for mode in args.modes:
        # Each mode trains its own copy, so both start from the same weights.
        generator = copy.deepcopy(base)
        calls = FlowCalls(generator, mode != "eager", batch, chunk_size=args.n,
                          regional=KINDS if mode == "compiled-regional" else REGIONAL_KINDS,
                          mode="reduce-overhead" if mode == "compiled-cudagraphs" else "default")
        optimizer = make_optimizer(calls.params, CMTConfig(lr=1e-4))  # the trainer's update
        modes[mode] = dict(calls=calls, optimizer=optimizer, compile_s={}, fallback=[],
                           train=[], train_cpu=[], sample=[], sample_cpu=[], log_prob=[], log_prob_cpu=[])

    def train_step(m):
        loss, grads = m["calls"].loss_and_grads(x_all[:batch], weights)
        for p, g in zip(m["calls"].params, grads):
            p.grad = g
        m["optimizer"].step()
        m["optimizer"].zero_grad(set_to_none=True)

    kinds = {
        "train": (lambda m: train_step(m), batch, args.steps),
        "sample": (lambda m: m["calls"].sample(args.n, rng), args.n, 1),
        "log_prob": (lambda m: m["calls"].log_prob(x_all[: args.n]), args.n, 1),
    }
    n_params = base.n_parameters()
    print(f"\n{name}: {n_params:,} parameters, batch {batch}, n {args.n}")
    for mode, m in modes.items():  # first calls: compilation and the check against eager
        for kind, (fn, _, _) in kinds.items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                m["compile_s"][kind] = _timed(device, fn, m)[0]
            m["fallback"] += [f"{kind}: {w.message}" for w in caught if issubclass(w.category, RuntimeWarning)]
            fn(m)  # one more call outside the timing (warm caches)
    for _ in range(args.repeats):
        for kind, (fn, size, reps) in kinds.items():
            for mode, m in modes.items():
                wall, cpu = _timed(device, lambda mm: [fn(mm) for _ in range(reps)], m)
                m[kind].append(size * reps / wall)
                m[kind + "_cpu"].append(size * reps / cpu)
    out = {"params": n_params, "batch_size": batch, "generator": gen_kwargs, "modes": {}}
    for mode, m in modes.items():
        still = m["calls"].compiled
        out["modes"][mode] = {
            "train_samples_per_s": statistics.median(m["train"]),
            "train_samples_per_cpu_s": statistics.median(m["train_cpu"]),
            "sample_per_s": statistics.median(m["sample"]),
            "sample_per_cpu_s": statistics.median(m["sample_cpu"]),
            "log_prob_per_s": statistics.median(m["log_prob"]),
            "log_prob_per_cpu_s": statistics.median(m["log_prob_cpu"]),
            "first_call_s": m["compile_s"],
            "compiled": {k: bool(v) for k, v in still.items()} if mode != "eager" else {},
            "fallback": m["fallback"],
        }
    for mode, key in (("compiled", "speedup"), ("compiled-regional", "speedup_regional"),
                      ("compiled-cudagraphs", "speedup_cudagraphs")):
        if "eager" in out["modes"] and mode in out["modes"]:
            e, c = out["modes"]["eager"], out["modes"][mode]
            out[key] = {k: c[k] / e[k] for k in e if k.endswith("per_s") or k.endswith("per_cpu_s")}
    _print_preset(out)
    return out


def _timed(device, fn, m) -> tuple[float, float]:
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn(m)
    _sync(device)
    return time.perf_counter() - wall, max(time.process_time() - cpu, 1e-9)


def _print_preset(out: dict) -> None:
    keys = ["train_samples_per_s", "train_samples_per_cpu_s", "sample_per_s", "sample_per_cpu_s",
            "log_prob_per_s", "log_prob_per_cpu_s"]
    modes = list(out["modes"])
    print(f"{'figure':26s}" + "".join(f"{m:>14s}" for m in modes) + ("     speedup" if "speedup" in out else ""))
    for k in keys:
        row = f"{k:26s}" + "".join(f"{out['modes'][m][k]:14,.0f}" for m in modes)
        if "speedup" in out:
            row += f"{out['speedup'][k]:11.2f}x"
        print(row)
    for m in modes:
        first = ", ".join(f"{k} {v:.1f}s" for k, v in out["modes"][m]["first_call_s"].items())
        print(f"{m} first calls: {first}")
        for f in out["modes"][m]["fallback"]:
            print(f"  fallback: {f}")


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    from openmm_cmt.bench.energy import machine_description

    return f"cpu ({machine_description()}, {torch.get_num_threads()} threads)"
