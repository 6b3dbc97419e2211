"""Whether a System constrains exactly the bonds a generator holds fixed.

A generator trained with constraints samples the constraint manifold; its proposals are
valid moves only for a System with the same constrained atom pairs and distances
(:mod:`openmm_cmt.coordinates.constraints`). Both the proposals and the exported force
check this.
"""

from __future__ import annotations

import openmm

from openmm_cmt.coordinates.constraints import system_constraints


def generator_constraints(module) -> dict:
    """``{(i, j): distance_nm}`` (i < j) of the bonds a generator holds fixed: read from a
    ``Generator``, a scripted ``GeneratorEnergy`` or a sampler (empty for generators
    without constraints)."""
    inner = getattr(module, "generator", module)  # a sampler's or GeneratorEnergy's Generator
    pairs = getattr(inner, "constraint_pairs", None)
    lengths = getattr(inner, "constraint_lengths", None)
    if pairs is None or lengths is None:
        return {}
    pairs = pairs.detach().cpu().numpy().reshape(-1, 2)
    lengths = lengths.detach().cpu().double().numpy()
    return {(int(min(i, j)), int(max(i, j))): float(d) for (i, j), d in zip(pairs, lengths)}


def check_constraints(system: openmm.System, held: dict) -> dict:
    """Raise ValueError unless the constraints of ``system`` are exactly ``held``
    (``{(i, j): distance_nm}``, i < j, the bonds a generator holds fixed). Returns the
    System's constraints in that form."""
    constraints = {(min(i, j), max(i, j)): d for i, j, d in system_constraints(system)}
    missing = sorted(set(constraints) - set(held))
    if missing:
        i, j = missing[0]
        raise ValueError(
            f"the System constrains {len(missing)} bond(s) the generator does not hold fixed (first: atoms "
            f"{i}-{j}); its proposals would leave the constraint manifold: train the generator on this "
            "System (BoltzmannGeneratorSampler.from_simulation(simulation)) or build the System with "
            "constraints=None (and rigidWater=False)"
        )
    extra = sorted(set(held) - set(constraints))
    if extra:
        i, j = extra[0]
        raise ValueError(
            f"the generator holds {len(extra)} bond(s) fixed that the System does not constrain (first: atoms "
            f"{i}-{j}); use it with the constrained System it was trained on (same constraints=...)"
        )
    for key, d in constraints.items():
        if abs(d - held[key]) > 1e-6 * max(d, 1e-3):
            raise ValueError(
                f"constraint {key[0]}-{key[1]}: the System holds {d:.6f} nm, the generator {held[key]:.6f} nm; "
                "use the System the generator was trained on"
            )
    return constraints
