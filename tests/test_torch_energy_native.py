"""TorchEnergy's native forces against OpenMM's Reference platform.

Every force type is checked on small randomised systems (random parameters and
geometry, clashes, near-coincident atoms in float64): energies to 1e-8 (float64) and
1e-5 (float32) relative, and autograd forces to the same tolerances relative to the
force norm.

What "relative" means:
- float64: errors over max(|E|, 1 kJ/mol) and max(|F|, 1 kJ/mol/nm), so that a total
  that cancels to ~0 is compared at an absolute 1e-8.
- float32: a float32 module sees float32 positions, so OpenMM is given the same
  (rounded) positions: rounding the input is not the module's error (measured here:
  it alone moves random-torsion energies by up to 1.7e-5 of |E| and clash forces by
  1e-4 kJ/mol/nm). Random signs let totals cancel far below their summands, where
  float32 rounding scales with the summands, so the scale is the sum over interactions
  of |E_i| and |F_i|, each interaction evaluated alone by OpenMM (bonded terms, pairs of
  a NonbondedForce; GB is many-body and keeps |E| and |F|).
The alanine-dipeptide tests use the plain |E| and |F| scales, with float64 positions
given to OpenMM in both dtypes.
"""

import math
import warnings

import numpy as np
import openmm
import pytest
import torch
from hypothesis import given, settings, strategies as st
from openmm import app, unit

from conftest import reference_energies

from openmm_cmt.energy.torch_energy import TorchEnergy, TorchEnergyEngine, UnsupportedSystemError
from openmm_cmt.energy.torch_energy.bonded import cmap_coefficients
from openmm_cmt.systems import MolecularSystem

TOL = {torch.float64: 1e-8, torch.float32: 1e-5}
DTYPES = [torch.float64, torch.float32]
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)


def torch_energy_forces(system, xs, dtype):
    module = TorchEnergy.from_openmm(system, dtype=dtype)
    x = torch.tensor(xs, dtype=dtype, requires_grad=True)
    e = module(x)
    (grad,) = torch.autograd.grad(e.sum(), x)
    return e.detach().numpy(), -grad.double().numpy()


def _norms(f):
    return np.linalg.norm(f.reshape(len(f), -1), axis=1)


def assert_matches_openmm(system, xs, dtype, interactions=None, rounded_input=True):
    """``interactions``: for float32, (System, atoms or None) per interaction, whose
    summed |E_i| and |F_i| are the error scales (see the module docstring)."""
    if dtype == torch.float32 and rounded_input:
        xs = xs.astype(np.float32).astype(np.float64)
    ref_e, ref_f = reference_energies(system, xs, forces=True)
    assert np.all(np.isfinite(ref_e)), "test geometry must give finite OpenMM energies"
    e, f = torch_energy_forces(system, xs, dtype)
    tol = TOL[dtype]
    scale_e, scale_f = np.abs(ref_e), _norms(ref_f)
    if dtype == torch.float32 and interactions is not None:
        parts = [reference_energies(s, xs if atoms is None else xs[:, atoms], forces=True) for s, atoms in interactions]
        scale_e = np.maximum(scale_e, sum(np.abs(pe) for pe, _ in parts))
        scale_f = np.maximum(scale_f, sum(_norms(pf) for _, pf in parts))
    rel_e = np.abs(e - ref_e) / np.maximum(scale_e, 1.0)
    assert rel_e.max() <= tol, f"{dtype} energy rel error {rel_e.max():.3g} (E={ref_e[rel_e.argmax()]:.6g})"
    rel_f = _norms(f - ref_f) / np.maximum(scale_f, 1.0)
    assert rel_f.max() <= tol, f"{dtype} force rel error {rel_f.max():.3g}"


def bonded_systems(n_atoms, make_force, rows):
    """The System with every row of a bonded force, and one System per row."""

    def system_of(subset):
        system = new_system(n_atoms)
        force = make_force()
        for add, args in subset:
            getattr(force, add)(*args)
        system.addForce(force)
        return system

    return system_of(rows), [(system_of([row]), None) for row in rows]


def random_positions(rng, n_atoms, batch, dtype, box=1.2):
    """Atoms uniform in a cube centred on the origin; in float64 a few atoms are moved to
    within 1e-3 nm of another (near-coincident), in float32 to within 0.1 nm (clash)."""
    xs = rng.uniform(-box / 2, box / 2, size=(batch, n_atoms, 3))
    close = 1e-3 if dtype == torch.float64 else 0.1
    for b in range(batch):
        if n_atoms >= 2 and rng.random() < 0.5:
            i, j = rng.choice(n_atoms, size=2, replace=False)
            step = rng.normal(size=3)
            xs[b, j] = xs[b, i] + close * step / np.linalg.norm(step)
    return xs


