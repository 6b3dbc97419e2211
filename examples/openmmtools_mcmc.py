"""The generator as one move of an openmmtools ``MCMCSampler``.

``BoltzmannGeneratorMove`` is an openmmtools ``MCMCMove`` (``apply(thermodynamic_state,
sampler_state, context_cache)``): it composes with Langevin dynamics in a
``SequenceMove`` and works wherever openmmtools takes a move (``MCMCSampler``, and the
replica-exchange samplers' ``mcmc_moves``)::

    python examples/openmmtools_mcmc.py --run runs/demo --out mcmc.json   # a run from `make demo`
    python examples/openmmtools_mcmc.py --out mcmc.json                   # trains the laptop preset first (~8 min)
    python examples/openmmtools_mcmc.py --quick --out mcmc.json           # smoke mode: seconds
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json

import numpy as np
from openmm import unit

from openmm_cmt import BoltzmannGeneratorSampler
from openmm_cmt.mcmc import BoltzmannGeneratorMove

from _quick import add_quick_argument, trained_sampler

with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    from openmmtools import mcmc, states  # banner about optional packages on import


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="run folder from openmm-cmt train (default: train one)")
    parser.add_argument("--iterations", type=int, default=None, help="MCMC iterations (default 500; 5 with --quick)")
    parser.add_argument("--md-steps", type=int, default=None,
                        help="Langevin steps per iteration (default 500; 10 with --quick)")
    parser.add_argument("--out", default="mcmc.json", help="summary JSON (default mcmc.json)")
    add_quick_argument(parser)
    args = parser.parse_args(argv)
    iterations = args.iterations or (5 if args.quick else 500)
    md_steps = args.md_steps or (10 if args.quick else 500)

    sampler = trained_sampler(args, lambda config: BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config))
    molsys = sampler.molsys  # the System the generator was trained for, no constraints: 1 fs steps
    thermodynamic_state = states.ThermodynamicState(molsys.system, molsys.temperature * unit.kelvin)
    sampler_state = states.SamplerState(molsys.positions * unit.nanometer)
    jump = BoltzmannGeneratorMove(sampler, seed=0)
    move = mcmc.SequenceMove([
        mcmc.LangevinDynamicsMove(timestep=1.0 * unit.femtosecond, collision_rate=1.0 / unit.picosecond,
                                  n_steps=md_steps, reassign_velocities=False),
        jump,
    ])
    chain = mcmc.MCMCSampler(thermodynamic_state, sampler_state, move)
    chain.minimize()
    chain.run(iterations)

    x = chain.sampler_state.positions.value_in_unit(unit.nanometer)
    summary = {
        "iterations": iterations, "md_steps": md_steps, **jump.statistics, "acceptance_rate": jump.acceptance_rate,
        "final_positions_finite": bool(np.isfinite(x).all()),
    }  # fmt: skip
    print(json.dumps(summary))
    with open(args.out, "w") as handle:
        json.dump(summary, handle, indent=1)
    sampler.close()
    return summary


if __name__ == "__main__":
    main()
