"""CustomExternalForce, CustomCentroidBondForce, CustomHbondForce and CustomCVForce against
OpenMM's Reference platform (energies and forces, float64 to 1e-8 and float32 to 1e-5
relative, on random small systems whose terms all have one sign), and the refusals."""

import numpy as np
import openmm
import pytest
import torch

from conftest import reference_energies

from openmm_cmt.energy.torch_energy import TorchEnergy, UnsupportedSystemError
from openmm_cmt.energy.torch_energy.module import UNSUPPORTED_REASONS, builders

TOL = {torch.float64: 1e-8, torch.float32: 1e-5}
N = 8


def _system(*forces):
    system = openmm.System()
    for k in range(N):
        system.addParticle(1.0 + k)
    for force in forces:
        system.addForce(openmm.XmlSerializer.clone(force))
    return system


def check_system(system, xs, dtype, energy_scale=None):
    """TorchEnergy of ``system`` against OpenMM Reference on ``xs``; float32 energies are
    compared at ``energy_scale`` [B] when given (sums of interaction magnitudes), else at |E|."""
    if dtype == torch.float32:
        xs = xs.astype(np.float32).astype(np.float64)
    ref_e, ref_f = reference_energies(system, xs, forces=True)
    module = TorchEnergy.from_openmm(system, dtype=dtype)
    x = torch.tensor(xs, dtype=dtype, requires_grad=True)
    e = module(x)
    (grad,) = torch.autograd.grad(e.sum(), x)
    tol = TOL[dtype]
    scale = np.abs(ref_e) if energy_scale is None or dtype == torch.float64 else energy_scale
    rel_e = np.abs(e.detach().numpy() - ref_e) / np.maximum(scale, 1e-300)
    assert rel_e.max() <= tol, f"{dtype}: energy rel error {rel_e.max():.3g}"
    norms = np.maximum(np.linalg.norm(ref_f.reshape(len(xs), -1), axis=1), 1e-300)
    rel_f = np.linalg.norm((-grad.double().numpy() - ref_f).reshape(len(xs), -1), axis=1) / norms
    assert rel_f.max() <= tol, f"{dtype}: force rel error {rel_f.max():.3g}"
    return module


def _external():
    force = openmm.CustomExternalForce("k*((x-x0)^2+(y-y0)^2+(z-z0)^2) + w*max(0, z-0.8)^2")
    for name in ("k", "x0", "y0", "z0", "w"):
        force.addPerParticleParameter(name)
    rng = np.random.default_rng(1)
    for i in range(0, N, 2):
        force.addParticle(i, [1.0 + rng.uniform(), *rng.uniform(size=3), 50.0])
    return force


def _centroid(weighted: bool):
    force = openmm.CustomCentroidBondForce(3, "k*(distance(g1,g2)+0.1)^2 + angle(g1,g2,g3) + (x1+2)*(z3+2)")
    force.addPerBondParameter("k")
    force.addGroup([0, 1, 2])  # masses as weights
    force.addGroup([3, 4], [0.2, 0.8] if weighted else [])
    force.addGroup([5])
    force.addGroup([6, 7], [1.0, 3.0] if weighted else [])
    force.addBond([0, 1, 2], [1.5])
    force.addBond([3, 1, 0], [0.5])
    return force


def _hbond(cutoff: bool):
    force = openmm.CustomHbondForce(
        "k*ka*(distance(a1,d1)+0.1)^2*(2+cos(angle(d2,d1,a1))) + 4 + sin(dihedral(a2,a1,d1,d2))")
    force.addPerDonorParameter("k")
    force.addPerAcceptorParameter("ka")
    force.addDonor(0, 1, -1, [1.0])
    force.addDonor(2, 3, -1, [2.0])
    force.addDonor(4, 5, -1, [0.5])
    force.addAcceptor(6, 7, -1, [1.0])
    force.addAcceptor(1, 0, -1, [3.0])
    force.addExclusion(0, 1)
    if cutoff:
        force.setNonbondedMethod(openmm.CustomHbondForce.CutoffNonPeriodic)
        force.setCutoffDistance(0.9)
    return force


