"""Batched internal coordinates and the float64 reduction shared by every term.

Positions are ``[B, N, 3]``; index buffers are int64 ``[M]``; a periodic box is a
``[3, 3]`` tensor of box vectors (rows). All functions are TorchScript-compatible.
"""

from typing import Optional

import torch


def minimum_image(d: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Displacements ``d`` [..., 3] wrapped as OpenMM's Reference platform does for a box
    with rows a, b, c in OpenMM's reduced form (a along x, b in the xy plane): subtract
    the nearest multiple of c by the z component, then of b by y, then of a by x. Exact
    minimum images whenever the cutoff is at most half of each box width."""
    d = d - box[2] * torch.floor(d[..., 2:3] / box[2, 2] + 0.5)
    d = d - box[1] * torch.floor(d[..., 1:2] / box[1, 1] + 0.5)
    return d - box[0] * torch.floor(d[..., 0:1] / box[0, 0] + 0.5)


def energy_sum(e: torch.Tensor) -> torch.Tensor:
    """Sum ``[B, M]`` interaction energies to ``[B]`` in float64.

    Terms may compute in float32, but totals of hundreds of terms of either sign lose
    digits in float32; accumulating in float64 costs one reduction.
    """
    return torch.sum(e, dim=-1, dtype=torch.float64)


def displacement(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x_j - x_i, shape [B, M, 3]; the minimum image when a periodic ``box`` is given."""
    d = x.index_select(1, j) - x.index_select(1, i)
    if box is not None:
        d = minimum_image(d, box)
    return d


def distance(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
    """|x_j - x_i|, shape [B, M] (minimum image with a ``box``)."""
    return torch.linalg.vector_norm(displacement(x, i, j, box), dim=-1)


def attach_box(module: torch.nn.Module, box) -> None:
    """Give ``module`` a ``box`` buffer ([3, 3] rows; zeros when ``box`` is None, so that
    every term has the same attributes) and the flag ``periodic``."""
    module.periodic = box is not None
    module.register_buffer("box", torch.zeros(3, 3, dtype=torch.float64) if box is None
                           else torch.as_tensor(box, dtype=torch.float64))


def angle(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor, k: torch.Tensor,
          box: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Angle i-j-k in radians, :math:`\theta = \operatorname{atan2}(|a \times b|, a \cdot b)`
    with a = x_i - x_j, b = x_k - x_j; accurate near 0 and pi, where acos is not."""
    a = displacement(x, j, i, box)
    b = displacement(x, j, k, box)
    cross = torch.linalg.vector_norm(torch.linalg.cross(a, b, dim=-1), dim=-1)
    return torch.atan2(cross, (a * b).sum(-1))


def dihedral(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor, k: torch.Tensor, l: torch.Tensor,
             box: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Dihedral angle i-j-k-l in (-pi, pi], IUPAC sign convention (trans = pi), as OpenMM.

    With :math:`b_1 = x_j - x_i`, :math:`b_2 = x_k - x_j`, :math:`b_3 = x_l - x_k`,
    :math:`n_1 = b_1 \times b_2`, :math:`n_2 = b_2 \times b_3`:
    :math:`\phi = \operatorname{atan2}(|b_2|\, b_1 \cdot n_2,\ n_1 \cdot n_2)`
    (Blondel and Karplus, J. Comput. Chem. 17, 1132 (1996)).
    """
    b1 = displacement(x, i, j, box)
    b2 = displacement(x, j, k, box)
    b3 = displacement(x, k, l, box)
    n1 = torch.linalg.cross(b1, b2, dim=-1)
    n2 = torch.linalg.cross(b2, b3, dim=-1)
    y = torch.linalg.vector_norm(b2, dim=-1) * (b1 * n2).sum(-1)
    return torch.atan2(y, (n1 * n2).sum(-1))
