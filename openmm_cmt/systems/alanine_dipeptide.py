"""Alanine dipeptide exactly as FAB, TA-BG and CMT use it."""

from __future__ import annotations

import contextlib
import io

from openmm_cmt.systems.molecular_system import MolecularSystem


def alanine_dipeptide(temperature: float = 300.0) -> MolecularSystem:
    """openmmtools' ``AlanineDipeptideImplicit(constraints=None)``.

    Amber ff96 (prmtop), OBC1 implicit solvent as a ``CustomGBForce``, no cutoff, no
    constraints, 22 atoms; the flow works on 3N - 6 = 60 internal coordinates.
    """
    # openmmtools prints a banner about an optional pymbar at import; keep user output clean.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from openmmtools import testsystems

    test_system = testsystems.AlanineDipeptideImplicit(constraints=None)
    return MolecularSystem(
        name="alanine-dipeptide",
        topology=test_system.topology,
        system=test_system.system,
        positions=test_system.positions,
        temperature=temperature,
    )
