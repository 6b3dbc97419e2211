"""The bonded graph of a molecule, read from an OpenMM or MDTraj topology.

Everything the Z-matrix builder and the chirality analysis need from a topology:
atom names, elements, residues and bonds. Atom symmetry classes come from colour
refinement (the 1-Weisfeiler-Lehman test): atoms related by a graph automorphism always
share a class, so neighbours in different classes are certainly inequivalent.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class MoleculeGraph:
    """Atoms and bonds of one molecule, in the System's atom order.

    Attributes
    ----------
    names
        atom names (``"CA"``, ``"HB1"``, ...).
    elements
        element symbols (``"C"``, ``"H"``; ``"X"`` when unknown).
    residue_names
        residue name of each atom.
    residue_indices
        residue index of each atom.
    bonds
        ``[n_bonds, 2]`` int64 atom pairs.
    """

    names: tuple
    elements: tuple
    residue_names: tuple
    residue_indices: tuple
    bonds: np.ndarray

    def __post_init__(self):
        n = len(self.names)
        if not (len(self.elements) == len(self.residue_names) == len(self.residue_indices) == n):
            raise ValueError("names, elements, residue_names and residue_indices must have one entry per atom")
        bonds = np.asarray(self.bonds, dtype=np.int64).reshape(-1, 2)
        if bonds.size and (bonds.min() < 0 or bonds.max() >= n):
            raise ValueError(f"bond atom indices must lie in [0, {n}), got range [{bonds.min()}, {bonds.max()}]")
        if np.any(bonds[:, 0] == bonds[:, 1]):
            raise ValueError("a bond joins an atom to itself")
        object.__setattr__(self, "bonds", bonds)

    @property
    def n_atoms(self) -> int:
        return len(self.names)

    @property
    def is_hydrogen(self) -> np.ndarray:
        return np.array([e == "H" or (e == "X" and n.startswith("H")) for e, n in zip(self.elements, self.names)])

    def neighbours(self) -> list[list[int]]:
        """Sorted bonded neighbours of every atom."""
        adjacency: list[set[int]] = [set() for _ in range(self.n_atoms)]
        for i, j in self.bonds:
            adjacency[i].add(int(j))
            adjacency[j].add(int(i))
        return [sorted(a) for a in adjacency]

    def symmetry_classes(self) -> np.ndarray:
        """Colour-refinement class of every atom (int64 [N]).

        Start from the element and refine by the multiset of neighbour colours until the
        partition stops changing. Equal classes are necessary, not sufficient, for two
        atoms to be symmetry-equivalent.
        """
        neighbours = self.neighbours()
        colours = _relabel(list(self.elements))
        n_classes = len(set(colours))
        while True:
            signatures = [(colours[i], tuple(sorted(colours[j] for j in neighbours[i]))) for i in range(self.n_atoms)]
            colours = _relabel(signatures)
            if len(set(colours)) == n_classes:
                return np.array(colours, dtype=np.int64)
            n_classes = len(set(colours))

    @classmethod
    def from_bonds(cls, n_atoms: int, bonds, elements: Sequence[str] | None = None) -> "MoleculeGraph":
        """A graph without residue information (for tests and plain bond lists)."""
        elements = tuple(elements) if elements is not None else ("X",) * n_atoms
        names = tuple(f"{e}{i}" for i, e in enumerate(elements))
        return cls(names, elements, ("MOL",) * n_atoms, (0,) * n_atoms, np.asarray(bonds))


def _relabel(keys: list) -> list[int]:
    order = {key: label for label, key in enumerate(sorted(set(keys)))}
    return [order[key] for key in keys]


def as_molecule_graph(topology) -> MoleculeGraph:
    """A MoleculeGraph from an ``openmm.app.Topology``, an ``mdtraj.Topology`` or a
    MoleculeGraph (returned as is).

    Raises TypeError for anything else and ValueError for a topology without bonds
    (PDB files of non-standard molecules need CONECT records).
    """
    if isinstance(topology, MoleculeGraph):
        return topology
    if not (hasattr(topology, "atoms") and hasattr(topology, "bonds")):
        raise TypeError(
            "expected an openmm.app.Topology, an mdtraj.Topology or a MoleculeGraph, "
            f"got {type(topology).__name__}"
        )
    atoms = list(topology.atoms() if callable(topology.atoms) else topology.atoms)
    bond_iter = topology.bonds() if callable(topology.bonds) else topology.bonds
    bonds = [(b[0].index, b[1].index) for b in bond_iter]
    if len(atoms) > 1 and not bonds:
        raise ValueError("the topology has no bonds; internal coordinates need the bonded graph")
    elements = tuple(
        (a.element.symbol if a.element is not None else "X") for a in atoms
    )
    return MoleculeGraph(
        names=tuple(a.name for a in atoms),
        elements=elements,
        residue_names=tuple(a.residue.name for a in atoms),
        residue_indices=tuple(a.residue.index for a in atoms),
        bonds=np.array(bonds, dtype=np.int64).reshape(-1, 2),
    )
