"""Custom*Force terms compiled from Lepton expressions, checked against OpenMM Reference.

Expressions are checked against numpy and against OpenMM's own Lepton; every force type
against OpenMM's Reference platform on randomised small systems (energies and autograd
forces, float64 to 1e-8 and float32 to 1e-5 relative); alanine dipeptide's OBC1
CustomGBForce on 200 random conformations.
"""

import copy
import io
import math
import pickle

import numpy as np
import pytest
import torch
import openmm
from hypothesis import given, settings
from hypothesis import strategies as st
from openmm import unit

from conftest import reference_energies

from openmm_cmt.energy.torch_energy.custom import CUSTOM_BUILDERS
from openmm_cmt.energy.torch_energy.errors import UnsupportedSystemError
from openmm_cmt.energy.torch_energy.expression import compile_expression, parse

FEW = settings(max_examples=6, deadline=None)
TOL = {torch.float64: 1e-8, torch.float32: 1e-5}


# ---------------------------------------------------------------------------------------
# helpers


def evaluate(expression, **values):
    """Compiled expression on float64 arrays, eager and scripted (which must agree)."""
    names = list(values)
    module = compile_expression(expression, names)
    tensors = [torch.as_tensor(np.asarray(v, dtype=np.float64)) for v in values.values()]
    eager = module(tensors).numpy()
    scripted = torch.jit.script(module)(tensors).numpy()
    np.testing.assert_array_equal(eager, scripted)
    return eager


def torch_energy_forces(term, positions, dtype):
    x = torch.tensor(positions, dtype=dtype, requires_grad=True)
    e = term(x)
    (grad,) = torch.autograd.grad(e.sum(), x)
    return e.detach().double().numpy(), -grad.double().numpy()


def system_with(force, n):
    """A System of ``n`` particles holding a copy of ``force`` (a System owns and frees
    the forces added to it, so the caller's force must not be handed over)."""
    system = openmm.System()
    for _ in range(n):
        system.addParticle(1.0)
    system.addForce(openmm.XmlSerializer.clone(force))
    return system


def check_against_openmm(force, positions, dtype, n=None):
    """Energies and forces of the compiled term vs OpenMM Reference, at ``dtype``'s
    tolerance; float32 positions are rounded first and OpenMM gets the same numbers."""
    positions = np.asarray(positions, dtype=np.float64)
    if dtype == torch.float32:
        positions = positions.astype(np.float32).astype(np.float64)
    n = positions.shape[1] if n is None else n
    system = system_with(force, n)
    term = CUSTOM_BUILDERS[type(force).__name__](force, system, dtype)
    e_ref, f_ref = reference_energies(system, positions, forces=True)
    e, f = torch_energy_forces(term, positions, dtype)
    tol = TOL[dtype]
    assert np.all(np.isfinite(e_ref)), e_ref
    np.testing.assert_array_less(np.abs(e - e_ref), tol * np.abs(e_ref) + 1e-300)
    scale = np.abs(f_ref).max(axis=(1, 2))
    err = np.abs(f - f_ref).max(axis=(1, 2))
    assert np.all(err <= tol * scale), (err / scale).max()
    return term


def random_positions(rng, n, batch, min_distance, box=1.2):
    """``batch`` conformations of ``n`` atoms in a box, pairwise at least ``min_distance``
    apart (rejection sampling)."""
    out = []
    while len(out) < batch:
        x = rng.uniform(0.0, box, size=(n, 3))
        d = np.linalg.norm(x[:, None] - x[None], axis=-1) + np.eye(n) * 1e9
        if d.min() >= min_distance:
            out.append(x)
    return np.array(out)


def clashing_positions(rng, n, batch):
    """Random conformations with one near-coincident pair (1e-3 nm) and one clash
    (0.04 nm): energies stay finite, conditioning is poor (float64 only)."""
    x = random_positions(rng, n, batch, 0.15)
    direction = rng.normal(size=(2, batch, 3))
    direction /= np.linalg.norm(direction, axis=2, keepdims=True)
    x[:, 1] = x[:, 0] + 1e-3 * direction[0]
    x[:, 3] = x[:, 2] + 0.04 * direction[1]
    return x


def geometry(rng, n, batch, dtype):
    if dtype == torch.float64:
        return np.concatenate([random_positions(rng, n, batch, 0.1), clashing_positions(rng, n, batch)])
    return random_positions(rng, n, batch, 0.1)


DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])


# ---------------------------------------------------------------------------------------
# the expression compiler

