"""Reading plain numbers out of OpenMM's Python API."""

from __future__ import annotations

import numpy as np
import torch
from openmm import unit


def value(q) -> float:
    """A float in OpenMM's MD units (nm, kJ/mol, radians, e) from a number or Quantity."""
    if unit.is_quantity(q):
        q = q.value_in_unit_system(unit.md_unit_system)
    return float(q)


def index_buffer(values) -> torch.Tensor:
    """int64 tensor of shape [M] (M may be 0)."""
    return torch.as_tensor(np.asarray(values, dtype=np.int64).reshape(-1))


def real_buffer(values, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=dtype)
