"""openmmtools test systems against OpenMM's Reference platform: small molecules in
vacuum and implicit solvent (OBC2 native, GBn2 tabulated), a host-guest complex, a
Lennard-Jones cluster with its external restraint, and a periodic TIP3P water box with
a reaction-field cutoff. Energies and forces to 1e-8 relative in float64."""

import numpy as np
import pytest
import torch
from openmm import app, unit

from test_torch_energy_groups import check_system

from openmm_cmt.energy.torch_energy import TorchEnergy, UnsupportedSystemError

SYSTEMS = {
    "AlanineDipeptideVacuum": {},
    "TolueneImplicitOBC2": {},
    "TolueneImplicitGBn2": {},
    "HostGuestImplicit": {},
    "LennardJonesCluster": {},
    "WaterBox": {"nonbondedMethod": app.CutoffPeriodic, "box_edge": 1.9 * unit.nanometer,
                 "cutoff": 0.9 * unit.nanometer},
}


@pytest.mark.filterwarnings("ignore:Non-optimal GB parameters")
@pytest.mark.parametrize("name", list(SYSTEMS))
def test_openmmtools_system_matches_openmm(name):
    from openmmtools import testsystems

    test_system = getattr(testsystems, name)(**SYSTEMS[name])
    x0 = test_system.positions.value_in_unit(unit.nanometer)
    rng = np.random.default_rng(0)
    xs = x0 + rng.normal(scale=0.005, size=(3, *x0.shape))
    check_system(test_system.system, xs, torch.float64)


def test_ewald_test_system_is_refused_with_the_method_named():
    from openmmtools import testsystems

    with pytest.raises(UnsupportedSystemError, match="Ewald"):
        TorchEnergy.from_openmm(testsystems.SodiumChlorideCrystal().system)