def new_system(n_atoms):
    system = openmm.System()
    for _ in range(n_atoms):
        system.addParticle(12.0)
    return system


def distinct(rng, n_atoms, k, count):
    return [rng.choice(n_atoms, size=k, replace=False).tolist() for _ in range(count)]


case = st.fixed_dictionaries({"seed": st.integers(0, 2**31 - 1), "n_atoms": st.integers(4, 9),
                              "dtype": st.sampled_from(DTYPES)})


def check_bonded(c, make_force, add, draw_row, count):
    rng = np.random.default_rng(c["seed"])
    n = c["n_atoms"]
    rows = [(add, draw_row(rng, n)) for _ in range(count(n))]
    system, singles = bonded_systems(n, make_force, rows)
    assert_matches_openmm(system, random_positions(rng, n, 6, c["dtype"]), c["dtype"], singles)


@given(case)
@SETTINGS
def test_harmonic_bond(c):
    check_bonded(c, openmm.HarmonicBondForce, "addBond",
                 lambda rng, n: (*distinct(rng, n, 2, 1)[0], rng.uniform(0.05, 0.3), rng.uniform(0.0, 5e5)),
                 lambda n: 2 * n)


@given(case)
@SETTINGS
def test_harmonic_angle(c):
    check_bonded(c, openmm.HarmonicAngleForce, "addAngle",
                 lambda rng, n: (*distinct(rng, n, 3, 1)[0], rng.uniform(0.0, math.pi), rng.uniform(0.0, 800.0)),
                 lambda n: 2 * n)


@given(case)
@SETTINGS
def test_periodic_torsion(c):
    rng = np.random.default_rng(c["seed"])
    n = c["n_atoms"]
    quads = distinct(rng, n, 4, n)
    rows = [("addTorsion", (*quad, int(rng.integers(1, 7)), rng.uniform(-math.pi, math.pi), rng.uniform(-20, 20)))
            for quad in quads + quads[:2]]  # repeated quadruples, as force fields list them
    system, singles = bonded_systems(n, openmm.PeriodicTorsionForce, rows)
    assert_matches_openmm(system, random_positions(rng, n, 6, c["dtype"]), c["dtype"], singles)


@given(case)
@SETTINGS
def test_rb_torsion(c):
    check_bonded(c, openmm.RBTorsionForce, "addTorsion",
                 lambda rng, n: (*distinct(rng, n, 4, 1)[0], *rng.uniform(-15, 15, size=6)),
                 lambda n: n)


def smooth_periodic_grid(rng, size):
    """A random CMAP-like map: low Fourier modes of (phi, psi) plus a little grid noise,
    ``energy[i + size * j]`` at (i, j) * 2 pi / size (white noise alone is far rougher
    than any force field's map)."""
    angle = 2 * np.pi * np.arange(size) / size
    phi, psi = np.meshgrid(angle, angle, indexing="ij")
    grid = sum(rng.uniform(-6, 6) * np.cos(m * phi + n * psi + rng.uniform(0, 2 * np.pi))
               for m in range(3) for n in range(-2, 3))
    grid = grid + rng.normal(scale=0.5, size=grid.shape)
    return grid.T.reshape(-1).tolist()


@given(case, st.lists(st.integers(3, 24), min_size=1, max_size=3))
@SETTINGS
def test_cmap_torsion(c, sizes):
    rng = np.random.default_rng(c["seed"])
    n = c["n_atoms"]
    maps = [(size, smooth_periodic_grid(rng, size)) for size in sizes]

    def make_force():
        force = openmm.CMAPTorsionForce()
        for size, energy in maps:
            force.addMap(size, energy)
        return force

    rows = [("addTorsion", (int(rng.integers(len(sizes))), *sum(distinct(rng, n, 4, 2), []))) for _ in range(n)]
    system, singles = bonded_systems(n, make_force, rows)
    assert_matches_openmm(system, random_positions(rng, n, 6, c["dtype"]), c["dtype"], singles)


