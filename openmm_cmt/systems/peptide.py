"""Peptides built from a one-letter sequence, with no download.

Heavy atoms are placed from ideal internal geometry (``_residue_geometry``) by the
natural extension reference frame (NeRF; Parsons et al., J. Comput. Chem. 26, 1063,
2005): L-chirality at every CA, trans peptide bonds and a polyproline II backbone
(phi, psi) = (-75, 145) degrees. OpenMM's Modeller adds the hydrogens at pH 7, the
force field builds the System (no cutoff, implicit solvent, no constraints) and
OpenMM's L-BFGS minimiser returns a minimum-energy structure.
"""

from __future__ import annotations

import copy
import functools
import random

import numpy as np
import openmm
from openmm import app, unit

from openmm_cmt.systems import _residue_geometry as geometry
from openmm_cmt.systems.molecular_system import MolecularSystem

DEFAULT_FORCEFIELD = ("amber99sbildn.xml", "amber99_obc.xml")

#: The minimiser stops once the root-mean-square force is below this, kJ/mol/nm
#: (thermal forces at 300 K are of order kT / 0.01 nm = 250 kJ/mol/nm).
MINIMIZER_TOLERANCE = 1.0

_ANGSTROM = 0.1  # nm


def peptide(
    sequence: str,
    caps: bool = True,
    forcefield=DEFAULT_FORCEFIELD,
    temperature: float = 300.0,
    minimize: bool = True,
    name: str | None = None,
) -> MolecularSystem:
    """A linear peptide built from its one-letter sequence.

    Parameters
    ----------
    sequence
        one-letter codes of the 20 standard amino acids, N to C terminus
        (case-insensitive).
    caps
        True for ACE-...-NME caps; False for charged (zwitterionic) termini,
        NH3+ on the first residue and COO- (O, OXT) on the last.
    forcefield
        OpenMM force-field XML files, protein and implicit solvent; a
        single file name is also accepted.
    temperature
        in K.
    minimize
        minimise the energy (tolerance ``MINIMIZER_TOLERANCE``); otherwise
        the positions are the ideal geometry with Modeller's hydrogens.
    name
        defaults to ``ACE-<sequence>-NME`` or ``<sequence>``.

    Notes
    -----
    Amber force fields have no template for a free amino acid, so ``caps=False``
    needs at least two residues there (ValueError otherwise).

    Protonation is OpenMM Modeller's at pH 7 (Asp, Glu -, Lys, Arg +, Cys neutral)
    except histidine, which is always the neutral N-epsilon tautomer HIE: with no
    hydrogen-bond partner Modeller's own rule would fall back to HID, and HIE is
    the common choice for an exposed histidine.

    The System has no cutoff, no constraints and no rigid water, because a flow over
    internal coordinates needs every degree of freedom. Builds are cached per
    process; each call returns fresh copies.
    """
    residues = _parse_sequence(sequence)
    forcefield = (forcefield,) if isinstance(forcefield, str) else tuple(forcefield)
    if not forcefield:
        raise ValueError("forcefield must name at least one OpenMM force-field XML file")
    topology, system_xml, positions = _build(residues, bool(caps), forcefield, bool(minimize))
    if name is None:
        name = f"ACE-{sequence.upper()}-NME" if caps else sequence.upper()
    return MolecularSystem(
        name=name,
        topology=copy.deepcopy(topology),
        system=openmm.XmlSerializer.deserialize(system_xml),
        positions=positions.copy(),
        temperature=temperature,
    )


def alanine_tetrapeptide(temperature: float = 300.0) -> MolecularSystem:
    """ACE-Ala3-NME: 42 atoms, d = 3N - 6 = 120.

    amber99sbildn with OBC implicit solvent (``amber99_obc.xml``), no cutoff. The
    CMT paper does not publish the force field of this system, so comparisons with
    its numbers are approximate.
    """
    return peptide("AAA", caps=True, temperature=temperature, name="alanine-tetrapeptide")


