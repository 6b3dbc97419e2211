"""Frames on disk in the formats molecular-dynamics tools read, chosen by extension.

``.npz``
    numpy arrays: the caller's own layout (``positions`` and the per-frame arrays).
``.h5``
    mdtraj HDF5 (topology, float32 coordinates in nm); the per-frame arrays (log weights,
    log q, energies, ...) live in the same file, in the group ``/openmm_cmt`` (needs the
    ``tables`` package, as mdtraj's HDF5 format does).
``.dcd``, ``.xtc``, ``.pdb``
    the trajectory through mdtraj, and its arrays in a sidecar ``FILE.data.npz``
    (``samples.dcd`` -> ``samples.dcd.data.npz``). DCD keeps float32 coordinates, XTC
    rounds them to 0.001 nm, PDB to 0.0001 nm.

``read_frames`` reads any of them back as an ``mdtraj.Trajectory`` and the arrays. Every
file appears whole: it is written under a temporary name and renamed.
"""

from __future__ import annotations

import io
import os

import numpy as np

from openmm_cmt.io import atomic_path, atomic_write_bytes

#: Output formats by extension.
FORMATS = (".npz", ".h5", ".dcd", ".xtc", ".pdb")
#: Appended to a .dcd/.xtc/.pdb path for the file that holds its arrays.
SIDECAR_SUFFIX = ".data.npz"
#: Where the arrays live inside an .h5 file.
H5_GROUP = "openmm_cmt"


def trajectory_format(path: str | os.PathLike) -> str:
    """The extension of ``path`` (lower case) if it is a supported format.

    Raises
    ------
    ValueError
        For any other extension, naming the supported ones.
    ImportError
        For ``.h5`` without the ``tables`` package.
    """
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in FORMATS:
        raise ValueError(f"{os.fspath(path)!r}: a trajectory file must end in one of "
                         f"{', '.join(FORMATS)} (got {suffix or 'no extension'!r})")
    if suffix == ".h5":
        _require_tables()
    return suffix


def sidecar_path(path: str | os.PathLike) -> str:
    """The file beside a .dcd/.xtc/.pdb trajectory that holds its arrays."""
    return os.fspath(path) + SIDECAR_SUFFIX


def to_mdtraj(topology, positions: np.ndarray):
    """An ``mdtraj.Trajectory`` of ``positions`` [n, n_atoms, 3] (nm) with ``topology``
    (an OpenMM or mdtraj Topology), atoms in the same order."""
    import mdtraj

    if not isinstance(topology, mdtraj.Topology):
        topology = mdtraj.Topology.from_openmm(topology)
    positions = np.asarray(positions)
    if positions.ndim != 3 or positions.shape[1:] != (topology.n_atoms, 3):
        raise ValueError(f"positions must have shape [n_frames, {topology.n_atoms}, 3] in nm for this "
                         f"topology, got {positions.shape}")
    return mdtraj.Trajectory(positions.astype(np.float32), topology)


def write_frames(path, topology, positions: np.ndarray, data: dict | None = None,
                 npz: dict | None = None) -> list[str]:
    """Write frames and their arrays to ``path`` in the format its extension names.

    Parameters
    ----------
    path : path
        Ends in one of ``FORMATS``.
    topology : openmm.app.Topology or mdtraj.Topology
        The System's topology; atom order is kept.
    positions : array [n, n_atoms, 3]
        nm.
    data : dict of arrays, optional
        Stored with the frames (per frame or not): in the .npz, in ``/openmm_cmt`` of
        the .h5, or in the sidecar ``FILE.data.npz``. Strings are stored as text.
    npz : dict of arrays, optional
        The whole content of an .npz output, for callers whose .npz layout is not
        ``positions`` plus ``data``.

    Returns
    -------
    list of str
        The files written.
    """
    path = os.fspath(path)
    suffix = trajectory_format(path)
    data = {k: np.asarray(v) for k, v in (data or {}).items()}
    if suffix == ".npz":
        _write_npz(path, npz if npz is not None else {"positions": positions, **data})
        return [path]
    trajectory = to_mdtraj(topology, positions)
    if suffix == ".h5":
        with atomic_path(path) as tmp:
            trajectory.save_hdf5(tmp)
            _append_h5_arrays(tmp, data)
        return [path]
    with atomic_path(path) as tmp:
        trajectory.save(tmp)
    _write_npz(sidecar_path(path), data)
    return [path, sidecar_path(path)]


def read_frames(path, topology=None):
    """Frames and arrays written by ``write_frames``.

    Parameters
    ----------
    path : path
        A file of one of ``FORMATS``.
    topology : openmm.app.Topology or mdtraj.Topology, optional
        Needed for .dcd, .xtc and .npz, which hold no topology.

    Returns
    -------
    (mdtraj.Trajectory, dict)
        The frames (nm) and the stored arrays; for an .npz, its ``positions`` make the
        trajectory and the other entries the dict.
    """
    import mdtraj

    path = os.fspath(path)
    suffix = trajectory_format(path)
    if suffix in (".npz", ".dcd", ".xtc") and topology is None:
        raise ValueError(f"reading {path!r} needs the topology (a {suffix} file holds none)")
    if suffix == ".npz":
        data = _read_npz(path)
        return to_mdtraj(topology, data.pop("positions")), data
    if suffix == ".h5":
        return mdtraj.load_hdf5(path), _read_h5_arrays(path)
    kwargs = {} if suffix == ".pdb" else {"top": _mdtraj_topology(topology)}
    return mdtraj.load(path, **kwargs), _read_npz(sidecar_path(path))


def _mdtraj_topology(topology):
    import mdtraj

    return topology if isinstance(topology, mdtraj.Topology) else mdtraj.Topology.from_openmm(topology)


def _require_tables() -> None:
    try:
        import tables  # noqa: F401
    except ImportError:
        raise ImportError("mdtraj's .h5 format needs the 'tables' package (pip install tables); "
                          "or write .npz, .dcd, .xtc or .pdb") from None


def _write_npz(path: str, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _read_npz(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: it holds the arrays of its trajectory")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _append_h5_arrays(path: str, data: dict) -> None:
    import tables

    with tables.open_file(path, "a") as h5:
        group = h5.create_group("/", H5_GROUP)
        for key, value in data.items():
            if value.dtype.kind == "U":  # PyTables stores bytes, not numpy unicode
                value = np.char.encode(value, "utf-8")
            h5.create_array(group, key, obj=value)
            h5.get_node(group, key).attrs["text"] = value.dtype.kind == "S"


def _read_h5_arrays(path: str) -> dict:
    import tables

    out = {}
    with tables.open_file(path, "r") as h5:
        if f"/{H5_GROUP}" not in h5:
            return out
        for node in h5.list_nodes(f"/{H5_GROUP}"):
            value = np.asarray(node.read())
            out[node.name] = np.char.decode(value, "utf-8") if node.attrs["text"] else value
    return out