X = np.linspace(0.05, 0.95, 19)
Y = np.linspace(1.7, -1.3, 19)
XS = np.array([-2.5, -1.0, -0.5, 0.0, 0.3, 1.0, 2.0, 2.5])  # signs, zero and integers
YS = np.array([1.0, 0.0, -2.0, 3.0, 4.0, -1.5, 0.5, 0.0])

FUNCTION_CASES = [
    ("sqrt(x)", lambda x, y: np.sqrt(x)),
    ("exp(y)", lambda x, y: np.exp(y)),
    ("log(x)", lambda x, y: np.log(x)),
    ("sin(y)", lambda x, y: np.sin(y)),
    ("cos(y)", lambda x, y: np.cos(y)),
    ("sec(y)", lambda x, y: 1 / np.cos(y)),
    ("csc(y)", lambda x, y: 1 / np.sin(y)),
    ("tan(y)", lambda x, y: np.tan(y)),
    ("cot(y)", lambda x, y: 1 / np.tan(y)),
    ("asin(x)", lambda x, y: np.arcsin(x)),
    ("acos(x)", lambda x, y: np.arccos(x)),
    ("atan(y)", lambda x, y: np.arctan(y)),
    ("atan2(y, x)", lambda x, y: np.arctan2(y, x)),
    ("atan2(0.5, y)", lambda x, y: np.arctan2(0.5, y)),
    ("atan2(y, -0.5)", lambda x, y: np.arctan2(y, -0.5)),
    ("sinh(y)", lambda x, y: np.sinh(y)),
    ("cosh(y)", lambda x, y: np.cosh(y)),
    ("tanh(y)", lambda x, y: np.tanh(y)),
    ("erf(y)", lambda x, y: np.array([math.erf(v) for v in y])),
    ("erfc(y)", lambda x, y: np.array([math.erfc(v) for v in y])),
    ("square(y)", lambda x, y: y * y),
    ("cube(y)", lambda x, y: y**3),
    ("recip(y)", lambda x, y: 1 / y),
    ("min(x, y)", np.minimum),
    ("max(x, y)", np.maximum),
    ("min(0.5, y)", lambda x, y: np.minimum(0.5, y)),
    ("max(y, 0.5)", lambda x, y: np.maximum(y, 0.5)),
    ("abs(y)", lambda x, y: np.abs(y)),
    ("x+y", lambda x, y: x + y),
    ("x-y", lambda x, y: x - y),
    ("x*y", lambda x, y: x * y),
    ("x/y", lambda x, y: x / y),
    ("3/y", lambda x, y: 3 / y),
    ("1/y", lambda x, y: 1 / y),
    ("x^y", lambda x, y: x**y),
    ("2^y", lambda x, y: 2.0**y),
    ("y^2", lambda x, y: y**2),
    ("y^3", lambda x, y: y**3),
    ("x^-1.5", lambda x, y: x**-1.5),
    ("x^0.5", lambda x, y: x**0.5),
    ("-y", lambda x, y: -y),
]

# Functions whose definition depends on signs, zeros or integers: evaluated on XS, YS.
DISCRETE_CASES = [
    ("step(x)", lambda x, y: (x >= 0).astype(float)),
    ("delta(x)", lambda x, y: (x == 0).astype(float)),
    ("floor(x)", lambda x, y: np.floor(x)),
    ("ceil(x)", lambda x, y: np.ceil(x)),
    ("abs(x)", lambda x, y: np.abs(x)),
    ("select(y, x, 7)", lambda x, y: np.where(y != 0, x, 7.0)),
    ("select(y, 7, x)", lambda x, y: np.where(y != 0, 7.0, x)),
    ("select(y, 1, 2)", lambda x, y: np.where(y != 0, 1.0, 2.0)),
    ("select(step(x), x, y)", lambda x, y: np.where(x >= 0, x, y)),
    ("select(delta(x), x+1, y)", lambda x, y: np.where(x == 0, x + 1, y)),
    ("step(x)*y + delta(y)", lambda x, y: (x >= 0) * y + (y == 0)),
    ("x^2", lambda x, y: x**2),
    ("x^3", lambda x, y: x**3),
]


