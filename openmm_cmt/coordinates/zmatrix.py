"""Z-matrices: which atoms define each atom's bond, angle and dihedral.

A Z-matrix is an int64 array ``[N, 4]`` of rows ``(atom, bond_ref, angle_ref,
dihedral_ref)`` in placement order. Row 0 is ``(a0, -1, -1, -1)``, row 1
``(a1, a0, -1, -1)``, row 2 ``(a2, r, s, -1)`` with ``{r, s} = {a0, a1}``, and every later
row refers to three distinct atoms placed before it. The row defines

    bond     |x_atom - x_bond_ref|,
    angle    the angle atom-bond_ref-angle_ref in (0, pi),
    dihedral the torsion atom-bond_ref-angle_ref-dihedral_ref in [-pi, pi).

``build_zmatrix`` chooses the rows from the bonded graph (the usual tree construction of
Boltzmann generators over internal coordinates, e.g. Noe et al., Science 365, eaaw1147
(2019); Kohler et al., bgflow): the heavy-atom backbone first, rooted at its middle (at the
central C-alpha of a peptide), then the remaining heavy atoms breadth first, then the
hydrogens on their heavy atoms. Reference atoms are bonded neighbours, so dihedrals are
proper torsions along a chain (phi, psi, omega, chi) or, for the second and later
substituents of a branch point, improper dihedrals about the branch atom. The improper
dihedral of a substituent of an sp3 centre fixes that centre's handedness, which is what
the chirality constraints act on.
"""

from __future__ import annotations

import heapq
from collections import deque

import numpy as np

from openmm_cmt.coordinates.graph import MoleculeGraph, as_molecule_graph

#: Atom names on the main chain of a (capped) peptide: N, CA, C and the cap carbons.
_PEPTIDE_BACKBONE_NAMES = frozenset({"N", "CA", "C", "CH3"})


def build_zmatrix(topology, root_atoms=None) -> np.ndarray:
    """A Z-matrix for a connected molecule, from its bonded graph.

    Parameters
    ----------
    topology
        ``openmm.app.Topology``, ``mdtraj.Topology`` or ``MoleculeGraph``.
    root_atoms
        optional ``(a0, a1, a2)``: the atoms that fix the frame, with a1
        bonded to a0 and a2 bonded to a0 or a1. Default: the backbone atom at the
        middle of the heavy-atom backbone (the central C-alpha of a peptide) and its
        two backbone neighbours.

    Returns
    -------
    numpy.ndarray
        int64 ``[N, 4]``, rows ``(atom, bond_ref, angle_ref, dihedral_ref)`` with -1 for
        the references the first three rows lack.

    Raises
    ------
    ValueError
        For fewer than 3 atoms, a disconnected molecule or bad root atoms.
    """
    graph = as_molecule_graph(topology)
    n = graph.n_atoms
    if n < 3:
        raise ValueError(f"internal coordinates need at least 3 atoms, got {n}")
    neighbours = graph.neighbours()
    n_components = _count_components(neighbours)
    if n_components != 1:
        raise ValueError(
            f"the bonded graph has {n_components} disconnected parts; internal coordinates "
            "need one molecule (remove solvent and ions, or check the topology's bonds)"
        )
    backbone = _backbone_path(graph, neighbours)
    if root_atoms is None:
        root = _default_root(graph, backbone)
    else:
        root = _checked_root(root_atoms, neighbours, n)
    on_backbone = np.zeros(n, dtype=bool)
    on_backbone[backbone] = True
    heavy = ~graph.is_hydrogen
    order = _placement_order(root, neighbours, (on_backbone, heavy, np.ones(n, dtype=bool)))
    return _reference_rows(order, neighbours)


