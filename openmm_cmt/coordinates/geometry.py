"""Batched bond lengths, angles, dihedrals and their inverse (NeRF placement).

TorchScript functions on ``[..., 3]`` tensors. Angles and dihedrals use ``atan2`` of a
sine-like and a cosine-like term rather than ``acos``, which is accurate near 0 and pi
and needs no clamping; degenerate (collinear) inputs give finite values and finite
gradients instead of NaN.
"""

import math

import torch
from torch import Tensor


def _safe_atan2(y: Tensor, x: Tensor) -> Tensor:
    # atan2(0, 0) is 0 in the forward pass but its gradient is 0/0.
    degenerate = (x == 0) & (y == 0)
    return torch.atan2(y, torch.where(degenerate, torch.ones_like(x), x))


def _unit(v: Tensor) -> Tensor:
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    # A floor representable in float32 and float64: zero vectors stay zero, not NaN.
    return v / norm.clamp_min(1e-30)


def bond_lengths(a: Tensor, b: Tensor) -> Tensor:
    """|a - b| over the last axis."""
    return torch.linalg.vector_norm(a - b, dim=-1)


def bond_angles(a: Tensor, j: Tensor, k: Tensor) -> Tensor:
    """The angle a-j-k at j, in [0, pi]."""
    u = a - j
    v = k - j
    return _safe_atan2(torch.linalg.vector_norm(torch.cross(u, v, dim=-1), dim=-1), (u * v).sum(-1))


def dihedral_angles(a: Tensor, j: Tensor, k: Tensor, l: Tensor) -> Tensor:
    """The torsion a-j-k-l in [-pi, pi) (IUPAC sign convention).

    With b1 = j - a, b2 = k - j, b3 = l - k, n1 = b1 x b2 and n2 = b2 x b3:
    phi = atan2(|b2| b1 . n2, n1 . n2). The torsion of l-k-j-a is the same angle.
    """
    b1 = j - a
    b2 = k - j
    b3 = l - k
    n1 = torch.cross(b1, b2, dim=-1)
    n2 = torch.cross(b2, b3, dim=-1)
    y = torch.linalg.vector_norm(b2, dim=-1) * (b1 * n2).sum(-1)
    x = (n1 * n2).sum(-1)
    phi = _safe_atan2(y, x)
    return torch.where(phi >= math.pi, phi - 2 * math.pi, phi)


def place_atoms(j: Tensor, k: Tensor, l: Tensor, bond: Tensor, angle: Tensor, dihedral: Tensor) -> Tensor:
    """Positions a with |a - j| = bond, angle a-j-k = angle, torsion a-j-k-l = dihedral.

    Natural extension reference frame (Parsons et al., J. Comput. Chem. 26, 1063 (2005)):
    in the orthonormal frame e1 = (j - k)/|j - k|, e3 = (k - l) x e1 normalised,
    e2 = e3 x e1, a = j + bond (-cos(angle) e1 + sin(angle) cos(dihedral) e2
    + sin(angle) sin(dihedral) e3).
    """
    e1 = _unit(j - k)
    e3 = _unit(torch.cross(k - l, e1, dim=-1))
    e2 = torch.cross(e3, e1, dim=-1)
    sin_angle = torch.sin(angle)
    along = (-bond * torch.cos(angle)).unsqueeze(-1)
    across = (bond * sin_angle * torch.cos(dihedral)).unsqueeze(-1)
    normal = (bond * sin_angle * torch.sin(dihedral)).unsqueeze(-1)
    return j + along * e1 + across * e2 + normal * e3
