r"""Bond-length constraints: which internal coordinates they fix, and the measure they sample.

OpenMM builds Systems with ``constraints=HBonds`` (or ``AllBonds``) for 2 fs MD: each
constrained bond ``(a, b)`` is held at the System's distance ``d_ab`` by SHAKE/CCMA on the
positions and RATTLE-style projections on the velocities. A Boltzmann generator over
internal coordinates treats such a bond exactly when it is a Z-matrix bond: its IC is
set to ``d_ab`` and removed from the flow's coordinates. This module finds those ICs
(:func:`constrained_ics`) and computes the metric factor of the density
(:class:`ConstraintMetric`), derived below.

Which density constrained MD samples
------------------------------------
Let :math:`\xi(x) = (\xi_1, \dots, \xi_m)` be the constrained bond lengths, :math:`M` the
diagonal mass matrix and :math:`\Sigma = \{x : \xi(x) = d\}` the constraint manifold.
Constrained Langevin dynamics (positions kept on :math:`\Sigma`, velocities in its
tangent space, constraint forces along :math:`M^{-1} \nabla \xi`), which OpenMM's
``LangevinMiddleIntegrator`` discretises, is Hamiltonian dynamics on :math:`T^*\Sigma`
with the kinetic energy of the mass metric plus a thermostat. Its invariant measure is
:math:`e^{-\beta H}` times the Liouville measure of :math:`T^*\Sigma`; integrating out the
momenta (a Gaussian on each cotangent space whose normalisation does not depend on
:math:`x`, because the momenta are measured in the same metric that defines the surface
measure) leaves the position marginal

.. math::
    \pi(dx) \propto e^{-\beta U(x)}\, \sigma_M(dx),

where :math:`\sigma_M` is the surface measure that :math:`\Sigma` inherits from the
mass-weighted metric :math:`\langle u, v \rangle_M = u^T M v` (Ciccotti, Lelievre and
Vanden-Eijnden, Comm. Pure Appl. Math. 61 (2008) 371; Lelievre, Rousset and Stoltz,
*Free Energy Computations: A Mathematical Perspective*, 2010, section 3.3). Relative to
:math:`\sigma_M` no Fixman factor appears; relative to the rigid limit of stiff springs
(Boltzmann with the bonds frozen), :math:`\pi` differs by :math:`\det G_M^{1/2}`
(Fixman, PNAS 71 (1974) 3050).

In internal coordinates: with :math:`y = M^{1/2} x`, Lebesgue measure is
:math:`dy = \det M^{1/2} dx` and the gradient of :math:`\xi` in :math:`y` is
:math:`M^{-1/2} \nabla \xi`. The co-area formula in :math:`y` disintegrates Lebesgue
measure over the level sets of :math:`\xi`,

.. math::
    dy = \frac{\sigma_M^{\xi = z}(dy)}{\sqrt{\det G_M(x)}}\, dz, \qquad
    G_M = \nabla\xi^T M^{-1} \nabla\xi \quad (m \times m).

Parametrise :math:`x` by a translation :math:`t`, a rotation :math:`R` and the ICs
``ic = (ic_free, xi)``, the constrained bond lengths being Z-matrix bonds: then
:math:`dx = J(ic)\, dt\, dR\, d(ic_{free})\, d\xi` with the Z-matrix Jacobian
:math:`J = e^{-\mathrm{log\_det\_ic}}` of ``InternalCoordinateTransform`` (the
product of :math:`b_i^2 \sin\theta_i`, constrained bonds included). Comparing the two
disintegrations at :math:`\xi = d`,

.. math::
    \sigma_M(dx) = \det M^{1/2} \sqrt{\det G_M(x)}\; J(ic)\; dt\, dR\, d(ic_{free}).

A generator with density :math:`q_{free}` over the free ICs (and uniform rigid motion)
therefore has, with respect to :math:`\sigma_M` (modulo :math:`dt\,dR` and the constant
:math:`\det M^{1/2}`),

.. math::
    \log q(x) = \log q_{free}(ic_{free}) - \log J(ic) - \tfrac12 \log\det G_M(x)
              = \log q_{free} + \mathrm{log\_det\_ic}(x) - \tfrac12 \log\det G_M(x),

and :math:`w = e^{-u(x) - \log q(x)}` are importance weights for :math:`\pi`; the
independence Metropolis-Hastings acceptance and the exported energy
:math:`E_{BG} = -kT \log q` (sampled by the same constrained MD) use the same measure.
``ConstraintMetric`` returns :math:`\tfrac12 \log\det G_M(x)`.

The Gram matrix: :math:`\nabla_k \xi_i` is the unit vector along bond :math:`i` at its
atoms and zero elsewhere, so :math:`(G_M)_{ii} = 1/m_a + 1/m_b` for bond :math:`(a, b)`,
:math:`(G_M)_{ij} = \cos\theta_{akc} / m_k` for bonds :math:`(a, k)` and :math:`(k, c)`
sharing atom :math:`k` (:math:`\theta_{akc}` the angle a-k-c), and 0 for bonds sharing
no atom. Bonds sharing no atom with another constrained bond contribute a constant;
X-H2 groups and methyls contribute terms that depend on their H-X-H angles (for two
bonds with light centre :math:`m_k` and heavy ends, :math:`\sqrt{\det G_M} \approx
\sin\theta / m_k`). :math:`G_M` is positive definite whenever the constrained bonds form
a forest (each bond of a tree has an atom of its own), which is the case for bonds that
are all Z-matrix bonds.

Supported constraints are bond lengths that are Z-matrix bonds. Others (a ring-closing
bond under ``AllBonds``, the H-H distances of ``HAngles``, rigid water) are refused by
:func:`constrained_ics` with the constraint named.
"""

