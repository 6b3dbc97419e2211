"""Batched internal coordinates and the float64 reduction shared by every term.

Positions are ``[B, N, 3]``; index buffers are int64 ``[M]``. All functions are
TorchScript-compatible.
"""

import torch


def energy_sum(e: torch.Tensor) -> torch.Tensor:
    """Sum ``[B, M]`` interaction energies to ``[B]`` in float64.

    Terms may compute in float32, but totals of hundreds of terms of either sign lose
    digits in float32; accumulating in float64 costs one reduction.
    """
    return torch.sum(e, dim=-1, dtype=torch.float64)


def displacement(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """x_j - x_i, shape [B, M, 3]."""
    return x.index_select(1, j) - x.index_select(1, i)


def distance(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """|x_j - x_i|, shape [B, M]."""
    return torch.linalg.vector_norm(displacement(x, i, j), dim=-1)


def angle(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    r"""Angle i-j-k in radians, :math:`\theta = \operatorname{atan2}(|a \times b|, a \cdot b)`
    with a = x_i - x_j, b = x_k - x_j; accurate near 0 and pi, where acos is not."""
    a = displacement(x, j, i)
    b = displacement(x, j, k)
    cross = torch.linalg.vector_norm(torch.linalg.cross(a, b, dim=-1), dim=-1)
    return torch.atan2(cross, (a * b).sum(-1))


def dihedral(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor, k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    r"""Dihedral angle i-j-k-l in (-pi, pi], IUPAC sign convention (trans = pi), as OpenMM.

    With :math:`b_1 = x_j - x_i`, :math:`b_2 = x_k - x_j`, :math:`b_3 = x_l - x_k`,
    :math:`n_1 = b_1 \times b_2`, :math:`n_2 = b_2 \times b_3`:
    :math:`\phi = \operatorname{atan2}(|b_2|\, b_1 \cdot n_2,\ n_1 \cdot n_2)`
    (Blondel and Karplus, J. Comput. Chem. 17, 1132 (1996)).
    """
    b1 = displacement(x, i, j)
    b2 = displacement(x, j, k)
    b3 = displacement(x, k, l)
    n1 = torch.linalg.cross(b1, b2, dim=-1)
    n2 = torch.linalg.cross(b2, b3, dim=-1)
    y = torch.linalg.vector_norm(b2, dim=-1) * (b1 * n2).sum(-1)
    return torch.atan2(y, (n1 * n2).sum(-1))
