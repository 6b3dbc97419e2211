"""Index and parameter buffers, and periodic boxes, from OpenMM's Python API."""

from __future__ import annotations

import numpy as np
import torch

from openmm_cmt.energy.torch_energy.errors import UnsupportedSystemError
from openmm_cmt.units import md_value


def index_buffer(values) -> torch.Tensor:
    """int64 tensor of shape [M] (M may be 0)."""
    return torch.as_tensor(np.asarray(values, dtype=np.int64).reshape(-1))


def real_buffer(values, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=dtype)


def periodic_box(system, cutoff: float, what: str) -> np.ndarray:
    """The System's default box vectors as rows [3, 3] (nm), checked as OpenMM checks
    them for a cutoff: every width a_x, b_y, c_z at least twice ``cutoff``."""
    box = np.array([[md_value(c) for c in v] for v in system.getDefaultPeriodicBoxVectors()], dtype=np.float64)
    widths = np.diag(box)
    if np.any(widths < 1.999999 * cutoff):
        raise UnsupportedSystemError(f"{what}: the periodic box widths {widths.tolist()} nm must be at least twice "
                                     f"the cutoff {cutoff} nm")
    return box


def force_box(force, system, cutoff: float = 0.0):
    """The System's box ([3, 3] rows) when ``force`` uses periodic boundary conditions,
    else None."""
    if not force.usesPeriodicBoundaryConditions():
        return None
    return periodic_box(system, cutoff, type(force).__name__)
