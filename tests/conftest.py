"""Shared test settings, the alanine dipeptide fixture and OpenMM's reference energies.

One torch thread: CI machines have two cores, and the engine pool's worker processes
or a second test process would otherwise oversubscribe them (tens of times slower for
the small tensors of these tests). Results do not depend on the thread count.
"""

import os

import numpy as np
import pytest
import torch

import openmm_cmt  # noqa: F401  (imports torch before openmm, as every user must)


def reference_energies(system, positions, *, forces=False, per_force=False, platform="Reference"):
    """OpenMM's answer, independent of the engines under test: energies [B] in kJ/mol of
    the conformations ``positions`` [B, N, 3] (nm, given as float64), from one Context and
    one evaluation at a time.

    forces: also return the forces [B, N, 3] in kJ/mol/nm.
    per_force: also return the energy of each force alone [B, n_forces], evaluated on a
        copy of ``system`` with force i in group i (energies and forces come from that copy).
    platform: an OpenMM platform name; CPU runs one thread (see the module docstring).

    Returns the energies, or the tuple (energies, forces, per-force energies) of those asked for.
    """
    import openmm
    from openmm import unit

    if per_force:
        system = openmm.XmlSerializer.clone(system)
        for group, force in enumerate(system.getForces()):
            force.setForceGroup(group)
    properties = {"Threads": "1"} if platform == "CPU" else {}
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform),
                             properties)
    energies, all_forces, terms = [], [], []
    for x in np.asarray(positions, dtype=np.float64):
        context.setPositions(x)
        state = context.getState(getEnergy=True, getForces=forces)
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        if forces:
            all_forces.append(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
        if per_force:
            terms.append([context.getState(getEnergy=True, groups={g}).getPotentialEnergy()
                          .value_in_unit(unit.kilojoule_per_mole) for g in range(system.getNumForces())])
    out = [np.array(energies)] + [np.array(all_forces)] * forces + [np.array(terms)] * per_force
    return out[0] if len(out) == 1 else tuple(out)


@pytest.fixture(scope="session")
def openmm_reference_energies():
    """:func:`reference_energies` as a fixture."""
    return reference_energies


@pytest.fixture(scope="session")
def aldp():
    """Alanine dipeptide (``openmm_cmt.systems.alanine_dipeptide``), built once: tests must
    not modify it."""
    from openmm_cmt.systems import alanine_dipeptide

    return alanine_dipeptide()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# CI runs the same hypothesis examples on every run, so that a red CI always names a
# reproducible case; local runs keep exploring new ones.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
