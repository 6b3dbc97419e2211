"""Shared test settings.

One torch thread: CI machines have two cores, and the engine pool's worker processes
or a second test process would otherwise oversubscribe them (tens of times slower for
the small tensors of these tests). Results do not depend on the thread count.
"""

import os

import numpy as np
import pytest
import torch

import openmm_cmt  # noqa: F401  (imports torch before openmm, as every user must)


@pytest.fixture(scope="session")
def openmm_reference_energies():
    """``energies(system, x)``: kJ/mol of each conformation of ``x`` [B, N, 3] (nm) from one
    OpenMM Reference Context, one evaluation at a time: an answer independent of the
    engines under test."""
    import openmm
    from openmm import unit

    def energies(system, x):
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        out = []
        for xi in x:
            context.setPositions(xi)
            out.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        return np.array(out)

    return energies


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
