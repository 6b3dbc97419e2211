"""What every energy engine offers: reduced energies of a batch, with an exact count."""

from __future__ import annotations

import abc

import numpy as np
import torch


class EnergyEngine(abc.ABC):
    """Potential energies of a batch of conformations of one molecule.

    Subclasses implement ``_energy``. Public calls validate the batch, count every
    conformation evaluated in ``n_evaluations`` and return float64 tensors on the
    device of the input (numpy input gives numpy output).

    Attributes
    ----------
    n_atoms
        atoms per conformation.
    kT
        thermal energy in kJ/mol; reduced energies are u = E / kT.
    n_evaluations
        conformations evaluated so far (each counts once, with or
        without forces).
    """

    n_atoms: int
    kT: float

    def __init__(self, n_atoms: int, kT: float):
        self.n_atoms = int(n_atoms)
        self.kT = float(kT)
        self.n_evaluations = 0
        self.n_nonfinite = 0

    @abc.abstractmethod
    def _energy(self, x: torch.Tensor, forces: bool):
        """Energies [B] in kJ/mol (and forces [B, n_atoms, 3] in kJ/mol/nm when asked)
        for a validated float64 CPU or device tensor ``x`` of shape [B, n_atoms, 3]."""

    def check_positions(self, x) -> torch.Tensor:
        """``x`` as a tensor of shape [B, n_atoms, 3], or a ValueError naming that shape."""
        t = torch.as_tensor(x)
        if t.ndim == 2 and t.shape == (self.n_atoms, 3):
            raise ValueError(
                f"positions must have shape [batch, {self.n_atoms}, 3] in nm; got a single "
                f"conformation of shape {tuple(t.shape)} (use x[None])"
            )
        if t.ndim != 3 or t.shape[1:] != (self.n_atoms, 3):
            raise ValueError(f"positions must have shape [batch, {self.n_atoms}, 3] in nm, got {tuple(t.shape)}")
        if not (t.is_floating_point()):
            raise ValueError(f"positions must be floating point (nm), got dtype {t.dtype}")
        return t

    def energy(self, x, forces: bool = False):
        """Potential energies in kJ/mol, shape [B]; with ``forces=True`` also forces
        in kJ/mol/nm, shape [B, n_atoms, 3]. Non-finite positions give +inf energy (and
        zero forces) and are counted in ``n_nonfinite``."""
        is_numpy = isinstance(x, np.ndarray)
        t = self.check_positions(x)
        self.n_evaluations += t.shape[0]
        out = self._energy(t, forces)
        e, f = out if forces else (out, None)
        bad = ~torch.isfinite(e)
        self.n_nonfinite += int(bad.sum())
        e = torch.where(bad, torch.full_like(e, float("inf")), e)
        if is_numpy:
            e = e.detach().cpu().numpy()
            f = None if f is None else f.detach().cpu().numpy()
        return (e, f) if forces else e

    def reduced_energy(self, x, forces: bool = False):
        """u(x) = E(x) / kT, shape [B]; with forces, also -du/dx in 1/nm."""
        if forces:
            e, f = self.energy(x, forces=True)
            return e / self.kT, f / self.kT
        return self.energy(x) / self.kT

    __call__ = reduced_energy

    def close(self) -> None:
        """Release processes or devices; the engine is unusable afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
