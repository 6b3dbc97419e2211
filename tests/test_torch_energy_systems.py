"""openmmtools test systems against OpenMM's Reference platform: small molecules in
vacuum and implicit solvent (OBC2 native, GBn2 tabulated), a host-guest complex, a
Lennard-Jones cluster with its external restraint, and a periodic TIP3P water box with
a reaction-field cutoff; and CHARMM36 with OBC2 implicit solvent (CMAP, Urey-Bradley,
NBFIX tables in a CustomNonbondedForce). Energies and forces to 1e-8 relative in
float64 (float32: 1e-5 of the sum of per-force |E|).
"""

import gzip
import os

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

from test_torch_energy_groups import check_system
from test_torch_energy_tabulated import check_with_force_scales

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


def test_charmm36_with_obc2_matches_openmm():
    """Zwitterionic Ala-Trp as ``openmm_cmt.systems.peptide("AW", caps=False,
    forcefield=("charmm36.xml", "implicit/obc2.xml"))`` builds it, stored as System XML
    (parsing charmm36.xml takes about 20 s)."""
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    with gzip.open(os.path.join(data, "charmm36_obc2_AW.xml.gz"), "rt") as f:
        system = openmm.XmlSerializer.deserialize(f.read())
    x0 = np.loadtxt(os.path.join(data, "charmm36_obc2_AW_positions.txt"))
    kinds = {type(f).__name__ for f in system.getForces()}
    assert {"CMAPTorsionForce", "CustomNonbondedForce", "CustomGBForce"} <= kinds
    rng = np.random.default_rng(2)
    check_with_force_scales(system, x0 + 0.01 * rng.standard_normal((8, *x0.shape)))