def validate_zmatrix(zmatrix, n_atoms: int | None = None) -> np.ndarray:
    """Check a user Z-matrix and return it as int64 ``[N, 4]``.

    Each atom appears exactly once in column 0; row i refers only to atoms of earlier
    rows, ``min(i, 3)`` distinct references followed by -1; row 2 refers to the atoms of
    rows 0 and 1. Raises ValueError naming the first offending row.
    """
    z = np.asarray(zmatrix)
    if z.ndim != 2 or z.shape[1] != 4:
        raise ValueError(f"a Z-matrix has shape [N, 4], got {z.shape}")
    if not np.issubdtype(z.dtype, np.integer):
        if not np.all(np.equal(np.mod(z, 1), 0)):
            raise ValueError("Z-matrix entries must be integer atom indices")
    z = z.astype(np.int64)
    n = z.shape[0]
    if n < 3:
        raise ValueError(f"internal coordinates need at least 3 atoms, got a Z-matrix with {n} rows")
    if n_atoms is not None and n != n_atoms:
        raise ValueError(f"Z-matrix has {n} rows but the molecule has {n_atoms} atoms")
    if sorted(z[:, 0].tolist()) != list(range(n)):
        missing = sorted(set(range(n)) - set(z[:, 0].tolist()))
        raise ValueError(
            f"column 0 of the Z-matrix must list every atom 0..{n - 1} exactly once "
            f"(missing: {missing[:10]})"
        )
    placed: list[int] = []
    for i, row in enumerate(z):
        atom, refs = int(row[0]), [int(r) for r in row[1:]]
        n_refs = min(i, 3)
        if any(r != -1 for r in refs[n_refs:]):
            raise ValueError(f"row {i} ({row.tolist()}): only {n_refs} references allowed, the rest must be -1")
        used = refs[:n_refs]
        if len(set(used)) != n_refs or atom in used:
            raise ValueError(f"row {i} ({row.tolist()}): references must be distinct and differ from the atom")
        if any(r not in placed for r in used):
            raise ValueError(f"row {i} ({row.tolist()}): every reference must be an atom of an earlier row")
        placed.append(atom)
    return z


def _count_components(neighbours: list[list[int]]) -> int:
    seen = np.zeros(len(neighbours), dtype=bool)
    count = 0
    for start in range(len(neighbours)):
        if seen[start]:
            continue
        count += 1
        seen[start] = True
        queue = deque([start])
        while queue:
            for b in neighbours[queue.popleft()]:
                if not seen[b]:
                    seen[b] = True
                    queue.append(b)
    return count


def _farthest(start: int, neighbours, allowed: np.ndarray):
    """BFS within ``allowed``: (farthest atom, lowest index on ties; parent array)."""
    parent = np.full(len(neighbours), -2, dtype=np.int64)
    parent[start] = -1
    queue, last = deque([start]), [start]
    while queue:
        level = []
        for a in queue:
            for b in neighbours[a]:
                if allowed[b] and parent[b] == -2:
                    parent[b] = a
                    level.append(b)
        if level:
            last = level
        queue = deque(level)
    return min(last), parent


def _longest_path(atoms: np.ndarray, neighbours) -> list[int]:
    """Endpoint-to-endpoint path of the largest connected part of ``atoms``.

    Double BFS: exact for trees (a peptide main chain), a long path for ring systems.
    """
    allowed = np.zeros(len(neighbours), dtype=bool)
    allowed[atoms] = True
    best: list[int] = []
    remaining = set(int(a) for a in atoms)
    while remaining:
        start = min(remaining)
        u, parent = _farthest(start, neighbours, allowed)
        remaining -= set(np.flatnonzero(parent != -2).tolist())
        v, parent = _farthest(u, neighbours, allowed)
        path = [v]
        while parent[path[-1]] != -1:
            path.append(int(parent[path[-1]]))
        if len(path) > len(best):
            best = path
    if best and best[0] > best[-1]:
        best.reverse()
    return best


def _is_peptide(graph: MoleculeGraph, neighbours) -> bool:
    for a, name in enumerate(graph.names):
        if name == "CA":
            names = {graph.names[b] for b in neighbours[a]}
            if {"N", "C"} <= names:
                return True
    return False


