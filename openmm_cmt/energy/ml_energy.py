"""Batched energies of openmm-ml Systems whose ML forces are ANI (torchani) models.

openmm-ml wraps every potential in an ``openmm.PythonForce`` evaluated one conformation
per call. torchani models take batches, so :class:`MLEnergy` runs each ANI model on a
whole batch and the classical remainder of the System through ``TorchEnergy`` (or an
in-process OpenMM Context); ``create_energy`` reaches OpenMMEnergy for every other
potential, since TorchEnergy refuses a PythonForce with ``UnsupportedSystemError``.
"""

from __future__ import annotations

import pickle
from xml.etree import ElementTree

import numpy as np
import torch
import openmm

from openmm_cmt.energy._pool_worker import evaluate, make_context
from openmm_cmt.energy.base import EnergyEngine
from openmm_cmt.energy.torch_energy import TorchEnergy, UnsupportedSystemError
from openmm_cmt.systems.ml import _compute_ani, _corrected, python_forces, without_forces
from openmm_cmt.units import HARTREE_KJ_PER_MOL


class _BatchedANI(torch.nn.Module):
    """E_ML(x) in kJ/mol for positions [B, n_atoms, 3] (nm) from openmm-ml's ANI force:
    the same torchani model, atoms and species, on a whole batch at once."""

    def __init__(self, model, species: torch.Tensor, atoms: list[int] | None):
        super().__init__()
        self.model = model
        self.register_buffer("species", species.reshape(1, -1))
        self.atoms = atoms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.atoms is not None:
            x = x[:, self.atoms]
        angstrom = 10.0 * x.to(torch.float32)  # openmm-ml feeds ANI float32 Angstrom
        species = self.species.expand(x.shape[0], -1)
        _, energy = self.model((species, angstrom))
        return energy.to(torch.float64) * HARTREE_KJ_PER_MOL


def pickled_compute(force):
    """The compute function of an ``openmm.PythonForce``, unpickled from its XML."""
    # The serialised force carries the pickled function as hex (a public route;
    # getPickledFunction returns an opaque SWIG vector).
    hex_function = ElementTree.fromstring(openmm.XmlSerializer.serialize(force)).get("function")
    return pickle.loads(bytes.fromhex(hex_function))


def batched_ml_term(compute, atoms: list[int] | None = None) -> torch.nn.Module:
    """A batched torch module for one openmm-ml PythonForce computation, or
    ``UnsupportedSystemError``.

    Only non-periodic ANI (torchani) computations have one: they carry the torchani
    model, which takes batches. Other potentials evaluate one conformation per call.
    """
    compute = _corrected(compute)
    func = getattr(compute, "func", None)
    keywords = getattr(compute, "keywords", {}) or {}
    if func is not _compute_ani or keywords.get("pbc") is not None:
        what = getattr(func, "__qualname__", type(compute).__name__)
        raise UnsupportedSystemError(f"PythonForce computing {what} has no batched form (only non-periodic ANI)")
    return _BatchedANI(keywords["model"], keywords["species"].cpu(), atoms)


class MLEnergy(EnergyEngine):
    """Batched energies of an openmm-ml System whose ML forces are ANI (torchani) models.

    E(x) = classical remainder (every non-PythonForce force, through TorchEnergy, or an
    in-process OpenMM Context when TorchEnergy cannot compile it) + each ANI model on the
    whole batch. Forces by autograd for the ML part. Chunks of ``chunk_size``
    conformations bound memory.

    Raises ``UnsupportedSystemError`` when a PythonForce has no batched form; OpenMMEnergy
    evaluates those one conformation at a time.
    """

    def __init__(self, molsys, device=None, chunk_size: int = 1024):
        super().__init__(molsys.n_atoms, molsys.kT)
        if not (isinstance(chunk_size, int) and chunk_size >= 1):
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        indices = python_forces(molsys.system)
        if not indices:
            raise UnsupportedSystemError("System holds no PythonForce: use TorchEnergy or OpenMMEnergy")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.chunk_size = chunk_size
        computes = getattr(molsys, "_ml_computes", None)
        forces = [molsys.system.getForce(i) for i in indices]
        if computes is None or len(computes) != len(indices):
            try:
                computes = [pickled_compute(force) for force in forces]
            except Exception as err:
                raise UnsupportedSystemError(f"PythonForce whose function does not unpickle ({err})") from None
        self.ml_terms = torch.nn.ModuleList(
            batched_ml_term(compute, list(force.getParticles()) or None) for compute, force in zip(computes, forces)
        )
        self.ml_terms.to(self.device)
        self.ml_terms.requires_grad_(False)
        remainder = without_forces(molsys.system, indices)
        self._openmm_context = None
        try:
            self.classical = TorchEnergy.from_openmm(remainder, dtype=torch.float64, device=self.device)
        except UnsupportedSystemError:
            self.classical = None
            self._openmm_context = make_context(remainder, "CPU")

    def _classical(self, x: torch.Tensor, forces: bool):
        if self.classical is not None:
            if not forces:
                with torch.no_grad():
                    return self.classical(x), None
            xg = x.detach().requires_grad_(True)
            with torch.enable_grad():
                e = self.classical(xg)
                if not e.requires_grad:  # no classical terms (a pure ML System)
                    return e.detach(), torch.zeros_like(x)
                (grad,) = torch.autograd.grad(e.sum(), xg)
            return e.detach(), -grad
        xn = x.detach().cpu().numpy()
        e = np.empty(xn.shape[0])
        f = np.empty_like(xn) if forces else None
        evaluate(self._openmm_context, xn, e, f)
        return torch.from_numpy(e).to(x.device), None if f is None else torch.from_numpy(f).to(x.device)

    def _ml(self, x: torch.Tensor, forces: bool):
        if not forces:
            with torch.no_grad():
                return sum(term(x) for term in self.ml_terms), None
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            e = sum(term(xg) for term in self.ml_terms)
            (grad,) = torch.autograd.grad(e.sum(), xg)
        return e.detach(), -grad

    def _energy(self, x: torch.Tensor, forces: bool):
        out_device = x.device
        energies, force_chunks = [], []
        for start in range(0, x.shape[0], self.chunk_size):
            chunk = x[start:start + self.chunk_size].to(self.device, torch.float64)
            e_mm, f_mm = self._classical(chunk, forces)
            e_ml, f_ml = self._ml(chunk, forces)
            energies.append((e_mm + e_ml).to(out_device, torch.float64))
            if forces:
                force_chunks.append((f_mm + f_ml).to(out_device, torch.float64))
        e = torch.cat(energies) if energies else torch.zeros(0, dtype=torch.float64, device=out_device)
        if not forces:
            return e
        f = torch.cat(force_chunks) if force_chunks else torch.zeros(0, self.n_atoms, 3, dtype=torch.float64)
        return e, torch.where(torch.isfinite(e)[:, None, None], f, torch.zeros_like(f))

    def close(self) -> None:
        self._openmm_context = None

    def __repr__(self) -> str:
        return f"MLEnergy({len(self.ml_terms)} ANI term(s), device={self.device}, n_atoms={self.n_atoms})"
