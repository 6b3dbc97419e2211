"""Periodic boundary conditions against OpenMM's Reference platform: minimum images in
rectangular and triclinic boxes, NonbondedForce CutoffPeriodic (reaction field,
switching, long-range dispersion correction, periodic exceptions), the periodic Custom
forces, and openmmtools' Lennard-Jones fluid. Float64 to 1e-8 and float32 to 1e-5
relative; float32 energies against the sum of the pair energies' magnitudes (computed
here in float64), as the totals of a fluid cancel."""

import numpy as np
import openmm
import pytest
import torch
from openmm import unit

from test_torch_energy_groups import check_system
from conftest import reference_energies

from openmm_cmt.energy.torch_energy import TorchEnergy, UnsupportedSystemError
from openmm_cmt.energy.torch_energy.geometry import minimum_image

BOXES = {
    "rectangular": np.diag([2.0, 2.2, 1.9]),
    "triclinic": np.array([[2.0, 0.0, 0.0], [0.6, 2.1, 0.0], [-0.5, 0.7, 1.9]]),
}
CUTOFF = 0.9


def _images(box):
    shifts = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], dtype=float)
    return shifts @ box


def _pair_distances(x, box):
    d = x[None] - x[:, None]
    return np.min(np.linalg.norm(d[:, :, None, :] + _images(box)[None, None], axis=-1), axis=-1)


def _positions(rng, n, batch, box, min_distance=0.22):
    """Conformations with fractional coordinates in [0.1, 0.9) and minimum-image
    distances of at least ``min_distance``. (Away from the faces: for particles at the
    faces of a triclinic box, OpenMM 8.6's Reference neighbour list was seen to add a pair
    beyond the cutoff; its energy then changed under a translation of all particles, while
    the CPU platform and TorchEnergy did not. Wrapping itself is tested separately.)"""
    out = []
    while len(out) < batch:
        x = rng.uniform(0.1, 0.9, size=(n, 3)) @ box
        r = _pair_distances(x, box) + np.eye(n) * 1e9
        if r.min() >= min_distance:
            out.append(x)
    return np.array(out)


def _system(n, box, *forces):
    system = openmm.System()
    for _ in range(n):
        system.addParticle(1.0)
    system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) for row in box))
    for force in forces:
        system.addForce(force)
    return system


def _lj_scale(xs, box, sigma, epsilon, charges=None):
    """Sum over pairs within the cutoff of |LJ| + |Coulomb| (float64), per conformation."""
    out = []
    for x in xs:
        r = _pair_distances(x, box)
        i, j = np.triu_indices(len(x), 1)
        r = r[i, j]
        s = 0.5 * (sigma[i] + sigma[j])
        e = np.sqrt(epsilon[i] * epsilon[j])
        lj = np.abs(4 * e * ((s / r) ** 12 - (s / r) ** 6))
        coulomb = 0 if charges is None else np.abs(138.935 * charges[i] * charges[j] / r)
        out.append(np.sum(np.where(r < CUTOFF, lj + coulomb, 0.0)))
    return np.array(out)


@pytest.mark.parametrize("shape", list(BOXES))
def test_minimum_image_is_the_nearest_image(shape):
    box = BOXES[shape]
    rng = np.random.default_rng(0)
    d = rng.uniform(-3, 3, size=(2000, 3))
    wrapped = minimum_image(torch.tensor(d), torch.tensor(box)).numpy()
    # The same vector up to lattice translations ...
    cell = np.linalg.solve(box.T, (d - wrapped).T).T
    np.testing.assert_allclose(cell, np.round(cell), atol=1e-12)
    # ... and the shortest one wherever that is shorter than half the smallest width.
    nearest = np.min(np.linalg.norm(d[:, None] + (np.arange(-3, 4)[:, None, None, None] * box[0]
                                                  + np.arange(-3, 4)[None, :, None, None] * box[1]
                                                  + np.arange(-3, 4)[None, None, :, None] * box[2]).reshape(-1, 3)[None],
                                    axis=-1), axis=1)
    short = nearest < 0.5 * np.min(np.diag(box))
    assert short.sum() > 100
    np.testing.assert_allclose(np.linalg.norm(wrapped, axis=1)[short], nearest[short], rtol=1e-12)


