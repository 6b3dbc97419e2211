r"""Many copies of one molecule under Langevin dynamics in torch, with forces from the
batched TorchEnergy engine: the torch counterpart of
:class:`~openmm_cmt.replicas.replicated_context.ReplicatedContext` for replica exchange.

All copies (every ladder and every temperature) advance as one batch
``[n_copies, n_atoms, 3]``, each with its own kT, by the BAOAB splitting of
:mod:`openmm_cmt.replicas.integrator` (Leimkuhler and Matthews, Appl. Math. Res.
Express 2013, 34). Forces are float64, so the energies of the copies are those OpenMM's
Reference platform gives for the same positions to float64 rounding. The copies never
interact, so unlike the OpenMM version they need no grid and no re-centring.
Constraints and virtual sites are not supported.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from openmm_cmt import units


class TorchReplicas:
    """``n_copies`` independent copies of ``molsys`` integrated together in torch.

    Parameters
    ----------
    molsys : MolecularSystem
        Every copy starts at ``molsys.positions``.
    n_copies : int
        Number of copies.
    timestep : float
        ps.
    collision_rate : float
        Langevin friction, 1/ps.
    device : str or None
        torch device of the dynamics (default CPU).
    seed : int
        Seeds the Langevin noise.
    energy : EnergyEngine or None
        A float64 engine with forces (default: the torch engine of ``molsys``).
    compile : bool or str
        ``torch.compile`` the default engine: ``True``, ``False`` or ``"auto"`` (on CUDA,
        and on CPU when a C++ compiler is found). Compiling costs about a minute once
        and makes the forces of a small peptide two to three times faster on CPU, which
        any run longer than a few picoseconds repays.

    Attributes
    ----------
    masses : ndarray
        ``[n_atoms]`` dalton.
    platform_name : str
        ``"torch-cpu"`` or ``"torch-cuda"``.
    """

    def __init__(self, molsys, n_copies: int, timestep: float = 0.001, collision_rate: float = 1.0,
                 device: str | None = None, seed: int = 0, energy=None, compile: bool | str = "auto"):
        from openmm_cmt.energy import create_energy

        system = molsys.system
        if system.getNumConstraints():
            raise ValueError(f"torch replica exchange does not support constraints; {molsys.name!r} has "
                             f"{system.getNumConstraints()} (build the system without constraints, or use --engine openmm)")
        if any(system.isVirtualSite(i) for i in range(system.getNumParticles())):
            raise ValueError("torch replica exchange does not support virtual sites (use --engine openmm)")
        if not (timestep > 0 and collision_rate >= 0 and n_copies >= 1):
            raise ValueError(f"need timestep > 0 ps, collision_rate >= 0 /ps and n_copies >= 1, got "
                             f"{timestep}, {collision_rate}, {n_copies}")
        self.device = torch.device(device or "cpu")
        self.energy = energy if energy is not None else create_energy(
            molsys, engine="torch", device=self.device, dtype=torch.float64, compile=compile)
        self.n_atoms, self.n_copies = molsys.n_atoms, int(n_copies)
        self.masses = np.asarray(molsys.masses, dtype=np.float64)
        if np.any(self.masses <= 0):
            raise ValueError("every particle needs a positive mass")
        self.timestep = float(timestep)
        self.platform_name = f"torch-{self.device.type}"
        self._a = math.exp(-collision_rate * timestep)
        self._inv_m = torch.as_tensor(1.0 / self.masses, dtype=torch.float64, device=self.device)[None, :, None]
        self._rng = torch.Generator(self.device).manual_seed(int(seed))
        x0 = torch.as_tensor(np.asarray(molsys.positions, dtype=np.float64), device=self.device)
        self.x = x0.expand(self.n_copies, -1, -1).clone()
        self.v = torch.zeros_like(self.x)
        self._kT = torch.zeros(self.n_copies, dtype=torch.float64, device=self.device)
        self._energies, self._forces = None, None

    def _evaluate(self) -> None:
        e, f = self.energy.energy(self.x, forces=True)
        if not torch.isfinite(e).all():
            raise ValueError("non-finite energies: the dynamics blew up (try a smaller timestep)")
        self._energies, self._forces = e, f

    def set_temperatures(self, temperatures) -> None:
        """Temperature of each copy, ``[n_copies]`` K."""
        kT = units.kT(np.asarray(temperatures, dtype=np.float64).reshape(-1))
        if kT.shape != (self.n_copies,):
            raise ValueError(f"need {self.n_copies} temperatures, got {kT.shape}")
        self._kT = torch.as_tensor(kT, device=self.device)

    def _check_shape(self, x, what: str) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x, dtype=np.float64), device=self.device)
        if t.shape != (self.n_copies, self.n_atoms, 3):
            raise ValueError(f"{what} must have shape ({self.n_copies}, {self.n_atoms}, 3), got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{what} contain non-finite values")
        return t

    def set_positions(self, x) -> None:
        self.x = self._check_shape(x, "positions")
        self._energies = self._forces = None

    def get_positions(self) -> np.ndarray:
        """Positions ``[n_copies, n_atoms, 3]`` nm."""
        return self.x.cpu().numpy().copy()

    def set_velocities(self, v) -> None:
        self.v = self._check_shape(v, "velocities")

    def get_velocities(self) -> np.ndarray:
        """Velocities ``[n_copies, n_atoms, 3]`` nm/ps."""
        return self.v.cpu().numpy().copy()

    def potential_energies(self) -> np.ndarray:
        """Potential energy of each copy at the current positions, ``[n_copies]`` kJ/mol."""
        if self._energies is None:
            self._evaluate()
        return self._energies.cpu().numpy().copy()

    def recentre(self) -> np.ndarray:
        """The positions: copies that never interact need no re-centring."""
        return self.get_positions()

    def step(self, n_steps: int) -> None:
        """``n_steps`` BAOAB steps of every copy."""
        if self._forces is None:
            self._evaluate()
        h, a = self.timestep, self._a
        noise_sd = torch.sqrt((1.0 - a * a) * self._kT[:, None, None] * self._inv_m)
        for _ in range(int(n_steps)):
            self.v += 0.5 * h * self._forces * self._inv_m
            self.x += 0.5 * h * self.v
            noise = torch.randn(self.x.shape, generator=self._rng, dtype=torch.float64, device=self.device)
            self.v = a * self.v + noise_sd * noise
            self.x += 0.5 * h * self.v
            self._evaluate()
            self.v += 0.5 * h * self._forces * self._inv_m
