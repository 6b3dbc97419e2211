"""Stereocentres, their handedness, and the dihedrals that fix it.

A stereocentre here is an atom with four bonded neighbours in four different symmetry
classes (colour refinement, ``MoleculeGraph.symmetry_classes``): the C-alpha of every
amino acid but glycine, the C-beta of Ile and Thr. Its handedness is the sign of the
signed volume ``(n1 - c) . ((n2 - c) x (n3 - c))`` of three neighbours n1, n2, n3 (heavy
atoms first, then by index), e.g. N, C-beta, C around C-alpha.

For an improper row ``(a, j, k, l)`` of a Z-matrix (a, k and l all bonded to j) the
dihedral's sign is minus the sign of ``(a - j) . ((k - j) x (l - j))``: keeping the
dihedral inside the half-range ``(0, pi)`` or ``(-pi, 0)`` of the reference structure keeps
that triple's handedness. The same device keeps equivalent terminal atoms (methyl,
ammonium and methylene hydrogens) from swapping labels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from openmm_cmt.coordinates.graph import MoleculeGraph, as_molecule_graph


def stereocentres(topology) -> np.ndarray:
    """int64 ``[C, 4]`` rows ``(centre, n1, n2, n3)`` for every stereocentre of a topology."""
    graph = as_molecule_graph(topology)
    neighbours = graph.neighbours()
    classes = graph.symmetry_classes()
    hydrogen = graph.is_hydrogen
    rows = []
    for centre, around in enumerate(neighbours):
        if len(around) == 4 and len({int(classes[b]) for b in around}) == 4:
            ordered = sorted(around, key=lambda b: (bool(hydrogen[b]), b))
            rows.append([centre, *ordered[:3]])
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def chirality_signs(x: Tensor, centres) -> Tensor:
    """Handedness of each stereocentre: the sign (+1, -1; 0 if planar) of
    ``(n1 - c) . ((n2 - c) x (n3 - c))``.

    Parameters
    ----------
    x
        positions ``[B, N, 3]`` (or ``[N, 3]``).
    centres
        int ``[C, 4]`` rows ``(c, n1, n2, n3)`` (``stereocentres``, or
        ``InternalCoordinateTransform.chirality_centres``), or a topology.

    Returns
    -------
    torch.Tensor
        ``[B, C]`` (or ``[C]``) signs in x's dtype.
    """
    if not isinstance(centres, (np.ndarray, Tensor, list, tuple)):
        centres = stereocentres(centres)
    if isinstance(centres, Tensor):
        index = centres.to(device=x.device, dtype=torch.long).reshape(-1, 4)
    else:
        index = torch.as_tensor(np.asarray(centres), dtype=torch.long, device=x.device).reshape(-1, 4)
    if x.shape[-1] != 3 or x.dim() not in (2, 3):
        raise ValueError(f"positions must have shape [B, N, 3] or [N, 3], got {tuple(x.shape)}")
    if index.numel() and int(index.max()) >= x.shape[-2]:
        raise ValueError(f"centre atom index {int(index.max())} out of range for {x.shape[-2]} atoms")
    c = x[..., index[:, 0], :]
    u, v, w = (x[..., index[:, i], :] - c for i in (1, 2, 3))
    return torch.sign((u * torch.cross(v, w, dim=-1)).sum(-1))


def constrained_rows(zmatrix: np.ndarray, topology, fix_methyl_permutation: bool = False) -> list[tuple[int, bool]]:
    """Z-matrix rows whose (improper) dihedral should be kept in a half-range.

    Returns ``(row, is_stereo)`` pairs: rows of improper dihedrals about a stereocentre,
    and, when ``fix_methyl_permutation``, about an atom carrying two or more equivalent
    terminal atoms (of which ``row``'s atom is one).
    """
    graph: MoleculeGraph = as_molecule_graph(topology)
    if graph.n_atoms != len(zmatrix):
        raise ValueError(f"topology has {graph.n_atoms} atoms but the Z-matrix has {len(zmatrix)} rows")
    neighbours = [set(b) for b in graph.neighbours()]
    classes = graph.symmetry_classes()
    stereo = set(stereocentres(graph)[:, 0].tolist())
    rows = []
    for i in range(3, len(zmatrix)):
        a, j, k, l = (int(v) for v in zmatrix[i])
        if not {a, k, l} <= neighbours[j]:
            continue  # a proper torsion (or refs that are not bonds): no handedness
        if j in stereo:
            rows.append((i, True))
        elif fix_methyl_permutation and len(neighbours[a]) == 1:
            twins = [b for b in neighbours[j] if classes[b] == classes[a] and len(neighbours[b]) == 1]
            if len(twins) >= 2:
                rows.append((i, False))
    return rows