def test_cmap_patch_interpolates_the_grid():
    """Independent of OpenMM: each patch reproduces the grid values at its corners and is
    C1 across patch boundaries."""
    rng = np.random.default_rng(3)
    size = 7
    energy = rng.normal(size=size * size)
    c = cmap_coefficients(size, energy)
    grid = energy.reshape(size, size).T  # grid[p, q] = energy[p + size * q]
    for p in range(size):
        for q in range(size):
            coef = c[p * size + q]
            assert np.isclose(coef[0, 0], grid[p, q])
            assert np.isclose(coef.sum(), grid[(p + 1) % size, (q + 1) % size])
            # d/du at u=1 of this patch equals d/du at u=0 of the next patch (v = 0)
            nxt = c[((p + 1) % size) * size + q]
            assert np.isclose(sum(m * coef[m, 0] for m in range(4)), nxt[1, 0])


@st.composite
def nonbonded_case(draw, method):
    c = draw(case)
    rng = np.random.default_rng(c["seed"])
    n = c["n_atoms"]
    force = openmm.NonbondedForce()
    force.setNonbondedMethod(method)
    for _ in range(n):
        force.addParticle(rng.uniform(-1, 1), rng.uniform(0.1, 0.4), rng.uniform(0, 1.5) * (rng.random() < 0.85))
    for i, j in {tuple(sorted(p)) for p in distinct(rng, n, 2, n)}:
        kind = rng.integers(3)  # exclusion, scaled 1-4, charge only
        q, eps = (0.0, 0.0) if kind == 0 else (rng.uniform(-0.5, 0.5), rng.uniform(0, 1.0) * (kind == 1))
        force.addException(i, j, q, rng.uniform(0.1, 0.4), eps)
    if method == openmm.NonbondedForce.CutoffNonPeriodic:
        cutoff = draw(st.floats(0.4, 1.2))
        force.setCutoffDistance(cutoff)
        force.setReactionFieldDielectric(draw(st.sampled_from([1.0, 2.0, 78.3, 1e4])))
        if draw(st.booleans()):
            force.setUseSwitchingFunction(True)
            force.setSwitchingDistance(cutoff * draw(st.floats(0.3, 0.95)))
    system = new_system(n)
    system.addForce(force)
    return system, random_positions(rng, n, 6, c["dtype"]), c["dtype"], pair_systems(force)


def pair_systems(force):
    """One two-particle System per pair of a NonbondedForce (same method and settings,
    the pair's exception if it has one)."""
    exceptions = {}
    for k in range(force.getNumExceptions()):
        i, j, *params = force.getExceptionParameters(k)
        exceptions[(min(i, j), max(i, j))] = params
    out = []
    for i in range(force.getNumParticles()):
        for j in range(i + 1, force.getNumParticles()):
            pair = openmm.NonbondedForce()
            for attr in ("NonbondedMethod", "CutoffDistance", "ReactionFieldDielectric", "UseSwitchingFunction",
                         "SwitchingDistance"):
                getattr(pair, "set" + attr)(getattr(force, "get" + attr)())
            pair.addParticle(*force.getParticleParameters(i))
            pair.addParticle(*force.getParticleParameters(j))
            if (i, j) in exceptions:
                pair.addException(0, 1, *exceptions[(i, j)])
            system = new_system(2)
            system.addForce(pair)
            out.append((system, [i, j]))
    return out


@given(nonbonded_case(openmm.NonbondedForce.NoCutoff))
@SETTINGS
def test_nonbonded_no_cutoff(args):
    assert_matches_openmm(*args)


@given(nonbonded_case(openmm.NonbondedForce.CutoffNonPeriodic))
@SETTINGS
def test_nonbonded_reaction_field(args):
    assert_matches_openmm(*args)


def test_nonbonded_parameter_offsets_use_global_defaults():
    rng = np.random.default_rng(7)
    n = 6
    force = openmm.NonbondedForce()
    for _ in range(n):
        force.addParticle(rng.uniform(-1, 1), rng.uniform(0.2, 0.3), rng.uniform(0.1, 1))
    force.addException(0, 1, 0.3, 0.25, 0.4)
    force.addException(2, 3, 0.0, 0.25, 0.0)
    force.addGlobalParameter("lambda", 0.37)
    force.addGlobalParameter("mu", -1.3)
    force.addParticleParameterOffset("lambda", 2, 0.5, 0.01, 0.2)
    force.addParticleParameterOffset("mu", 4, -0.2, 0.0, 0.1)
    force.addExceptionParameterOffset("lambda", 1, 0.4, 0.02, 0.3)  # revives a zero exception
    system = new_system(n)
    system.addForce(force)
    for dtype in DTYPES:
        assert_matches_openmm(system, random_positions(rng, n, 4, torch.float32), dtype)


