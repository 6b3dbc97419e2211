"""Ideal internal geometry of the 20 standard amino acids (heavy atoms only).

Bond lengths (Angstrom) and bond angles (degrees) are rounded values of the
small-molecule crystal statistics of Engh & Huber (Acta Cryst. A47, 392, 1991);
side-chain torsions pick a common rotamer (chi1 = -60 where it is the most
populated, extended chains at 180; Lovell et al., Proteins 40, 389, 2000). The
builder only needs a sane, clash-free starting point: the force field's minimiser
takes the structure the rest of the way.

Each side-chain entry is ``(atom, (a, b, c), bond, angle, torsion)``: the atom is
placed at distance ``bond`` from ``c``, with angle ``b-c-atom`` and torsion
``a-b-c-atom``. Atom names follow the PDB, which is what OpenMM's residue and
hydrogen tables expect; the element is the first letter of the name.
"""

from __future__ import annotations

ONE_TO_THREE = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS",
    "Q": "GLN", "E": "GLU", "G": "GLY", "H": "HIS", "I": "ILE",
    "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE", "P": "PRO",
    "S": "SER", "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL",
}  # fmt: skip

# Backbone (Angstrom, degrees).
N_CA = 1.458
CA_C = 1.525
C_N = 1.329  # peptide bond
C_O = 1.231
C_OXT = 1.250  # carboxylate C-O, both oxygens
CA_CB = 1.530
METHYL_C = 1.500  # ACE's CH3-C
N_CA_C = 111.2
CA_C_N = 116.2
C_N_CA = 121.7
CA_C_O = 120.8
O_C_N = 123.0
CA_C_OXT = 117.0
N_CA_CB = 110.5
N_CA_CB_PROLINE = 103.0  # narrowed by the pyrrolidine ring
# Torsion C-N-CA-CB that puts CB on the L side of CA (with N-CA-C 111.2 and
# N-CA-CB 110.5 it makes C-CA-CB 110.1).
C_N_CA_CB = -122.6

# Backbone torsions of the starting structure: polyproline II, which every residue,
# proline included, adopts, and which keeps the chain extended; omega trans.
PHI = -75.0
PSI = 145.0
OMEGA = 180.0

_CHI1 = -60.0