def _nonbonded(rng, n, switching, dispersion, periodic_exceptions):
    force = openmm.NonbondedForce()
    force.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    force.setCutoffDistance(CUTOFF)
    force.setUseSwitchingFunction(switching)
    force.setSwitchingDistance(0.7)
    force.setUseDispersionCorrection(dispersion)
    force.setReactionFieldDielectric(78.5)
    charges = rng.normal(size=n) * 0.3
    sigma = 0.25 + 0.05 * (np.arange(n) % 3)
    epsilon = 0.4 + 0.2 * (np.arange(n) % 2)
    for k in range(n):
        force.addParticle(charges[k], sigma[k], epsilon[k])
    for k in range(0, n - 1, 4):
        force.addException(k, k + 1, 0.05, 0.3, 0.2)
    force.setExceptionsUsePeriodicBoundaryConditions(periodic_exceptions)
    return force, charges, sigma, epsilon


VARIANTS = {
    "plain": (False, False, False),
    "switch": (True, False, False),
    "dispersion": (False, True, False),
    "switch-dispersion-periodic-exceptions": (True, True, True),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape", list(BOXES))
def test_nonbonded_cutoff_periodic_matches_openmm(shape, variant, dtype):
    rng = np.random.default_rng(len(variant) + len(shape))
    n = 24
    box = BOXES[shape]
    force, charges, sigma, epsilon = _nonbonded(rng, n, *VARIANTS[variant])
    system = _system(n, box, force)
    xs = _positions(rng, n, 6, box)
    scale = _lj_scale(xs, box, sigma, epsilon, charges) + abs(TorchEnergy.from_openmm(system).terms[0].constant)
    check_system(system, xs, dtype, scale)


def test_dispersion_correction_is_openmms():
    """The constant term alone (positions far apart: no pair inside the cutoff)."""
    rng = np.random.default_rng(1)
    for switching in (False, True):
        force, _, _, _ = _nonbonded(rng, 4, switching, True, False)
        for k in range(4):
            force.setParticleParameters(k, 0.0, *force.getParticleParameters(k)[1:])
        system = _system(4, np.diag([10.0, 10.0, 10.0]), force)
        x = np.array([[[0, 0, 0], [5, 0, 0], [0, 5, 0], [0, 0, 5]]], dtype=float)
        ref_e = reference_energies(system, x)
        np.testing.assert_allclose(TorchEnergy.from_openmm(system)(torch.tensor(x)).numpy(), ref_e, rtol=1e-12)


def _custom_forces(n, rng):
    lj = openmm.CustomNonbondedForce("4*eps*((s/r)^12-(s/r)^6); s=0.5*(s1+s2); eps=sqrt(e1*e2)")
    lj.addPerParticleParameter("s")
    lj.addPerParticleParameter("e")
    lj.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
    lj.setCutoffDistance(CUTOFF)
    lj.setUseSwitchingFunction(True)
    lj.setSwitchingDistance(0.75)
    gb = openmm.CustomGBForce()
    gb.addPerParticleParameter("q")
    gb.addComputedValue("I", "step(0.8-r)*(0.8-r)^2", openmm.CustomGBForce.ParticlePair)
    gb.addEnergyTerm("q*I", openmm.CustomGBForce.SingleParticle)
    gb.addEnergyTerm("q1*q2*(1/r-1/0.9)", openmm.CustomGBForce.ParticlePair)
    gb.setNonbondedMethod(openmm.CustomGBForce.CutoffPeriodic)
    gb.setCutoffDistance(CUTOFF)
    for k in range(n):
        lj.addParticle([0.25 + 0.05 * (k % 3), 0.5])
        gb.addParticle([0.2 * (k % 2) + 0.1])
    bond = openmm.CustomBondForce("k*(r-0.3)^2")
    bond.addPerBondParameter("k")
    angle = openmm.CustomAngleForce("k*(theta-2)^2")
    angle.addPerAngleParameter("k")
    torsion = openmm.CustomTorsionForce("k*(1+cos(2*theta))")
    torsion.addPerTorsionParameter("k")
    for k in range(0, n - 3, 4):
        bond.addBond(k, k + 1, [100.0])
        angle.addAngle(k, k + 1, k + 2, [20.0])
        torsion.addTorsion(k, k + 1, k + 2, k + 3, [5.0])
    hbond = openmm.CustomHbondForce("k*(distance(a1,d1)-0.3)^2*(1.1+cos(angle(d2,d1,a1)))")
    hbond.addPerDonorParameter("k")
    for k in range(0, n - 1, 6):
        hbond.addDonor(k, k + 1, -1, [2.0])
        hbond.addAcceptor(k + 2, k + 3, -1, [])
    hbond.setNonbondedMethod(openmm.CustomHbondForce.CutoffPeriodic)
    hbond.setCutoffDistance(CUTOFF)
    centroid = openmm.CustomCentroidBondForce(3, "k*(distance(g1,g2)-0.4)^2 + cos(angle(g1,g2,g3))")
    centroid.addPerBondParameter("k")
    for k in range(0, n - 1, 2):
        centroid.addGroup([k, k + 1], [1.0, 2.0])
    for g in range(0, n // 2 - 2, 3):
        centroid.addBond([g, g + 1, g + 2], [20.0])
    for force in (bond, angle, torsion, centroid):
        force.setUsesPeriodicBoundaryConditions(True)
    return {"nonbonded": lj, "gb": gb, "bonded": (bond, angle, torsion), "hbond": hbond, "centroid": centroid}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", ["nonbonded", "gb", "bonded", "hbond", "centroid"])
@pytest.mark.parametrize("shape", list(BOXES))
def test_custom_forces_periodic_match_openmm(shape, kind, dtype):
    rng = np.random.default_rng(3)
    n = 24
    box = BOXES[shape]
    forces = _custom_forces(n, rng)[kind]
    forces = forces if isinstance(forces, tuple) else (forces,)
    system = _system(n, box, *forces)
    xs = _positions(rng, n, 6, box)
    scale = None
    if kind == "nonbonded":
        scale = _lj_scale(xs, box, 0.25 + 0.05 * (np.arange(n) % 3), np.full(n, 0.5))
    check_system(system, xs, dtype, scale)


def test_switching_integral_of_the_dispersion_correction():
    """Gauss-Legendre against a composite Simpson rule on 20,001 points (whose own error
    is about 1e-10 relative). (For a narrow
    window, e.g. 0.02 nm, OpenMM's closed form loses about four digits of this integral to
    cancellation, about 3e-6 kJ/mol in openmmtools' argon fluid: compared there with the
    default 0.34 nm window.)"""
    from openmm_cmt.energy.torch_energy.nonbonded import _switch_integral

    for sigma, switch, cutoff in ((0.34, 1.0, 1.02), (0.3, 0.7, 0.9), (0.34, 0.68, 1.02)):
        r = np.linspace(switch, cutoff, 20001)
        t = (r - switch) / (cutoff - switch)
        f = r**2 * ((sigma / r) ** 12 - (sigma / r) ** 6) * t**3 * (10 - 15 * t + 6 * t * t)
        h = r[1] - r[0]
        simpson = h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
        np.testing.assert_allclose(_switch_integral(sigma, switch, cutoff), simpson, rtol=1e-9)


def test_lennard_jones_fluid_matches_openmm():
    """openmmtools' LennardJonesFluid (argon, switching, dispersion correction)."""
    from openmmtools import testsystems

    fluid = testsystems.LennardJonesFluid(nparticles=64)
    system = fluid.system
    x0 = fluid.positions.value_in_unit(unit.nanometer)
    rng = np.random.default_rng(5)
    xs = x0 + rng.normal(scale=0.01, size=(4, *x0.shape))
    module = check_system(system, xs, torch.float64)
    assert module.terms[0].constant < 0  # the dispersion correction is attractive


def test_ewald_methods_are_refused_clearly():
    for method in ("Ewald", "PME", "LJPME"):
        force = openmm.NonbondedForce()
        force.setNonbondedMethod(getattr(openmm.NonbondedForce, method))
        for _ in range(3):
            force.addParticle(0.1, 0.3, 0.5)
        with pytest.raises(UnsupportedSystemError, match=f"{method} is not supported .Ewald sums"):
            TorchEnergy.from_openmm(_system(3, BOXES["rectangular"], force))


def test_energies_do_not_depend_on_wrapping_or_translation():
    rng = np.random.default_rng(9)
    n = 24
    box = BOXES["triclinic"]
    force, _, _, _ = _nonbonded(rng, n, True, True, True)
    forces = _custom_forces(n, rng)
    system = _system(n, box, force, forces["nonbonded"], forces["gb"], *forces["bonded"])
    module = TorchEnergy.from_openmm(system)
    x = _positions(rng, n, 4, box)
    shifts = rng.integers(-2, 3, size=(4, n, 3)) @ box  # lattice translations per particle
    moved = x + shifts + rng.uniform(-3, 3, size=(4, 1, 3))
    torch.testing.assert_close(module(torch.tensor(moved)), module(torch.tensor(x)), rtol=1e-10, atol=1e-10)


def _native_periodic_forces(n):
    bond = openmm.HarmonicBondForce()
    angle = openmm.HarmonicAngleForce()
    torsion = openmm.PeriodicTorsionForce()
    rb = openmm.RBTorsionForce()
    cmap = openmm.CMAPTorsionForce()
    cmap.addMap(6, np.sin(np.arange(36.0)).tolist())
    for k in range(0, n - 4, 4):
        bond.addBond(k, k + 1, 0.3, 200.0)
        angle.addAngle(k, k + 1, k + 2, 1.9, 30.0)
        torsion.addTorsion(k, k + 1, k + 2, k + 3, 2, 0.3, 4.0)
        rb.addTorsion(k + 1, k + 2, k + 3, k + 4, 1.0, 2.0, 0.5, 0.3, 0.2, 0.1)
        cmap.addTorsion(0, k, k + 1, k + 2, k + 3, k + 1, k + 2, k + 3, k + 4)
    obc = openmm.GBSAOBCForce()
    obc.setNonbondedMethod(openmm.GBSAOBCForce.CutoffPeriodic)
    obc.setCutoffDistance(CUTOFF)
    for k in range(n):
        obc.addParticle(0.3 * (-1) ** k, 0.15, 0.8)
    forces = (bond, angle, torsion, rb, cmap)
    for force in forces:
        force.setUsesPeriodicBoundaryConditions(True)
    return {"bonded": forces, "obc": (obc,)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", ["bonded", "obc"])
@pytest.mark.parametrize("shape", list(BOXES))
def test_native_forces_periodic_match_openmm(shape, kind, dtype):
    """Bonds, angles and torsions across the box faces; OBC2 with CutoffPeriodic."""
    rng = np.random.default_rng(4)
    n = 24
    box = BOXES[shape]
    system = _system(n, box, *_native_periodic_forces(n)[kind])
    module = check_system(system, _positions(rng, n, 6, box), dtype)
    x = torch.tensor(_positions(rng, n, 2, box), dtype=dtype)
    torch.testing.assert_close(torch.jit.script(module)(x), module(x), rtol=1e-12, atol=0)
