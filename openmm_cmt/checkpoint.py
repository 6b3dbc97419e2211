"""Safe, atomic files for runs and checkpoints.

A run folder is written as one unit. Each save goes to a new numbered folder
``snapshots/NNNNNN`` (every file flushed to disk, ``manifest.json`` with the SHA-256 of
each file written last), and only then does the symlink ``current`` flip to it in one
atomic rename; ``system.xml``, ``checkpoint.pt``, ... at the top of the run folder are
links through ``current``. A crash at any point leaves the previous complete save
loadable, and loading checks every file against the manifest. A writer holds the
folder's lock (:mod:`openmm_cmt.run_lock`) throughout. Folders written before snapshots
(the files themselves at the top) still load.

Loading never runs code from the folder: ``torch.load(weights_only=True)`` for the
checkpoint, and the System XML is checked *before* OpenMM deserialises it. OpenMM
unpickles the function of an ``openmm.PythonForce`` (openmm-ml potentials use them), so
such a System, or any force type this module cannot vouch for (plugin forces such as
TorchForce), is refused unless the caller trusts the folder (``trust_run=True``, ``--trust-run``).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import pickle
import re
import shutil
import tempfile
from xml.etree import ElementTree

import numpy as np
import torch
import openmm
from openmm import app

from openmm_cmt.run_lock import hold_run_lock
from openmm_cmt.systems.molecular_system import MolecularSystem

FORMAT_VERSION = 1
#: Layout of a run folder with snapshots (manifest.json's ``format_version``).
RUN_FORMAT_VERSION = 2
SNAPSHOTS = "snapshots"
CURRENT = "current"
MANIFEST = "manifest.json"
#: Pickled recipe rebuilding a System that holds PythonForces (ML potentials).
SYSTEM_RECIPE = "system_recipe.pkl"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or belongs to another system or config."""


class UntrustedRunError(CheckpointError):
    """A run folder whose System would execute serialised Python code when loaded."""


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no other portable way to read it
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it, rename it over ``path``.

    The file gets the user's default permissions (0666 less the umask).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600
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
    atomic_write_text(path, json_text(obj))


def json_text(obj) -> str:
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def atomic_torch_save(obj, path) -> None:
    atomic_write_bytes(path, torch_bytes(obj))


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


# -- System XML that is safe to deserialise ----------------------------------------------

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


# -- snapshots ---------------------------------------------------------------------------


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every filesystem syncs directories
    finally:
        os.close(fd)


def _write_new(path: str, data: bytes) -> None:
    """Write a file that must not exist yet, flushed to disk, with default permissions."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _snapshot_names(root: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(root) if n.isdigit())
    except FileNotFoundError:
        return []


def _replace_with_link(target: str, path: str) -> None:
    tmp = f"{path}.{os.getpid()}.link"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def publish_run(folder, files: dict[str, bytes]) -> str:
    """Write ``files`` (name -> bytes) as the next snapshot of ``folder`` and make it current.

    Holds the folder's lock while writing; keeps the new snapshot and the one it replaces.
    Returns the snapshot's path.
    """
    folder = os.fspath(folder)
    with hold_run_lock(folder):
        root = os.path.join(folder, SNAPSHOTS)
        os.makedirs(root, exist_ok=True)
        for name in os.listdir(root):  # left by a save that was killed
            if name.startswith(".partial-"):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        names = _snapshot_names(root)
        name = f"{int(names[-1]) + 1 if names else 1:06d}"
        partial = os.path.join(root, f".partial-{name}")
        os.makedirs(partial)
        try:
            for file_name, data in files.items():
                _write_new(os.path.join(partial, file_name), data)
            manifest = {
                "format_version": RUN_FORMAT_VERSION,
                "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()},
            }
            _write_new(os.path.join(partial, MANIFEST), json_text(manifest).encode())
            _fsync_dir(partial)
            os.rename(partial, os.path.join(root, name))
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        _fsync_dir(root)
        previous = _current_name(folder)
        _point(folder, f"{SNAPSHOTS}/{name}", files)
        for old in _snapshot_names(root):  # keep the new save and the one it replaces
            if old not in (name, previous):
                shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return os.path.join(root, name)


def _current_name(folder: str) -> str | None:
    """The name of the snapshot ``current`` points at (link or pointer file), if any."""
    pointer = os.path.join(folder, CURRENT)
    if os.path.islink(pointer):
        return os.path.basename(os.readlink(pointer))
    if os.path.isfile(pointer):
        with open(pointer) as f:
            return os.path.basename(f.read().strip())
    return None


def _point(folder: str, snapshot: str, files) -> None:
    """Flip ``current`` to ``snapshot`` atomically; the top-level names link through it."""
    pointer = os.path.join(folder, CURRENT)
    try:
        _replace_with_link(snapshot, pointer)
    except (OSError, NotImplementedError):  # no symlinks here: a pointer file instead
        atomic_write_text(pointer, snapshot + "\n")
        _fsync_dir(folder)
        return
    _fsync_dir(folder)
    for file_name in files:
        path, target = os.path.join(folder, file_name), f"{CURRENT}/{file_name}"
        if not (os.path.islink(path) and os.readlink(path) == target):
            _replace_with_link(target, path)  # also replaces the files of an older layout
    for entry in os.listdir(folder):  # links to files the new snapshot no longer has
        path = os.path.join(folder, entry)
        if entry not in files and os.path.islink(path) and os.readlink(path).startswith(CURRENT + "/"):
            os.unlink(path)


def run_snapshot(folder) -> str:
    """The folder holding the current complete save of run ``folder``, checked against
    its manifest: ``folder/current``, ``folder`` itself when it is a snapshot, or, for a
    run written before snapshots, ``folder`` with its files at the top."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"run folder not found: {folder}")
    pointer = os.path.join(folder, CURRENT)
    if os.path.isdir(pointer):
        snapshot = os.path.realpath(pointer)  # resolved once: a later save may flip it
    elif os.path.isfile(pointer):
        with open(pointer) as f:
            snapshot = os.path.join(folder, f.read().strip())
    elif os.path.isfile(os.path.join(folder, MANIFEST)):
        snapshot = folder
    else:
        return folder
    manifest_path = os.path.join(snapshot, MANIFEST)
    manifest = read_json(manifest_path)
    if manifest.get("format_version") != RUN_FORMAT_VERSION or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{manifest_path} is not a format-{RUN_FORMAT_VERSION} run manifest")
    for file_name, digest in manifest["files"].items():
        path = os.path.join(snapshot, file_name)
        if not os.path.isfile(path):
            raise CheckpointError(f"incomplete run folder {folder}: {path} is missing")
        if _sha256(path) != digest:
            raise CheckpointError(f"{path} is corrupt: its SHA-256 differs from {manifest_path}")
    return snapshot