def _cv():
    bond = openmm.CustomBondForce("r")
    bond.addBond(0, 5)
    torsion = openmm.CustomTorsionForce("theta")
    torsion.addTorsion(0, 1, 2, 3)
    nonbonded = openmm.CustomNonbondedForce("q1*q2/r")
    nonbonded.addPerParticleParameter("q")
    for k in range(N):
        nonbonded.addParticle([0.1 * (k + 1)])
    force = openmm.CustomCVForce("k*(d-0.5)^2 + 2 + tab(t) + 0.01*c + 0*e")
    force.addGlobalParameter("k", 3.0)
    force.addCollectiveVariable("d", bond)
    force.addCollectiveVariable("t", torsion)
    force.addCollectiveVariable("c", nonbonded)
    force.addCollectiveVariable("e", openmm.CMMotionRemover())
    values = np.sin(np.linspace(-np.pi, np.pi, 20))
    force.addTabulatedFunction("tab", openmm.Continuous1DFunction(values, -np.pi, np.pi, True))
    return force


CASES = {
    "external": _external,
    "centroid-masses": lambda: _centroid(False),
    "centroid-weights": lambda: _centroid(True),
    "hbond": lambda: _hbond(False),
    "hbond-cutoff": lambda: _hbond(True),
    "cv": _cv,
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", list(CASES))
def test_force_matches_openmm(case, dtype):
    rng = np.random.default_rng(len(case))
    xs = rng.uniform(0.0, 1.2, size=(24, N, 3))
    module = check_system(_system(CASES[case]()), xs, dtype)
    x = torch.tensor(xs[:3], dtype=dtype)
    torch.testing.assert_close(torch.jit.script(module)(x), module(x), rtol=1e-14, atol=0)


def test_hbond_cutoff_and_exclusions_drop_pairs():
    xs = np.random.default_rng(0).uniform(0.0, 1.2, size=(8, N, 3))
    with_cutoff = TorchEnergy.from_openmm(_system(_hbond(True)))
    without = TorchEnergy.from_openmm(_system(_hbond(False)))
    x = torch.tensor(xs)
    # Every donor-acceptor pair contributes at least 4 - 1 > 0: a cutoff removes energy.
    assert torch.all(with_cutoff(x) <= without(x)) and torch.any(with_cutoff(x) < without(x))
    assert without.terms[0].atoms.shape == (6, 3 * 2 - 1)  # one excluded pair


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_external_periodicdistance_matches_openmm(dtype):
    """A flat-bottom restraint to a point, through the box faces of a triclinic box."""
    force = openmm.CustomExternalForce("k*max(0, periodicdistance(x, y, z, x0, y0, z0) - 0.2)^2")
    for name in ("k", "x0", "y0", "z0"):
        force.addPerParticleParameter(name)
    rng = np.random.default_rng(7)
    for i in range(N):
        force.addParticle(i, [100.0, *rng.uniform(0.0, 1.5, size=3)])
    system = _system(force)
    system.setDefaultPeriodicBoxVectors(openmm.Vec3(2.0, 0, 0), openmm.Vec3(0.6, 2.1, 0), openmm.Vec3(-0.5, 0.7, 1.9))
    module = check_system(system, rng.uniform(-1.0, 3.0, size=(16, N, 3)), dtype)
    x = torch.tensor(rng.uniform(-1.0, 3.0, size=(2, N, 3)), dtype=dtype)
    torch.testing.assert_close(torch.jit.script(module)(x), module(x), rtol=1e-12, atol=0)


def test_cv_reports_problems_of_its_variables():
    force = openmm.CustomCVForce("a + b")
    force.addCollectiveVariable("a", openmm.RMSDForce(np.zeros((N, 3)), [0, 1, 2]))
    pme = openmm.NonbondedForce()
    pme.setNonbondedMethod(openmm.NonbondedForce.PME)
    for _ in range(N):
        pme.addParticle(0.0, 0.3, 0.1)
    force.addCollectiveVariable("b", pme)
    with pytest.raises(UnsupportedSystemError) as info:
        TorchEnergy.from_openmm(_system(force))
    message = str(info.value)
    assert "collective variable 'a'" in message and "RMSDForce" in message
    assert "collective variable 'b'" in message and "PME" in message


def test_every_openmm_force_class_is_built_or_refused_with_a_reason():
    classes = {name for name in dir(openmm) if isinstance(getattr(openmm, name), type)
               and issubclass(getattr(openmm, name), openmm.Force) and name != "Force"}
    known = set(builders()) | set(UNSUPPORTED_REASONS)
    assert classes <= known, sorted(classes - known)
    system = _system(openmm.RMSDForce(np.zeros((N, 3)), [0, 1, 2]))
    with pytest.raises(UnsupportedSystemError, match="RMSDForce is not supported .*superposition"):
        TorchEnergy.from_openmm(system)


def _zero_computation(state):
    return 0.0, np.zeros((N, 3))


def test_python_force_without_a_batched_form_is_refused():
    # (the ANI computations openmm-ml creates are batched: tests/test_ml_potentials.py)
    for computation, message in [(_zero_computation, "computing .*_zero_computation has no batched form"),
                                 (lambda state: _zero_computation(state), "could not be pickled")]:
        system = _system()
        system.addForce(openmm.PythonForce(computation))
        with pytest.raises(UnsupportedSystemError, match=message):
            TorchEnergy.from_openmm(system)


class RadiusOfGyration(torch.nn.Module):
    def __init__(self, atoms):
        super().__init__()
        self.register_buffer("atoms", torch.as_tensor(atoms))

    def forward(self, x):
        x = x[:, self.atoms]
        return (x - x.mean(1, keepdim=True)).square().sum(-1).mean(1).sqrt().double()


def build_rg(force, system, dtype):
    return RadiusOfGyration(list(force.getParticles()) or range(system.getNumParticles()))


def test_a_registered_builder_compiles_its_force_class(openmm_reference_energies):
    from openmm_cmt.energy.torch_energy import register_builder, unregister_builder

    cv = openmm.CustomCVForce("2 * rg^2")
    cv.addCollectiveVariable("rg", openmm.RGForce([1, 4, 6]))
    system = _system(openmm.RGForce([0, 2, 3, 5]), openmm.RGForce(), cv)
    with pytest.raises(UnsupportedSystemError, match="RGForce is not supported"):
        TorchEnergy.from_openmm(system)
    register_builder("RGForce", build_rg)
    try:
        with pytest.raises(ValueError, match="already has a builder"):
            register_builder("RGForce", build_rg)
        energy = TorchEnergy.from_openmm(system)
        assert energy.term_names() == ["0:RGForce", "1:RGForce", "2:CustomCVForce"]
        energy = torch.jit.script(energy)
        x = np.random.default_rng(4).normal(scale=0.5, size=(3, N, 3))
        assert torch.allclose(energy(torch.from_numpy(x)), torch.from_numpy(openmm_reference_energies(system, x)),
                              rtol=1e-10, atol=0)
    finally:
        unregister_builder("RGForce")
    assert "RGForce" not in builders()
    with pytest.raises(UnsupportedSystemError, match="RGForce is not supported"):
        TorchEnergy.from_openmm(system)
    with pytest.raises(ValueError, match="no builder is registered for 'RGForce'"):
        unregister_builder("RGForce")
    with pytest.raises(ValueError, match="must be callable"):
        register_builder("RGForce", "rg")


def test_a_registered_builder_may_replace_a_builtin_one():
    from openmm_cmt.energy.torch_energy import register_builder, unregister_builder

    bond = openmm.HarmonicBondForce()
    bond.addBond(0, 1, 0.1, 100.0)
    bond.setUsesPeriodicBoundaryConditions(True)
    system = _system(bond)
    system.setDefaultPeriodicBoxVectors(*(np.eye(3) * 3.0))
    register_builder("HarmonicBondForce", lambda force, system, dtype: None, replace=True)
    try:  # the replacement does not claim periodic support
        with pytest.raises(UnsupportedSystemError, match="uses periodic boundary conditions"):
            TorchEnergy.from_openmm(system)
        system.getForce(0).setUsesPeriodicBoundaryConditions(False)
        assert TorchEnergy.from_openmm(system).term_names() == []
    finally:
        unregister_builder("HarmonicBondForce")
    assert len(TorchEnergy.from_openmm(system).term_names()) == 1
