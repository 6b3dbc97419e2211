"""OpenMM's units as plain numbers: thermal energy and stripping of ``openmm.unit`` Quantities.

Everything in the package works in OpenMM's MD units (nm, kJ/mol, K, ps) as floats or
arrays; the functions here are the one place where a Quantity becomes such a number and
where a temperature becomes kT.
"""

from __future__ import annotations

import numpy as np
from openmm import unit

#: Molar gas constant in kJ/(mol K), the value OpenMM uses.
MOLAR_GAS_CONSTANT = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
#: 1 hartree in kJ/mol (CODATA 2018: E_h N_A), for ANI outputs.
HARTREE_KJ_PER_MOL = 4.3597447222071e-18 * 6.02214076e23 / 1000.0


def kelvin(temperature) -> float:
    """A temperature in K as a float, from a number or a Quantity; ValueError unless positive and finite."""
    if unit.is_quantity(temperature):
        temperature = temperature.value_in_unit(unit.kelvin)
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a positive number (K), got {temperature!r}") from None
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive number (K), got {temperature!r}")
    return t


def kT(temperature):
    """Thermal energy in kJ/mol of a temperature in K (a number, a Quantity or an array of K)."""
    if unit.is_quantity(temperature) or np.ndim(temperature) == 0:
        return MOLAR_GAS_CONSTANT * kelvin(temperature)
    t = np.asarray(temperature, dtype=np.float64)
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ValueError(f"temperatures must be positive and finite (K), got {t}")
    return MOLAR_GAS_CONSTANT * t


def nanometers(positions) -> np.ndarray:
    """Positions (or any lengths) in nm as a float64 array, from numbers or a Quantity."""
    if unit.is_quantity(positions):
        positions = positions.value_in_unit(unit.nanometer)
    return np.array(positions, dtype=np.float64)


def md_value(q) -> float:
    """A float in OpenMM's MD units (nm, kJ/mol, K, ps, radians, e) from a number or Quantity."""
    if unit.is_quantity(q):
        q = q.value_in_unit_system(unit.md_unit_system)
    return float(q)