SIDE_CHAINS: dict[str, tuple] = {
    "GLY": (),
    "ALA": (),
    "SER": (("OG", ("N", "CA", "CB"), 1.417, 111.1, _CHI1),),
    "CYS": (("SG", ("N", "CA", "CB"), 1.808, 114.0, _CHI1),),
    # CB of Thr is R: OG1 at chi1, CG2 at chi1 - 120.
    "THR": (
        ("OG1", ("N", "CA", "CB"), 1.433, 109.6, 60.0),
        ("CG2", ("N", "CA", "CB"), 1.521, 110.5, -60.0),
    ),
    "VAL": (
        ("CG1", ("N", "CA", "CB"), 1.527, 110.5, 180.0),
        ("CG2", ("N", "CA", "CB"), 1.527, 110.5, -60.0),
    ),
    # CB of Ile is S: CG2 at chi1 - 120.
    "ILE": (
        ("CG1", ("N", "CA", "CB"), 1.530, 110.4, _CHI1),
        ("CG2", ("N", "CA", "CB"), 1.521, 110.5, 180.0),
        ("CD1", ("CA", "CB", "CG1"), 1.513, 113.8, 170.0),
    ),
    "LEU": (
        ("CG", ("N", "CA", "CB"), 1.530, 116.3, _CHI1),
        ("CD1", ("CA", "CB", "CG"), 1.521, 110.7, 180.0),
        ("CD2", ("CA", "CB", "CG"), 1.521, 110.7, -60.0),
    ),
    "MET": (
        ("CG", ("N", "CA", "CB"), 1.520, 114.1, _CHI1),
        ("SD", ("CA", "CB", "CG"), 1.807, 112.7, 180.0),
        ("CE", ("CB", "CG", "SD"), 1.791, 100.9, 180.0),
    ),
    "ASP": (
        ("CG", ("N", "CA", "CB"), 1.516, 112.6, _CHI1),
        ("OD1", ("CA", "CB", "CG"), 1.249, 118.4, -30.0),
        ("OD2", ("CA", "CB", "CG"), 1.249, 118.4, 150.0),
    ),
    "ASN": (
        ("CG", ("N", "CA", "CB"), 1.516, 112.6, _CHI1),
        ("OD1", ("CA", "CB", "CG"), 1.231, 120.8, -30.0),
        ("ND2", ("CA", "CB", "CG"), 1.328, 116.4, 150.0),
    ),
    "GLU": (
        ("CG", ("N", "CA", "CB"), 1.520, 114.1, _CHI1),
        ("CD", ("CA", "CB", "CG"), 1.516, 112.6, 180.0),
        ("OE1", ("CB", "CG", "CD"), 1.249, 118.4, 0.0),
        ("OE2", ("CB", "CG", "CD"), 1.249, 118.4, 180.0),
    ),
    "GLN": (
        ("CG", ("N", "CA", "CB"), 1.520, 114.1, _CHI1),
        ("CD", ("CA", "CB", "CG"), 1.516, 112.6, 180.0),
        ("OE1", ("CB", "CG", "CD"), 1.231, 120.8, 0.0),
        ("NE2", ("CB", "CG", "CD"), 1.328, 116.4, 180.0),
    ),
    "LYS": (
        ("CG", ("N", "CA", "CB"), 1.520, 114.1, _CHI1),
        ("CD", ("CA", "CB", "CG"), 1.520, 111.3, 180.0),
        ("CE", ("CB", "CG", "CD"), 1.520, 111.3, 180.0),
        ("NZ", ("CG", "CD", "CE"), 1.489, 111.9, 180.0),
    ),
    "ARG": (
        ("CG", ("N", "CA", "CB"), 1.520, 114.1, _CHI1),
        ("CD", ("CA", "CB", "CG"), 1.520, 111.3, 180.0),
        ("NE", ("CB", "CG", "CD"), 1.460, 112.0, 180.0),
        ("CZ", ("CG", "CD", "NE"), 1.329, 124.2, 180.0),
        ("NH1", ("CD", "NE", "CZ"), 1.326, 120.0, 0.0),
        ("NH2", ("CD", "NE", "CZ"), 1.326, 120.0, 180.0),
    ),
    # Proline's ring closes onto N (C-gamma endo pucker); the CD-N bond is left to
    # the force field.
    "PRO": (
        ("CG", ("N", "CA", "CB"), 1.495, 104.5, 30.0),
        ("CD", ("CA", "CB", "CG"), 1.507, 105.5, -35.0),
    ),
    # Planar rings: in-ring torsions 0 or 180.
    "HIS": (
        ("CG", ("N", "CA", "CB"), 1.497, 113.8, _CHI1),
        ("ND1", ("CA", "CB", "CG"), 1.378, 122.7, 90.0),
        ("CD2", ("CA", "CB", "CG"), 1.354, 131.0, -90.0),
        ("CE1", ("CB", "CG", "ND1"), 1.321, 109.0, 180.0),
        ("NE2", ("CB", "CG", "CD2"), 1.374, 107.0, 180.0),
    ),
    "PHE": (
        ("CG", ("N", "CA", "CB"), 1.502, 113.8, _CHI1),
        ("CD1", ("CA", "CB", "CG"), 1.389, 120.7, 90.0),
        ("CD2", ("CA", "CB", "CG"), 1.389, 120.7, -90.0),
        ("CE1", ("CB", "CG", "CD1"), 1.389, 120.7, 180.0),
        ("CE2", ("CB", "CG", "CD2"), 1.389, 120.7, 180.0),
        ("CZ", ("CG", "CD1", "CE1"), 1.389, 120.0, 0.0),
    ),
    "TYR": (
        ("CG", ("N", "CA", "CB"), 1.512, 113.8, _CHI1),
        ("CD1", ("CA", "CB", "CG"), 1.389, 120.8, 90.0),
        ("CD2", ("CA", "CB", "CG"), 1.389, 120.8, -90.0),
        ("CE1", ("CB", "CG", "CD1"), 1.382, 121.2, 180.0),
        ("CE2", ("CB", "CG", "CD2"), 1.382, 121.2, 180.0),
        ("CZ", ("CG", "CD1", "CE1"), 1.378, 119.6, 0.0),
        ("OH", ("CD1", "CE1", "CZ"), 1.376, 119.9, 180.0),
    ),
    "TRP": (
        ("CG", ("N", "CA", "CB"), 1.498, 113.6, _CHI1),
        ("CD1", ("CA", "CB", "CG"), 1.365, 126.9, 90.0),
        ("CD2", ("CA", "CB", "CG"), 1.433, 126.8, -90.0),
        ("NE1", ("CB", "CG", "CD1"), 1.374, 110.2, 180.0),
        ("CE2", ("CB", "CG", "CD2"), 1.409, 107.2, 180.0),
        ("CE3", ("CB", "CG", "CD2"), 1.398, 133.9, 0.0),
        ("CZ2", ("CG", "CD2", "CE2"), 1.394, 122.4, 180.0),
        ("CZ3", ("CG", "CD2", "CE3"), 1.382, 118.7, 180.0),
        ("CH2", ("CD2", "CE2", "CZ2"), 1.368, 117.5, 0.0),
    ),
}
