"""A MolecularSystem as files: saved into a run folder, loaded back without running code.

The System XML is checked *before* OpenMM deserialises it. OpenMM unpickles the function
of an ``openmm.PythonForce`` (openmm-ml potentials use them), so such a System, or any
force type this module cannot vouch for (plugin forces such as TorchForce), is refused
unless the caller trusts the folder (``trust_run=True``, ``--trust-run``).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import os
import pickle
import re
from xml.etree import ElementTree

import numpy as np
import openmm
from openmm import app

from openmm_cmt.io import CheckpointError, json_text, publish_run, read_json, run_snapshot
from openmm_cmt.systems.molecular_system import MolecularSystem

#: ``format_version`` of ``system.json``.
FORMAT_VERSION = 1
#: Pickled recipe rebuilding a System that holds PythonForces (ML potentials).
SYSTEM_RECIPE = "system_recipe.pkl"


class UntrustedRunError(CheckpointError):
    """A run folder whose System would execute serialised Python code when loaded."""


#: Force types whose XML OpenMM reads as plain numbers and expressions: OpenMM's own,
#: less PythonForce (its function is a pickle). Plugin forces are not in it: a TorchForce
#: carries a TorchScript program, and other plugins cannot be vouched for.
SAFE_FORCE_TYPES = frozenset(
    name for name, obj in vars(openmm).items()
    if inspect.isclass(obj) and issubclass(obj, openmm.Force) and name not in ("Force", "PythonForce")
)
# A hex attribute value that decodes to a pickle: PROTO (0x80) 2-5 first, STOP (0x2e)
# last. No number ends in "e", so numeric attributes never match.
_PICKLE_HEX = re.compile(r"800[2-5](?:[0-9a-fA-F]{2})*2[eE]")


def check_system_xml(xml: str, source: str) -> None:
    """Raise :class:`UntrustedRunError` when deserialising ``xml`` could run Python code.

    Checks the raw text: every ``<Force>`` must be of a type in ``SAFE_FORCE_TYPES`` and
    no attribute may hold a hex-encoded pickle.
    """
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as err:
        raise CheckpointError(f"{source} is not valid XML: {err}") from None
    found = set()
    for element in root.iter():
        kind = element.get("type")
        if element.tag == "Force" and kind not in SAFE_FORCE_TYPES:
            found.add(f"a force of type {kind!r}")
        for key, value in element.attrib.items():
            if _PICKLE_HEX.fullmatch(value):
                found.add(f"a pickled attribute {key!r} in <{element.tag} type={kind!r}>")
    if found:
        raise UntrustedRunError(
            f"{source} holds {', '.join(sorted(found))}: loading it could run code stored in the file. "
            "Load it only if you trust whoever wrote it: pass trust_run=True (command line: --trust-run)"
        )


def xml_fingerprint(xml: str | bytes) -> str:
    """SHA-256 of a System's XML text as written: a checkpoint is only valid for the same
    System. (Taken of the text, not of a deserialised System: a PythonForce's pickled
    function need not serialise to the same bytes twice.)"""
    return hashlib.sha256(xml.encode() if isinstance(xml, str) else xml).hexdigest()


def system_fingerprint(system: openmm.System) -> str:
    """``xml_fingerprint`` of the System's XML."""
    return xml_fingerprint(openmm.XmlSerializer.serialize(system))


def system_files(molsys: MolecularSystem) -> dict[str, bytes]:
    """``system.xml``, ``topology.pdb`` (with the reference positions) and ``system.json``
    of ``molsys``, plus its recipe (``system_recipe.pkl``) when the System holds a
    PythonForce and the recipe pickles."""
    xml = openmm.XmlSerializer.serialize(molsys.system)
    pdb = io.StringIO()
    app.PDBFile.writeFile(molsys.topology, molsys.positions * 10.0 * openmm.unit.angstrom, pdb, keepIds=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "name": molsys.name,
        "temperature": molsys.temperature,
        "n_atoms": molsys.n_atoms,
        "positions_nm": molsys.positions.tolist(),
        "fingerprint": xml_fingerprint(xml),
    }
    files = {"system.xml": xml.encode(), "topology.pdb": pdb.getvalue().encode(), "system.json": json_text(meta).encode()}
    if molsys.system_factory is not None and 'type="PythonForce"' in xml:
        try:
            files[SYSTEM_RECIPE] = pickle.dumps(molsys.system_factory)
        except Exception:
            pass  # workers then rebuild the System from its XML
    return files


def save_system(molsys: MolecularSystem, folder) -> None:
    """Publish the files of ``system_files`` as one snapshot of ``folder``."""
    publish_run(folder, system_files(molsys))


def load_system(folder, trust_run: bool = False) -> MolecularSystem:
    """The MolecularSystem of a run folder (or of one of its snapshots).

    Checks the manifest, refuses a System that would run serialised Python unless
    ``trust_run``, then checks the fingerprint. With ``trust_run`` a saved recipe becomes
    the system's ``system_factory``.
    """
    folder = run_snapshot(folder)
    meta = read_json(os.path.join(folder, "system.json"))
    xml_path = os.path.join(folder, "system.xml")
    try:
        with open(xml_path) as f:
            xml = f.read()
        if xml_fingerprint(xml) != meta.get("fingerprint"):
            raise CheckpointError(f"system.xml in {folder} does not match its fingerprint in system.json")
        if not trust_run:
            check_system_xml(xml, xml_path)
        system = openmm.XmlSerializer.deserialize(xml)
        topology = app.PDBFile(os.path.join(folder, "topology.pdb")).topology
    except FileNotFoundError as err:
        raise CheckpointError(f"incomplete run folder {folder}: {err}") from err
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"corrupt system files in {folder}: {err}") from err
    if topology.getNumAtoms() != meta["n_atoms"]:
        raise CheckpointError(
            f"topology.pdb in {folder} has {topology.getNumAtoms()} atoms, system.json says {meta['n_atoms']}"
        )
    molsys = MolecularSystem(
        name=meta["name"],
        topology=topology,
        system=system,
        positions=np.array(meta["positions_nm"]),
        temperature=meta["temperature"],
    )
    recipe = os.path.join(folder, SYSTEM_RECIPE)
    if trust_run and os.path.isfile(recipe):
        with open(recipe, "rb") as f:
            molsys.system_factory = pickle.loads(f.read())
    return molsys
