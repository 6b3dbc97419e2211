"""OpenMM Custom*Force terms compiled from their Lepton expressions.

Each builder ``build(force, system, dtype) -> nn.Module`` returns a term mapping positions
``[B, N, 3]`` (nm) to energies ``[B]`` (kJ/mol, float64 sums). Global parameters are folded
in at their default values (what a new Context uses); per-bond and per-particle
parameters become buffers. What each variable means follows OpenMM's API documentation
and its Reference platform (``ReferenceCustom*Ixn.cpp``):

- CustomBondForce: ``r`` = |x2 - x1|.
- CustomAngleForce: ``theta`` = angle 1-2-3 in [0, pi].
- CustomTorsionForce: ``theta`` = dihedral 1-2-3-4 in (-pi, pi], IUPAC sign.
- CustomCompoundBondForce: ``x1, y1, z1, ...`` and ``distance(p1, p2)``,
  ``angle(p1, p2, p3)``, ``dihedral(p1, p2, p3, p4)``, ``pointdistance``, ``pointangle``,
  ``pointdihedral``.
- CustomNonbondedForce: E = sum over pairs i < j (or over interaction groups) not
  excluded, with ``r`` and per-particle parameters and computed values suffixed 1 and 2.
  With a cutoff: zero for r >= r_c, times the switching function
  S = 1 - 10 t^3 + 15 t^4 - 6 t^5, t = (r - r_s)/(r_c - r_s), when it is enabled. The
  long-range correction of CutoffPeriodic is refused (OpenMM integrates it numerically
  in single precision).
- CustomGBForce: computed values in order, each SingleParticle (a function of the
  particle's parameters, earlier values and x, y, z) or a pair sum
  v_i = sum_{j != i} f(r_ij; particle i as "1", j as "2") over every pair (ParticlePair:
  excluded pairs left out; ParticlePairNoExclusions: all); then energy terms, each
  SingleParticle (sum over particles) or pair (sum over pairs i < j, same exclusion
  rules). With a cutoff pairs with r >= r_c contribute nothing.

Tabulated functions (``tabulated``) may be called in every expression. Forces with
periodic boundary conditions (CutoffPeriodic, or ``setUsesPeriodicBoundaryConditions``)
measure distances, angles and dihedrals between minimum images in the System's default
box; coordinates and point functions are then refused, as is anything else that cannot
be compiled, with an ``UnsupportedSystemError`` naming it.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import openmm
from torch import Tensor, nn

from openmm_cmt.energy.torch_energy._params import force_box, index_buffer, real_buffer
from openmm_cmt.energy.torch_energy.errors import UnsupportedSystemError
from openmm_cmt.energy.torch_energy.expression import (
    CompiledExpression,
    Node,
    _functions,
    compile_expression,
    parse,
    substitute,
    var,
    variables,
)
from openmm_cmt.energy.torch_energy.geometry import angle, attach_box, dihedral, distance, energy_sum
from openmm_cmt.energy.torch_energy.tabulated import tabulated_functions
from openmm_cmt.units import md_value


def _globals(force) -> Dict[str, float]:
    return {force.getGlobalParameterName(i): force.getGlobalParameterDefaultValue(i) for i in range(force.getNumGlobalParameters())}


def _compile(expression, inputs: Sequence[str], constants: Dict[str, float], allowed=(), tables=None) -> CompiledExpression:
    try:
        return compile_expression(expression, inputs, constants, allowed_functions=allowed, tabulated=tables)
    except ValueError as err:
        raise UnsupportedSystemError(str(err)) from None


def _param_matrix(rows: Sequence[Sequence[float]], n_params: int, dtype) -> Tensor:
    """[P, M] buffer of parameters, one row per parameter."""
    table = np.asarray([list(r) for r in rows], dtype=np.float64).reshape(len(rows), n_params)
    return real_buffer(table.T.copy(), dtype)


def _rows(t: Tensor) -> List[Tensor]:
    """The rows of a [P, M] parameter table as a list (one tensor per parameter)."""
    return list(t.unbind(0))


def _broadcast_sum(e: Tensor, shape: List[int]) -> Tensor:
    # An expression that ignores the coordinates comes back without the batch dimension.
    return energy_sum(torch.broadcast_to(e, shape))


# ---------------------------------------------------------------------------------------
# CustomBondForce, CustomAngleForce, CustomTorsionForce


class CustomBondedTerm(nn.Module):
    r"""E(x) = \sum_b f(g_b(x); p_b): g is the distance (2 atoms), angle (3) or dihedral
    (4) of bond b and p_b its parameters; f is a compiled Lepton expression."""

    def __init__(self, atoms: Tensor, params: Tensor, energy: CompiledExpression, box=None):
        super().__init__()
        attach_box(self, box)
        self.order = int(atoms.shape[0])
        self.register_buffer("atoms", atoms)  # [order, M]
        self.register_buffer("params", params)  # [P, M]
        self.energy = energy
        self.work_elements = 3 * self.order * int(atoms.shape[1])

    def forward(self, x: Tensor) -> Tensor:
        a = self.atoms
        box: Optional[Tensor] = None
        if self.periodic:
            box = self.box
        if self.order == 2:
            g = distance(x, a[0], a[1], box)
        elif self.order == 3:
            g = angle(x, a[0], a[1], a[2], box)
        else:
            g = dihedral(x, a[0], a[1], a[2], a[3], box)
        return _broadcast_sum(self.energy([g] + _rows(self.params)), g.shape)


def _build_bonded(force, system, dtype, order: int, variable: str) -> CustomBondedTerm:
    noun = {2: "Bond", 3: "Angle", 4: "Torsion"}[order]
    n_params = getattr(force, f"getNumPer{noun}Parameters")()
    names = [getattr(force, f"getPer{noun}ParameterName")(i) for i in range(n_params)]
    count = getattr(force, f"getNum{noun}s")()
    rows = [getattr(force, f"get{noun}Parameters")(i) for i in range(count)]
    atoms = index_buffer([r[:order] for r in rows]).reshape(count, order).T.contiguous()
    params = _param_matrix([r[order] for r in rows], n_params, dtype)
    energy = _compile(force.getEnergyFunction(), [variable] + names, _globals(force), tables=tabulated_functions(force, dtype))
    return CustomBondedTerm(atoms, params, energy, force_box(force, system))


def build_custom_bond(force: openmm.CustomBondForce, system: openmm.System, dtype: torch.dtype) -> nn.Module:
    return _build_bonded(force, system, dtype, 2, "r")


def build_custom_angle(force: openmm.CustomAngleForce, system: openmm.System, dtype: torch.dtype) -> nn.Module:
    return _build_bonded(force, system, dtype, 3, "theta")


def build_custom_torsion(force: openmm.CustomTorsionForce, system: openmm.System, dtype: torch.dtype) -> nn.Module:
    return _build_bonded(force, system, dtype, 4, "theta")


# ---------------------------------------------------------------------------------------
# CustomCompoundBondForce

_GEOMETRY_KINDS = {"distance": 2, "angle": 3, "dihedral": 4}


class CustomCompoundBondTerm(nn.Module):
    r"""E(x) = \sum_b f(coordinates and geometry of the particles of bond b; p_b).

    ``coordinates`` lists (particle slot, axis) for each x1/y1/z1... variable used;
    ``geometry`` lists [kind, slots...] for each distance/angle/dihedral call (kind =
    number of particles)."""

    coordinates: List[List[int]]
    geometry: List[List[int]]

    def __init__(
        self, atoms: Tensor, params: Tensor, coordinates: List[List[int]], geometry: List[List[int]], energy: CompiledExpression,
        cutoff: float = 0.0, box=None,
    ):
        super().__init__()
        attach_box(self, box)
        self.register_buffer("atoms", atoms)  # [particles per bond, M]
        self.register_buffer("params", params)  # [P + 1, M]; the last row is zeros
        self.coordinates = coordinates
        self.geometry = geometry
        self.energy = energy
        # With a cutoff, interactions whose first two particles are >= cutoff apart are 0.
        self.cutoff = float(cutoff)
        self.work_elements = 3 * int(atoms.shape[0]) * int(atoms.shape[1])

    def forward(self, x: Tensor) -> Tensor:
        a = self.atoms
        box: Optional[Tensor] = None
        if self.periodic:
            box = self.box
        inputs: List[Tensor] = []
        for c in self.coordinates:
            inputs.append(x.index_select(1, a[c[0]])[:, :, c[1]])
        for g in self.geometry:
            if g[0] == 2:
                inputs.append(distance(x, a[g[1]], a[g[2]], box))
            elif g[0] == 3:
                inputs.append(angle(x, a[g[1]], a[g[2]], a[g[3]], box))
            else:
                inputs.append(dihedral(x, a[g[1]], a[g[2]], a[g[3]], a[g[4]], box))
        e = torch.broadcast_to(self.energy(inputs + _rows(self.params)), [x.shape[0], a.shape[1]])
        if self.cutoff > 0.0:
            e = torch.where(distance(x, a[0], a[1], box) < self.cutoff, e, torch.zeros_like(e))
        return energy_sum(e)


def compound_term(force, expression: str, particles: Sequence[str], atoms: Tensor, params: Tensor,
                  param_names: Sequence[str], dtype, coordinates: bool = True, cutoff: float = 0.0,
                  box=None) -> "CustomCompoundBondTerm":
    """A CustomCompoundBondTerm for ``expression`` over interactions of ``len(particles)``
    particles each.

    ``particles`` names the particles as the expression's geometry functions do
    (``distance(p1, p2)``, or ``a1``, ``d1``, ... for hydrogen bonds); ``atoms`` [k, M] holds
    their indices, ``params`` [P, M] the interaction parameters named ``param_names``.
    With ``coordinates`` the expression may use ``x1, y1, z1, ...`` (particle 1, ...). With
    a ``cutoff`` > 0, interactions whose first two particles lie that far apart or more
    contribute 0. With a periodic ``box`` the geometry functions use minimum images (the
    point functions and coordinates are then refused). Global parameters and tabulated functions come from ``force``.
    """
    k = len(particles)
    slots = {name: n for n, name in enumerate(particles)}
    count = int(atoms.shape[1])
    try:
        tree = parse(expression)
    except ValueError as err:
        raise UnsupportedSystemError(str(err)) from None

    # distance(p1, p2) and friends name particles: replace each call by a variable that
    # the term computes from the positions.
    geometry: List[List[int]] = []
    geometry_names: List[str] = []

    def slot(n: Node) -> int:
        if n.op == "var" and n.value in slots:
            return slots[n.value]
        raise UnsupportedSystemError(f"arguments of distance/angle/dihedral must be particles {', '.join(particles)}, "
                                     f"got {n}")

    def replace(n: Node):
        if n.op in _GEOMETRY_KINDS:
            if len(n.args) != _GEOMETRY_KINDS[n.op]:
                raise UnsupportedSystemError(f"{n.op}() takes {_GEOMETRY_KINDS[n.op]} particles, got {len(n.args)}")
            entry = [len(n.args)] + [slot(a) for a in n.args]
            if entry not in geometry:
                geometry.append(entry)
                geometry_names.append(f"{n.op}({','.join(particles[s] for s in entry[1:])})")
            return var(geometry_names[geometry.index(entry)])
        return None

    tree = substitute(tree, replace)
    used = variables(tree)
    if box is not None and (_functions(tree) & {"pointdistance", "pointangle", "pointdihedral"}
                            or any(f"{c}{p + 1}" in used for c in "xyz" for p in range(k))):
        raise UnsupportedSystemError("with periodic boundary conditions only distance(), angle() and dihedral() "
                                     "are supported, not coordinates or point functions")
    coords = [[p, a] for p in range(k) for a in range(3) if coordinates and f"{'xyz'[a]}{p + 1}" in used]
    # A trailing row of zeros gives an expression that uses nothing else its shape [M].
    inputs = [f"{'xyz'[a]}{p + 1}" for p, a in coords] + geometry_names + list(param_names) + ["__bond"]
    params = torch.cat([params, torch.zeros(1, count, dtype=dtype)])
    energy = _compile(tree, inputs, _globals(force), allowed=("pointdistance", "pointangle", "pointdihedral"),
                      tables=tabulated_functions(force, dtype))
    return CustomCompoundBondTerm(atoms, params, coords, geometry, energy, cutoff, box)


def build_custom_compound_bond(force: openmm.CustomCompoundBondForce, system: openmm.System, dtype: torch.dtype) -> nn.Module:
    k = force.getNumParticlesPerBond()
    names = [force.getPerBondParameterName(i) for i in range(force.getNumPerBondParameters())]
    rows = [force.getBondParameters(i) for i in range(force.getNumBonds())]
    atoms = index_buffer([list(r[0]) for r in rows]).reshape(len(rows), k).T.contiguous()
    params = _param_matrix([r[1] for r in rows], len(names), dtype)
    return compound_term(force, force.getEnergyFunction(), [f"p{n + 1}" for n in range(k)], atoms, params, names, dtype,
                         box=force_box(force, system))


# ---------------------------------------------------------------------------------------
# CustomNonbondedForce


def _included_pairs(n: int, excluded: set) -> np.ndarray:
    """[M, 2] pairs i < j of ``n`` particles that are not in ``excluded``, in row-major
    order (vectorised: a 4,000-atom protein has 8 million pairs)."""
    pairs = np.stack(np.triu_indices(n, k=1), axis=1)
    if excluded:
        codes = np.array(sorted(a * n + b for a, b in excluded), dtype=np.int64)
        pairs = pairs[~np.isin(pairs[:, 0] * n + pairs[:, 1], codes)]
    return pairs.reshape(-1, 2)


def _exclusion_set(force) -> set:
    """Excluded pairs as (smaller index, larger index)."""
    pairs = (force.getExclusionParticles(k) for k in range(force.getNumExclusions()))
    return {(min(i, j), max(i, j)) for i, j in pairs}


class CustomNonbondedTerm(nn.Module):
    r"""E(x) = \sum_{(i,j)} S(r_ij) f(r_ij; q_i, q_j) over the listed pairs, where q are the
    per-particle parameters and computed values; with a cutoff r_c, pairs at r >= r_c
    contribute 0 and S is OpenMM's switching function (S = 1 without switching)."""

    def __init__(
        self, i: Tensor, j: Tensor, params1: Tensor, params2: Tensor, energy: CompiledExpression, cutoff: float, switch: float,
        box=None,
    ):
        super().__init__()
        attach_box(self, box)
        self.register_buffer("i", i)
        self.register_buffer("j", j)
        self.register_buffer("params1", params1)  # [P, M], particle i's
        self.register_buffer("params2", params2)  # [P, M], particle j's
        self.energy = energy
        self.use_cutoff = cutoff > 0.0
        self.cutoff = float(cutoff)
        self.use_switch = 0.0 <= switch < cutoff
        self.switch = float(switch)
        self.work_elements = 3 * int(i.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        box: Optional[Tensor] = None
        if self.periodic:
            box = self.box
        r = distance(x, self.i, self.j, box)
        e = torch.broadcast_to(self.energy([r] + _rows(self.params1) + _rows(self.params2)), r.shape)
        if self.use_cutoff:
            if self.use_switch:
                t = torch.clamp((r - self.switch) / (self.cutoff - self.switch), 0.0, 1.0)
                e = e * (1.0 + t * t * t * (-10.0 + t * (15.0 - 6.0 * t)))
            e = torch.where(r < self.cutoff, e, torch.zeros_like(e))
        return energy_sum(e)


def _interaction_pairs(force, n: int, excluded: set) -> np.ndarray:
    """[M, 2] pairs in OpenMM's order of roles (first = particle "1")."""
    if force.getNumInteractionGroups() == 0:
        return _included_pairs(n, excluded)
    pairs = []
    for g in range(force.getNumInteractionGroups()):
        set1, set2 = (set(s) for s in force.getInteractionGroupParameters(g))
        for a in sorted(set1):
            for b in sorted(set2):
                # As ReferenceCustomNonbondedIxn: a pair in both sets counts once per group.
                if a == b or (min(a, b), max(a, b)) in excluded:
                    continue
                if a > b and b in set1 and a in set2:
                    continue
                pairs.append((a, b))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def _pair_force_basics(force, system: openmm.System, cls):
    """Checks shared by the per-particle custom forces: one entry per particle.
    Returns (n, global constants, per-particle parameter names, cutoff or 0, box or None)."""
    method = force.getNonbondedMethod()
    if method not in (cls.NoCutoff, cls.CutoffNonPeriodic, cls.CutoffPeriodic):
        raise UnsupportedSystemError(f"nonbonded method {method} is not supported")
    n = force.getNumParticles()
    if n != system.getNumParticles():
        raise UnsupportedSystemError(f"has {n} particles but the System has {system.getNumParticles()}")
    names = [force.getPerParticleParameterName(i) for i in range(force.getNumPerParticleParameters())]
    cutoff = md_value(force.getCutoffDistance()) if method != cls.NoCutoff else 0.0
    return n, _globals(force), names, cutoff, force_box(force, system, cutoff)


def build_custom_nonbonded(force: openmm.CustomNonbondedForce, system: openmm.System, dtype: torch.dtype) -> nn.Module:
    n, constants, names, cutoff, box = _pair_force_basics(force, system, openmm.CustomNonbondedForce)
    if box is not None and force.getUseLongRangeCorrection():
        raise UnsupportedSystemError("the long-range correction of a CustomNonbondedForce (OpenMM integrates it "
                                     "numerically, in single precision) is not supported; disable it with "
                                     "setUseLongRangeCorrection(False)")
    table = np.asarray([list(force.getParticleParameters(i)) for i in range(n)], dtype=np.float64).reshape(n, len(names))

    # Computed values depend on per-particle parameters only: evaluate them once here.
    for c in range(force.getNumComputedValues()):
        name, expression = force.getComputedValueParameters(c)
        # A trailing dummy input gives a constant expression its shape [n].
        fn = _compile(expression, names + ["__particles"], constants, tables=tabulated_functions(force))
        columns = [torch.as_tensor(table[:, p]) for p in range(len(names))] + [torch.zeros(n, dtype=torch.float64)]
        with torch.no_grad():
            values = torch.broadcast_to(fn(columns), (n,)).numpy()
        table = np.concatenate([table, values[:, None]], axis=1)
        names = names + [name]

    pairs = _interaction_pairs(force, n, _exclusion_set(force))
    switch = md_value(force.getSwitchingDistance()) if force.getUseSwitchingFunction() and cutoff > 0 else -1.0
    if force.getUseSwitchingFunction() and cutoff > 0 and not 0.0 <= switch < cutoff:
        raise UnsupportedSystemError(f"switching distance {switch} nm must lie in [0, cutoff = {cutoff} nm)")
    inputs = ["r"] + [f"{p}1" for p in names] + [f"{p}2" for p in names]
    energy = _compile(force.getEnergyFunction(), inputs, constants, tables=tabulated_functions(force, dtype))
    i, j = index_buffer(pairs[:, 0]), index_buffer(pairs[:, 1])
    params1 = real_buffer(table[pairs[:, 0]].T.copy(), dtype)
    params2 = real_buffer(table[pairs[:, 1]].T.copy(), dtype)
    return CustomNonbondedTerm(i, j, params1, params2, energy, cutoff, switch, box)


# ---------------------------------------------------------------------------------------
# CustomGBForce

_SINGLE, _PAIR, _PAIR_NO_EXCLUSIONS = 0, 1, 2


class CustomGBTerm(nn.Module):
    r"""OpenMM's CustomGBForce: per-particle computed values, then energy terms.

    Pairs i < j come in two lists: ``*_ex`` without excluded pairs (for ParticlePair) and
    ``*_all`` with them (for ParticlePairNoExclusions). A pair-sum value
    v_a = \sum_{b != a} f(r_ab; a as "1", b as "2") evaluates f once per orientation of each
    pair and adds it into the particle playing "1"; a pair energy sums f over the pairs.
    """

    value_kinds: List[int]
    energy_kinds: List[int]

    def __init__(
        self,
        params: Tensor,
        pairs_ex: Tensor,
        pairs_all: Tensor,
        value_kinds: List[int],
        values: List[CompiledExpression],
        energy_kinds: List[int],
        energies: List[CompiledExpression],
        cutoff: float,
        box=None,
    ):
        super().__init__()
        attach_box(self, box)
        n = int(params.shape[1])
        self.n_particles = n
        self.register_buffer("params", params)  # [P, N]
        for tag, pairs in (("ex", pairs_ex), ("all", pairs_all)):
            i, j = pairs[:, 0].contiguous(), pairs[:, 1].contiguous()
            self.register_buffer(f"i_{tag}", i)
            self.register_buffer(f"j_{tag}", j)
            self.register_buffer(f"pi_{tag}", params.index_select(1, i).contiguous())  # [P, M]
            self.register_buffer(f"pj_{tag}", params.index_select(1, j).contiguous())
        kinds = value_kinds + energy_kinds
        self.need_ex = _PAIR in kinds
        self.need_all = _PAIR_NO_EXCLUSIONS in kinds
        self.value_kinds = value_kinds
        self.energy_kinds = energy_kinds
        self.value_fns = nn.ModuleList(values)
        self.energy_fns = nn.ModuleList(energies)
        self.use_cutoff = cutoff > 0.0
        self.cutoff = float(cutoff)
        self.work_elements = 3 * (int(pairs_ex.shape[0]) + int(pairs_all.shape[0])) + 4 * n

    def _cut(self, c: Tensor, r: Tensor) -> Tensor:
        c = torch.broadcast_to(c, r.shape)
        if self.use_cutoff:
            c = torch.where(r < self.cutoff, c, torch.zeros_like(c))
        return c

    def _pair_list(self, kind: int, r_ex: Tensor, r_all: Tensor) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor], Tensor]:
        """Pairs (i, j), their parameter rows and distances for a pair kind."""
        if kind == 1:  # ParticlePair
            return self.i_ex, self.j_ex, _rows(self.pi_ex), _rows(self.pj_ex), r_ex
        return self.i_all, self.j_all, _rows(self.pi_all), _rows(self.pj_all), r_all

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        empty = torch.zeros(batch, 0, dtype=x.dtype, device=x.device)
        box: Optional[Tensor] = None
        if self.periodic:
            box = self.box
        r_ex = distance(x, self.i_ex, self.j_ex, box) if self.need_ex else empty
        r_all = distance(x, self.i_all, self.j_all, box) if self.need_all else empty
        xyz = [x[:, :, 0], x[:, :, 1], x[:, :, 2]]
        own = _rows(self.params)

        values: List[Tensor] = []
        for k, fn in enumerate(self.value_fns):
            kind = self.value_kinds[k]
            if kind == 0:  # SingleParticle
                v = fn(own + values + xyz)
            else:
                i, j, pi, pj, r = self._pair_list(kind, r_ex, r_all)
                vi = [w.index_select(1, i) for w in values]
                vj = [w.index_select(1, j) for w in values]
                c_ij = self._cut(fn([r] + pi + pj + vi + vj), r)
                c_ji = self._cut(fn([r] + pj + pi + vj + vi), r)
                v = torch.zeros(batch, self.n_particles, dtype=r.dtype, device=r.device)
                v = v.index_add(1, i, c_ij).index_add(1, j, c_ji)
            values.append(torch.broadcast_to(v, (batch, self.n_particles)))

        energy = torch.zeros(batch, dtype=torch.float64, device=x.device)
        for k, fn in enumerate(self.energy_fns):
            kind = self.energy_kinds[k]
            if kind == 0:  # SingleParticle
                e = torch.broadcast_to(fn(own + values + xyz), (batch, self.n_particles))
            else:
                i, j, pi, pj, r = self._pair_list(kind, r_ex, r_all)
                vi = [w.index_select(1, i) for w in values]
                vj = [w.index_select(1, j) for w in values]
                e = self._cut(fn([r] + pi + pj + vi + vj), r)
            energy = energy + energy_sum(e)
        return energy