from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from openmm_cmt import units


def system_constraints(system) -> List[Tuple[int, int, float]]:
    """The constraints ``(i, j, distance_nm)`` of an ``openmm.System``."""
    out = []
    for k in range(system.getNumConstraints()):
        i, j, d = system.getConstraintParameters(k)
        out.append((int(i), int(j), float(units.nanometers(d))))
    return out


def constrained_ics(
    zmatrix, constraints: Sequence[Tuple[int, int, float]], atom_names=None
) -> Tuple[np.ndarray, np.ndarray]:
    """IC indices and values of the Z-matrix bonds held fixed by ``constraints``.

    Parameters
    ----------
    zmatrix
        int ``[N, 4]`` (validated).
    constraints
        ``(i, j, distance_nm)`` per constraint (:func:`system_constraints`).
    atom_names
        optional names per atom, used in error messages.

    Returns
    -------
    (indices, lengths) : tuple
        int64 ``[m]`` positions in the IC vector (bond block, sorted) and float64
        ``[m]`` distances in nm.

    Raises
    ------
    ValueError
        Naming the first constraint that is not a Z-matrix bond, a duplicate
        constraint, or a non-positive distance.
    """
    z = np.asarray(zmatrix, dtype=np.int64)
    n = len(z)
    bond_ic = {}
    for row in range(1, n):
        a, b = int(z[row, 0]), int(z[row, 1])
        bond_ic[frozenset((a, b))] = row - 1  # bonds of rows 1..N-1 come first in the IC vector

    def name(i):
        return f"{i} ({atom_names[i]})" if atom_names is not None and i < len(atom_names) else str(i)

    found = {}
    for k, (i, j, d) in enumerate(constraints):
        if not (0 <= i < n and 0 <= j < n) or i == j:
            raise ValueError(f"constraint {k} joins atoms {i} and {j}; the molecule has atoms 0..{n - 1}")
        if not d > 0:
            raise ValueError(f"constraint {k} between atoms {name(i)} and {name(j)} has distance {d} nm; expected > 0")
        key = frozenset((i, j))
        if key not in bond_ic:
            raise ValueError(
                f"constraint {k} between atoms {name(i)} and {name(j)} ({d:.4f} nm) is not a bond of the "
                "molecule's Z-matrix (a ring-closing bond under constraints=AllBonds, an H-X-H distance "
                "of constraints=HAngles, or rigid water); the generator can hold fixed only bonds of a "
                "spanning tree: build the System with constraints=HBonds (or constraints=None, "
                "rigidWater=False)"
            )
        if bond_ic[key] in found:
            raise ValueError(f"constraint {k} between atoms {name(i)} and {name(j)} is given twice")
        found[bond_ic[key]] = d
    indices = np.array(sorted(found), dtype=np.int64)
    return indices, np.array([found[i] for i in indices.tolist()], dtype=np.float64)


