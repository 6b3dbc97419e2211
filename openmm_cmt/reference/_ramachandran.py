"""Backbone dihedrals of reference frames, through :mod:`openmm_cmt.metrics`."""

from __future__ import annotations

import numpy as np

from openmm_cmt.metrics import phi_psi, ramachandran_tv


def backbone_dihedrals(topology, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(phi, psi)`` in radians, each ``[F, k]`` for the k residues that have both
    (k = 0 when the molecule has none), for ``frames [F, n_atoms, 3]`` nm."""
    try:
        angles = phi_psi(frames, topology)
    except ValueError:  # no residue with both dihedrals: not a peptide
        empty = np.zeros((len(frames), 0))
        return empty, empty
    angles = angles[:, None, :] if angles.ndim == 2 else angles
    return angles[..., 0], angles[..., 1]


def split_tv(angles_a: np.ndarray, angles_b: np.ndarray, bins: int, split: str) -> dict:
    """Ramachandran TV between two sets of (phi, psi) ``[n, 2]``, with the sample sizes."""
    d = ramachandran_tv(angles_a, angles_b, bins=bins)
    return {"tv": float(d.value), "bins": bins, "n_first": int(d.n_a), "n_second": int(d.n_b), "split": split}
