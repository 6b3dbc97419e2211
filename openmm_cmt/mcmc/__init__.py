"""Boltzmann generators inside OpenMM: TorchScript/PythonForce export and hybrid MD/BG
Monte Carlo (an openmmtools move, a plain-Simulation helper, many chains in one Context).

Submodules load on first use: ``BoltzmannGeneratorMove`` imports openmmtools, which the
rest does not need.
"""

_LAZY = {
    "GeneratorEnergy": "openmm_cmt.mcmc.export",
    "export_generator": "openmm_cmt.mcmc.export",
    "read_metadata": "openmm_cmt.mcmc.export",
    "check_compatible": "openmm_cmt.mcmc.export",
    "load_generator": "openmm_cmt.mcmc.export",
    "load_generator_force": "openmm_cmt.mcmc.export",
    "generator_python_force": "openmm_cmt.mcmc.export",
    "GeneratorProposal": "openmm_cmt.mcmc.proposals",
    "log_acceptance": "openmm_cmt.mcmc.proposals",
    "HybridMC": "openmm_cmt.mcmc.simulation",
    "HybridMCReporter": "openmm_cmt.mcmc.simulation",
    "ManyChainHybridMC": "openmm_cmt.mcmc.many_chains",
    "BoltzmannGeneratorMove": "openmm_cmt.mcmc.moves",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'openmm_cmt.mcmc' has no attribute {name!r}")
