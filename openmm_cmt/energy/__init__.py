"""Energy engines: an OpenMM System becomes u(x) = E(x)/kT for batches of conformations.

- ``OpenMMEnergy``: exact, one OpenMM evaluation per conformation on a pool of Contexts.
- ``TorchEnergy``: the same System compiled to one batched torch module (CPU or GPU),
  openmm-ml's ANI potentials included.
- ``create_energy``: picks TorchEnergy when the System is supported, else OpenMMEnergy.
"""

from openmm_cmt.energy.base import EnergyEngine
from openmm_cmt.energy.regularization import linlog_cut

_LAZY = {
    "OpenMMEnergy": "openmm_cmt.energy.openmm_energy",
    "TorchEnergy": "openmm_cmt.energy.torch_energy",
    "TorchEnergyEngine": "openmm_cmt.energy.torch_energy",
    "UnsupportedSystemError": "openmm_cmt.energy.torch_energy",
    "create_energy": "openmm_cmt.energy.factory",
}

__all__ = ["EnergyEngine", "linlog_cut", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'openmm_cmt.energy' has no attribute {name!r}")
