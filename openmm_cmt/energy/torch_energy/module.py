"""TorchEnergy: the potential energy of an OpenMM System as one batched torch module.

``TorchEnergy.from_openmm(system)`` turns every force of the System into a term
(an ``nn.Module`` mapping positions ``[B, N, 3]`` in nm to energies ``[B]`` in kJ/mol)
through a builder ``build(force, system, dtype) -> nn.Module | None`` chosen by the
force's class name. The total is the sum of all terms, whatever their force group:
force groups select terms in an OpenMM Context, and here every term always counts.

Constraints are ignored (they do not change the potential energy). Everything the
builders cannot express is collected and raised once as ``UnsupportedSystemError``.

The table of builders is open: ``register_builder(force_class_name, builder)`` adds one
(for a plugin force, or a force class TorchEnergy does not compile itself), used by
every TorchEnergy built afterwards, CustomCVForce variables included.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import openmm
from torch import nn

from openmm_cmt.energy.torch_energy import bonded, ml, nonbonded, obc
from openmm_cmt.energy.torch_energy.custom import CUSTOM_BUILDERS
from openmm_cmt.energy.torch_energy.custom_groups import GROUP_BUILDERS
from openmm_cmt.energy.torch_energy.cv import custom_cv_builder
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
    "PythonForce": ml.build_python_force,
    "CMMotionRemover": _no_energy,
    "AndersenThermostat": _no_energy,
}


#: Force classes TorchEnergy does not compile, and why (shown in UnsupportedSystemError).
UNSUPPORTED_REASONS: dict[str, str] = {
    "AmoebaMultipoleForce": "polarizable multipoles need a self-consistent induced-dipole solve",
    "AmoebaVdwForce": "AMOEBA buffered 14-7 van der Waals is not implemented",
    "AmoebaGeneralizedKirkwoodForce": "generalized Kirkwood needs AMOEBA's multipoles",
    "AmoebaTorsionTorsionForce": "AMOEBA torsion-torsion grids are not implemented",
    "AmoebaWcaDispersionForce": "AMOEBA WCA dispersion is not implemented",
    "HippoNonbondedForce": "HIPPO's polarizable nonbonded model is not implemented",
    "DrudeForce": "Drude particles need a self-consistent or extended-Lagrangian treatment",
    "RMSDForce": "needs the optimal superposition (Kabsch) of every conformation; not implemented",
    "RGForce": "radius of gyration restraints are not implemented",
    "OrientationRestraintForce": "orientation restraints need the optimal superposition; not implemented",
    "CustomManyParticleForce": "many-particle sets with type filters are not implemented",
    "CustomVolumeForce": "depends on the periodic box volume; TorchEnergy evaluates fixed, non-periodic Systems",
    "GayBerneForce": "ellipsoid particles with orientations are not implemented",
    "ATMForce": "the alchemical transfer method combines the energies of displaced Systems; not implemented",
    "ConstantPotentialForce": "constant-potential electrodes need a charge solve under Ewald sums",
    "LCPOForce": "the LCPO surface-area term is not implemented",
    "TorchForce": "evaluate the TorchScript model directly; it is not merged into TorchEnergy",
    "MonteCarloBarostat": "a barostat samples constant pressure (variable box); TorchEnergy's energies are at a fixed volume",
    "MonteCarloAnisotropicBarostat": "a barostat samples constant pressure (variable box); TorchEnergy's energies are at a fixed volume",
    "MonteCarloFlexibleBarostat": "a barostat samples constant pressure (variable box); TorchEnergy's energies are at a fixed volume",
    "MonteCarloMembraneBarostat": "a barostat samples constant pressure (variable box); TorchEnergy's energies are at a fixed volume",
    "RPMDMonteCarloBarostat": "a barostat samples constant pressure (variable box); TorchEnergy's energies are at a fixed volume",
}


#: Force classes whose builders implement periodic boundary conditions (minimum image in
#: the System's default box) and refuse the periodic settings they do not.
PERIODIC_BUILDERS = {"NonbondedForce", "GBSAOBCForce", "HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce",
                     "RBTorsionForce", "CMAPTorsionForce", "CustomBondForce", "CustomAngleForce", "CustomTorsionForce",
                     "CustomCompoundBondForce", "CustomNonbondedForce", "CustomGBForce", "CustomHbondForce",
                     "CustomCVForce", "CustomExternalForce", "CustomCentroidBondForce"}


#: Builders added with ``register_builder``, by force class name.
_REGISTERED: dict[str, Builder] = {}
_REGISTERED_PERIODIC: set[str] = set()


def register_builder(force_class_name: str, builder: Builder, *, periodic: bool = False, replace: bool = False) -> None:
    """Compile forces of class ``force_class_name`` with ``builder`` from now on.

    Parameters
    ----------
    force_class_name
        ``type(force).__name__`` of the OpenMM force, e.g. a plugin's force class.
    builder
        ``builder(force, system, dtype) -> nn.Module | None``: a TorchScript-able module
        mapping positions ``[B, N, 3]`` (nm, ``dtype``) to energies ``[B]`` (kJ/mol), or
        None for a force without energy. It may raise ``UnsupportedSystemError`` for
        settings it cannot express.
    periodic
        whether the term handles periodic boundary conditions itself (minimum images in
        the System's default box); otherwise a periodic force of this class is refused.
    replace
        allow replacing an existing builder of the class (a built-in one included).

    Raises ValueError for a builder that is not callable or a class that already has a
    builder (unless ``replace``). ``unregister_builder`` undoes a registration.
    """
    if not (isinstance(force_class_name, str) and force_class_name.isidentifier()):
        raise ValueError(f"force_class_name must be a class name such as 'RGForce', got {force_class_name!r}")
    if not callable(builder):
        raise ValueError(f"the builder of {force_class_name} must be callable(force, system, dtype), got {builder!r}")
    if force_class_name in builders() and not replace:
        raise ValueError(f"{force_class_name} already has a builder; pass replace=True to replace it")
    _REGISTERED[force_class_name] = builder
    if periodic:
        _REGISTERED_PERIODIC.add(force_class_name)
    else:
        _REGISTERED_PERIODIC.discard(force_class_name)


def unregister_builder(force_class_name: str) -> None:
    """Remove the builder registered for ``force_class_name`` (a built-in one it replaced
    applies again). Raises ValueError when none is registered."""
    if force_class_name not in _REGISTERED:
        raise ValueError(f"no builder is registered for {force_class_name!r}; registered: {sorted(_REGISTERED)}")
    del _REGISTERED[force_class_name]
    _REGISTERED_PERIODIC.discard(force_class_name)


def builders() -> dict[str, Builder]:
    """Builders by OpenMM force class name: the native ones, the Lepton-compiled
    Custom*Force ones (``custom``, ``custom_groups``), CustomCVForce (``cv``) and those
    added with ``register_builder`` (which take precedence)."""
    table = dict(_NATIVE_BUILDERS)
    table.update(CUSTOM_BUILDERS)
    table.update(GROUP_BUILDERS)
    # CustomCVForce compiles its variables with this very table.
    table["CustomCVForce"] = custom_cv_builder(compile_force)
    table.update(_REGISTERED)
    return table


def compile_force(force: openmm.Force, system: openmm.System, dtype: torch.dtype, label: str,
                  table: "dict[str, Builder] | None" = None) -> "tuple[nn.Module | None, list[str]]":
    """The term of one force and the problems that prevent it, each prefixed by ``label``.

    Returns ``(term, [])`` on success (``term`` is None for forces without energy) and
    ``(None, problems)`` otherwise.
    """
    table = builders() if table is None else table
    kind = type(force).__name__
    builder = table.get(kind)
    if builder is None:
        reason = UNSUPPORTED_REASONS.get(kind, "no builder for this force class")
        return None, [f"{label}: force class {kind} is not supported ({reason})"]
    try:
        term = builder(force, system, dtype)
    except UnsupportedSystemError as err:
        return None, [f"{label}: {p}" for p in err.problems]
    periodic = (PERIODIC_BUILDERS - set(_REGISTERED)) | _REGISTERED_PERIODIC
    if force.usesPeriodicBoundaryConditions() and kind not in periodic:
        return None, [f"{label}: uses periodic boundary conditions"]
    return term, []


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
        compiled (Ewald sums, periodic forces without a periodic builder, virtual sites,
        unsupported force classes with the reason, ...). Periodic forces use the System's
        default box vectors: the box is fixed.
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
            term, found = compile_force(force, system, dtype, f"force {index} ({kind}, name {force.getName()!r})", table)
            problems.extend(found)
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
