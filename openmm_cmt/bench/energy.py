"""``openmm-cmt bench energy``: energy engines side by side on the same conformations.

Conformations are the system's reference structure plus isotropic Gaussian noise
(``--noise`` nm, seed ``--seed``), so that energies are finite and varied. Every engine
is compared with float64 OpenMM Reference-platform energies of the same conformations,
computed once (on an OpenMMEnergy pool of Reference Contexts):

    max_rel_err = max_i |E_i - E_ref,i| / |E_ref,i|      (plain relative error)

over the conformations the engine evaluated whose reference energy is finite.

Engines:
    openmm-loop-<Platform>  one Context, setPositions + getState per conformation, for
                            each platform that can create a Context. Its rate is timed
                            on at most ``--loop-seconds`` of work (the first conformations
                            of the batch), so slow platforms do not dominate the run.
    openmm-loop-<Platform>-busy
                            the same loop while one busy-spinning helper process per
                            remaining core keeps the other cores awake. On virtual
                            machines, waking OpenMM's worker thread on an idle vCPU can
                            cost about a millisecond per energy, so the idle-machine loop
                            understates what one Context can do; every engine's
                            ``vs_best_loop`` ratio is taken against the fastest loop.
    openmm-pool             OpenMMEnergy(platform="auto"): worker processes, shared memory.
    torch-<device>-<dtype>  TorchEnergyEngine, when openmm_cmt.energy.torch_energy
                            imports (torch-cuda-* only with CUDA).

Every engine is timed on one call over the whole batch after one warm-up call (a single
conformation for the loops, the whole batch for the batched engines).
"""

from __future__ import annotations

import fnmatch
import json
import os
import platform as _platform
import time

import numpy as np
import torch

#: Batched torch engines: (name, device, dtype). Rows whose device is missing are skipped.
TORCH_ENGINES = (
    ("torch-cpu-float32", "cpu", torch.float32),
    ("torch-cpu-float64", "cpu", torch.float64),
    ("torch-cuda-float32", "cuda", torch.float32),
)


def add_arguments(parser) -> None:
    parser.add_argument("--system", default="alanine-dipeptide", help="a registered system or a PDB file")
    parser.add_argument("--forcefield", nargs="+", default=None, metavar="XML",
                        help="force-field XMLs for a PDB --system (default amber14-all.xml)")
    parser.add_argument("--implicit-solvent", default=None,
                        help="obc1, obc2, gbn, gbn2, hct or an XML, for a PDB --system")
    parser.add_argument("--n", type=int, default=20000, help="number of conformations (default 20000)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON here")
    parser.add_argument("--engines", nargs="+", default=None, metavar="PATTERN",
                        help="only these engines (names or shell patterns, e.g. 'openmm-loop-*')")
    parser.add_argument("--seed", type=int, default=0, help="seed of the conformation noise")
    parser.add_argument("--noise", type=float, default=0.01, help="Gaussian noise on the reference structure, nm")
    parser.add_argument("--loop-seconds", type=float, default=10.0,
                        help="time cap of each openmm-loop-* measurement (default 10 s)")
    parser.add_argument("--n-workers", default="auto", help="workers of openmm-pool (default: one per core)")


def machine_description() -> str:
    """CPU model, usable cores and GPU name (if any)."""
    from openmm_cmt.energy.platforms import usable_cores

    model = _platform.processor() or _platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts = [model, f"{usable_cores()} cores"]
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    return ", ".join(parts)


