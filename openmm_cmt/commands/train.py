"""openmm-cmt train SYSTEM: the main job."""

from __future__ import annotations

import os

from openmm_cmt.checkpoint import CheckpointError
from openmm_cmt.presets import PRESETS
from openmm_cmt.systems import add_system_arguments, system_from_args


def add_arguments(p) -> None:
    add_system_arguments(p)
    p.add_argument("--preset", default="laptop", choices=sorted(PRESETS), help="training preset (default laptop)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--energy", default="auto", choices=["auto", "torch", "openmm"], help="energy engine")
    p.add_argument("--out", default=None, help="run folder (default runs/SYSTEM-PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument("--steps", type=int, default=None, help="annealing steps (default: the preset's)")
    p.add_argument("--seed", type=int, default=None, help="seed of the flow and the trainer")
    p.add_argument("--reference", default="auto",
                   help=".npz from openmm-cmt reference; auto: the one shipped for the system, if any; none: skip")
    p.add_argument("--eval-samples", type=int, default=None, help="samples for the final metrics")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a preset value, e.g. cmt.eps_tr=0.3 or generator.hidden=128 (repeatable)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop training after this wall time")
    p.add_argument("--no-evaluate", action="store_true", help="skip the final evaluation (run openmm-cmt evaluate)")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def run(args) -> int:
    from openmm_cmt.evaluation import evaluate
    from openmm_cmt.presets import preset
    from openmm_cmt.sampler import CHECKPOINT, BoltzmannGeneratorSampler

    name = os.path.splitext(os.path.basename(args.system))[0]
    out = args.out or os.path.join("runs", f"{name}-{args.preset}")
    has_checkpoint = os.path.exists(os.path.join(out, CHECKPOINT))
    if args.resume:
        if not has_checkpoint:
            raise CheckpointError(f"--resume: no checkpoint in {out}")
        sampler = BoltzmannGeneratorSampler.load(out, device=None if args.device == "auto" else args.device)
        print(f"resuming {out} at annealing step {len(sampler.history)}")
    else:
        if has_checkpoint:
            raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        overrides = dict(device=args.device, energy=args.energy)
        cmt, gen = {}, {}
        if args.steps is not None:
            cmt["n_steps"] = args.steps
        if args.seed is not None:
            cmt["seed"] = gen["seed"] = args.seed
        if args.eval_samples is not None:
            overrides["eval_samples"] = args.eval_samples
        for item in args.set:
            section, key, value = _parse_setting(item)
            if section == "cmt":
                cmt[key] = value
            elif section == "generator":
                gen[key] = value
            else:
                overrides[key] = value
        config = preset(args.preset, cmt=cmt, generator=gen, **overrides)
        sampler = BoltzmannGeneratorSampler(system_from_args(args), config)
    n_params = sum(p.numel() for p in sampler.generator.parameters())
    print(f"{sampler.molsys.name}: {sampler.molsys.n_atoms} atoms, d={sampler.molsys.dim}, "
          f"{n_params / 1e6:.2f}M flow parameters, device {sampler.device}, preset {sampler.config.preset}")
    callbacks = []
    if args.max_minutes is not None:
        import time

        deadline = time.perf_counter() + 60.0 * args.max_minutes
        callbacks.append(lambda _sampler, _record: time.perf_counter() > deadline)
    sampler.train(n_steps=args.steps, checkpoint_dir=out, progress=not args.quiet, callbacks=callbacks)
    print(f"training: {sampler.n_evaluations:.3g} target evaluations, {sampler.trainer.wall_s:.0f} s")
    if args.no_evaluate:
        print(f"run saved in {out}; evaluate with: openmm-cmt evaluate {out}")
    else:
        m = evaluate(sampler, out, n_samples=sampler.config.eval_samples, reference=args.reference)
        _print_metrics(m)
        print(f"report: {os.path.join(out, 'report.html')}")
    sampler.close()
    return 0


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
