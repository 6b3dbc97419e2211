"""Choosing an energy engine for a MolecularSystem."""

from __future__ import annotations

import torch

from openmm_cmt.energy.base import EnergyEngine


def create_energy(molsys, engine: str = "auto", device=None, dtype=torch.float64, **kwargs) -> EnergyEngine:
    """An energy engine for ``molsys`` (a MolecularSystem).

    Args:
        engine: ``"torch"`` (batched TorchEnergy), ``"openmm"`` (exact OpenMMEnergy pool)
            or ``"auto"``: TorchEnergy when every force of the System is supported,
            otherwise OpenMMEnergy.
        device, dtype: for the torch engine.
        kwargs: passed to the engine's constructor.
    """
    if engine not in ("auto", "torch", "openmm"):
        raise ValueError(f"engine must be 'auto', 'torch' or 'openmm', got {engine!r}")
    if engine in ("auto", "torch"):
        from openmm_cmt.energy.torch_energy import TorchEnergyEngine, UnsupportedSystemError

        try:
            return TorchEnergyEngine(molsys, device=device, dtype=dtype, **kwargs)
        except UnsupportedSystemError:
            if engine == "torch":
                raise
    from openmm_cmt.energy.openmm_energy import OpenMMEnergy

    return OpenMMEnergy(molsys, **kwargs)
