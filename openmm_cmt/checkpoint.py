"""Training checkpoints: torch state saved atomically and loaded without running pickled code.

``torch.load(weights_only=True)`` reads only tensors and plain containers, so a
checkpoint from an untrusted folder cannot execute anything. Run folders, atomic writes
and their errors are :mod:`openmm_cmt.io`; the System's own files are
:mod:`openmm_cmt.systems.files`.
"""

from __future__ import annotations

import os

import torch

from openmm_cmt.io import CheckpointError, atomic_write_bytes, torch_bytes

#: ``format_version`` of ``checkpoint.pt``.
FORMAT_VERSION = 1


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