@st.composite
def obc_case(draw, method):
    c = draw(case)
    rng = np.random.default_rng(c["seed"])
    n = c["n_atoms"]
    force = openmm.GBSAOBCForce()
    force.setNonbondedMethod(method)
    force.setSolventDielectric(draw(st.sampled_from([78.5, 40.0])))
    force.setSoluteDielectric(draw(st.sampled_from([1.0, 2.0])))
    force.setSurfaceAreaEnergy(draw(st.sampled_from([2.25936, 0.0, 5.4])))
    for _ in range(n):
        force.addParticle(rng.uniform(-1, 1), rng.uniform(0.1, 0.25), rng.uniform(0.6, 1.0))
    if method == openmm.GBSAOBCForce.CutoffNonPeriodic:
        force.setCutoffDistance(draw(st.floats(0.4, 1.2)))
    system = new_system(n)
    system.addForce(force)
    return system, random_positions(rng, n, 6, c["dtype"]), c["dtype"]


@given(obc_case(openmm.GBSAOBCForce.NoCutoff))
@SETTINGS
def test_gbsa_obc_no_cutoff(args):
    assert_matches_openmm(*args)


@given(obc_case(openmm.GBSAOBCForce.CutoffNonPeriodic))
@SETTINGS
def test_gbsa_obc_cutoff(args):
    assert_matches_openmm(*args)


def test_gbsa_obc_engulfed_atom():
    """A small atom inside a large atom's scaled sphere: the branch the OBC paper omits."""
    force = openmm.GBSAOBCForce()
    force.addParticle(0.5, 0.12, 0.8)
    force.addParticle(-0.4, 0.4, 1.0)
    force.addParticle(0.2, 0.15, 0.9)
    system = new_system(3)
    system.addForce(force)
    xs = np.array([[[0.0, 0.0, 0.0], [0.05, 0.02, 0.0], [0.6, 0.1, -0.2]],
                   [[0.0, 0.0, 0.0], [0.15, 0.0, 0.01], [0.3, 0.3, 0.3]]])
    for dtype in DTYPES:
        assert_matches_openmm(system, xs, dtype)


def _small_protein_system():
    pdb = app.PDBFile(_aldp_pdb())
    system = app.ForceField("amber99sbildn.xml", "amber99_obc.xml").createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    return pdb, system


def _aldp_pdb():
    import os

    import openmmtools

    return os.path.join(os.path.dirname(openmmtools.__file__), "data", "alanine-dipeptide-gbsa", "alanine-dipeptide.pdb")


@pytest.mark.parametrize("dtype", DTYPES)
def test_alanine_dipeptide_native_forces(dtype):
    """amber99sb-ildn + native GBSAOBCForce + CMMotionRemover on alanine dipeptide."""
    pdb, system = _small_protein_system()
    x0 = pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    x0 = x0 - x0.mean(0)
    rng = np.random.default_rng(11)
    xs = x0 + rng.normal(scale=0.01, size=(40, *x0.shape))
    assert_matches_openmm(system, xs, dtype, rounded_input=False)


