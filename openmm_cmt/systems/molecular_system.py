"""MolecularSystem: an OpenMM System together with what a Boltzmann generator needs."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np
import openmm
from openmm import app, unit

from openmm_cmt import units
from openmm_cmt.systems.support import check_topology


@dataclasses.dataclass
class MolecularSystem:
    """A molecule to sample: topology, force field, reference structure and temperature.

    Attributes
    ----------
    name
        short identifier used in files and reports.
    topology
        ``openmm.app.Topology``; atom order is the System's particle order.
    system
        ``openmm.System`` defining the potential energy.
    positions
        reference positions, ``[n_atoms, 3]`` float64 in nm (a minimised
        structure where the builder minimised it).
    temperature
        in K.
    system_factory
        optional picklable zero-argument callable rebuilding ``system``
        (set for Systems that hold an ``openmm.PythonForce``, e.g. ML potentials);
        engines may rebuild the System in worker processes with it.
    """

    name: str
    topology: app.Topology
    system: openmm.System
    positions: np.ndarray
    temperature: float
    system_factory: Callable[[], openmm.System] | None = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.positions = units.nanometers(self.positions)
        n = self.system.getNumParticles()
        if self.positions.shape != (n, 3):
            raise ValueError(
                f"positions must have shape ({n}, 3) for a System of {n} particles, "
                f"got {self.positions.shape}"
            )
        if self.topology.getNumAtoms() != n:
            raise ValueError(
                f"topology has {self.topology.getNumAtoms()} atoms but the System has {n} particles"
            )
        if self.temperature is None:
            raise ValueError(
                "no temperature given: pass temperature= in K (a Simulation whose integrator has no "
                "temperature, e.g. VerletIntegrator, samples no canonical ensemble to learn)"
            )
        if not (unit.is_quantity(self.temperature) or isinstance(self.temperature, (int, float, np.integer, np.floating))):
            raise ValueError(f"temperature must be a positive number (K), got {self.temperature!r}")
        self.temperature = units.kelvin(self.temperature)

    @property
    def n_atoms(self) -> int:
        return self.system.getNumParticles()

    @property
    def dim(self) -> int:
        """Internal degrees of freedom, 3N - 6."""
        return 3 * self.n_atoms - 6

    @property
    def kT(self) -> float:
        """Thermal energy in kJ/mol."""
        return units.kT(self.temperature)

    @property
    def elements(self) -> list[str]:
        return [a.element.symbol if a.element is not None else "X" for a in self.topology.atoms()]

    @property
    def masses(self) -> np.ndarray:
        return np.array(
            [self.system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(self.n_atoms)]
        )

    @classmethod
    def from_pdb(
        cls,
        path: str | os.PathLike,
        forcefield_files=("amber14-all.xml",),
        temperature: float = 300.0,
        implicit_solvent: str | None = None,
        name: str | None = None,
    ) -> "MolecularSystem":
        """Build a system from a PDB file and OpenMM force-field XMLs.

        Parameters
        ----------
        path
            PDB file with all atoms (hydrogens included).
        forcefield_files
            force-field XML files understood by ``openmm.app.ForceField``.
        temperature
            in K.
        implicit_solvent
            name of an implicit-solvent XML to add (``"obc1"``,
            ``"obc2"``, ``"gbn"``, ``"gbn2"``, ``"hct"``, or any XML path), or None.
        name
            defaults to the file's stem.

        Notes
        -----
        The System has no cutoff, no constraints and no rigid water, as Boltzmann
        generators over internal coordinates need every degree of freedom.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"PDB file not found: {path}")
        try:
            pdb = app.PDBFile(path)
        except Exception as err:
            raise ValueError(f"could not read PDB file {path}: {err}") from err
        if pdb.topology.getNumAtoms() == 0:
            raise ValueError(f"PDB file {path} contains no atoms")
        check_topology(pdb.topology)
        files = list(forcefield_files)
        if implicit_solvent:
            files.append(_implicit_solvent_file(implicit_solvent))
        forcefield = app.ForceField(*files)
        try:
            system = forcefield.createSystem(
                pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False
            )
        except Exception as err:
            raise ValueError(
                f"force field {files} cannot parametrise {path}: {err} "
                "(does the PDB contain all hydrogens and standard residue names?)"
            ) from err
        return cls(
            name=name or os.path.splitext(os.path.basename(path))[0],
            topology=pdb.topology,
            system=system,
            positions=pdb.getPositions(asNumpy=True),
            temperature=temperature,
        )

    @classmethod
    def from_ml_potential(
        cls,
        topology: app.Topology,
        positions,
        potential: str,
        temperature: float = 300.0,
        ml_atoms=None,
        classical_system: openmm.System | None = None,
        name: str | None = None,
        **kwargs,
    ) -> "MolecularSystem":
        """A system whose energy comes from openmm-ml's ``MLPotential(potential, **kwargs)``.

        Pure ML (``createSystem(topology)``) by default; with ``ml_atoms`` (whole
        molecules) an ML/MM System from ``classical_system`` by ``createMixedSystem``.
        ``download`` (``"auto"``, True, False) controls weight downloads; missing weights
        that cannot be fetched raise ``openmm_cmt.systems.ml.ModelWeightsUnavailableError``
        naming the file and where to put it. See :mod:`openmm_cmt.systems.ml`.
        """
        from openmm_cmt.systems import ml

        return ml.from_ml_potential(cls, topology, positions, potential, temperature, ml_atoms,
                                    classical_system, name, **kwargs)


_IMPLICIT = {
    "obc1": "implicit/obc1.xml",
    "obc2": "implicit/obc2.xml",
    "gbn": "implicit/gbn.xml",
    "gbn2": "implicit/gbn2.xml",
    "hct": "implicit/hct.xml",
}


def _implicit_solvent_file(spec: str) -> str:
    if spec.lower() in _IMPLICIT:
        return _IMPLICIT[spec.lower()]
    if spec.endswith(".xml"):
        return spec
    raise ValueError(f"unknown implicit solvent {spec!r}; expected one of {sorted(_IMPLICIT)} or an XML file")

