"""Safe, atomic files for runs and checkpoints.

Every write goes to a temporary file in the target folder, is flushed to disk and then
renamed over the target, so a crash never leaves a half-written file. Loading uses
``torch.load(weights_only=True)`` and OpenMM's XML: a checkpoint from someone else
cannot execute code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile

import numpy as np
import torch
import openmm
from openmm import app

from openmm_cmt.systems.molecular_system import MolecularSystem

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or belongs to another system or config."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_torch_save(obj, path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def safe_torch_load(path) -> dict:
    """Load a checkpoint written by ``atomic_torch_save`` without running pickled code."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a openmm_cmt checkpoint: {err}") from err


def read_json(path) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"file not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err


def system_fingerprint(system: openmm.System) -> str:
    """SHA-256 of the System's XML: a checkpoint is only valid for the same System."""
    return hashlib.sha256(openmm.XmlSerializer.serialize(system).encode()).hexdigest()


def save_system(molsys: MolecularSystem, folder) -> None:
    """Write ``system.xml``, ``topology.pdb`` (with the reference positions) and ``system.json``."""
    folder = os.fspath(folder)
    atomic_write_text(os.path.join(folder, "system.xml"), openmm.XmlSerializer.serialize(molsys.system))
    pdb = io.StringIO()
    app.PDBFile.writeFile(molsys.topology, molsys.positions * 10.0 * openmm.unit.angstrom, pdb, keepIds=True)
    atomic_write_text(os.path.join(folder, "topology.pdb"), pdb.getvalue())
    atomic_write_json(
        os.path.join(folder, "system.json"),
        {
            "format_version": FORMAT_VERSION,
            "name": molsys.name,
            "temperature": molsys.temperature,
            "n_atoms": molsys.n_atoms,
            "positions_nm": molsys.positions.tolist(),
            "fingerprint": system_fingerprint(molsys.system),
        },
    )


def load_system(folder) -> MolecularSystem:
    """The MolecularSystem written by ``save_system``; checks the fingerprint."""
    folder = os.fspath(folder)
    meta = read_json(os.path.join(folder, "system.json"))
    try:
        with open(os.path.join(folder, "system.xml")) as f:
            system = openmm.XmlSerializer.deserialize(f.read())
        topology = app.PDBFile(os.path.join(folder, "topology.pdb")).topology
    except FileNotFoundError as err:
        raise CheckpointError(f"incomplete run folder {folder}: {err}") from err
    except Exception as err:
        raise CheckpointError(f"corrupt system files in {folder}: {err}") from err
    if system_fingerprint(system) != meta.get("fingerprint"):
        raise CheckpointError(f"system.xml in {folder} does not match its fingerprint in system.json")
    if topology.getNumAtoms() != meta["n_atoms"]:
        raise CheckpointError(
            f"topology.pdb in {folder} has {topology.getNumAtoms()} atoms, system.json says {meta['n_atoms']}"
        )
    return MolecularSystem(
        name=meta["name"],
        topology=topology,
        system=system,
        positions=np.array(meta["positions_nm"]),
        temperature=meta["temperature"],
    )
