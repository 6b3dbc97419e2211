"""TorchEnergy: the potential energy of an OpenMM System as one batched torch module.

``TorchEnergy.from_openmm(system)`` turns every force of the System into a term
(an ``nn.Module`` mapping positions ``[B, N, 3]`` in nm to energies ``[B]`` in kJ/mol)
through a builder ``build(force, system, dtype) -> nn.Module | None`` chosen by the
force's class name. The total is the sum of all terms, whatever their force group:
force groups select terms in an OpenMM Context, and here every term always counts.

Constraints are ignored (they do not change the potential energy). Everything the
builders cannot express is collected and raised once as ``UnsupportedSystemError``.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import openmm
from torch import nn

from openmm_cmt.energy.torch_energy import bonded, nonbonded, obc
from openmm_cmt.energy.torch_energy.errors import UnsupportedSystemError

Builder = Callable[[openmm.Force, openmm.System, torch.dtype], "nn.Module | None"]


def _no_energy(force, system, dtype):
    return None


_NATIVE_BUILDERS: dict[str, Builder] = {
    "HarmonicBondForce": bonded.build_harmonic_bond,
    "HarmonicAngleForce": bonded.build_harmonic_angle,
    "PeriodicTorsionForce": bonded.build_periodic_torsion,
    "RBTorsionForce": bonded.build_rb_torsion,
    "CMAPTorsionForce": bonded.build_cmap_torsion,
    "NonbondedForce": nonbonded.build_nonbonded,
    "GBSAOBCForce": obc.build_gbsa_obc,
    "CMMotionRemover": _no_energy,
}


def builders() -> dict[str, Builder]:
    """Builders by OpenMM force class name: the native ones plus ``custom.CUSTOM_BUILDERS``
    (Lepton-compiled Custom*Force terms) when that module is present."""
    table = dict(_NATIVE_BUILDERS)
    try:
        from openmm_cmt.energy.torch_energy.custom import CUSTOM_BUILDERS
    except ModuleNotFoundError as err:
        if err.name != "openmm_cmt.energy.torch_energy.custom":
            raise
        CUSTOM_BUILDERS = {}
    table.update(CUSTOM_BUILDERS)
    return table


def _virtual_site_problems(system: openmm.System) -> list[str]:
    problems = []
    virtual = [i for i in range(system.getNumParticles()) if system.isVirtualSite(i)]
    if virtual:
        shown = ", ".join(map(str, virtual[:10])) + (", ..." if len(virtual) > 10 else "")
        problems.append(f"{len(virtual)} virtual site(s) (particles {shown})")
    return problems


class TorchEnergy(nn.Module):
    r"""Potential energy :math:`E(x) = \sum_t E_t(x)` of an OpenMM System, batched.

    ``forward(x)`` takes positions ``[B, n_atoms, 3]`` in nm (any floating dtype; the
    terms compute in the dtype they were built with) and returns energies ``[B]`` in
    kJ/mol as float64: each term sums its interactions in float64, so that float32
    terms lose no accuracy to the cancellation between large terms. Forces are
    ``-dE/dx`` by autograd. The module is ``torch.jit.script``-able and its parameters
    are buffers, so ``.to(device, dtype)`` moves it.
    """

    def __init__(self, terms: list[nn.Module], names: list[str], n_atoms: int):
        super().__init__()
        if len(terms) != len(names):
            raise ValueError(f"got {len(terms)} terms but {len(names)} names")
        self.terms = nn.ModuleList(terms)
        self.names = list(names)
        self.n_atoms = int(n_atoms)

    @classmethod
    def from_openmm(cls, system: openmm.System, dtype: torch.dtype = torch.float64, device="cpu") -> "TorchEnergy":
        """Compile ``system`` (an ``openmm.System``).

        Raises ``UnsupportedSystemError`` listing every force or feature that cannot be
        compiled (periodic boxes, virtual sites, unknown force classes, ...).
        """
        if not isinstance(system, openmm.System):
            raise ValueError(f"expected an openmm.System, got {type(system).__name__}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        table = builders()
        problems = _virtual_site_problems(system)
        terms, names = [], []
        for index, force in enumerate(system.getForces()):
            kind = type(force).__name__
            label = f"force {index} ({kind}, name {force.getName()!r})"
            builder = table.get(kind)
            if builder is None:
                problems.append(f"{label}: force class {kind} is not supported")
                continue
            try:
                term = builder(force, system, dtype)
            except UnsupportedSystemError as err:
                problems.extend(f"{label}: {p}" for p in err.problems)
                continue
            if force.usesPeriodicBoundaryConditions():
                problems.append(f"{label}: uses periodic boundary conditions")
                continue
            if term is not None:
                terms.append(term)
                names.append(f"{index}:{kind}")
        if problems:
            raise UnsupportedSystemError(problems)
        return cls(terms, names, system.getNumParticles()).to(device=device, dtype=dtype)

    def term_names(self) -> list[str]:
        """``"<force index>:<force class>"`` for each term, in ``forward`` order."""
        return list(self.names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.n_atoms or x.shape[2] != 3:
            raise ValueError("positions must have shape [batch, " + str(self.n_atoms) + ", 3] in nm")
        energy = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for term in self.terms:
            energy = energy + term(x)
        return energy

    def term_energies(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Energy of each term separately, ``{name: [B] kJ/mol}``."""
        return {name: term(x).to(torch.float64) for name, term in zip(self.names, self.terms)}

    def work_elements(self) -> int:
        """Elements of intermediates per conformation, summed over terms, for memory
        budgets: a term states it as ``work_elements`` (about the number of its
        interactions times the elementwise operations on them); terms that do not are
        assumed to be pairwise with 40 operations per ordered pair."""
        total = 0
        for term in self.terms:
            total += int(getattr(term, "work_elements", 40 * self.n_atoms * self.n_atoms))
        return max(total, 3 * self.n_atoms)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_terms(energy: TorchEnergy, x: torch.Tensor, forces: bool = False, repeats: int = 5) -> dict[str, float]:
    """Seconds per conformation spent in each term of ``energy`` (median of ``repeats``
    timed calls after one warm-up), plus ``"total"`` for the whole module.

    With ``forces=True`` each call includes the backward pass. ``x`` is moved to the
    module's device and dtype first. Figures are for the eager module.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    buf = next(iter(energy.buffers()), None)
    device = buf.device if buf is not None else x.device
    dtype = buf.dtype if buf is not None and buf.is_floating_point() else x.dtype
    x = x.detach().to(device=device, dtype=dtype)
    parts = dict(zip(energy.names, energy.terms))
    parts["total"] = energy

    def call(fn):
        if forces:
            xg = x.clone().requires_grad_(True)
            torch.autograd.grad(fn(xg).sum(), xg)
        else:
            with torch.no_grad():
                fn(x)

    out = {}
    for name, fn in parts.items():
        call(fn)
        times = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            call(fn)
            _sync(device)
            times.append(time.perf_counter() - t0)
        out[name] = sorted(times)[len(times) // 2] / x.shape[0]
    return out
