r"""CustomCVForce: an energy expression over collective variables that are forces.

Each collective variable :math:`s_k(x)` is the energy of another OpenMM force, compiled
by that force's own builder; the term is :math:`E = f(s_1, \dots, s_K)` with ``f`` the
force's Lepton expression (global parameters folded in, tabulated functions allowed).
Gradients follow by the chain rule through autograd, as OpenMM applies it.
"""

from typing import List

import openmm
import torch
from torch import Tensor, nn

from openmm_cmt.energy.torch_energy.custom import _compile, _globals
from openmm_cmt.energy.torch_energy.errors import UnsupportedSystemError
from openmm_cmt.energy.torch_energy.tabulated import tabulated_functions


class _Zero(nn.Module):
    """A collective variable whose force has no energy (CMMotionRemover)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)


class CustomCVTerm(nn.Module):
    """E(x) = f(s_1(x), ..., s_K(x)); each s_k is a term returning float64 energies [B]."""

    def __init__(self, variables: List[nn.Module], energy):
        super().__init__()
        self.variables = nn.ModuleList(variables)
        self.energy = energy
        self.work_elements = sum(int(getattr(v, "work_elements", 0)) for v in variables) + 8

    def forward(self, x: Tensor) -> Tensor:
        values: List[Tensor] = []
        for variable in self.variables:
            values.append(variable(x))
        # A trailing zero column gives an expression that uses no variable its shape [B].
        values.append(torch.zeros(x.shape[0], dtype=torch.float64, device=x.device))
        return torch.broadcast_to(self.energy(values), (x.shape[0],)).to(torch.float64)


def custom_cv_builder(compile_force):
    """The builder of CustomCVForce terms, compiling each collective variable's force with
    ``compile_force(force, system, dtype, label) -> (term, problems)`` (the caller's own
    force compiler, so that any force class it supports can be a variable)."""

    def build(force: openmm.CustomCVForce, system: openmm.System, dtype: torch.dtype) -> nn.Module:
        return build_custom_cv(force, system, dtype, compile_force)

    return build


def build_custom_cv(force: openmm.CustomCVForce, system: openmm.System, dtype: torch.dtype, compile_force) -> nn.Module:
    """A CustomCVForce as a torch module; ``compile_force`` as for :func:`custom_cv_builder`."""
    names, variables, problems = [], [], []
    for k in range(force.getNumCollectiveVariables()):
        name = force.getCollectiveVariableName(k)
        inner = force.getCollectiveVariable(k)
        term, found = compile_force(inner, system, dtype, f"collective variable {name!r} ({type(inner).__name__})")
        problems.extend(found)
        if not found:
            names.append(name)
            variables.append(_Zero() if term is None else term)
    if problems:
        raise UnsupportedSystemError(problems)
    energy = _compile(force.getEnergyFunction(), names + ["__cv"], _globals(force),
                      tables=tabulated_functions(force, torch.float64))
    return CustomCVTerm(variables, energy)
