r"""Backbone dihedrals and Ramachandran-plot distances.

Dihedrals follow the IUPAC convention (as mdtraj and OpenMM): for atoms p0..p3 with
:math:`b_1 = p_1 - p_0`, :math:`b_2 = p_2 - p_1`, :math:`b_3 = p_3 - p_2`,
:math:`\phi = \mathrm{atan2}(|b_2|\, b_1\cdot(b_2\times b_3), (b_1\times b_2)\cdot(b_2\times b_3))`,
mapped to :math:`(-\pi, \pi]`. Ramachandran distances compare normalised 2-D
histograms on :math:`(-\pi, \pi]^2` (TA-BG and CMT use 100 bins per axis). Their sampling
noise grows with bins / ESS (a 100 x 100 TV between two sets of 25k independent frames
is about 0.15), so report the returned sample sizes with them.
"""

from __future__ import annotations

import numpy as np

from openmm_cmt.metrics.divergences import SampleDistance, kish_ess, kl_divergence, normalized_weights, total_variation


def dihedrals(x, indices) -> np.ndarray:
    """Dihedral angles [B, K] in radians of positions x [B, n_atoms, 3] for atom quadruples
    ``indices`` [K, 4]."""
    x = _positions(x)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1, 4)
    p0, p1, p2, p3 = (x[:, idx[:, j]] for j in range(4))
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    y = np.linalg.norm(b2, axis=-1) * np.sum(b1 * n2, axis=-1)
    angle = np.arctan2(y, np.sum(n1 * n2, axis=-1))
    return np.where(angle <= -np.pi, np.pi, angle)


def _positions(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"positions must have shape [batch, n_atoms, 3], got {x.shape}")
    return x


def backbone_dihedral_indices(topology) -> np.ndarray:
    """Atom quadruples [n_res, 2, 4] of (phi, psi) for every residue that has both
    (phi: C(i-1)-N-CA-C, psi: N-CA-C-N(i+1)); ``topology`` is an OpenMM or mdtraj
    Topology. Alanine dipeptide has exactly one such residue."""
    import mdtraj

    top = topology if isinstance(topology, mdtraj.Topology) else mdtraj.Topology.from_openmm(topology)
    frame = mdtraj.Trajectory(np.zeros((1, top.n_atoms, 3), dtype=np.float32), top)
    phi_idx, _ = mdtraj.compute_phi(frame)
    psi_idx, _ = mdtraj.compute_psi(frame)
    # phi's N (position 1) and psi's N (position 0) belong to the same residue.
    psi_by_n = {int(q[0]): q for q in psi_idx}
    pairs = [(p, psi_by_n[int(p[1])]) for p in phi_idx if int(p[1]) in psi_by_n]
    if not pairs:
        raise ValueError("the topology has no residue with both a phi and a psi dihedral (is it a peptide?)")
    return np.asarray(pairs, dtype=np.int64)


def backbone_residue_labels(topology) -> list[str]:
    """Names such as ``ALA2`` (residue name and 1-based index in the chain order) of the
    residues of :func:`backbone_dihedral_indices`, in the same order."""
    import mdtraj

    top = topology if isinstance(topology, mdtraj.Topology) else mdtraj.Topology.from_openmm(topology)
    idx = backbone_dihedral_indices(top)
    labels = []
    for quad in idx[:, 0]:  # phi's N, CA and C belong to the residue
        res = top.atom(int(quad[2])).residue
        labels.append(f"{res.name}{res.index + 1}")
    return labels


def phi_psi(x, topology, per_residue: bool = False) -> np.ndarray:
    """Backbone (phi, psi) in radians, ``[B, n_res, 2]`` for the residues that have both
    (:func:`backbone_dihedral_indices`); without ``per_residue``, ``[B, 2]`` when there is
    only one such residue (alanine dipeptide)."""
    idx = backbone_dihedral_indices(topology)
    x = _positions(x)
    if x.shape[1] != int(topology.getNumAtoms() if hasattr(topology, "getNumAtoms") else topology.n_atoms):
        raise ValueError(f"positions have {x.shape[1]} atoms but the topology has a different count")
    angles = dihedrals(x, idx.reshape(-1, 4)).reshape(x.shape[0], -1, 2)
    return angles[:, 0] if angles.shape[1] == 1 and not per_residue else angles


def _angles(angles) -> np.ndarray:
    a = np.asarray(angles, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2 or a.shape[0] == 0:
        raise ValueError(f"angles must have shape [batch, 2] (phi, psi in radians), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("angles must be finite")
    return a


def ramachandran_histogram(angles, bins: int = 100, weights=None) -> np.ndarray:
    """Normalised [bins, bins] histogram of (phi, psi) on (-pi, pi]^2 (phi along axis 0)."""
    a = _angles(angles)
    if not (isinstance(bins, (int, np.integer)) and bins >= 1):
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    w = normalized_weights(weights, a.shape[0])
    # Bin k covers (-pi + k h, -pi + (k+1) h]; ceil puts the upper edge into the bin.
    h = 2 * np.pi / bins
    k = np.clip(np.ceil((a + np.pi) / h).astype(np.int64) - 1, 0, bins - 1)
    hist = np.zeros((bins, bins))
    np.add.at(hist, (k[:, 0], k[:, 1]), w)
    return hist


def _compare(fn, angles_a, angles_b, bins, weights_a, weights_b) -> SampleDistance:
    a, b = _angles(angles_a), _angles(angles_b)
    ha, hb = ramachandran_histogram(a, bins, weights_a), ramachandran_histogram(b, bins, weights_b)
    wa, wb = normalized_weights(weights_a, a.shape[0]), normalized_weights(weights_b, b.shape[0])
    return SampleDistance(fn(ha, hb), a.shape[0], b.shape[0], kish_ess(wa), kish_ess(wb), bins)


def ramachandran_tv(angles_a, angles_b, bins: int = 100, weights_a=None, weights_b=None) -> SampleDistance:
    """Total variation ``0.5 sum |P - Q|`` between two Ramachandran histograms."""
    return _compare(total_variation, angles_a, angles_b, bins, weights_a, weights_b)


def ramachandran_kl(angles_ref, angles_model, bins: int = 100, weights_ref=None, weights_model=None, eps: float = 1e-10) -> SampleDistance:
    """KL(P_ref || P_model) between Ramachandran histograms, ``eps`` added to every bin."""
    return _compare(lambda p, q: kl_divergence(p, q, eps), angles_ref, angles_model, bins, weights_ref, weights_model)
