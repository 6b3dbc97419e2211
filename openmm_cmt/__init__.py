"""openmm_cmt: Boltzmann generators for OpenMM systems, trained from energies alone
with Constrained Mass Transport (CMT).

Units are OpenMM's (nm, kJ/mol, K, ps); positions are ``[batch, n_atoms, 3]`` in the
System's atom order; densities are in nats.
"""

# torch must be imported before openmm: otherwise OpenMM's Torch plugin fails to load
# silently and every Context holding a TorchForce is refused.
import torch  # noqa: F401
import openmm  # noqa: F401

from openmm_cmt._version import __version__  # noqa: E402
from openmm_cmt.systems import MolecularSystem  # noqa: E402

__all__ = ["MolecularSystem", "__version__"]


def __getattr__(name):
    # The facade pulls in the whole stack; load it on first use only.
    if name == "BoltzmannGeneratorSampler":
        from openmm_cmt.sampler import BoltzmannGeneratorSampler

        return BoltzmannGeneratorSampler
    raise AttributeError(f"module 'openmm_cmt' has no attribute {name!r}")
