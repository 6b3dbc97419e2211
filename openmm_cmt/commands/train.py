"""openmm-cmt train SYSTEM: the main job.

The run folder ``--out`` is created, test-written and locked before anything is built:
one process trains into it at a time, and an unwritable folder fails at once, not at
the first checkpoint.

Data parallel: ``--nproc N`` starts N training processes on this machine through
``torchrun`` (``python -m torch.distributed.run --standalone``); ``torchrun ... -m
openmm_cmt train ...`` does the same across machines. Each process trains its share
(:mod:`openmm_cmt.cmt.distributed`); rank 0 alone locks and writes the run folder, prints
and evaluates.
"""

from __future__ import annotations

import os
import shutil

from openmm_cmt.io import CheckpointError
from openmm_cmt.commands import add_trust_argument, non_negative_int, positive_float, positive_int
from openmm_cmt.presets import PRESETS
from openmm_cmt.systems import add_system_arguments, system_from_args

#: Options that define a new run; --resume continues the stored one and refuses them.
NEW_RUN_OPTIONS = ("preset", "energy", "seed", "set", "forcefield", "implicit_solvent", "temperature")


def add_arguments(p) -> None:
    add_system_arguments(p)
    add_trust_argument(p)
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="training preset (default laptop)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--energy", default=None, choices=["auto", "torch", "openmm"], help="energy engine (default auto)")
    p.add_argument("--out", default=None, help="run folder (default runs/SYSTEM-PRESET)")
    p.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in --out (takes --steps, --device, --eval-samples, --max-minutes)")
    p.add_argument("--steps", type=positive_int, default=None, help="annealing steps in all (default: the preset's)")
    p.add_argument("--seed", type=non_negative_int, default=None, help="seed of the flow and the trainer")
    p.add_argument("--reference", default="auto",
                   help=".npz from openmm-cmt reference; auto: the one shipped for the system, if any; none: skip")
    p.add_argument("--eval-samples", type=positive_int, default=None, help="samples for the final metrics")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a preset value, e.g. cmt.eps_tr=0.3 or generator.hidden=128 (repeatable)")
    p.add_argument("--max-minutes", type=positive_float, default=None, help="fit training into this wall time (default: the preset's max_minutes): once step "
                        "times are known, the run is shortened to the steps that fit, its learning-rate "
                        "schedule ending on the last")
    p.add_argument("--no-evaluate", action="store_true", help="skip the final evaluation (run openmm-cmt evaluate)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--nproc", type=positive_int, default=None,
                   help="train data-parallel in N processes on this machine (launches torchrun; one GPU each on CUDA)")
    p.add_argument("--dist-timeout", type=positive_float, default=600.0, metavar="SECONDS",
                   help="how long a data-parallel process waits for a missing one before the job fails")


def run(args) -> int:
    from openmm_cmt.cmt import distributed

    if distributed.launched():
        if args.nproc is not None:
            raise ValueError("--nproc launches torchrun; inside a torchrun job leave it out")
        # One device type (and backend) for the whole job; a resumed run moves to it.
        args.device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch_cuda()) else "cpu"
        distributed.init_process_group(args.device, args.dist_timeout)
        try:
            return _run(args) if distributed.is_main() else _train(args, _out(args))
        finally:
            distributed.shutdown()
    if args.nproc is not None and args.nproc > 1:
        return _launch(args)
    return _run(args)


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _out(args) -> str:
    name = os.path.splitext(os.path.basename(args.system.rstrip("/")))[0]
    return args.out or os.path.join("runs", f"{name}-{args.preset or 'laptop'}")


