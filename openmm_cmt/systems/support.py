"""What a Boltzmann generator over internal coordinates can sample, checked at construction.

A generator places every atom of one molecule from its internal coordinates and is
trained on energies of single conformations, so it cannot represent a periodic box of
solvent, particles without coordinates of their own (virtual sites, Drude particles),
or induced-dipole force fields that the batched energies do not reproduce (AMOEBA,
HIPPO). ``Generator.from_system`` (and so every sampler, the command line included)
refuses such Systems with the reason and what to use instead, before any training starts;
a ``MolecularSystem`` itself may hold them, e.g. to evaluate energies. Bond-length constraints are supported (see
:mod:`openmm_cmt.coordinates.constraints`); other constraints are refused where the
generator is built.
"""

from __future__ import annotations

from openmm import unit

#: Residue names of water models in OpenMM, CHARMM, GROMACS and Amber files.
WATER_RESIDUES = frozenset(
    {"HOH", "WAT", "SOL", "H2O", "TIP", "TIP3", "TIP4", "TIP5", "TP3", "T3P", "T4P", "T5P", "SPC", "SPCE"}
)

_IMPLICIT_HINT = (
    "sample the solute alone: remove water and ions (Modeller.deleteWater) and build the System with "
    "nonbondedMethod=NoCutoff and implicit solvent (e.g. ForceField('amber14-all.xml', 'implicit/obc2.xml')) or in vacuum"
)

#: Polarisable force-field families, by force class name.
_POLARISABLE = {
    "DrudeForce": "the Drude polarisable force field (Drude particles have no internal coordinates)",
    "AmoebaMultipoleForce": "the AMOEBA polarisable force field",
    "AmoebaVdwForce": "the AMOEBA polarisable force field",
    "AmoebaGeneralizedKirkwoodForce": "the AMOEBA polarisable force field",
    "AmoebaWcaDispersionForce": "the AMOEBA polarisable force field",
    "AmoebaTorsionTorsionForce": "the AMOEBA polarisable force field",
    "HippoNonbondedForce": "the HIPPO polarisable force field",
}


def check_topology(topology) -> None:
    """Raise ValueError for explicit solvent (water residues) in ``topology``; a lone
    water molecule, the molecule of interest itself, is allowed."""
    waters = [r for r in topology.residues() if r.name.upper() in WATER_RESIDUES]
    if waters and topology.getNumResidues() > 1:
        raise ValueError(
            f"explicit solvent is not supported: the topology holds {len(waters)} water molecule(s) (residue "
            f"{waters[0].name}); {_IMPLICIT_HINT}"
        )


def check_supported(system, topology=None) -> None:
    """Raise ValueError naming every feature of ``system`` (and ``topology``)
    that a generator would get wrong, and what to do instead."""
    if topology is not None:
        check_topology(topology)
    problems = []
    if system.usesPeriodicBoundaryConditions():
        periodic = [type(f).__name__ for f in system.getForces() if f.usesPeriodicBoundaryConditions()]
        problems.append(
            f"periodic boundary conditions ({', '.join(periodic)}): a generator samples one molecule in "
            f"open space; {_IMPLICIT_HINT}"
        )
    virtual = [i for i in range(system.getNumParticles()) if system.isVirtualSite(i)]
    if virtual:
        problems.append(
            f"{len(virtual)} virtual site(s) (first: particle {virtual[0]}): their positions follow from other "
            "atoms and are not sampled; use a force field without virtual sites (e.g. amber14-all.xml with "
            "implicit/obc2.xml, no TIP4P/TIP5P water)"
        )
    massless = [i for i in range(system.getNumParticles()) if not system.isVirtualSite(i)
                and system.getParticleMass(i).value_in_unit(unit.dalton) <= 0]
    if massless:
        problems.append(
            f"{len(massless)} massless (fixed) particle(s) (first: particle {massless[0]}): every atom must "
            "move; give them their masses or remove them"
        )
    families: dict = {}
    for force in system.getForces():
        name = type(force).__name__
        if name in _POLARISABLE:
            families.setdefault(_POLARISABLE[name], []).append(name)
    for family, names in sorted(families.items()):
        problems.append(
            f"{family} ({', '.join(names)}) is not supported; use a fixed-charge force field "
            "(e.g. amber14-all.xml with implicit/obc2.xml)"
        )
    if problems:
        raise ValueError("unsupported System: " + "; ".join(problems))
