"""Lazy access to openmm-torch.

openmm-torch wheels are bound to one torch ABI (1.5 to torch 2.9), so the package never
imports it at module level. When openmm was imported before torch, OpenMM's plugin loader
has already failed on the Torch plugin; ``load_openmmtorch`` loads it again by hand.
"""

import glob
import os

import torch  # noqa: F401  (must precede openmm)
import openmm

_KERNEL = "CalcTorchForce"


def _plugins_loaded() -> bool:
    for i in range(openmm.Platform.getNumPlatforms()):
        if openmm.Platform.getPlatform(i).supportsKernels([_KERNEL]):
            return True
    return False


def load_openmmtorch():
    """Import ``openmmtorch`` and make sure its kernels are registered with OpenMM.

    Raises ImportError with the install command when openmm-torch is missing or was
    built for another torch.
    """
    try:
        import openmmtorch
    except Exception as err:  # ImportError, or OSError from a mismatched ABI
        raise ImportError(
            "openmm-torch is needed for TorchForce (pip install 'openmmtorch==1.5' with "
            f"torch 2.9, or conda install -c conda-forge openmm-torch); import failed: {err}"
        ) from err
    if not _plugins_loaded():
        plugin_dir = os.path.join(openmm.version.openmm_library_path, "plugins")
        for lib in sorted(glob.glob(os.path.join(plugin_dir, "*OpenMMTorch*"))):
            try:
                openmm.Platform.loadPluginLibrary(lib)
            except Exception:  # a platform without its driver (CUDA on a CPU box)
                pass
    return openmmtorch
