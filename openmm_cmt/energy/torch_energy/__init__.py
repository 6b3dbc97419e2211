"""TorchEnergy: an OpenMM System compiled to one batched torch module.

``TorchEnergy.from_openmm(system)`` builds an ``nn.Module`` mapping positions
``[B, N, 3]`` (nm) to potential energies ``[B]`` (kJ/mol), one term per OpenMM force,
forces by autograd; it is ``torch.jit.script``-able. ``TorchEnergyEngine`` wraps it as an
``EnergyEngine`` with device placement, memory-bounded chunking and optional
``torch.compile``. Systems it cannot compile raise ``UnsupportedSystemError``.

Builders: ``build(force, system, dtype) -> nn.Module | None`` per OpenMM force class,
native ones in ``bonded``, ``nonbonded`` and ``obc``, Custom*Force ones in ``custom``,
``custom_groups`` and ``cv``, openmm-ml's PythonForce (ANI potentials, batched) in
``ml``; tabulated functions in ``tabulated``. Periodic systems
(CutoffPeriodic, periodic Custom forces) use minimum images in the System's fixed
default box.

Extending: ``register_builder(force_class_name, builder)`` compiles another force class
(a plugin force, or one listed as unsupported) with your builder, e.g.::

    class RadiusOfGyration(torch.nn.Module):
        def __init__(self, atoms):
            super().__init__()
            self.register_buffer("atoms", torch.as_tensor(atoms))

        def forward(self, x):
            x = x[:, self.atoms]
            return (x - x.mean(1, keepdim=True)).square().sum(-1).mean(1).sqrt().double()

    register_builder("RGForce", lambda force, system, dtype: RadiusOfGyration(list(force.getParticles())
                                                                               or range(system.getNumParticles())))

``unregister_builder`` removes it again.
"""

from openmm_cmt.energy.torch_energy.errors import UnsupportedSystemError
from openmm_cmt.energy.torch_energy.module import TorchEnergy, builders, register_builder, time_terms, unregister_builder

__all__ = ["TorchEnergy", "TorchEnergyEngine", "UnsupportedSystemError", "builders", "register_builder", "time_terms",
           "unregister_builder"]


def __getattr__(name):
    # The engine pulls in the EnergyEngine machinery; the module alone does not need it.
    if name == "TorchEnergyEngine":
        from openmm_cmt.energy.torch_energy.engine import TorchEnergyEngine

        return TorchEnergyEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