class ConstraintMetric(torch.nn.Module):
    r"""``forward(x [B, N, 3]) -> [B]``: :math:`\tfrac12 \log\det G_M(x)` for bond
    constraints (module docstring), masses in dalton and lengths in nm.

    Parameters
    ----------
    pairs
        int ``[m, 2]`` constrained atom pairs (may be empty).
    masses
        ``[N]`` particle masses (dalton), positive for constrained atoms; kept
        as the ``masses`` buffer, since the measure depends on them.

    Notes
    -----
    Constraints sharing no atom with another contribute a constant; each connected
    cluster of constraints sharing atoms (an X-H2 group, a methyl) gets one small Gram
    matrix, padded with the identity to the largest cluster and reduced by one batched
    ``slogdet``. Buffers start in float64 (exact after ``.double()``) and are not
    persistent: they follow from the System, so checkpoints do not carry them.
    TorchScript-able.
    """

    n_constraints: int
    n_entries: int

    def __init__(self, pairs, masses):
        super().__init__()
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        masses = np.asarray(masses, dtype=np.float64)
        if pairs.size and not (masses[pairs] > 0).all():
            raise ValueError("constrained atoms need positive masses")
        inv = 1.0 / np.where(masses > 0, masses, 1.0)
        m = len(pairs)
        self.n_constraints = m
        dtype = torch.float64
        diagonal = inv[pairs[:, 0]] + inv[pairs[:, 1]] if m else np.zeros(0)
        clusters = _clusters(pairs)
        singles = [c[0] for c in clusters if len(c) == 1]
        groups = [c for c in clusters if len(c) > 1]
        constant = torch.tensor(0.5 * float(np.log(diagonal[singles]).sum()), dtype=dtype)
        self.register_buffer("constant", constant, persistent=False)
        size = max((len(c) for c in groups), default=1)
        base = np.tile(np.eye(size), (len(groups), 1, 1))
        flat, atoms, inv_mass = [], [], []
        for g, members in enumerate(groups):
            for r, p in enumerate(members):
                base[g, r, r] = diagonal[p]
                for s, q in enumerate(members):
                    shared = set(pairs[p].tolist()) & set(pairs[q].tolist())
                    if p == q or not shared:
                        continue
                    k = shared.pop()
                    a = int(pairs[p][0] if pairs[p][1] == k else pairs[p][1])
                    c = int(pairs[q][0] if pairs[q][1] == k else pairs[q][1])
                    flat.append((g * size + r) * size + s)
                    atoms.append((a, k, c))
                    inv_mass.append(inv[k])
        self.n_entries = len(flat)
        self.register_buffer("pair_atoms", torch.as_tensor(pairs.copy()), persistent=False)
        self.register_buffer("masses", torch.as_tensor(masses.copy()), persistent=False)
        self.register_buffer("_base", torch.as_tensor(base, dtype=dtype), persistent=False)
        self.register_buffer("_flat_index", torch.tensor(flat, dtype=torch.long), persistent=False)
        angle_atoms = torch.tensor(atoms, dtype=torch.long).reshape(-1, 3).T.contiguous()
        self.register_buffer("_angle_atoms", angle_atoms, persistent=False)
        self.register_buffer("_inv_mass", torch.tensor(inv_mass, dtype=dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.constant.to(x.dtype).expand(x.shape[0])
        if self.n_entries == 0:
            return out
        a = self._angle_atoms
        u = x[:, a[0]] - x[:, a[1]]
        v = x[:, a[2]] - x[:, a[1]]
        cos = (u * v).sum(-1) / (torch.linalg.vector_norm(u, dim=-1) * torch.linalg.vector_norm(v, dim=-1))
        base = self._base.to(x.dtype)
        g = base.reshape(1, -1).expand(x.shape[0], -1).clone()
        g = g.index_copy(1, self._flat_index, cos * self._inv_mass.to(x.dtype))
        g = g.reshape(x.shape[0], base.shape[0], base.shape[1], base.shape[2])
        return out + 0.5 * torch.linalg.slogdet(g)[1].sum(-1)


def _clusters(pairs: np.ndarray) -> List[List[int]]:
    """Connected groups of constraints (indices into ``pairs``) that share atoms."""
    parent = list(range(len(pairs)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_atom: dict = {}
    for k, (i, j) in enumerate(pairs.tolist()):
        for atom in (i, j):
            if atom in by_atom:
                parent[root(k)] = root(by_atom[atom])
            else:
                by_atom[atom] = k
    groups: dict = {}
    for k in range(len(pairs)):
        groups.setdefault(root(k), []).append(k)
    return sorted(groups.values())