def _launch(args) -> int:
    """Run this command in ``args.nproc`` processes under torchrun; its exit status."""
    import signal
    import subprocess
    import sys

    argv, skip = [], False
    for item in args._argv[1:]:  # the command line after "train", less --nproc
        if skip or item.startswith("--nproc="):
            skip = False
            continue
        skip = item == "--nproc"
        if not skip:
            argv.append(item)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "openmm_cmt", "train", *argv]
    proc = subprocess.Popen(cmd)
    try:
        code = proc.wait()
    except BaseException:
        proc.send_signal(signal.SIGTERM)  # torchrun then stops its workers
        proc.wait()
        raise
    if code != 0:
        print(f"openmm-cmt train: error: a training process failed (torchrun exit status {code}; its message is "
              f"above); {_out(args)} keeps its last complete checkpoint, if any (continue it with --resume "
              f"--nproc {args.nproc})", file=sys.stderr)
    return code


def _run(args) -> int:
    from openmm_cmt.run_lock import LOCK_FILE, hold_run_lock

    out = _out(args)
    existed = os.path.isdir(out)
    with hold_run_lock(out):  # creates --out; the lock file is the test write
        try:
            _probe_write(out)
            return _train(args, out)
        except BaseException:
            if not existed and set(os.listdir(out)) <= {LOCK_FILE}:
                shutil.rmtree(out, ignore_errors=True)  # leave no empty run folder behind
            raise