def alanine_hexapeptide(temperature: float = 300.0) -> MolecularSystem:
    """ACE-Ala5-NME: 62 atoms, d = 3N - 6 = 180.

    amber99sbildn with OBC implicit solvent (``amber99_obc.xml``), no cutoff: the
    force field TA-BG used for its hexapeptide. The CMT paper does not publish its
    own, so comparisons with its numbers are approximate.
    """
    return peptide("AAAAA", caps=True, temperature=temperature, name="alanine-hexapeptide")


def elil(temperature: float = 300.0) -> MolecularSystem:
    """Glu-Leu-Ile-Leu with charged termini (NH3+ ... COO-, Glu side chain COO-).

    75 atoms, d = 3N - 6 = 219 as in the CMT paper. amber99sbildn with OBC implicit
    solvent (``amber99_obc.xml``), no cutoff; the paper's force field is not public,
    so comparisons with its numbers are approximate.
    """
    return peptide("ELIL", caps=False, temperature=temperature, name="elil")


def _parse_sequence(sequence) -> tuple[str, ...]:
    valid = "".join(sorted(geometry.ONE_TO_THREE))
    if not isinstance(sequence, str) or not sequence:
        raise ValueError(f"sequence must be a non-empty string of one-letter codes ({valid}), got {sequence!r}")
    unknown = sorted({letter for letter in sequence.upper() if letter not in geometry.ONE_TO_THREE})
    if unknown:
        raise ValueError(f"unknown residue letter(s) {unknown} in {sequence!r}; valid letters are {valid}")
    return tuple(geometry.ONE_TO_THREE[letter] for letter in sequence.upper())


@functools.lru_cache(maxsize=32)
def _build(residues: tuple[str, ...], caps: bool, forcefield_files: tuple[str, ...], minimize: bool):
    """(topology, serialised System, positions [N, 3] nm) of a peptide."""
    heavy = _heavy_atoms(residues, caps)
    topology = app.Topology()
    chain = topology.addChain()
    positions = []
    for residue_name, atoms in heavy:
        residue = topology.addResidue(residue_name, chain)
        for atom_name, xyz in atoms:
            topology.addAtom(atom_name, app.Element.getBySymbol(atom_name[0]), residue)
            positions.append(openmm.Vec3(*(xyz * _ANGSTROM)))
    topology.createStandardBonds()

    try:
        forcefield = app.ForceField(*forcefield_files)
    except Exception as err:
        raise ValueError(f"cannot load force field {forcefield_files}: {err}") from err
    modeller = app.Modeller(topology, positions * unit.nanometer)
    variants = ["HIE" if r.name == "HIS" else None for r in topology.residues()]
    reference = openmm.Platform.getPlatformByName("Reference")
    # Modeller jitters new hydrogens with the global `random`; seed it for a
    # reproducible build and restore the caller's stream afterwards.
    state = random.getstate()
    random.seed(0)
    try:
        modeller.addHydrogens(forcefield, pH=7.0, variants=variants, platform=reference)
        system = forcefield.createSystem(
            modeller.topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False
        )
    except Exception as err:
        raise ValueError(
            f"force field {forcefield_files} cannot parametrise {'-'.join(residues)} "
            f"({'capped' if caps else 'charged termini'}): {err}"
        ) from err
    finally:
        random.setstate(state)
    positions = modeller.positions
    if minimize:
        integrator = openmm.VerletIntegrator(0.001)
        context = openmm.Context(system, integrator, reference)
        context.setPositions(positions)
        openmm.LocalEnergyMinimizer.minimize(context, MINIMIZER_TOLERANCE, 0)
        positions = context.getState(getPositions=True).getPositions()
        del context, integrator
    positions = np.array(positions.value_in_unit(unit.nanometer), dtype=np.float64)
    return modeller.topology, openmm.XmlSerializer.serialize(system), positions


