r"""Temperature replica exchange as many independent ladders in one batch.

``n_ladders x n_temps`` copies of the molecule run Langevin dynamics side by side, each
at the temperature of its place in its ladder (a per-copy kT of the BAOAB integrator):
in one OpenMM Context (:class:`~openmm_cmt.replicas.replicated_context.ReplicatedContext`,
``engine="openmm"``) or in torch with forces from the TorchEnergy engine
(:class:`~openmm_cmt.reference.torch_replicas.TorchReplicas`, ``engine="torch"``). Every
``swap_interval`` the copies' potential energies come from an energy engine and
neighbouring temperatures of each ladder exchange by the Metropolis rule
(:mod:`openmm_cmt.reference.swaps`); an accepted swap exchanges the two copies'
temperatures and rescales their velocities by :math:`\sqrt{T_\mathrm{new}/T_\mathrm{old}}`.
Frames at the lowest temperature are recorded every ``save_interval``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
import torch

from openmm_cmt.energy import UnsupportedSystemError, create_energy
from openmm_cmt.energy.base import EnergyEngine
from openmm_cmt.io import atomic_file
from openmm_cmt.metrics import BASINS, basin_index
from openmm_cmt.reference._ramachandran import backbone_dihedrals, split_tv
from openmm_cmt.reference.metadata import reference_metadata
from openmm_cmt.replicas.integrator import copy_velocities, per_copy_langevin_integrator
from openmm_cmt.replicas.replicated_context import ReplicatedContext
from openmm_cmt.reference.swaps import RoundTripCounter, attempt_swaps, states_of_replicas
from openmm_cmt.reference.torch_replicas import TorchReplicas

#: Histogram bins per axis of the split-half Ramachandran TV.
RAMACHANDRAN_BINS = 100


def default_energy(molsys, platform_name: str) -> EnergyEngine:
    """The batched torch engine (on the GPU when the MD runs on CUDA; eager, since a
    swap round's few thousand energies do not repay compilation), or the exact OpenMM
    engine for Systems the torch engine does not support."""
    on_gpu = platform_name == "CUDA" and torch.cuda.is_available()
    try:
        return create_energy(molsys, engine="torch", device="cuda" if on_gpu else "cpu", compile=False)
    except UnsupportedSystemError:
        return create_energy(molsys, engine="openmm")


@dataclasses.dataclass
class ReferenceSamples:
    """Frames at the lowest temperature and what produced them.

    Attributes
    ----------
    frames
        ``[F, n_atoms, 3]`` nm, float32, in order of time then ladder.
    energies
        ``[F]`` kJ/mol.
    ladder
        ``[F]`` index of the ladder each frame comes from.
    time_ps
        ``[F]`` simulation time of each frame (equilibration included).
    phi, psi
        ``[F, k]`` radians (k = 0 without backbone dihedrals).
    round_trips
        ``[n_ladders, n_temps]`` per replica.
    settings, diagnostics
        JSON-serialisable dicts.
    """

    frames: np.ndarray
    energies: np.ndarray
    ladder: np.ndarray
    time_ps: np.ndarray
    phi: np.ndarray
    psi: np.ndarray
    round_trips: np.ndarray
    settings: dict
    diagnostics: dict

    @property
    def phi_psi(self) -> np.ndarray | None:
        """``[F, 2]`` when the molecule has exactly one (phi, psi) pair, else None."""
        if self.phi.shape[1] == 1 and self.psi.shape[1] == 1:
            return np.concatenate([self.phi, self.psi], axis=1)
        return None

    def arrays(self) -> dict:
        """Everything as arrays, the layout of the reference ``.npz`` (``load_reference``);
        ``settings`` and ``diagnostics`` as JSON text."""
        arrays = {
            "frames": self.frames.astype(np.float32),
            "energies": self.energies,
            "ladder": self.ladder,
            "time_ps": self.time_ps,
            "phi": self.phi,
            "psi": self.psi,
            "round_trips": self.round_trips,
            "temperatures": np.asarray(self.settings["temperatures"]),
            "settings": np.array(json.dumps(self.settings)),
            "diagnostics": np.array(json.dumps(self.diagnostics)),
        }
        if self.phi_psi is not None:
            arrays["phi_psi"] = self.phi_psi
        return arrays

    def save(self, path) -> None:
        """Write an ``.npz`` atomically (:func:`openmm_cmt.io.atomic_file`)."""
        with atomic_file(os.fspath(path)) as fh:
            np.savez(fh, **self.arrays())


def load_reference(path) -> dict:
    """The arrays of a reference ``.npz`` with ``settings`` and ``diagnostics`` as dicts."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reference file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
    except Exception as err:
        raise ValueError(f"{path} is not a reference .npz file: {err}") from err
    for key in ("frames", "energies", "settings", "diagnostics"):
        if key not in out:
            raise ValueError(f"{path} is not a reference file: entry {key!r} missing")
    out["settings"] = json.loads(str(out["settings"]))
    out["diagnostics"] = json.loads(str(out["diagnostics"]))
    return out


def _steps(interval_ps: float, timestep_ps: float, what: str) -> int:
    n = int(round(interval_ps / timestep_ps))
    if n < 1 or abs(n * timestep_ps - interval_ps) > 1e-6 * max(interval_ps, 1e-12) + 1e-9:
        raise ValueError(f"{what} ({interval_ps} ps) must be a positive multiple of the timestep ({timestep_ps} ps)")
    return n


class ReplicaExchange:
    """``n_ladders`` independent temperature ladders of one molecule in one Context.

    Parameters
    ----------
    molsys
        the :class:`~openmm_cmt.systems.MolecularSystem`; every copy starts at
        ``molsys.positions``.
    temperatures
        increasing temperatures in K; frames are kept at the first.
    n_ladders
        independent ladders (``n_ladders * len(temperatures)`` copies).
    timestep
        ps.
    collision_rate
        Langevin friction, 1/ps.
    swap_interval, save_interval, recentre_interval
        ps, multiples of the timestep.
    platform
        OpenMM platform name or ``"auto"`` (:mod:`openmm_cmt.energy.platforms`).
    spacing, cutoff
        grid spacing and pairwise cutoff of the replicated System, nm.
    energy
        engine for per-copy energies (default :func:`default_energy`, closed by
        :meth:`close`; use the object as a context manager).
    seed
        seeds the velocities, the swaps and the integrator's noise.
    platform_properties
        passed to the Context.
    engine
        ``"openmm"`` (dynamics in an OpenMM Context on ``platform``) or
        ``"torch"`` (dynamics in torch on ``device``, forces from the float64
        TorchEnergy engine, which also gives the swap energies; ``platform``,
        ``spacing``, ``cutoff`` and ``recentre_interval`` do not apply).
    device
        torch device of ``engine="torch"`` (default CPU).
    compile
        whether ``engine="torch"`` compiles its forces (:class:`TorchReplicas`).
    """

    def __init__(
        self,
        molsys,
        temperatures,
        n_ladders: int = 1,
        timestep: float = 0.001,
        collision_rate: float = 1.0,
        swap_interval: float = 2.0,
        save_interval: float = 1.0,
        recentre_interval: float = 1.0,
        platform: str = "auto",
        spacing: float = 5.0,
        cutoff: float = 1.5,
        energy: EnergyEngine | None = None,
        seed: int = 0,
        platform_properties: dict | None = None,
        engine: str = "openmm",
        device: str | None = None,
        compile: bool | str = "auto",
    ):
        t = np.asarray(temperatures, dtype=np.float64)
        if t.ndim != 1 or t.size < 1 or not np.all(np.isfinite(t)) or np.any(t <= 0):
            raise ValueError(f"temperatures must be a non-empty list of positive K, got {temperatures}")
        if np.any(np.diff(t) <= 0):
            raise ValueError(f"temperatures must increase strictly, got {t.tolist()}")
        if n_ladders < 1:
            raise ValueError(f"n_ladders must be >= 1, got {n_ladders}")
        self.molsys = molsys
        self.temperatures = t
        self.n_ladders = int(n_ladders)
        self.n_temps = t.size
        self.timestep = float(timestep)
        self.steps_per_swap = _steps(swap_interval, timestep, "swap_interval")
        self.steps_per_save = _steps(save_interval, timestep, "save_interval")
        self.steps_per_recentre = _steps(recentre_interval, timestep, "recentre_interval")
        if engine not in ("openmm", "torch"):
            raise ValueError(f"engine must be 'openmm' or 'torch', got {engine!r}")
        self.rng = np.random.default_rng(seed)
        noise_seed = int(self.rng.integers(1, 2**31 - 1))
        n_copies = self.n_ladders * self.n_temps
        if engine == "torch":
            self.replicas = TorchReplicas(molsys, n_copies, timestep, collision_rate, device=device, seed=noise_seed,
                                          energy=energy, compile=compile)
        else:
            integrator = per_copy_langevin_integrator(timestep, collision_rate)
            integrator.setRandomNumberSeed(noise_seed)
            self.replicas = ReplicatedContext(
                molsys.system,
                molsys.positions,
                n_copies,
                integrator,
                platform=platform,
                spacing=spacing,
                cutoff=cutoff,
                properties=platform_properties,
            )
        self._owns_energy = energy is None
        if energy is None:
            energy = self.replicas.energy if engine == "torch" else default_energy(molsys, self.replicas.platform_name)
        self.energy = energy
        # replica r of ladder l is copy l * n_temps + r; it starts at temperature index r
        self.replica_at = np.tile(np.arange(self.n_temps), (self.n_ladders, 1))
        self._apply_temperatures(None)
        self.settings = {
            "system": getattr(molsys, "name", "?"),
            "temperatures": t.tolist(),
            "n_ladders": self.n_ladders,
            "timestep_ps": self.timestep,
            "collision_rate_per_ps": float(collision_rate),
            "swap_interval_ps": self.steps_per_swap * self.timestep,
            "save_interval_ps": self.steps_per_save * self.timestep,
            "recentre_interval_ps": self.steps_per_recentre * self.timestep,
            "spacing_nm": float(spacing),
            "cutoff_nm": float(cutoff),
            "engine": engine,
            "platform": self.replicas.platform_name,
            "energy_engine": type(self.energy).__name__,
            "seed": seed,
            **reference_metadata(molsys.system, t[0]),  # frames are kept at the lowest temperature
        }

    def close(self) -> None:
        """Release the energy engine if this object created it (worker processes)."""
        if self._owns_energy:
            self.energy.close()
            self._owns_energy = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def copy_temperatures(self) -> np.ndarray:
        """Temperature of every copy, ``[n_ladders * n_temps]`` K."""
        return self.temperatures[states_of_replicas(self.replica_at)].reshape(-1)

    def _apply_temperatures(self, old: np.ndarray | None) -> None:
        new = self.copy_temperatures()
        self.replicas.set_temperatures(new)
        if old is None:
            self.replicas.set_velocities(copy_velocities(self.replicas.masses, new, self.rng))
        elif np.any(new != old):
            v = self.replicas.get_velocities()
            self.replicas.set_velocities(v * np.sqrt(new / old)[:, None, None])

    def _copy_energies(self, x: np.ndarray) -> np.ndarray:
        e = self.energy.energy(np.ascontiguousarray(x, dtype=np.float64))
        return np.asarray(e, dtype=np.float64)

    def run(self, time_ps: float, equilibration_ps: float = 0.0, progress=None) -> ReferenceSamples:
        """Simulate ``equilibration_ps`` then ``time_ps`` more, recording frames at the
        lowest temperature during the second part.

        ``progress(info)``, if given, is called after every swap round with a dict of
        ``time_ps``, ``total_ps``, ``frames``, ``acceptance`` (per pair so far) and
        ``wall_s``.
        """
        if not time_ps > 0 or equilibration_ps < 0:
            raise ValueError(f"need time_ps > 0 and equilibration_ps >= 0, got {time_ps}, {equilibration_ps}")
        dt, L, K = self.timestep, self.n_ladders, self.n_temps
        equil_steps = int(round(equilibration_ps / dt))
        total_steps = equil_steps + int(round(time_ps / dt))
        attempts = np.zeros(max(K - 1, 0), dtype=np.int64)
        accepts = np.zeros(max(K - 1, 0), dtype=np.int64)
        trips = RoundTripCounter(L, K)
        frames, energies, ladders, times = [], [], [], []
        n_rounds = 0
        start = time.perf_counter()
        intervals = (self.steps_per_swap, self.steps_per_save, self.steps_per_recentre)
        step = 0
        while step < total_steps:
            nxt = min(min((step // n + 1) * n for n in intervals), total_steps)
            self.replicas.step(nxt - step)
            step = nxt
            production = step > equil_steps
            swap = step % self.steps_per_swap == 0 and K > 1
            save = production and step % self.steps_per_save == 0
            if not (swap or save or step % self.steps_per_recentre == 0):
                continue
            x = self.replicas.recentre().reshape(L, K, self.replicas.n_atoms, 3)
            e = self._copy_energies(x.reshape(L * K, -1, 3)).reshape(L, K) if swap else None
            if save:
                cold = self.replica_at[:, 0]
                xs = x[np.arange(L), cold]
                frames.append(xs.astype(np.float32))
                energies.append(e[np.arange(L), cold] if e is not None else self._copy_energies(xs))
                ladders.append(np.arange(L))
                times.append(np.full(L, step * dt))
            if swap:
                old = self.copy_temperatures()
                pairs, accepted = attempt_swaps(self.replica_at, e, self.temperatures, n_rounds % 2, self.rng)
                n_rounds += 1
                self._apply_temperatures(old)
                if production:
                    attempts[pairs] += L
                    accepts[pairs] += accepted.sum(0)
                    trips.update(states_of_replicas(self.replica_at))
                if progress is not None:
                    progress(
                        {
                            "time_ps": step * dt,
                            "total_ps": total_steps * dt,
                            "frames": L * len(frames),
                            "acceptance": _ratio(accepts, attempts),
                            "wall_s": time.perf_counter() - start,
                        }
                    )
        wall = time.perf_counter() - start
        if not frames:
            raise ValueError(f"no frames recorded: time_ps ({time_ps}) is shorter than the save interval")
        frames = np.concatenate(frames)
        energies = np.concatenate(energies)
        ladders = np.concatenate(ladders)
        times = np.concatenate(times)
        phi, psi = backbone_dihedrals(self.molsys.topology, frames)
        diagnostics = _diagnostics(phi, psi, energies, ladders, accepts, attempts, trips.round_trips, L)
        diagnostics.update(
            wall_s=wall,
            simulated_ps_per_copy=total_steps * dt,
            equilibration_ps=equil_steps * dt,
            production_ps=(total_steps - equil_steps) * dt,
            aggregate_ns_per_day=total_steps * dt * L * K / 1000.0 / wall * 86400.0,
            energy_evaluations=int(self.energy.n_evaluations),
        )
        return ReferenceSamples(
            frames=frames,
            energies=energies,
            ladder=ladders,
            time_ps=times,
            phi=phi,
            psi=psi,
            round_trips=trips.round_trips.copy(),
            settings=dict(self.settings, time_ps=float(time_ps), equilibration_ps=float(equilibration_ps)),
            diagnostics=diagnostics,
        )


def _ratio(num, den) -> list:
    """Ratios, None where nothing was attempted (JSON has no NaN)."""
    return [float(a) / b if b else None for a, b in zip(num, den)]


def _diagnostics(phi, psi, energies, ladders, accepts, attempts, round_trips, n_ladders) -> dict:
    """Swap acceptance, round trips, split-half Ramachandran TVs and per-ladder means."""
    out = {
        "n_frames": int(len(energies)),
        "swap_acceptance": _ratio(accepts, attempts),
        "swap_attempts": attempts.tolist(),
        "round_trips_total": int(round_trips.sum()),
        "round_trips_per_replica_mean": float(round_trips.mean()),
        "round_trips_per_replica_min": int(round_trips.min()),
        "replicas_with_round_trip": float((round_trips > 0).mean()),
    }
    # ladder-to-ladder spread gives error bars that account for correlation in time
    per_ladder_e = np.array([energies[ladders == l].mean() for l in range(n_ladders)])
    out["mean_energy"] = float(energies.mean())
    out["mean_energy_sem"] = float(per_ladder_e.std(ddof=1) / np.sqrt(n_ladders)) if n_ladders > 1 else None
    if phi.shape[1] and psi.shape[1]:
        angles = np.stack([phi[:, 0], psi[:, 0]], axis=1)
        positive = (phi[:, 0] > 0).astype(np.float64)
        per_ladder = np.array([positive[ladders == l].mean() for l in range(n_ladders)])
        out["phi_positive_fraction"] = float(positive.mean())
        out["phi_positive_fraction_sem"] = (
            float(per_ladder.std(ddof=1) / np.sqrt(n_ladders)) if n_ladders > 1 else None
        )
        half = len(angles) // 2  # frames are in time order
        if half:
            out["ram_tv_split_half"] = split_tv(angles[:half], angles[half:], RAMACHANDRAN_BINS, "first vs second half in time")
        if n_ladders > 1:
            odd = ladders % 2 == 1
            out["ram_tv_split_ladders"] = split_tv(angles[~odd], angles[odd], RAMACHANDRAN_BINS, "even vs odd ladders")
        out["dihedral_pair"] = "first phi and first psi of the molecule"
        out["residues"] = residue_diagnostics(phi, psi, ladders, n_ladders)
    return out


def residue_diagnostics(phi: np.ndarray, psi: np.ndarray, ladders: np.ndarray, n_ladders: int) -> list[dict]:
    """Mixing of every residue's (phi, psi): basin populations with the spread between
    ladders as their error, and split-half Ramachandran TVs (in time, and even against
    odd ladders).

    Parameters
    ----------
    phi, psi : ndarray
        ``[F, k]`` radians, frames in time order.
    ladders : ndarray
        ``[F]`` ladder of each frame.
    n_ladders : int
        Number of ladders.

    Returns
    -------
    list of dict
        One per residue: ``"basins"`` (name -> ``{"population", "sem"}``; ``sem`` is
        None with one ladder), ``"ram_tv_split_half"`` and, with more than one ladder,
        ``"ram_tv_split_ladders"``.
    """
    ladders = np.asarray(ladders)
    half = len(ladders) // 2
    odd = ladders % 2 == 1
    rows = []
    for r in range(phi.shape[1]):
        basin = basin_index(phi[:, r], psi[:, r])
        row = {"residue": r, "basins": {}}
        for b, name in enumerate(BASINS):
            inside = (basin == b).astype(np.float64)
            per_ladder = np.array([inside[ladders == l].mean() for l in range(n_ladders)])
            sem = float(per_ladder.std(ddof=1) / np.sqrt(n_ladders)) if n_ladders > 1 else None
            row["basins"][name] = {"population": float(inside.mean()), "sem": sem}
        angles = np.stack([phi[:, r], psi[:, r]], axis=1)
        if half:
            row["ram_tv_split_half"] = split_tv(angles[:half], angles[half:], RAMACHANDRAN_BINS,
                                                "first vs second half in time")
        if n_ladders > 1:
            row["ram_tv_split_ladders"] = split_tv(angles[~odd], angles[odd], RAMACHANDRAN_BINS,
                                                   "even vs odd ladders")
        rows.append(row)
    return rows