def _backbone_path(graph: MoleculeGraph, neighbours) -> list[int]:
    """The main chain: N-CA-C (with caps) for peptides, the longest heavy-atom path otherwise."""
    heavy = ~graph.is_hydrogen
    path: list[int] = []
    if _is_peptide(graph, neighbours):
        main = np.flatnonzero(heavy & np.isin(np.array(graph.names), list(_PEPTIDE_BACKBONE_NAMES)))
        path = _longest_path(main, neighbours)
        if path and graph.residue_indices[path[0]] > graph.residue_indices[path[-1]]:
            path.reverse()  # N- to C-terminus
    if len(path) < 3:
        path = _longest_path(np.flatnonzero(heavy), neighbours)
    if len(path) < 3:  # fewer than three heavy atoms in a row (water, methanol)
        path = _longest_path(np.arange(graph.n_atoms), neighbours)
    if len(path) < 3:
        # The double sweep can stop short on small rings (a triangle gives two atoms);
        # any atom with two neighbours makes a three-atom path.
        centre = next(a for a in range(graph.n_atoms) if len(neighbours[a]) >= 2)
        first, last = sorted(neighbours[centre])[:2]
        path = [first, centre, last]
    return path


def _default_root(graph: MoleculeGraph, backbone: list[int]) -> tuple[int, int, int]:
    centre = (len(backbone) - 1) / 2
    inner = range(1, len(backbone) - 1)
    alphas = [i for i in inner if graph.names[backbone[i]] == "CA"]
    m = min(alphas or inner, key=lambda i: (abs(i - centre), i))
    # (CA, N, C) for a peptide: chi1 is then measured from N, as usual.
    return backbone[m], backbone[m - 1], backbone[m + 1]


def _checked_root(root_atoms, neighbours, n: int) -> tuple[int, int, int]:
    root = tuple(int(a) for a in root_atoms)
    if len(root) != 3 or len(set(root)) != 3 or not all(0 <= a < n for a in root):
        raise ValueError(f"root_atoms must be 3 distinct atom indices in [0, {n}), got {root_atoms}")
    a0, a1, a2 = root
    if a1 not in neighbours[a0] or not (a2 in neighbours[a0] or a2 in neighbours[a1]):
        raise ValueError(
            f"root_atoms {root}: a1 must be bonded to a0, and a2 to a0 or a1"
        )
    return root


def _placement_order(root, neighbours, phases) -> list[tuple[int, int]]:
    """(atom, bond_ref) in placement order.

    Breadth-first growth from the root, one phase per atom class (backbone, heavy, all):
    an atom is placed in the first phase whose class contains it, bonded to its
    earliest-placed neighbour.
    """
    a0, a1, a2 = root
    order = [(a0, -1), (a1, a0), (a2, a0 if a2 in neighbours[a0] else a1)]
    position = {a0: 0, a1: 1, a2: 2}
    for allowed in phases:
        heap = [(position[a], b) for a, _ in order for b in neighbours[a] if allowed[b] and b not in position]
        heapq.heapify(heap)
        while heap:
            parent_position, atom = heapq.heappop(heap)
            if atom in position:
                continue
            position[atom] = len(order)
            order.append((atom, order[parent_position][0]))
            for b in neighbours[atom]:
                if allowed[b] and b not in position:
                    heapq.heappush(heap, (position[atom], b))
    return order


def _reference_rows(order, neighbours) -> np.ndarray:
    """Angle and dihedral references for each placed atom.

    For atom a bonded to j: the angle reference k is j's earliest-placed other
    neighbour. If j already has a second placed neighbour l, the dihedral is the
    improper a-j-k-l (a branch: it fixes the handedness of a, k, l about j); otherwise
    l is k's earliest-placed neighbour other than j, a proper torsion along the chain.
    """
    position: dict[int, int] = {}
    rows = []
    for i, (atom, j) in enumerate(order):
        if i == 0:
            refs = [-1, -1, -1]
        elif i == 1:
            refs = [j, -1, -1]
        elif i == 2:
            a0, a1 = order[0][0], order[1][0]
            refs = [j, a1 if j == a0 else a0, -1]
        else:
            around_j = sorted((b for b in neighbours[j] if b in position and b != atom), key=position.get)
            k = around_j[0]
            if len(around_j) >= 2:
                l = around_j[1]
            else:
                around_k = sorted((b for b in neighbours[k] if b in position and b != j), key=position.get)
                if not around_k:  # cannot happen for a connected placed set of >= 3 atoms
                    raise RuntimeError(f"no dihedral reference for atom {atom}")
                l = around_k[0]
            refs = [j, k, l]
        rows.append([atom, *refs])
        position[atom] = i
    return np.array(rows, dtype=np.int64)
