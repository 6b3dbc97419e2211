"""Generator moves between the MD steps of an ordinary OpenMM script.

The first half is a plain OpenMM script: alanine dipeptide (Amber14, OBC2 implicit
solvent), ``constraints=HBonds`` and a 2 fs ``LangevinMiddleIntegrator``. The second half
adds a Boltzmann generator for that very Simulation and interleaves its independence
Metropolis-Hastings jumps with the MD (``openmm_cmt.mcmc.HybridMC``); the chain still
samples the Boltzmann distribution exactly, constraints included::

    python examples/add_generator_moves.py --out hybrid.json              # trains first (~8 min)
    python examples/add_generator_moves.py --run runs/aldp-hbonds --out hybrid.json
    python examples/add_generator_moves.py --quick --out hybrid.json      # smoke mode: seconds

``--save-run`` keeps the trained generator for later ``--run``. Without changing the
script's own ``simulation.step`` calls, ``simulation.reporters.append(hybrid.reporter())``
makes the jumps happen inside them instead.
"""

from __future__ import annotations

import argparse
import json
import os

import openmm_cmt  # noqa: F401  (imports torch before openmm)
import openmm
import openmmtools
from openmm import app, unit

from openmm_cmt import BoltzmannGeneratorSampler
from openmm_cmt.mcmc import HybridMC

from _quick import add_quick_argument, trained_sampler

PDB = os.path.join(os.path.dirname(openmmtools.__file__), "data", "alanine-dipeptide-gbsa", "alanine-dipeptide.pdb")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="run folder trained on this script's System (default: train)")
    parser.add_argument("--save-run", default=None, help="save the generator trained here to this run folder")
    parser.add_argument("--cycles", type=int, default=None, help="MD + jump cycles (default 200; 5 with --quick)")
    parser.add_argument("--md-steps", type=int, default=None, help="MD steps per cycle (default 500; 10 with --quick)")
    parser.add_argument("--out", default="hybrid.json", help="summary JSON (default hybrid.json)")
    add_quick_argument(parser)
    args = parser.parse_args(argv)
    cycles = args.cycles or (5 if args.quick else 200)
    md_steps = args.md_steps or (10 if args.quick else 500)

    # --- an ordinary OpenMM script ---------------------------------------------------
    pdb = app.PDBFile(PDB)
    forcefield = app.ForceField("amber14-all.xml", "implicit/obc2.xml")
    system = forcefield.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.002 * unit.picoseconds)
    simulation = app.Simulation(pdb.topology, system, integrator)
    simulation.context.setPositions(pdb.positions)
    simulation.minimizeEnergy()
    simulation.step(md_steps)

    # --- added: a generator for this Simulation, and jumps between the MD steps ---------
    sampler = trained_sampler(args, lambda config: BoltzmannGeneratorSampler.from_simulation(simulation, config=config))
    if args.save_run:
        sampler.save(args.save_run)
    hybrid = HybridMC(simulation, sampler, md_steps=md_steps, seed=0)
    hybrid.run(cycles)  # cycles x (md_steps MD steps + one generator jump)

    energy = simulation.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    summary = {
        "cycles": cycles, "md_steps": md_steps, "n_proposed": hybrid.n_proposed, "n_accepted": hybrid.n_accepted,
        "acceptance_rate": hybrid.acceptance_rate, "final_energy_kJ_mol": energy,
    }  # fmt: skip
    print(json.dumps(summary))
    with open(args.out, "w") as handle:
        json.dump(summary, handle, indent=1)
    sampler.close()
    return summary


if __name__ == "__main__":
    main()
