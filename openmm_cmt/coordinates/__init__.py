"""Internal coordinates: Z-matrices from topologies and the Cartesian <-> IC bijection
with an exact log-determinant (see ``transform`` for the density convention)."""

from openmm_cmt.coordinates.chirality import chirality_signs, stereocentres
from openmm_cmt.coordinates.graph import MoleculeGraph, as_molecule_graph
from openmm_cmt.coordinates.transform import InternalCoordinateTransform
from openmm_cmt.coordinates.zmatrix import build_zmatrix, validate_zmatrix

__all__ = [
    "InternalCoordinateTransform",
    "MoleculeGraph",
    "as_molecule_graph",
    "build_zmatrix",
    "chirality_signs",
    "stereocentres",
    "validate_zmatrix",
]
