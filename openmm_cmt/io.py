"""Files that are whole or absent: atomic writes and run folders published as snapshots.

``atomic_write_bytes`` writes to a temporary file beside the target, flushes it to disk
and renames it over the target, so a reader sees the old file or the new one, never a
mix. A run folder is written as one unit: each :func:`publish_run` goes to a new
numbered folder ``snapshots/NNNNNN`` (every file flushed to disk, ``manifest.json`` with
the SHA-256 of each file written last), and only then does the symlink ``current`` flip
to it in one atomic rename; the names at the top of the run folder are links through
``current``. A crash at any point leaves the previous complete save loadable, and
:func:`run_snapshot` checks every file against the manifest. A writer holds the folder's
lock (:mod:`openmm_cmt.run_lock`) throughout. Folders written before snapshots (the
files themselves at the top) still load.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile

import numpy as np
import torch

from openmm_cmt.run_lock import hold_run_lock

#: Layout of a run folder with snapshots (manifest.json's ``format_version``).
RUN_FORMAT_VERSION = 2
SNAPSHOTS = "snapshots"
CURRENT = "current"
MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint or run folder that is missing, corrupt or belongs to another system or config."""


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


@contextlib.contextmanager
def _replacing(path: str, suffix: str):
    """``(fd, tmp)``: a new temporary file beside ``path``, renamed over ``path`` when the
    block ends without an exception and removed otherwise."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=suffix)
    try:
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """A binary file handle whose contents replace ``path`` only when the block ends
    without an exception: written to a temporary file beside ``path``, flushed to disk,
    then renamed over it. The file gets the user's default permissions (0666 less the
    umask)."""
    with _replacing(os.fspath(path), ".tmp") as (fd, _tmp):
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """A fresh temporary path beside ``path`` with the same extension, for writers that
    take a file name (mdtraj's); renamed over ``path`` when the block ends without an
    exception, removed otherwise. The path does not exist on entry."""
    path = os.fspath(path)
    with _replacing(path, os.path.splitext(path)[1]) as (fd, tmp):
        os.close(fd)
        os.unlink(tmp)  # mdtraj refuses to overwrite an existing file
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(data)


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


def read_json(path) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"file not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err


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
