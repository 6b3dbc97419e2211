"""Tabulated functions in Custom*Force expressions, and the implicit-solvent models that
use them (GBn, GBn2), against OpenMM's Reference platform.

Each function kind (continuous 1D/2D/3D, natural and periodic; discrete 1D/2D/3D) is
checked alone inside a CustomCompoundBondForce, whose coordinates x1, y2, ... feed the
function directly, so that every part of the grid and the region outside it are hit;
then inside the other Custom*Force classes; then amber force fields with GBn/GBn2 on
alanine dipeptide. Energies to 1e-8 relative (float64) and 1e-5 (float32), forces to the
same relative to the largest force component.
"""

import copy
import io
import pickle

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

from conftest import reference_energies
from test_torch_energy_custom import DTYPES, check_against_openmm, system_with
from test_torch_energy_native import _aldp_pdb

from openmm_cmt.energy.torch_energy import TorchEnergy
from openmm_cmt.energy.torch_energy.custom import CUSTOM_BUILDERS
from openmm_cmt.energy.torch_energy.errors import UnsupportedSystemError
from openmm_cmt.energy.torch_energy.tabulated import Continuous1D, spline_second_derivatives


def _periodic_edges(values):
    values = values.copy()
    for axis in range(values.ndim):
        index = [slice(None)] * values.ndim
        first = list(index)
        first[axis] = 0
        index[axis] = -1
        values[tuple(index)] = values[tuple(first)]
    return values


def _continuous(rng, dims, periodic):
    """A random positive Continuous{dims}DFunction (no cancellation between bonds, so that
    float32 is compared at the scale of its summands) over a sub-range of [-0.2, 1.4]."""
    sizes = [7, 5, 4][:dims]
    values = 1.0 + 0.3 * rng.normal(size=sizes)
    values = _periodic_edges(values) if periodic else values
    flat = values.ravel(order="F").tolist()  # OpenMM: x fastest
    bounds = [(0.1, 1.2), (-0.1, 0.9), (0.2, 1.0)][:dims]
    ranges = [v for b in bounds for v in b]
    cls = {1: openmm.Continuous1DFunction, 2: openmm.Continuous2DFunction, 3: openmm.Continuous3DFunction}[dims]
    if dims == 1:
        return cls(flat, *ranges, periodic)
    return cls(*sizes, flat, *ranges, periodic)


def _positions(rng, batch, n=3, low=-0.4, high=1.6):
    return rng.uniform(low, high, size=(batch, n, 3))


@DTYPES
@pytest.mark.parametrize("periodic", [False, True], ids=["natural", "periodic"])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_continuous_function_matches_openmm(dims, periodic, dtype):
    rng = np.random.default_rng(dims + 10 * periodic)
    arguments = ["x1", "x1, y2", "x1, y2, z3"][dims - 1]
    force = openmm.CustomCompoundBondForce(3, f"k*f({arguments})")
    force.addPerBondParameter("k")
    force.addTabulatedFunction("f", _continuous(rng, dims, periodic))
    force.addBond([0, 1, 2], [1.5])
    force.addBond([2, 0, 1], [0.7])
    # Some conformations inside every range (no zero total) and some anywhere.
    inside = _positions(rng, 30, low=0.25, high=0.85)
    check_against_openmm(force, np.concatenate([inside, _positions(rng, 30)]), dtype)


@DTYPES
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_discrete_function_matches_openmm(dims, dtype):
    rng = np.random.default_rng(dims)
    sizes = [4, 3, 2][:dims]
    values = rng.normal(size=int(np.prod(sizes))).tolist()
    cls = {1: openmm.Discrete1DFunction, 2: openmm.Discrete2DFunction, 3: openmm.Discrete3DFunction}[dims]
    function = cls(values) if dims == 1 else cls(*sizes, values)
    # Arguments spread over -1.5 .. 4.5: rounding, and clamping on both sides.
    arguments = ", ".join(f"3*{c}-1" for c in ["x1", "y2", "z3"][:dims])
    force = openmm.CustomCompoundBondForce(3, f"f({arguments}) * distance(p1, p2)")
    force.addTabulatedFunction("f", function)
    force.addBond([0, 1, 2], [])
    force.addBond([1, 2, 0], [])
    check_against_openmm(force, _positions(rng, 40, low=-0.15, high=1.85), dtype)


