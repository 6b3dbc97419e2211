"""The ``openmm-cmt`` command line: train | sample | evaluate | reference | mc | export | bench.

Each subcommand lives next to the code it drives and exposes ``add_arguments(parser)``
and ``run(args) -> int``; this module only wires them together and imports them lazily,
so that ``openmm-cmt --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help)
COMMANDS = {
    "train": ("openmm_cmt.commands.train", "train a Boltzmann generator with CMT"),
    "sample": ("openmm_cmt.commands.sample", "draw weighted samples from a trained generator"),
    "evaluate": ("openmm_cmt.commands.evaluate", "ESS, EUBO, NLL and Ramachandran metrics of a run"),
    "reference": ("openmm_cmt.commands.reference", "replica-exchange reference samples"),
    "mc": ("openmm_cmt.commands.mc", "hybrid MD / Boltzmann-generator Monte Carlo"),
    "export": ("openmm_cmt.commands.export", "export a generator as TorchScript for TorchForce"),
}

BENCHES = {
    "energy": ("openmm_cmt.bench.energy", "energy engines side by side"),
    "flow": ("openmm_cmt.bench.flow", "flow size, sampling, log_prob and training speed"),
    "toy": ("openmm_cmt.bench.toy", "every annealing path on the 40-mode Gaussian mixture"),
    "parallel": ("openmm_cmt.bench.parallel", "annealing-step phases of data-parallel training, 1 vs N processes"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openmm-cmt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    bench = sub.add_parser("bench", help="benchmarks (figures go to BENCHMARKS.md)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    for name, (module, help_) in BENCHES.items():
        mod = importlib.import_module(module)
        p = bench_sub.add_parser(name, help=help_)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error argparse has printed in one line
        return int(exit_.code or 0)
    args._argv = argv  # for commands that start themselves again (train --nproc)
    from openmm_cmt.io import CheckpointError
    from openmm_cmt.run_lock import RunLockedError

    try:
        return int(args._run(args) or 0)
    except (KeyError, ValueError, OSError, CheckpointError, RunLockedError) as err:
        # User errors and unwritable or full folders: one clear line, no traceback.
        print(f"openmm-cmt {args.command}: error: {_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _message(err: BaseException) -> str:
    """One line for a user-facing error; an OSError names its path."""
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    if isinstance(err, OSError) and err.filename is not None:
        paths = f"{err.filename}" + (f" -> {err.filename2}" if err.filename2 is not None else "")
        return f"{paths}: {err.strerror or err}"
    return str(err) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