@pytest.mark.parametrize("expression,reference", FUNCTION_CASES, ids=[c[0] for c in FUNCTION_CASES])
def test_function_matches_numpy(expression, reference):
    np.testing.assert_allclose(evaluate(expression, x=X, y=Y), reference(X, Y), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("expression,reference", DISCRETE_CASES, ids=[c[0] for c in DISCRETE_CASES])
def test_discrete_function_matches_numpy(expression, reference):
    np.testing.assert_allclose(evaluate(expression, x=XS, y=YS), reference(XS, YS), rtol=1e-14, atol=0)


def test_every_documented_function_is_covered():
    from openmm_cmt.energy.torch_energy.expression import FUNCTIONS

    used = set()
    for expression, _ in FUNCTION_CASES + DISCRETE_CASES:
        used |= {name for name in FUNCTIONS if name + "(" in expression}
    documented = set(
        "sqrt exp log sin cos sec csc tan cot asin acos atan atan2 sinh cosh tanh erf erfc step "
        "delta square cube recip min max abs floor ceil select".split()
    )
    assert documented == set(FUNCTIONS)
    assert used == documented


PRECEDENCE_CASES = [
    ("-x^2", lambda x, y: -(x**2)),
    ("-x*y", lambda x, y: (-x) * y),
    ("2*-x", lambda x, y: 2 * -x),
    ("x^-y", lambda x, y: x ** (-y)),
    ("2^3^x", lambda x, y: 2.0 ** (3.0**x)),
    ("x-y-1", lambda x, y: (x - y) - 1),
    ("x/y/2", lambda x, y: (x / y) / 2),
    ("x - y*2 + x/y^2", lambda x, y: x - y * 2 + x / y**2),
    ("-(x+y)*2", lambda x, y: -(x + y) * 2),
    ("1e-3*x + .5 + 1.5E+2*y + 2.e1", lambda x, y: 1e-3 * x + 0.5 + 1.5e2 * y + 20.0),
    ("  max( x ,  min(y,x*2) )  ", lambda x, y: np.maximum(x, np.minimum(y, x * 2))),
    ("a*b; a=b+x; b=y*2", lambda x, y: (y * 2 + x) * (y * 2)),
    ("u + w; u = w^2; w = x - y;", lambda x, y: (x - y) ** 2 + (x - y)),
    ("k*x; k=3; k=5", lambda x, y: 3 * x),  # the first definition of a name wins, as Lepton
    ("exp(-x/y)*select(step(x-0.5), 1, -1)", lambda x, y: np.exp(-x / y) * np.where(x >= 0.5, 1.0, -1.0)),
]


@pytest.mark.parametrize("expression,reference", PRECEDENCE_CASES, ids=[c[0] for c in PRECEDENCE_CASES])
def test_precedence_and_definitions(expression, reference):
    np.testing.assert_allclose(evaluate(expression, x=X, y=Y), reference(X, Y), rtol=1e-14, atol=1e-15)


def test_constants_are_folded_and_constant_results_take_the_input_shape():
    module = compile_expression("k*2 + log(k)", ["r"], {"k": 1.5})
    assert "log" not in module.source  # evaluated at compile time
    out = module([torch.zeros(4, 3, dtype=torch.float64)])
    np.testing.assert_allclose(out.numpy(), np.full((4, 3), 3 + math.log(1.5)), rtol=1e-15)


EDGE_POINTS = [(0.3, -0.7), (0.0, 0.0), (-8.0, 1 / 3), (1000.0, -1000.0), (-2.5, 2.0), (0.0, -1.0)]


@pytest.mark.parametrize("expression", [c[0] for c in FUNCTION_CASES + DISCRETE_CASES] + ["sinh(y)", "exp(x)", "log(x-x)"])
def test_constant_folding_matches_tensor_evaluation(expression):
    # Folding happens in Python at build time; it must give what torch gives at run time,
    # overflow, division by zero and domain errors included.
    for x, y in EDGE_POINTS:
        folded = compile_expression(expression, ["shape"], {"x": x, "y": y})
        assert folded.source.count("\n") == 3  # def, one full_like line, return
        at_run_time = evaluate(expression, x=[x], y=[y])
        np.testing.assert_allclose(folded([torch.zeros(1, dtype=torch.float64)]).numpy(), at_run_time, rtol=1e-15, atol=0)


def test_repeated_subexpressions_are_computed_once():
    module = compile_expression("exp(-r^2) + exp(-r^2)*2; ", ["r"])
    assert module.source.count("torch.exp") == 1


@pytest.mark.parametrize(
    "expression,message",
    [
        ("x +", "unexpected end"),
        ("(x + 1", "unbalanced"),
        ("x + 1)", "unexpected text"),
        ("foo(x)", "unknown function 'foo'"),
        ("atan2(x)", "takes 2 arguments"),
        ("x + q", "undefined variable(s) q"),
        ("x; =2", "name=expression"),
        ("x * ,", "unexpected token"),
    ],
)
def test_bad_expressions_raise_clear_errors(expression, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_expression(expression, ["x"])


def test_compiled_expression_pickles_and_copies():
    module = compile_expression("sqrt(r)*k", ["r", "k"])
    v = [torch.tensor([4.0, 9.0], dtype=torch.float64), torch.tensor([1.0, 2.0], dtype=torch.float64)]
    for clone in (pickle.loads(pickle.dumps(module)), copy.deepcopy(module)):
        assert torch.equal(clone(v), module(v))
        assert clone.inputs == ("r", "k")


# Random expressions in r, a, b without parentheses around operators: OpenMM's Lepton
# decides precedence, associativity and unary minus; both must agree.
_ATOMS = st.sampled_from(["r", "a", "b", "2", "0.5", "1.5e-1", "3"])
_FUNCS = st.sampled_from(["exp", "sin", "cos", "tanh", "atan", "square", "abs", "erf"])


@st.composite
def _expression(draw, depth=0):
    parts = []
    for k in range(draw(st.integers(1, 4))):
        if k:
            parts.append(draw(st.sampled_from(["+", "-", "*", "/", "^"])))
        if draw(st.booleans()):
            parts.append("-")
        if depth < 2 and draw(st.integers(0, 3)) == 0:
            inner = draw(_expression(depth + 1))
            parts.append(f"{draw(_FUNCS)}({inner})" if draw(st.booleans()) else f"({inner})")
        else:
            parts.append(draw(_ATOMS))
    return " ".join(parts)


@settings(max_examples=25, deadline=None)
@given(expression=_expression())
def test_random_expressions_match_openmm_lepton(expression):
    # One CustomBondForce bond per evaluation point: r, a, b vary per bond.
    r = np.array([0.7, 1.3, 0.9])
    a = np.array([1.2, -0.4, 0.8])
    b = np.array([0.3, 0.6, -1.1])
    mine = evaluate(expression, r=r, a=a, b=b) * np.ones(3)
    if not np.all(np.isfinite(mine)) or np.abs(mine).max() > 1e8:
        return  # outside the domain; not a parsing question
    expected = []
    for k in range(3):
        force = openmm.CustomBondForce(expression)
        force.addPerBondParameter("a")
        force.addPerBondParameter("b")
        force.addBond(0, 1, [a[k], b[k]])
        positions = np.array([[[0, 0, 0], [r[k], 0, 0]]], dtype=np.float64)
        expected.append(reference_energies(system_with(force, 2), positions)[0])
    np.testing.assert_allclose(mine, expected, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------
# bonded custom forces


def _bonded_force(kind, rng, n, positive):
    if kind == "bond":
        force = openmm.CustomBondForce("k*(r-r0)^2 + c*exp(-r/w); w=0.3")
        params = lambda: [rng.uniform(100, 1000), rng.uniform(0.05, 0.3), rng.uniform(0 if positive else -5, 5)]  # noqa: E731
        add, order = force.addBond, 2
        force.addPerBondParameter("k"), force.addPerBondParameter("r0"), force.addPerBondParameter("c")
    elif kind == "angle":
        force = openmm.CustomAngleForce("k*(theta-theta0)^2 + c*(1+cos(theta)) + g*sin(theta)^2")
        params = lambda: [rng.uniform(10, 100), rng.uniform(1.5, 2.2), rng.uniform(0 if positive else -5, 5)]  # noqa: E731
        add, order = force.addAngle, 3
        force.addPerAngleParameter("k"), force.addPerAngleParameter("theta0"), force.addPerAngleParameter("c")
    else:
        # The linear term detects the sign and range convention of theta.
        force = openmm.CustomTorsionForce("k*(1+cos(n*theta-phase)) + s*(theta+pi) + g*theta^2; pi=3.141592653589793")
        params = lambda: [rng.uniform(0.5, 5), float(rng.integers(1, 4)), rng.uniform(-math.pi, math.pi), rng.uniform(0, 2)]  # noqa: E731
        add, order = force.addTorsion, 4
        for name in ("k", "n", "phase", "s"):
            force.addPerTorsionParameter(name)
    force.addGlobalParameter("g", 0.7)
    for _ in range(6):
        atoms = rng.choice(n, size=order, replace=False).tolist()
        add(*atoms, params())
    return force


def _angle_triples(force, kind):
    if kind == "angle":
        return [force.getAngleParameters(k)[:3] for k in range(force.getNumAngles())]
    if kind == "torsion":
        quads = [force.getTorsionParameters(k)[:4] for k in range(force.getNumTorsions())]
        return [q[:3] for q in quads] + [q[1:] for q in quads]
    if kind == "compound":
        # angle(p1,p2,p3), dihedral(p1..p4), pointangle(p1,p3,p4), pointdihedral(p4..p1)
        quads = [list(force.getBondParameters(k)[0]) for k in range(force.getNumBonds())]
        return [t for a, b, c, d in quads for t in ((a, b, c), (b, c, d), (a, c, d), (d, c, b), (c, b, a))]
    return []


def _well_conditioned(rng, force, kind, n, batch):
    """Conformations whose angles (and the angles inside each torsion) lie in
    [15, 165] degrees: a near-collinear triple makes theta's gradient ~ 1/sin, which
    float32 cannot resolve (OpenMM's single precision neither)."""
    out = []
    while len(out) < batch:
        x = random_positions(rng, n, 1, 0.1)[0]
        ok = True
        for i, j, k in _angle_triples(force, kind):
            u, v = x[i] - x[j], x[k] - x[j]
            c = np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)
            ok &= abs(c) <= math.cos(math.radians(15))
        if ok:
            out.append(x)
    return np.array(out)


@DTYPES
@pytest.mark.parametrize("kind", ["bond", "angle", "torsion"])
@FEW
@given(seed=st.integers(0, 2**32 - 1))
def test_bonded_forces_match_openmm(kind, dtype, seed):
    rng = np.random.default_rng(seed)
    n = 6
    force = _bonded_force(kind, rng, n, positive=dtype == torch.float32)
    x = geometry(rng, n, 3, dtype) if dtype == torch.float64 else _well_conditioned(rng, force, kind, n, 3)
    check_against_openmm(force, x, dtype)


@DTYPES
@FEW
@given(seed=st.integers(0, 2**32 - 1))
def test_compound_bond_force_matches_openmm(dtype, seed):
    rng = np.random.default_rng(seed)
    n = 7
    force = openmm.CustomCompoundBondForce(
        4,
        "kd*(distance(p1,p2)-d0)^2 + ka*(angle(p1,p2,p3)-1.9)^2 + kt*(1+cos(dihedral(p1,p2,p3,p4)-0.3))"
        " + c*(x1 + 2*y2 - z4) + 3*pointdistance(x1,y1,z1,x4,y4,z4)"
        " + pointangle(x1,y1,z1,x3,y3,z3,x4,y4,z4) + 2*(pointdihedral(x4,y4,z4,x3,y3,z3,x2,y2,z2,x1,y1,z1)+4)"
        " + g*distance(p2,p1)",
    )
    for name in ("kd", "d0", "ka", "kt", "c"):
        force.addPerBondParameter(name)
    force.addGlobalParameter("g", 2.5)
    for _ in range(5):
        atoms = rng.choice(n, size=4, replace=False).tolist()
        c = rng.uniform(0.1, 2) if dtype == torch.float32 else rng.uniform(-2, 2)
        force.addBond(atoms, [rng.uniform(100, 500), rng.uniform(0.1, 0.2), rng.uniform(10, 50), rng.uniform(1, 5), c])
    x = geometry(rng, n, 3, dtype) if dtype == torch.float64 else _well_conditioned(rng, force, "compound", n, 3)
    check_against_openmm(force, x + 0.5, dtype)  # x, y, z > 0


# ---------------------------------------------------------------------------------------
# CustomNonbondedForce


def _nonbonded_force(rng, n, method, switching, groups, computed, positive):
    force = openmm.CustomNonbondedForce(
        "4*eps*((sig/r)^12-(sig/r)^6) + scale*q1*q2/r + w1*w2*exp(-r); sig=0.5*(sigma1+sigma2); eps=sqrt(epsilon1*epsilon2)"
    )
    force.addGlobalParameter("scale", 138.935456)
    for name in ("q", "sigma", "epsilon"):
        force.addPerParticleParameter(name)
    if computed:
        force.addComputedValue("w", "sigma*epsilon + scale*1e-3")
    else:
        force.setEnergyFunction(force.getEnergyFunction().replace("w1*w2*exp(-r)", "0"))
    for _ in range(n):
        q = rng.uniform(0.05, 0.5) if positive else rng.uniform(-0.8, 0.8)
        force.addParticle([q, rng.uniform(0.1, 0.35), rng.uniform(0.1, 1.0)])
    for i, j in {tuple(sorted(rng.choice(n, size=2, replace=False).tolist())) for _ in range(4)}:
        force.addExclusion(i, j)
    force.setNonbondedMethod(method)
    force.setCutoffDistance(0.7)
    if switching:
        force.setUseSwitchingFunction(True)
        force.setSwitchingDistance(0.5)
    if groups:
        force.addInteractionGroup([0, 1, 2, 3], [2, 3, 4, 5, 6])
        force.addInteractionGroup([5], [6, 0])
    return force


@DTYPES
@pytest.mark.parametrize(
    "variant",
    ["nocutoff", "cutoff", "cutoff-switch", "groups", "computed"],
)
@FEW
@given(seed=st.integers(0, 2**32 - 1))
def test_custom_nonbonded_matches_openmm(variant, dtype, seed):
    rng = np.random.default_rng(seed)
    n = 7
    cutoff = variant not in ("nocutoff", "computed")
    method = openmm.CustomNonbondedForce.CutoffNonPeriodic if cutoff else openmm.CustomNonbondedForce.NoCutoff
    force = _nonbonded_force(
        rng, n, method, variant == "cutoff-switch", variant == "groups", variant == "computed", positive=dtype == torch.float32
    )
    check_against_openmm(force, geometry(rng, n, 3, dtype), dtype)


# ---------------------------------------------------------------------------------------
# CustomGBForce


def _gb_force(rng, n, cutoff, positive, pair_value_kind=openmm.CustomGBForce.ParticlePair):
    """Values of every kind: I (a pair sum, asymmetric in 1 and 2; OpenMM Reference wants
    exactly one pair value, first), S (single, with x, y, z), B (single, using I and S);
    energy terms of all three kinds."""
    force = openmm.CustomGBForce()
    for name in ("q", "or", "sr"):
        force.addPerParticleParameter(name)
    force.addGlobalParameter("kappa", 0.3)
    pair = openmm.CustomGBForce.ParticlePair
    no_excl = openmm.CustomGBForce.ParticlePairNoExclusions
    single = openmm.CustomGBForce.SingleParticle
    force.addComputedValue("I", "step(r+sr2-or1)*exp(-r*or1)*(1+sr2)", pair_value_kind)
    force.addComputedValue("S", "sr*(1 + 0.1*x^2 + 0.05*y^2 + 0.02*z^2)", single)
    force.addComputedValue("B", "1/(1/or + 0.1*I + 0.01*S^2)", single)
    force.addEnergyTerm("q^2/B + kappa*(x*y + z)", single)
    force.addEnergyTerm("-q1*q2/f; f=sqrt(r^2+B1*B2*exp(-r^2/(4*B1*B2)))", pair)
    force.addEnergyTerm("0.1*(I1-I2)^2/(r+0.1) + S1*S2*r", no_excl)
    for _ in range(n):
        q = rng.uniform(0.1, 0.5) if positive else rng.uniform(-0.8, 0.8)
        force.addParticle([q, rng.uniform(0.1, 0.2), rng.uniform(0.08, 0.18)])
    for i, j in {tuple(sorted(rng.choice(n, size=2, replace=False).tolist())) for _ in range(5)}:
        force.addExclusion(i, j)
    if cutoff:
        force.setNonbondedMethod(openmm.CustomGBForce.CutoffNonPeriodic)
        force.setCutoffDistance(0.6)
    if positive:
        # Keep every contribution positive so that float32 relative errors are meaningful.
        force.setEnergyTermParameters(1, "q1*q2/f; f=sqrt(r^2+B1*B2*exp(-r^2/(4*B1*B2)))", pair)
        force.setEnergyTermParameters(0, "q^2/B + kappa*(x*y + z + 5)", single)
    return force


@DTYPES
@pytest.mark.parametrize("cutoff", [False, True], ids=["nocutoff", "cutoff"])
@pytest.mark.parametrize("pair_value", ["ParticlePair", "ParticlePairNoExclusions"])
@FEW
@given(seed=st.integers(0, 2**32 - 1))
def test_custom_gb_matches_openmm(pair_value, cutoff, dtype, seed):
    rng = np.random.default_rng(seed)
    n = 7
    force = _gb_force(rng, n, cutoff, dtype == torch.float32, getattr(openmm.CustomGBForce, pair_value))
    check_against_openmm(force, geometry(rng, n, 3, dtype), dtype)


def test_custom_gb_second_pair_value_sums_both_orientations():
    # OpenMM Reference refuses two pair values, so check the second against the
    # definition directly: J_i = sum_{j != i} f(r_ij; i as "1", j as "2").
    force = openmm.CustomGBForce()
    force.addPerParticleParameter("a")
    force.addComputedValue("I", "a2*r", openmm.CustomGBForce.ParticlePair)
    force.addComputedValue("J", "a1*I2/r^2", openmm.CustomGBForce.ParticlePairNoExclusions)
    force.addEnergyTerm("J^2 + I", openmm.CustomGBForce.SingleParticle)
    a = np.array([0.5, 1.5, -2.0, 3.0])
    for v in a:
        force.addParticle([v])
    force.addExclusion(0, 2)
    rng = np.random.default_rng(5)
    x = rng.uniform(size=(2, 4, 3))
    term = CUSTOM_BUILDERS["CustomGBForce"](force, system_with(force, 4), torch.float64)
    expected = []
    for conf in x:
        r = np.linalg.norm(conf[:, None] - conf[None], axis=-1)
        off = ~np.eye(4, dtype=bool)
        included = off.copy()
        included[0, 2] = included[2, 0] = False
        I = np.array([sum(a[j] * r[i, j] for j in range(4) if included[i, j]) for i in range(4)])
        J = np.array([sum(a[i] * I[j] / r[i, j] ** 2 for j in range(4) if off[i, j]) for i in range(4)])
        expected.append(np.sum(J**2 + I))
    np.testing.assert_allclose(term(torch.tensor(x)).numpy(), expected, rtol=1e-13)


@pytest.fixture(scope="module")
def aldp_gb():
    from openmmtools import testsystems

    test_system = testsystems.AlanineDipeptideImplicit(constraints=None)
    forces = [f for f in test_system.system.getForces() if isinstance(f, openmm.CustomGBForce)]
    assert len(forces) == 1
    # A force belongs to its System: copy it before test_system is garbage-collected.
    return openmm.XmlSerializer.clone(forces[0]), np.asarray(test_system.positions.value_in_unit(unit.nanometer))


@DTYPES
def test_alanine_dipeptide_obc1_term_matches_openmm(aldp_gb, dtype):
    force, x0 = aldp_gb
    rng = np.random.default_rng(1)
    # 200 conformations: thermal-size noise, larger distortions and a few clashes.
    noise = np.concatenate([np.full(150, 0.02), np.full(40, 0.06), np.full(10, 0.12)])
    positions = x0[None] + noise[:, None, None] * rng.standard_normal((200, 22, 3))
    term = check_against_openmm(force, positions, dtype)
    assert len(term.value_fns) == 2 and len(term.energy_fns) == 3


# ---------------------------------------------------------------------------------------
# scripting, device/dtype movement, unsupported input


def _all_forces(rng, n):
    return [
        _bonded_force("bond", rng, n, False),
        _bonded_force("angle", rng, n, False),
        _bonded_force("torsion", rng, n, False),
        _nonbonded_force(rng, n, openmm.CustomNonbondedForce.CutoffNonPeriodic, True, True, True, False),
        _gb_force(rng, n, True, False),
    ]


def test_scripted_terms_equal_eager_terms():
    rng = np.random.default_rng(3)
    n = 7
    x = torch.tensor(random_positions(rng, n, 4, 0.1), dtype=torch.float64)
    compound = openmm.CustomCompoundBondForce(
        4,
        "k*distance(p1,p2)*angle(p1,p2,p3)*dihedral(p1,p2,p3,p4) + pointdistance(x1,y1,z1,x3,y3,z3)"
        " + pointangle(x1,y1,z1,x2,y2,z2,0,0,0) + pointdihedral(x1,y1,z1,x2,y2,z2,x3,y3,z3,1,1,z4)",
    )
    compound.addPerBondParameter("k")
    compound.addBond([0, 1, 2, 3], [2.0])
    compound.addBond([4, 1, 6, 5], [-1.0])
    for force in _all_forces(rng, n) + [compound]:
        term = CUSTOM_BUILDERS[type(force).__name__](force, system_with(force, n), torch.float64)
        scripted = torch.jit.script(term)
        torch.testing.assert_close(scripted(x), term(x), rtol=1e-14, atol=0)
        xg = x.clone().requires_grad_(True)
        (g1,) = torch.autograd.grad(term(xg).sum(), xg)
        (g2,) = torch.autograd.grad(scripted(xg).sum(), xg)
        torch.testing.assert_close(g2, g1, rtol=1e-13, atol=1e-12)
        # Saved TorchScript carries the generated code (what openmm-torch loads).
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
        buffer.seek(0)
        torch.testing.assert_close(torch.jit.load(buffer)(x), term(x), rtol=1e-14, atol=0)


def test_terms_trace_into_one_graph_for_torch_compile():
    # fullgraph=True fails on any graph break; the "eager" backend keeps this fast (the
    # fusion itself is inductor's job, measured by the benchmark).
    rng = np.random.default_rng(6)
    n = 7
    x = torch.tensor(random_positions(rng, n, 3, 0.1), dtype=torch.float64)
    compound = openmm.CustomCompoundBondForce(2, "k*distance(p1,p2) + x1")
    compound.addPerBondParameter("k")
    compound.addBond([0, 1], [2.0])
    torch._dynamo.reset()
    for force in _all_forces(rng, n) + [compound]:
        term = CUSTOM_BUILDERS[type(force).__name__](force, system_with(force, n), torch.float64)
        compiled = torch.compile(term, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), term(x), rtol=1e-14, atol=0)


def test_terms_move_to_float32_with_to():
    rng = np.random.default_rng(4)
    n = 7
    force = _gb_force(rng, n, False, True)
    term64 = CUSTOM_BUILDERS["CustomGBForce"](force, system_with(force, n), torch.float64)
    term32 = copy.deepcopy(term64).to(torch.float32)
    assert all(b.dtype in (torch.float32, torch.int64) for b in term32.buffers())
    x = random_positions(rng, n, 3, 0.1).astype(np.float32)
    e64 = term64(torch.tensor(x, dtype=torch.float64))
    e32 = term32(torch.tensor(x))
    torch.testing.assert_close(e32, e64, rtol=1e-5, atol=0)


def test_empty_forces_give_zero_energy():
    x = torch.rand(3, 4, 3, dtype=torch.float64)
    bond = openmm.CustomBondForce("k*r^2")
    bond.addPerBondParameter("k")
    for force in (bond, openmm.CustomTorsionForce("theta")):
        term = CUSTOM_BUILDERS[type(force).__name__](force, system_with(force, 4), torch.float64)
        assert torch.equal(term(x), torch.zeros(3, dtype=torch.float64))


def test_single_particle_has_no_pairs():
    x = torch.rand(3, 1, 3, dtype=torch.float64)
    gb = openmm.CustomGBForce()
    gb.addPerParticleParameter("q")
    gb.addComputedValue("I", "r*q2", openmm.CustomGBForce.ParticlePair)
    gb.addEnergyTerm("q*I + 2*x", openmm.CustomGBForce.SingleParticle)
    gb.addEnergyTerm("q1*q2/r", openmm.CustomGBForce.ParticlePair)
    gb.addParticle([1.5])
    nonbonded = openmm.CustomNonbondedForce("q1*q2/r")
    nonbonded.addPerParticleParameter("q")
    nonbonded.addParticle([1.0])
    for force, expected in ((gb, 2 * x[:, 0, 0]), (nonbonded, torch.zeros(3, dtype=torch.float64))):
        term = CUSTOM_BUILDERS[type(force).__name__](force, system_with(force, 1), torch.float64)
        torch.testing.assert_close(term(x), expected, rtol=1e-15, atol=0)
        torch.testing.assert_close(torch.jit.script(term)(x), expected, rtol=1e-15, atol=0)


def _unsupported_cases():
    long_range = openmm.CustomNonbondedForce("r")
    long_range.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
    long_range.setUseLongRangeCorrection(True)
    small_box = openmm.CustomGBForce()
    small_box.addEnergyTerm("r", openmm.CustomGBForce.ParticlePair)
    small_box.setNonbondedMethod(openmm.CustomGBForce.CutoffPeriodic)
    small_box.setCutoffDistance(1.5)  # the default box is 2 nm wide
    periodic_points = openmm.CustomCompoundBondForce(2, "pointdistance(x1, y1, z1, x2, y2, z2)")
    periodic_points.setUsesPeriodicBoundaryConditions(True)
    for force in (long_range, small_box):
        for _ in range(3):
            force.addParticle([])
    return [
        (long_range, "long-range correction"),
        (small_box, "twice the cutoff"),
        (periodic_points, "point functions"),
    ]


@pytest.mark.parametrize("force,message", _unsupported_cases(), ids=lambda v: v[:24] if isinstance(v, str) else type(v).__name__)
def test_unsupported_features_raise_naming_them(force, message):
    with pytest.raises(UnsupportedSystemError, match=message) as info:
        CUSTOM_BUILDERS[type(force).__name__](force, system_with(force, 3), torch.float64)
    assert info.value.problems


def test_undefined_variable_is_an_unsupported_system_error():
    force = openmm.CustomBondForce("k*r + unknown")
    force.addPerBondParameter("k")
    force.addBond(0, 1, [1.0])
    with pytest.raises(UnsupportedSystemError, match="unknown"):
        CUSTOM_BUILDERS["CustomBondForce"](force, system_with(force, 2), torch.float64)


def test_every_custom_force_class_has_a_builder():
    assert set(CUSTOM_BUILDERS) == {
        "CustomBondForce",
        "CustomAngleForce",
        "CustomTorsionForce",
        "CustomNonbondedForce",
        "CustomGBForce",
        "CustomCompoundBondForce",
    }


def test_parse_reads_definitions_from_the_last():
    tree = parse("a; a=b*2; b=c+1")
    assert tree == parse("(c+1)*2")