def test_discrete_function_rounds_halves_away_from_zero():
    force = openmm.CustomCompoundBondForce(1, "f(x1)")
    force.addTabulatedFunction("f", openmm.Discrete1DFunction([10.0, 20.0, 30.0, 40.0]))
    force.addBond([0], [])
    term = CUSTOM_BUILDERS["CustomCompoundBondForce"](force, system_with(force, 1), torch.float64)
    x = torch.zeros(5, 1, 3, dtype=torch.float64)
    x[:, 0, 0] = torch.tensor([0.5, 1.5, 2.5, -0.5, 7.0])
    # C's round(): 0.5 -> 1, 1.5 -> 2, 2.5 -> 3, -0.5 -> -1 (clamped to 0), 7 -> 3 (clamped)
    torch.testing.assert_close(term(x), torch.tensor([20.0, 30.0, 40.0, 10.0, 40.0], dtype=torch.float64))


def test_spline_interpolates_and_has_its_end_conditions():
    rng = np.random.default_rng(0)
    values = rng.normal(size=9)
    function = Continuous1D(openmm.Continuous1DFunction(values.tolist(), -1.0, 3.0), torch.float64)
    knots = torch.linspace(-1.0, 3.0, 9, dtype=torch.float64)
    torch.testing.assert_close(function([knots]), torch.tensor(values), rtol=1e-14, atol=1e-14)
    x = np.linspace(-1, 3, 9)
    m = spline_second_derivatives(x, values[:, None], periodic=False)[:, 0]
    assert m[0] == 0 and m[-1] == 0
    # Continuity of the first derivative at the inner knots (a cubic spline is C2).
    t = torch.tensor(np.concatenate([x[1:-1] - 1e-7, x[1:-1] + 1e-7]), requires_grad=True)
    (grad,) = torch.autograd.grad(function([t]).sum(), t)
    np.testing.assert_allclose(grad[:7].numpy(), grad[7:].numpy(), atol=1e-5)
    periodic = values.copy()
    periodic[-1] = periodic[0]
    mp = spline_second_derivatives(x, periodic[:, None], periodic=True)[:, 0]
    assert mp[0] == mp[-1]
    f = Continuous1D(openmm.Continuous1DFunction(periodic.tolist(), -1.0, 3.0, True), torch.float64)
    t = torch.tensor([-0.3, 0.9], dtype=torch.float64)
    torch.testing.assert_close(f([t + 4.0]), f([t]), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(f([t - 8.0]), f([t]), rtol=1e-13, atol=1e-13)


def test_tabulated_functions_in_pair_forces():
    """Tables inside nonbonded pairs and computed values, and GB values and energies."""
    rng = np.random.default_rng(8)
    n = 6
    spline = _continuous(rng, 1, False).getFunctionParameters()[0]
    nonbonded = openmm.CustomNonbondedForce("f(r)*g(type1, type2)*s1*s2")
    nonbonded.addPerParticleParameter("type")
    nonbonded.addPerParticleParameter("scale")
    nonbonded.addComputedValue("s", "g(type, 0) + scale")
    gb = openmm.CustomGBForce()
    gb.addPerParticleParameter("type")
    gb.addComputedValue("I", "f(r)*g(type1, type2)", openmm.CustomGBForce.ParticlePair)
    gb.addEnergyTerm("I*g(type, 1)", openmm.CustomGBForce.SingleParticle)
    gb.addEnergyTerm("f(r)*I1*I2", openmm.CustomGBForce.ParticlePair)
    for force in (nonbonded, gb):
        force.addTabulatedFunction("f", openmm.Continuous1DFunction(spline, 0.1, 1.2))
        force.addTabulatedFunction("g", openmm.Discrete2DFunction(2, 2, [1.0, 0.5, 0.25, 2.0]))
    for k in range(n):
        nonbonded.addParticle([k % 2, 0.5 + 0.1 * k])
        gb.addParticle([(k + 1) % 2])
    nonbonded.addExclusion(0, 1)
    x = rng.uniform(0.0, 1.0, size=(10, n, 3))
    for force in (nonbonded, gb):
        for dtype in (torch.float64, torch.float32):
            check_against_openmm(force, x, dtype)


def test_terms_with_tables_script_pickle_and_move():
    rng = np.random.default_rng(2)
    force = openmm.CustomCompoundBondForce(3, "f(x1, y2, z3) + g(x1) + d(2*x2)")
    force.addTabulatedFunction("f", _continuous(rng, 3, True))
    force.addTabulatedFunction("g", _continuous(rng, 1, False))
    force.addTabulatedFunction("d", openmm.Discrete1DFunction([1.0, -2.0, 3.0]))
    force.addBond([0, 1, 2], [])
    term = CUSTOM_BUILDERS["CustomCompoundBondForce"](force, system_with(force, 3), torch.float64)
    x = torch.tensor(_positions(rng, 6, low=0.0, high=1.0))
    expected = term(x)
    scripted = torch.jit.script(term)
    torch.testing.assert_close(scripted(x), expected, rtol=1e-14, atol=0)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.jit.load(buffer)(x), expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(pickle.loads(pickle.dumps(term))(x), expected, rtol=0, atol=0)
    term32 = copy.deepcopy(term).to(torch.float32)
    assert all(b.dtype in (torch.float32, torch.int64) for b in term32.buffers())
    torch.testing.assert_close(term32(x.float()).double(), expected, rtol=1e-5, atol=1e-5)
    compiled = torch.compile(term, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), expected, rtol=1e-14, atol=0)


