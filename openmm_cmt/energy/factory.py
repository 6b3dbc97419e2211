"""Choosing an energy engine for a MolecularSystem."""

from __future__ import annotations

import torch

from openmm_cmt.energy.base import EnergyEngine


def create_energy(
    molsys, engine: str = "auto", device=None, dtype=torch.float64, compile="auto", **openmm_kwargs
) -> EnergyEngine:
    """An energy engine for ``molsys`` (a MolecularSystem).

    Parameters
    ----------
    engine
        ``"torch"`` (batched TorchEnergy), ``"openmm"`` (exact OpenMMEnergy pool)
        or ``"auto"``: TorchEnergy when every force of the System is supported,
        otherwise OpenMMEnergy. openmm-ml's ANI potentials are supported (evaluated
        batched, see ``openmm_cmt.energy.torch_energy.ml``); other openmm-ml
        potentials go to OpenMMEnergy.
    device, dtype, compile
        for the torch engine (``compile``: torch.compile the
        module; ``"auto"``: on CUDA, and on CPU when a C++ compiler is present).
    openmm_kwargs
        passed to ``OpenMMEnergy`` when it is chosen (platform, n_workers, ...).
    """
    if engine not in ("auto", "torch", "openmm"):
        raise ValueError(f"engine must be 'auto', 'torch' or 'openmm', got {engine!r}")
    if engine in ("auto", "torch"):
        from openmm_cmt.energy.torch_energy import TorchEnergyEngine, UnsupportedSystemError

        try:
            return TorchEnergyEngine(molsys, device=device, dtype=dtype, compile=compile)
        except UnsupportedSystemError:
            if engine == "torch":
                raise
    from openmm_cmt.energy.openmm_energy import OpenMMEnergy

    return OpenMMEnergy(molsys, **openmm_kwargs)