def _heavy_atoms(residues: tuple[str, ...], caps: bool) -> list[tuple[str, list]]:
    """[(residue name, [(atom name, xyz in Angstrom)])] from ideal geometry."""
    g = geometry
    chain = []  # per residue: {atom name: xyz}
    n = np.zeros(3)
    ca = np.array([g.N_CA, 0.0, 0.0])
    angle = np.radians(180.0 - g.N_CA_C)
    c = ca + g.CA_C * np.array([np.cos(angle), np.sin(angle), 0.0])
    for i in range(len(residues)):
        if i > 0:
            previous = chain[-1]
            n = place(previous["N"], previous["CA"], previous["C"], g.C_N, g.CA_C_N, g.PSI)
            ca = place(previous["CA"], previous["C"], n, g.N_CA, g.C_N_CA, g.OMEGA)
            c = place(previous["C"], n, ca, g.CA_C, g.N_CA_C, g.PHI)
        chain.append({"N": n, "CA": ca, "C": c})

    out = []
    if caps:
        first = chain[0]
        c_ace = place(first["C"], first["CA"], first["N"], g.C_N, g.C_N_CA, g.PHI)
        out.append(
            (
                "ACE",
                [
                    ("CH3", place(first["CA"], first["N"], c_ace, g.METHYL_C, g.CA_C_N, g.OMEGA)),
                    ("C", c_ace),
                    ("O", place(first["CA"], first["N"], c_ace, g.C_O, g.O_C_N, 0.0)),
                ],
            )
        )
    for i, name in enumerate(residues):
        atoms = chain[i]
        last = i == len(residues) - 1
        if last and not caps:
            atoms["O"] = place(atoms["N"], atoms["CA"], atoms["C"], g.C_OXT, g.CA_C_OXT, g.PSI + 180.0)
            atoms["OXT"] = place(atoms["N"], atoms["CA"], atoms["C"], g.C_OXT, g.CA_C_OXT, g.PSI)
        else:
            # O is trans to the next N, which sits at torsion psi.
            atoms["O"] = place(atoms["N"], atoms["CA"], atoms["C"], g.C_O, g.CA_C_O, g.PSI + 180.0)
        if name != "GLY":
            n_ca_cb = g.N_CA_CB_PROLINE if name == "PRO" else g.N_CA_CB
            atoms["CB"] = place(atoms["C"], atoms["N"], atoms["CA"], g.CA_CB, n_ca_cb, g.C_N_CA_CB)
        for atom, (a, b, c), bond, angle, torsion in g.SIDE_CHAINS[name]:
            atoms[atom] = place(atoms[a], atoms[b], atoms[c], bond, angle, torsion)
        out.append((name, list(atoms.items())))
    if caps:
        last = chain[-1]
        n_nme = place(last["N"], last["CA"], last["C"], g.C_N, g.CA_C_N, g.PSI)
        # OpenMM's residue and hydrogen tables call NME's methyl carbon "C".
        out.append(("NME", [("N", n_nme), ("C", place(last["CA"], last["C"], n_nme, g.N_CA, g.C_N_CA, g.OMEGA))]))
    return out


def place(a, b, c, bond: float, angle: float, torsion: float) -> np.ndarray:
    """The point d with |cd| = bond, angle(b, c, d) = angle and torsion(a, b, c, d) =
    torsion (degrees), the NeRF construction.
    """
    a, b, c = (np.asarray(p, dtype=np.float64) for p in (a, b, c))
    bc = c - b
    bc /= np.linalg.norm(bc)
    normal = np.cross(b - a, bc)
    normal /= np.linalg.norm(normal)
    theta, phi = np.radians(angle), np.radians(torsion)
    # d in the frame (bc, normal x bc, normal) attached at c.
    local = bond * np.array([-np.cos(theta), np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi)])
    frame = np.stack([bc, np.cross(normal, bc), normal], axis=1)
    return c + frame @ local