def test_bad_tables_raise_clear_errors():
    periodic = openmm.CustomCompoundBondForce(1, "f(x1)")
    periodic.addTabulatedFunction("f", openmm.Continuous1DFunction([0.0, 1.0, 2.0], 0.0, 1.0, True))
    periodic.addBond([0], [])
    with pytest.raises(UnsupportedSystemError, match="first and last values"):
        CUSTOM_BUILDERS["CustomCompoundBondForce"](periodic, system_with(periodic, 1), torch.float64)
    arity = openmm.CustomCompoundBondForce(1, "f(x1, y1)")
    arity.addTabulatedFunction("f", openmm.Continuous1DFunction([0.0, 1.0, 2.0], 0.0, 1.0))
    arity.addBond([0], [])
    with pytest.raises(UnsupportedSystemError, match="'f' takes 1 arguments"):
        CUSTOM_BUILDERS["CustomCompoundBondForce"](arity, system_with(arity, 1), torch.float64)


# ---------------------------------------------------------------------------------------
# force-field files with GBn / GBn2 (tabulated neck integrals)

FORCE_FIELDS = [
    ("amber14-all.xml", "implicit/gbn2.xml"),
    ("amber14-all.xml", "implicit/gbn.xml"),
    ("amber14-all.xml", "implicit/obc2.xml"),
    ("amber99sbildn.xml", "implicit/gbn.xml"),
    ("amber99sbildn.xml", "implicit/gbn2.xml"),
    ("amber99sbildn.xml", "amber99_obc.xml"),
]


def _reference_with_scales(system, xs):
    """OpenMM Reference energies, forces and the float32 energy scale sum_force |E_force|."""
    energies, forces, per_force = reference_energies(system, xs, forces=True, per_force=True)
    return energies, forces, np.abs(per_force).sum(1)


def check_with_force_scales(system, xs):
    """float64 energies and forces to 1e-8 of |E| and |F|; float32 energies to 1e-5 of the
    sum of per-force |E| (OpenMM's), forces to 1e-5 of |F|."""
    ref_e, ref_f, scale = _reference_with_scales(system, xs)
    for dtype, tol in ((torch.float64, 1e-8), (torch.float32, 1e-5)):
        module = TorchEnergy.from_openmm(system, dtype=dtype)
        x = torch.tensor(xs, dtype=dtype, requires_grad=True)
        e = module(x)
        (grad,) = torch.autograd.grad(e.sum(), x)
        rel_e = np.abs(e.detach().numpy() - ref_e) / (np.abs(ref_e) if dtype == torch.float64 else scale)
        assert rel_e.max() <= tol, f"{dtype}: energy rel error {rel_e.max():.3g}"
        f = -grad.double().numpy()
        rel_f = np.linalg.norm((f - ref_f).reshape(len(xs), -1), axis=1) / np.linalg.norm(
            ref_f.reshape(len(xs), -1), axis=1)
        assert rel_f.max() <= tol, f"{dtype}: force rel error {rel_f.max():.3g}"


@pytest.mark.parametrize("files", FORCE_FIELDS, ids=["+".join(f) for f in FORCE_FIELDS])
def test_force_field_implicit_solvent_matches_openmm(files):
    pdb = app.PDBFile(_aldp_pdb())
    system = app.ForceField(*files).createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    x0 = pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    rng = np.random.default_rng(3)
    noise = np.concatenate([np.full(12, 0.01), np.full(4, 0.04)])
    check_with_force_scales(system, x0 + noise[:, None, None] * rng.standard_normal((16, *x0.shape)))