def build_custom_gb(force: openmm.CustomGBForce, system: openmm.System, dtype: torch.dtype) -> nn.Module:
    n, constants, names, cutoff, box = _pair_force_basics(force, system, openmm.CustomGBForce)
    rows = [list(force.getParticleParameters(i)) for i in range(n)]
    params = _param_matrix(rows, len(names), torch.float64)

    excluded = _exclusion_set(force)
    all_pairs = np.stack(np.triu_indices(n, k=1), axis=1)
    ex_pairs = _included_pairs(n, excluded)

    def single_inputs(value_names):
        return names + value_names + ["x", "y", "z"]

    def pair_inputs(value_names):
        # The order forward() passes them in: r, parameters of 1, of 2, values of 1, of 2.
        suffixed = [f"{p}{k}" for k in "12" for p in names] + [f"{v}{k}" for k in "12" for v in value_names]
        return ["r"] + suffixed

    tables = tabulated_functions(force)
    value_names: List[str] = []
    value_kinds: List[int] = []
    value_fns: List[CompiledExpression] = []
    for k in range(force.getNumComputedValues()):
        name, expression, kind = force.getComputedValueParameters(k)
        kind = int(kind)
        inputs = single_inputs(value_names) if kind == _SINGLE else pair_inputs(value_names)
        value_fns.append(_compile(expression, inputs, constants, tables=tables))
        value_kinds.append(kind)
        value_names.append(name)
    energy_kinds: List[int] = []
    energy_fns: List[CompiledExpression] = []
    for k in range(force.getNumEnergyTerms()):
        expression, kind = force.getEnergyTermParameters(k)
        kind = int(kind)
        inputs = single_inputs(value_names) if kind == _SINGLE else pair_inputs(value_names)
        energy_fns.append(_compile(expression, inputs, constants, tables=tables))
        energy_kinds.append(kind)
    term = CustomGBTerm(
        params,
        torch.as_tensor(ex_pairs, dtype=torch.int64).reshape(-1, 2),
        torch.as_tensor(all_pairs, dtype=torch.int64).reshape(-1, 2),
        value_kinds,
        value_fns,
        energy_kinds,
        energy_fns,
        cutoff,
        box,
    )
    return term.to(dtype)


CUSTOM_BUILDERS = {
    "CustomBondForce": build_custom_bond,
    "CustomAngleForce": build_custom_angle,
    "CustomTorsionForce": build_custom_torsion,
    "CustomCompoundBondForce": build_custom_compound_bond,
    "CustomNonbondedForce": build_custom_nonbonded,
    "CustomGBForce": build_custom_gb,
}