def conformations(molsys, n: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return molsys.positions[None] + noise * rng.standard_normal((n, molsys.n_atoms, 3))


def max_relative_error(e: np.ndarray, e_ref: np.ndarray) -> float:
    ok = np.isfinite(e_ref)
    if not ok.any():
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.abs(np.asarray(e, dtype=np.float64)[ok] - e_ref[ok]) / np.abs(e_ref[ok])
    return float(np.nan_to_num(err, nan=np.inf).max())


class busy_cores:
    """Context manager: ``n`` busy-spinning helper processes (killed on exit)."""

    def __init__(self, n: int):
        self.n, self.procs = max(0, int(n)), []

    def __enter__(self):
        import subprocess
        import sys

        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        time.sleep(0.2 if self.n else 0.0)  # let them get scheduled
        return self

    def __exit__(self, *exc):
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()
        self.procs = []


def time_loop(molsys, platform: str, x: np.ndarray, seconds: float):
    """Single-Context loop over ``x`` until done or ``seconds`` spent.

    Returns (evaluations/s, energies of the first k conformations, k)."""
    from openmm_cmt.energy._pool_worker import evaluate, make_context

    context = make_context(molsys.system, platform)
    energies = np.empty(x.shape[0])
    evaluate(context, x[:1], energies[:1], None)  # warm-up
    done, start, block = 0, time.perf_counter(), 64
    while done < x.shape[0] and time.perf_counter() - start < seconds:
        stop = min(done + block, x.shape[0])
        evaluate(context, x[done:stop], energies[done:stop], None)
        done = stop
    elapsed = time.perf_counter() - start
    return done / elapsed, energies[:done], done


def time_batched(engine, x) -> tuple[float, np.ndarray]:
    """(evaluations/s, energies) for one full-batch call after one warm-up call."""
    sync = torch.cuda.synchronize if isinstance(x, torch.Tensor) and x.is_cuda else (lambda: None)
    engine.energy(x)
    sync()
    start = time.perf_counter()
    e = engine.energy(x)
    sync()
    elapsed = time.perf_counter() - start
    e = e.detach().cpu().numpy() if isinstance(e, torch.Tensor) else np.asarray(e)
    return x.shape[0] / elapsed, e


def _wanted(name: str, patterns) -> bool:
    return patterns is None or any(fnmatch.fnmatch(name, p) for p in patterns)


def run(args) -> int:
    from openmm_cmt.energy.openmm_energy import OpenMMEnergy
    from openmm_cmt.energy.platforms import available_platforms, usable_cores
    from openmm_cmt.energy._pool_worker import make_context
    from openmm_cmt.systems import resolve

    if args.n < 1:
        raise ValueError(f"--n must be a positive number of conformations, got {args.n}")
    n_workers = args.n_workers if args.n_workers == "auto" else int(args.n_workers)
    molsys = resolve(args.system, getattr(args, "forcefield", None), None, getattr(args, "implicit_solvent", None))
    forces = ", ".join(type(f).__name__ for f in molsys.system.getForces())
    x = conformations(molsys, args.n, args.noise, args.seed)
    machine = machine_description()
    print(f"system {molsys.name} ({molsys.n_atoms} atoms; {forces}), {args.n} conformations "
          f"(reference + {args.noise} nm noise, seed {args.seed}); machine: {machine}")

    start = time.perf_counter()
    with OpenMMEnergy(molsys, platform="Reference", n_workers=n_workers) as reference:
        e_ref = reference.energy(x)
    print(f"reference energies (OpenMM Reference, float64) in {time.perf_counter() - start:.1f} s; "
          f"{int(np.isfinite(e_ref).sum())} finite, range [{np.nanmin(e_ref):.1f}, {np.nanmax(e_ref):.1f}] kJ/mol")

    results = []

    def record(name, rate, e, e_reference, detail):
        results.append({"name": name, "evals_per_s": float(rate),
                        "max_rel_err": max_relative_error(e, e_reference), "detail": detail})

    for platform in available_platforms():
        for busy in (False, True):
            name = f"openmm-loop-{platform}" + ("-busy" if busy else "")
            if not _wanted(name, args.engines):
                continue
            try:
                make_context(molsys.system, platform)
            except Exception as err:
                print(f"skip {name}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
                break
            n_busy = usable_cores() - 1 if busy else 0
            with busy_cores(n_busy):
                rate, e, k = time_loop(molsys, platform, x, args.loop_seconds)
            detail = f"timed on {k} of {args.n}" if k < args.n else "all conformations"
            record(name, rate, e, e_ref[:k], detail + (f", {n_busy} other cores kept busy" if busy else ""))

    if _wanted("openmm-pool", args.engines):
        with OpenMMEnergy(molsys, platform="auto", n_workers=n_workers) as pool:
            rate, e = time_batched(pool, x)
            record("openmm-pool", rate, e, e_ref, f"{pool.platform} x {pool.n_workers} workers")

    try:
        from openmm_cmt.energy.torch_energy import TorchEnergyEngine
    except Exception as err:  # absent, or another engineer's work in progress
        TorchEnergyEngine = None
        if any(_wanted(name, args.engines) for name, _, _ in TORCH_ENGINES):
            print(f"skip torch-*: openmm_cmt.energy.torch_energy does not import ({err})")
    for name, device, dtype in TORCH_ENGINES if TorchEnergyEngine is not None else ():
        if not _wanted(name, args.engines):
            continue
        if device == "cuda" and not torch.cuda.is_available():
            print(f"skip {name}: CUDA is not available")
            continue
        try:
            engine = TorchEnergyEngine(molsys, device=device, dtype=dtype)
            rate, e = time_batched(engine, torch.as_tensor(x, dtype=dtype, device=device))
            memory = (f"; {engine.bytes_per_conformation() / 1e6:,.1f} MB/conformation estimated, "
                      f"chunks of {engine.chunk_size}")
            engine.close()
        except Exception as err:  # e.g. UnsupportedSystemError for this System's forces
            print(f"skip {name}: {type(err).__name__}: {err}")
            continue
        record(name, rate, e, e_ref, f"batch {args.n}{memory}")

    best_loop = max([r["evals_per_s"] for r in results if r["name"].startswith("openmm-loop-")], default=None)
    for r in results:
        r["vs_best_loop"] = r["evals_per_s"] / best_loop if best_loop else None
    _print_table(results)
    report = {"system": molsys.name, "n_atoms": int(molsys.n_atoms), "forces": forces, "n": int(args.n),
              "machine": machine, "seed": int(args.seed), "noise_nm": float(args.noise),
              "load_average": list(os.getloadavg()), "best_loop_evals_per_s": best_loop, "engines": results}
    if args.json:
        directory = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(directory, exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


def _print_table(results) -> None:
    width = max([len(r["name"]) for r in results] + [6])
    print(f"\n{'engine':<{width}}  {'evals/s':>12}  {'vs best loop':>12}  {'max_rel_err':>11}  detail")
    for r in results:
        ratio = f"{r['vs_best_loop']:.2f}x" if r.get("vs_best_loop") else "-"
        print(f"{r['name']:<{width}}  {r['evals_per_s']:>12,.0f}  {ratio:>12}  {r['max_rel_err']:>11.2e}  {r['detail']}")