def test_scripted_module_equals_eager():
    pdb, system = _small_protein_system()
    rb = openmm.RBTorsionForce()
    rb.addTorsion(0, 1, 4, 5, *np.linspace(-3, 3, 6))
    system.addForce(rb)
    cmap = openmm.CMAPTorsionForce()
    cmap.addMap(5, np.linspace(-5, 5, 25).tolist())
    cmap.addTorsion(0, 4, 6, 8, 14, 6, 8, 14, 16)
    system.addForce(cmap)
    module = TorchEnergy.from_openmm(system)
    scripted = torch.jit.script(module)
    x0 = torch.tensor(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    x = x0 + 0.02 * torch.randn(16, *x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x.requires_grad_(True)
    e_eager, e_script = module(x), scripted(x)
    assert torch.equal(e_eager, e_script)
    g_eager = torch.autograd.grad(e_eager.sum(), x)[0]
    g_script = torch.autograd.grad(e_script.sum(), x)[0]
    torch.testing.assert_close(g_script, g_eager, rtol=1e-12, atol=1e-12)
    ref_e, _ = reference_energies(system, x.detach().numpy(), forces=True)
    np.testing.assert_allclose(e_script.detach().numpy(), ref_e, rtol=1e-8)


def test_unsupported_system_lists_every_problem():
    system = new_system(4)
    nb = openmm.NonbondedForce()
    for _ in range(4):
        nb.addParticle(0.1, 0.3, 0.5)
    nb.setNonbondedMethod(openmm.NonbondedForce.PME)
    system.addForce(nb)
    system.setDefaultPeriodicBoxVectors(openmm.Vec3(3, 0, 0), openmm.Vec3(0, 3, 0), openmm.Vec3(0, 0, 3))
    compound = openmm.CustomCompoundBondForce(2, "x1 + distance(p1, p2)")
    compound.addBond([0, 1], [])
    compound.setUsesPeriodicBoundaryConditions(True)
    system.addForce(compound)
    system.addForce(openmm.RMSDForce(np.zeros((4, 3)), [0, 1, 2]))
    system.setVirtualSite(3, openmm.TwoParticleAverageSite(0, 1, 0.5, 0.5))
    with pytest.raises(UnsupportedSystemError) as info:
        TorchEnergy.from_openmm(system)
    err = info.value
    assert isinstance(err, ValueError)
    assert len(err.problems) == 4, err.problems
    message = str(err)
    for needle in ("PME", "CustomCompoundBondForce", "periodic boundary conditions", "RMSDForce", "virtual site"):
        assert needle in message


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="openmm.System"):
        TorchEnergy.from_openmm("not a system")
    with pytest.raises(ValueError, match="dtype"):
        TorchEnergy.from_openmm(new_system(2), dtype=torch.int64)
    module = TorchEnergy.from_openmm(new_system(3))
    with pytest.raises(ValueError, match=r"\[batch, 3, 3\]"):
        module(torch.zeros(2, 4, 3, dtype=torch.float64))


def _engine(dtype=torch.float64, **kwargs):
    pdb, system = _small_protein_system()
    molsys = MolecularSystem("aldp-native", pdb.topology, system, pdb.getPositions(), 300.0)
    return molsys, TorchEnergyEngine(molsys, device="cpu", dtype=dtype, compile=False, **kwargs)


def test_engine_chunks_give_one_pass_result():
    molsys, whole = _engine()
    _, chunked = _engine(memory_budget_bytes=3 * whole.bytes_per_conformation())
    assert chunked.chunk_size == 3 and whole.chunk_size > 100
    rng = np.random.default_rng(5)
    x = torch.tensor(molsys.positions + rng.normal(scale=0.01, size=(20, molsys.n_atoms, 3)))
    e1, f1 = whole.energy(x, forces=True)
    e2, f2 = chunked.energy(x, forces=True)
    assert e1.dtype == torch.float64 and f1.shape == (20, molsys.n_atoms, 3)
    torch.testing.assert_close(e2, e1, rtol=1e-13, atol=1e-10)
    torch.testing.assert_close(f2, f1, rtol=1e-13, atol=1e-10)
    assert chunked.n_evaluations == 20
    x32 = x.float()
    u = chunked.reduced_energy(x32.numpy())  # numpy float32 in, numpy out
    assert isinstance(u, np.ndarray)
    np.testing.assert_allclose(u, whole.energy(x32.double()).numpy() / molsys.kT, rtol=1e-13)


def test_engine_nonfinite_positions_give_inf_and_zero_forces():
    molsys, engine = _engine(dtype=torch.float32)
    x = torch.tensor(np.repeat(molsys.positions[None], 3, axis=0))
    x[1, 4, 0] = float("nan")
    e, f = engine.energy(x, forces=True)
    assert e.dtype == torch.float64
    assert math.isinf(e[1]) and e[1] > 0 and torch.isfinite(e[[0, 2]]).all()
    assert torch.all(f[1] == 0) and torch.isfinite(f).all()
    assert engine.n_nonfinite == 1
    assert engine.energy(x[:0]).shape == (0,)


def test_engine_falls_back_to_eager_when_compilation_fails():
    molsys, engine = _engine()

    def broken(x):
        raise RuntimeError("no compiler")

    engine._compiled = broken
    x = torch.tensor(molsys.positions[None])
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        e = engine.energy(x)
    assert not engine.compiled and engine.compiled_forces
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(engine.energy(x), e)


def test_engine_rejects_a_miscompiled_module():
    """A compiled module whose results differ from the eager one is not used."""
    molsys, engine = _engine()

    def wrong(x):
        return engine.module(x) * (1 + 1e-3)

    engine._compiled = wrong
    x = torch.tensor(molsys.positions[None].repeat(3, axis=0))
    with pytest.warns(RuntimeWarning, match="differ from the eager"):
        e, f = engine.energy(x, forces=True)
    assert engine.compiled and not engine.compiled_forces
    torch.testing.assert_close(e, engine.module(x))
