"""Molecular systems: built-in peptides, PDB files, openmm-ml potentials, run folders."""

from openmm_cmt.systems.alanine_dipeptide import alanine_dipeptide
from openmm_cmt.systems.molecular_system import MolecularSystem
from openmm_cmt.systems.peptide import alanine_hexapeptide, alanine_tetrapeptide, elil, peptide
from openmm_cmt.systems.registry import add_system_arguments, get, names, register, resolve, system_from_args

register("alanine-dipeptide", alanine_dipeptide)
register("alanine-tetrapeptide", alanine_tetrapeptide)
register("alanine-hexapeptide", alanine_hexapeptide)
register("elil", elil)

__all__ = [
    "MolecularSystem",
    "add_system_arguments",
    "alanine_dipeptide",
    "alanine_hexapeptide",
    "alanine_tetrapeptide",
    "elil",
    "get",
    "names",
    "peptide",
    "register",
    "resolve",
    "system_from_args",
]
