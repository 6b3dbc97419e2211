"""The bijection between Cartesian positions (modulo rigid motions) and internal coordinates.

IC vector layout (D = 3N - 6), in Z-matrix row order within each block:

    ic[bond_indices]     = bonds of rows 1..N-1       (N - 1 values, nm)
    ic[angle_indices]    = angles of rows 2..N-1      (N - 2 values, rad, in (0, pi))
    ic[dihedral_indices] = dihedrals of rows 3..N-1   (N - 3 values, rad, in [-pi, pi))

Canonical frame of ``to_cartesian``: the row-0 atom at the origin, the row-1 atom on the
+x axis, the row-2 atom in the xy-plane with y > 0.

Density convention. ``to_cartesian`` returns

    log_det(ic) = sum_{rows i >= 1} 2 log b_i + sum_{rows i >= 2} log sin(theta_i),

the log volume element of Cartesian space modulo rigid motions: with x parametrised by a
translation t, a rotation R (Haar measure, total volume 8 pi^2) and the ICs,
``dx = exp(log_det(ic)) dt dR d(ic)``. It equals the Jacobian of the canonical-frame
coordinates (``log b_2 + sum_{i >= 3} (2 log b_i + log sin theta_i)``) plus
``log(b_1^2 y_2)`` from the rigid motion (y_2 = b_2 sin theta_2, the distance of atom 2
from the axis through atoms 0 and 1). ``to_internal`` returns minus it at the same point.
Hence for a density q_ic over ICs

    log q_x(x) = log q_ic(ic(x)) + log_det_to_internal(x)

is a density of x with respect to dx / (dt dR), invariant to rotation and translation,
and ``w = exp(-u(x) - log q_x(x))`` are importance weights for the Boltzmann distribution
exp(-u(x)) of the internal degrees of freedom (the rigid-motion volume V 8 pi^2 is a
constant and cancels in self-normalised weights).
"""

import math
import warnings
from typing import List, Tuple

import numpy as np
import torch
from torch import Tensor

from openmm_cmt import units
from openmm_cmt.coordinates.chirality import constrained_rows, stereocentres
from openmm_cmt.coordinates.geometry import bond_angles, bond_lengths, dihedral_angles, place_atoms
from openmm_cmt.coordinates.graph import as_molecule_graph
from openmm_cmt.coordinates.zmatrix import build_zmatrix, validate_zmatrix

#: A constrained dihedral's reference value must lie this far (in |sin|) from the planar
#: values 0 and pi, so that a half-range around it is a meaningful constraint.
_MIN_ABS_SIN_CONSTRAINED = 0.5