def _probe_write(folder: str) -> None:
    """Write, flush and remove a small file, so that a read-only or full --out fails now."""
    path = os.path.join(folder, f".write-test-{os.getpid()}")
    try:
        with open(path, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    finally:
        if os.path.exists(path):
            os.unlink(path)


def _train(args, out: str) -> int:
    from openmm_cmt.evaluation import evaluate
    from openmm_cmt.presets import preset
    from openmm_cmt.sampler import CHECKPOINT, BoltzmannGeneratorSampler, RunSaveError

    from openmm_cmt.io import CURRENT
    from openmm_cmt.cmt.distributed import is_main

    say = print if is_main() else (lambda *_args, **_kwargs: None)  # rank 0 speaks for a data-parallel job

    has_checkpoint = any(os.path.exists(os.path.join(out, name)) for name in (CHECKPOINT, CURRENT))
    if args.resume:
        if not has_checkpoint:
            raise CheckpointError(f"--resume: no checkpoint in {out}")
        given = [n for n in NEW_RUN_OPTIONS if getattr(args, n) not in (None, [])]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise ValueError(f"--resume continues the run stored in {out} with its own settings; it cannot apply "
                             f"{flags} (start a new run with another --out for them)")
        sampler = BoltzmannGeneratorSampler.load(out, device=None if args.device == "auto" else args.device,
                                                 trust_run=args.trust_run)
        if not os.path.isdir(args.system) and name_of(args.system) != sampler.molsys.name:
            raise ValueError(f"{out} holds a run of {sampler.molsys.name!r}, not of {args.system!r}")
        stored = sampler.config.cmt_config()
        steps = stored.n_steps if args.steps is None else args.steps
        if steps <= len(sampler.history):
            say(f"{out} has done its {len(sampler.history)} annealing steps; nothing to train (--steps N trains on)")
        applied = [f"--steps {args.steps}"] if args.steps is not None else []
        if steps > stored.n_steps and stored.lr_schedule == "cosine":
            applied.append(f"the cosine learning-rate schedule now spans {steps} steps")
        if args.eval_samples is not None:
            sampler.config.eval_samples = args.eval_samples
            applied.append(f"--eval-samples {args.eval_samples}")
        if args.max_minutes is not None:
            sampler.config.max_minutes = args.max_minutes
            applied.append(f"--max-minutes {args.max_minutes:g}")
        say(f"resuming {out} at annealing step {len(sampler.history)} of {steps}"
              + (f" (applying {', '.join(applied)})" if applied else ""))
    else:
        if has_checkpoint:
            raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        overrides = dict(device=args.device, energy=args.energy or "auto")
        cmt, gen = {}, {}
        if args.steps is not None:
            cmt["n_steps"] = args.steps
        if args.seed is not None:
            cmt["seed"] = gen["seed"] = args.seed
        if args.eval_samples is not None:
            overrides["eval_samples"] = args.eval_samples
        if args.max_minutes is not None:
            overrides["max_minutes"] = args.max_minutes
        for item in args.set:
            section, key, value = _parse_setting(item)
            if section == "cmt":
                cmt[key] = value
            elif section == "generator":
                gen[key] = value
            else:
                overrides[key] = value
        molsys = system_from_args(args)
        config = preset(args.preset or "laptop", dim=molsys.dim, cmt=cmt, generator=gen, **overrides)
        sampler = BoltzmannGeneratorSampler(molsys, config)
    n_params = sum(p.numel() for p in sampler.generator.parameters())
    say(f"{sampler.molsys.name}: {sampler.molsys.n_atoms} atoms, d={sampler.molsys.dim}, "
          f"{n_params / 1e6:.2f}M flow parameters, device {sampler.device}, preset {sampler.config.preset}")
    try:
        sampler.train(n_steps=args.steps, checkpoint_dir=out, progress=not args.quiet)
    except RunSaveError as err:
        raise CheckpointError(f"{err}{_rescue(sampler)}") from err
    say(f"training: {sampler.n_evaluations:.3g} target evaluations, {sampler.trainer.wall_s:.0f} s")
    if args.no_evaluate:
        say(f"run saved in {out}; evaluate with: openmm-cmt evaluate {out}")
    elif is_main():
        import torch

        # The draws of the final metrics follow from the run's seed, as its training does.
        draws = torch.Generator(sampler.device).manual_seed(sampler.config.cmt_config().seed)
        m = evaluate(sampler, out, n_samples=sampler.config.eval_samples, reference=args.reference, generator=draws)
        _print_metrics(m)
        say(f"report: {os.path.join(out, 'report.html')}")
    sampler.close()
    return 0


def name_of(system_arg: str) -> str:
    """The name a SYSTEM argument gives its MolecularSystem (a PDB file's stem)."""
    base, sep, potential = system_arg.rpartition(":")
    if sep and base:
        return name_of(base) + ":" + potential
    return os.path.splitext(os.path.basename(system_arg))[0] if system_arg.lower().endswith(".pdb") else system_arg


def _rescue(sampler) -> str:
    """Save the trained state to a fresh temporary folder; a note saying where, or why not."""
    import tempfile

    try:
        folder = tempfile.mkdtemp(prefix="openmm-cmt-rescue-")
        if sampler.unsaved_state is not None:
            sampler._publish(folder, sampler.unsaved_state)
        else:
            sampler.save(folder)
    except OSError as err:
        return f"; saving it to a temporary folder failed too ({err})"
    return f"; it was saved to {folder} instead (resume with --out {folder} --resume)"


def _parse_setting(item: str):
    """'cmt.eps_tr=0.3' -> ('cmt', 'eps_tr', 0.3); values are parsed as JSON when they can be."""
    import json

    if "=" not in item:
        raise ValueError(f"--set expects SECTION.KEY=VALUE or KEY=VALUE, got {item!r}")
    key, raw = item.split("=", 1)
    section, _, name = key.rpartition(".")
    if section not in ("", "cmt", "generator"):
        raise ValueError(f"--set section must be 'cmt' or 'generator', got {section!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return section, name, value


def _print_metrics(m: dict) -> None:
    keys = ["reverse_ess", "reverse_ess_clipped", "forward_ess", "eubo", "nll", "phi_positive_fraction",
            "reference_phi_positive_fraction", "mean_energy", "reference_mean_energy", "ramachandran_tv",
            "target_evaluations", "wall_s"]
    for k in keys:
        if k in m:
            v = m[k]
            err = m.get(k + "_stderr")
            text = f"{v:.6g}" if isinstance(v, float) else str(v)
            print(f"  {k:32s} {text}" + (f" +- {err:.2g}" if err is not None else ""))