class InternalCoordinateTransform(torch.nn.Module):
    """Cartesian positions ``[B, N, 3]`` <-> internal coordinates ``[B, 3N - 6]``.

    Parameters
    ----------
    zmatrix
        int ``[N, 4]`` rows ``(atom, bond_ref, angle_ref, dihedral_ref)`` (see
        ``openmm_cmt.coordinates.zmatrix``), checked by ``validate_zmatrix``.
    reference_positions
        optional ``[N, 3]`` positions in nm (array, tensor or
        OpenMM Quantity), e.g. the minimum-energy structure; gives ``reference_ic``
        and, with ``topology``, the half-ranges of the chiral dihedrals.
    topology
        optional ``openmm.app.Topology``, ``mdtraj.Topology`` or
        ``MoleculeGraph`` of the same atoms; needed for the chirality constraints.
    fix_methyl_permutation
        also constrain the improper dihedrals of equivalent
        terminal atoms (the 2nd and 3rd methyl hydrogens relative to the 1st,
        methylene and ammonium hydrogens) to their reference half-range, so that
        generated samples cannot swap their labels.

    Attributes
    ----------
    bond_indices, angle_indices, dihedral_indices
        positions of each block in the IC vector.
    circular
        bool ``[D]``, True for the periodic dimensions: the dihedrals that are
        not in ``chiral_dihedrals``.
    chiral_dihedrals
        int64 ``[C]`` IC indices of the dihedrals to keep inside
        ``chiral_bounds`` (bounded, not periodic, dimensions).
    chiral_bounds
        ``[C, 2]`` (low, high): (0, pi) or (-pi, 0), the half-range of the
        reference value.
    chirality_centres
        int64 ``[C, 4]`` rows ``(j, a, k, l)`` for ``chirality_signs``: its sign is
        minus the sign of the dihedral a-j-k-l, so it stays fixed while the dihedral
        stays in its half-range.
    reference_ic
        ``[D]`` ICs of the reference structure (empty without one).
    zmatrix
        int64 ``[N, 4]``.

    Notes
    -----
    The attributes above are buffers: they follow ``.to()``.
    """

    n_atoms: int
    dim: int
    _level_bounds: List[int]
    _atom2_on_atom0: bool

    def __init__(self, zmatrix, reference_positions=None, topology=None, fix_methyl_permutation: bool = False):
        super().__init__()
        z = validate_zmatrix(zmatrix)
        n = len(z)
        self.n_atoms = n
        self.dim = 3 * n - 6
        self.register_buffer("zmatrix", torch.as_tensor(z))
        self.register_buffer("bond_indices", torch.arange(0, n - 1))
        self.register_buffer("angle_indices", torch.arange(n - 1, 2 * n - 3))
        self.register_buffer("dihedral_indices", torch.arange(2 * n - 3, 3 * n - 6))

        def index(rows: slice, column: int) -> Tensor:
            return torch.as_tensor(z[rows, column].copy())

        # to_internal: one gather per IC block.
        self.register_buffer("_bond_atoms", torch.stack([index(slice(1, None), c) for c in (0, 1)]))
        self.register_buffer("_angle_atoms", torch.stack([index(slice(2, None), c) for c in (0, 1, 2)]))
        self.register_buffer("_dihedral_atoms", torch.stack([index(slice(3, None), c) for c in (0, 1, 2, 3)]))
        self.register_buffer("_root_atoms", index(slice(0, 3), 0))
        self._atom2_on_atom0 = bool(z[2, 1] == z[0, 0])

        # to_cartesian: rows 3.. grouped into generations whose references are all
        # placed, so each generation is placed in one batched step.
        generation = {int(a): 0 for a in z[:3, 0]}
        row_generation = []
        for row in z[3:]:
            g = 1 + max(generation[int(r)] for r in row[1:])
            generation[int(row[0])] = g
            row_generation.append(g)
        order = np.argsort(np.array(row_generation, dtype=np.int64), kind="stable") + 3
        counts = np.bincount(np.array(row_generation, dtype=np.int64))[1:] if n > 3 else np.zeros(0, np.int64)
        self._level_bounds = [0] + np.cumsum(counts).astype(int).tolist()
        self.register_buffer("_place_atoms", torch.as_tensor(z[order].T.copy()))  # [4, N - 3]
        self.register_buffer("_place_bond", torch.as_tensor(order - 1))
        self.register_buffer("_place_angle", torch.as_tensor(order + n - 3))
        self.register_buffer("_place_dihedral", torch.as_tensor(order + 2 * n - 6))

        dtype = torch.get_default_dtype()
        reference_ic = torch.zeros(0, dtype=dtype)
        rows: list[tuple[int, bool]] = []
        bounds: list[tuple[float, float]] = []
        if reference_positions is not None:
            reference = _positions_tensor(reference_positions, n)
            reference_ic = self.to_internal(reference.unsqueeze(0))[0][0]
            if topology is not None:
                rows, bounds = _half_ranges(z, reference_ic, topology, fix_methyl_permutation)
        elif topology is not None and len(stereocentres(topology)):
            warnings.warn(
                "the topology has stereocentres but no reference_positions were given: "
                "chirality is not constrained",
                stacklevel=2,
            )
        self.register_buffer("reference_ic", reference_ic.to(dtype))
        chiral = torch.tensor([2 * n - 6 + i for i, _ in rows], dtype=torch.long)
        self.register_buffer("chiral_dihedrals", chiral)
        self.register_buffer("chiral_bounds", torch.tensor(bounds, dtype=dtype).reshape(-1, 2))
        centres = [[z[i, 1], z[i, 0], z[i, 2], z[i, 3]] for i, _ in rows]
        self.register_buffer("chirality_centres", torch.tensor(centres, dtype=torch.long).reshape(-1, 4))
        circular = torch.zeros(self.dim, dtype=torch.bool)
        circular[self.dihedral_indices] = True
        circular[chiral] = False
        self.register_buffer("circular", circular)

    @classmethod
    def from_topology(
        cls, topology, reference_positions=None, root_atoms=None, fix_methyl_permutation: bool = False
    ) -> "InternalCoordinateTransform":
        """``build_zmatrix(topology, root_atoms)`` with chirality constraints from the topology."""
        graph = as_molecule_graph(topology)
        return cls(build_zmatrix(graph, root_atoms), reference_positions, graph, fix_methyl_permutation)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return self.to_internal(x)

    @torch.jit.export
    def to_internal(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Positions ``[B, N, 3]`` -> (ic ``[B, D]``, log|det d ic / dx| ``[B]``).

        The log-det is minus ``to_cartesian``'s at the same point (see the module
        docstring for the measure).
        """
        if x.dim() != 3 or x.shape[1] != self.n_atoms or x.shape[2] != 3:
            raise ValueError(
                "positions must have shape [batch, " + str(self.n_atoms) + ", 3], got " + str(list(x.shape))
            )
        b = self._bond_atoms
        a = self._angle_atoms
        d = self._dihedral_atoms
        bonds = bond_lengths(x[:, b[0]], x[:, b[1]])
        angles = bond_angles(x[:, a[0]], x[:, a[1]], x[:, a[2]])
        dihedrals = dihedral_angles(x[:, d[0]], x[:, d[1]], x[:, d[2]], x[:, d[3]])
        ic = torch.cat([bonds, angles, dihedrals], dim=-1)
        return ic, -self._log_volume(bonds, angles)

    @torch.jit.export
    def to_cartesian(self, ic: Tensor) -> Tuple[Tensor, Tensor]:
        """Internal coordinates ``[B, D]`` -> (positions ``[B, N, 3]`` in the canonical
        frame, log volume element ``[B]``)."""
        if ic.dim() != 2 or ic.shape[1] != self.dim:
            raise ValueError("internal coordinates must have shape [batch, " + str(self.dim) + "], got " + str(list(ic.shape)))
        n = self.n_atoms
        bonds = ic[:, : n - 1]
        angles = ic[:, n - 1 : 2 * n - 3]
        x = ic.new_zeros(ic.shape[0], n, 3)
        x.index_copy_(1, self._root_atoms, self._root_positions(bonds[:, 0], bonds[:, 1], angles[:, 0]))
        p = self._place_atoms
        for level in range(len(self._level_bounds) - 1):
            start = self._level_bounds[level]
            stop = self._level_bounds[level + 1]
            placed = place_atoms(
                x[:, p[1, start:stop]],
                x[:, p[2, start:stop]],
                x[:, p[3, start:stop]],
                ic[:, self._place_bond[start:stop]],
                ic[:, self._place_angle[start:stop]],
                ic[:, self._place_dihedral[start:stop]],
            )
            x.index_copy_(1, p[0, start:stop], placed)
        return x, self._log_volume(bonds, angles)

    def _root_positions(self, b1: Tensor, b2: Tensor, angle2: Tensor) -> Tensor:
        zero = torch.zeros_like(b1)
        along = b2 * torch.cos(angle2)
        if self._atom2_on_atom0:
            x2 = along
        else:
            x2 = b1 - along
        atom0 = torch.stack([zero, zero, zero], dim=-1)
        atom1 = torch.stack([b1, zero, zero], dim=-1)
        atom2 = torch.stack([x2, b2 * torch.sin(angle2), zero], dim=-1)
        return torch.stack([atom0, atom1, atom2], dim=1)

    def _log_volume(self, bonds: Tensor, angles: Tensor) -> Tensor:
        return 2.0 * torch.log(bonds).sum(-1) + torch.log(torch.sin(angles)).sum(-1)


def _positions_tensor(positions, n_atoms: int) -> Tensor:
    if isinstance(positions, Tensor):
        positions = positions.detach().cpu().double()
    x = torch.as_tensor(units.nanometers(positions))
    if x.dim() == 3 and x.shape[0] == 1:
        x = x[0]
    if x.shape != (n_atoms, 3):
        raise ValueError(f"reference_positions must have shape ({n_atoms}, 3), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("reference_positions contain NaN or infinite values")
    return x


def _half_ranges(z: np.ndarray, reference_ic: Tensor, topology, fix_methyl_permutation: bool):
    """Constrained rows and their (low, high) half-ranges from the reference dihedrals."""
    n = len(z)
    rows, bounds = [], []
    candidates = constrained_rows(z, topology, fix_methyl_permutation)
    fixed_centres = set()
    for row, is_stereo in candidates:
        phi = float(reference_ic[2 * n - 6 + row])
        if abs(math.sin(phi)) < _MIN_ABS_SIN_CONSTRAINED:
            continue  # (near-)planar in the reference: no half-range to keep
        rows.append((row, is_stereo))
        bounds.append((0.0, math.pi) if phi > 0 else (-math.pi, 0.0))
        if is_stereo:
            fixed_centres.add(int(z[row, 1]))
    unfixed = sorted(set(stereocentres(topology)[:, 0].tolist()) - fixed_centres)
    if unfixed:
        warnings.warn(
            f"stereocentres {unfixed} have no improper dihedral with a non-planar reference "
            "value in this Z-matrix: their chirality is not constrained",
            stacklevel=3,
        )
    return rows, bounds
