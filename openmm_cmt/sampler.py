"""BoltzmannGeneratorSampler: the one public facade.

It joins a MolecularSystem, an energy engine, a Generator and the CMT trainer::

    sampler = BoltzmannGeneratorSampler.from_simulation(simulation)
    sampler.train("laptop")
    x, log_w = sampler.sample(10_000)
    sampler.save("runs/bg"); sampler.export("generator.pt")

A run folder holds ``system.xml``, ``topology.pdb``, ``system.json`` (the system),
``config.json`` and ``checkpoint.pt`` (generator, optimiser, replay buffer, counters, RNG
states and history). Each save is published as one unit and loaded without running
pickled code (:mod:`openmm_cmt.io`, :mod:`openmm_cmt.checkpoint`); one process at a time writes a run folder
(:mod:`openmm_cmt.run_lock`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import os
import statistics
import sys
import time
import warnings
from typing import Callable, Iterable

import numpy as np
import torch
import openmm
from openmm import unit

from openmm_cmt.checkpoint import FORMAT_VERSION, safe_torch_load
from openmm_cmt.cmt.time_budget import TimeBudget
from openmm_cmt.io import CheckpointError, json_text, publish_run, read_json, run_snapshot, torch_bytes
from openmm_cmt.presets import TrainConfig, check_setting, preset
from openmm_cmt.run_lock import hold_run_lock
from openmm_cmt.systems.files import load_system, system_files, xml_fingerprint
from openmm_cmt.systems.molecular_system import MolecularSystem

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
#: Seconds between a failed checkpoint save and its one retry.
SAVE_RETRY_SECONDS = 1.0
#: Samples per flow pass: on a GPU large batches fill the device; on a CPU small ones
#: keep the spline tensors in cache (ELIL, laptop flow: 5.1 s of CPU time per 16k
#: samples in batches of 1024, 6.2 s in batches of 4096, 8.7 s in one batch).
SAMPLE_BATCH = {"cuda": 65536, "cpu": 1024}
#: Atoms closer than this (nm) are the same place: no internal coordinates exist there.
CLASH_DISTANCE = 0.01


class RunSaveError(CheckpointError):
    """A checkpoint save failed twice; the sampler still holds the training state."""


class AnnealingIncompleteWarning(UserWarning):
    """Training ended before the annealing reached the target (beta = 1)."""


class FewEffectiveSamplesWarning(UserWarning):
    """Annealing steps whose importance weights rest on too few effective samples."""


#: An annealing step's weights (q_{i+1} / q_i on its fresh draws) with fewer effective
#: samples than this leave the dual's KL and entropy estimates and the fit to a handful
#: of draws; ``FEW_EFFECTIVE_STEPS`` such steps in a row warn (``FewEffectiveSamplesWarning``).
MIN_EFFECTIVE_SAMPLES = 100
FEW_EFFECTIVE_STEPS = 5


def _warn_if_not_annealed(history: list[dict]) -> None:
    """Warn when the last step's density is not the target yet (a step at the target has
    alpha = 0 and beta = 1). The weights of ``sample`` still target the Boltzmann
    distribution exactly; only the generator is fitted to a tempered density."""
    if not history:
        return
    last = history[-1]
    if last["beta"] < 1.0 or last["alpha"] > 0.0:
        warnings.warn(
            f"annealing ended at beta = {last['beta']:.3f} (alpha = {last['alpha']:.3f}) after {len(history)} steps, "
            "short of the target (beta = 1, alpha = 0): the generator is fitted to a tempered density, so "
            "expect a lower ESS. Train more steps (openmm-cmt train --resume --steps N) or anneal faster "
            "(a larger cmt.eps_ent).", AnnealingIncompleteWarning, stacklevel=3)


def _few_effective_samples(history: list[dict], samples_per_step: int) -> str | None:
    """A warning's text when each of the last ``FEW_EFFECTIVE_STEPS`` steps had fewer than
    ``MIN_EFFECTIVE_SAMPLES`` effective samples (its ESS fraction ``ess`` times
    ``samples_per_step``), else None."""
    recent = history[-FEW_EFFECTIVE_STEPS:]
    if len(recent) < FEW_EFFECTIVE_STEPS:
        return None
    counts = [r["ess"] * samples_per_step for r in recent]
    if not all(c < MIN_EFFECTIVE_SAMPLES for c in counts):  # a NaN count never warns
        return None
    return (
        f"the last {FEW_EFFECTIVE_STEPS} annealing steps' weights rest on {min(counts):.0f}-{max(counts):.0f} "
        f"effective samples of {samples_per_step} (fewer than {MIN_EFFECTIVE_SAMPLES}): the dual's KL and entropy "
        "estimates, and so each step's target and the fit to it, follow a handful of draws. Take smaller "
        "steps (cmt.eps_tr, cmt.eps_ent: each step's ESS falls steeply as they grow) or draw more samples per "
        "step (cmt.samples_per_step)."
    )


@dataclasses.dataclass
class Samples:
    """Weighted generator samples.

    Attributes
    ----------
    positions
        [n, n_atoms, 3] nm, float64 numpy.
    log_weights
        [n] unnormalised log importance weights -u(x) - log q(x).
    log_q
        [n] generator log densities (nats).
    energies
        [n] potential energies, kJ/mol (+inf where non-finite).
    topology
        the System's ``openmm.app.Topology`` (atom order of ``positions``).
    """

    positions: np.ndarray
    log_weights: np.ndarray
    log_q: np.ndarray
    energies: np.ndarray
    topology: object = dataclasses.field(default=None, repr=False, compare=False)

    def __iter__(self):  # x, log_w = sampler.sample(n)
        return iter((self.positions, self.log_weights))

    def __len__(self):
        return len(self.log_weights)

    def arrays(self) -> dict:
        """The per-sample arrays but the positions: ``log_weights``, ``log_q``, ``energies``."""
        return {"log_weights": self.log_weights, "log_q": self.log_q, "energies": self.energies}

    def to_mdtraj(self):
        """The positions as an ``mdtraj.Trajectory`` with the System's topology (nm, same
        atom order); the weights stay here, ``self.log_weights``, frame for frame."""
        from openmm_cmt.trajectory_io import to_mdtraj

        return to_mdtraj(self._topology(), self.positions)

    def save(self, path: str | os.PathLike) -> list[str]:
        """Write the samples by extension (:mod:`openmm_cmt.trajectory_io`): ``.npz``,
        ``.h5`` (arrays inside), ``.dcd``/``.xtc``/``.pdb`` (arrays in ``FILE.data.npz``).
        Returns the files written."""
        from openmm_cmt.trajectory_io import write_frames

        return write_frames(path, self._topology(), self.positions, self.arrays())

    def _topology(self):
        if self.topology is None:
            raise ValueError("these Samples carry no topology; build them with topology=system.topology")
        return self.topology


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(device)


class BoltzmannGeneratorSampler:
    """A Boltzmann generator for one molecule, trained with CMT from energies alone.

    Parameters
    ----------
    molsys
        the molecule (``openmm_cmt.systems.MolecularSystem``).
    config
        a ``TrainConfig`` or a preset name (``laptop``, ``cpu``, ``gpu``, ``paper``),
        taken for the molecule's size (``openmm_cmt.presets.preset`` with its ``dim``).
    """

    def __init__(self, molsys: MolecularSystem, config: TrainConfig | str = "laptop"):
        from openmm_cmt.flows import Generator

        self.molsys = molsys
        self.config = preset(config, dim=molsys.dim) if isinstance(config, str) else config
        _check_clashes(molsys)
        self.device = _resolve_device(self.config.device)
        self.generator = Generator.from_system(molsys, self.config.generator_config()).to(self.device)
        self.trainer = None
        self._energy = None
        self._eval_energy = None
        self.last_saved: tuple[str, int] | None = None  # (snapshot folder, annealing steps in it)
        self.unsaved_state: dict | None = None

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_simulation(cls, simulation, temperature: float | None = None, config="laptop", name="simulation"):
        """From an ``openmm.app.Simulation``: its topology, System, current positions, and
        the integrator's temperature unless ``temperature`` (K) is given.

        Bond constraints (``constraints=HBonds``) are held fixed by the generator, whose
        densities then refer to the measure constrained MD samples
        (:mod:`openmm_cmt.coordinates.constraints`). Raises ValueError, naming what is
        unsupported and what to use instead, for periodic Systems and explicit solvent,
        virtual sites, Drude or AMOEBA forces, constraints that are not bonds of the
        Z-matrix, and an integrator without a temperature when none is given."""
        if temperature is None:
            getter = getattr(simulation.integrator, "getTemperature", None)
            if getter is None:
                raise ValueError("the Simulation's integrator has no temperature; pass temperature= in K")
            temperature = getter().value_in_unit(unit.kelvin)
        positions = simulation.context.getState(getPositions=True).getPositions(asNumpy=True)
        return cls.from_system(simulation.topology, simulation.system, positions, temperature, config=config, name=name)

    @classmethod
    def from_system(cls, topology, system: openmm.System, positions, temperature: float, config="laptop", name="system"):
        """From an OpenMM topology, System, reference positions (nm) and temperature (K);
        the same checks as ``from_simulation``."""
        return cls(MolecularSystem(name, topology, system, positions, temperature), config)

    @classmethod
    def from_name(cls, name: str, config="laptop", **system_kwargs):
        """From a registered system name (``openmm_cmt.systems.names()``)."""
        from openmm_cmt import systems

        return cls(systems.get(name, **system_kwargs), config)

    # -- energies -----------------------------------------------------------------------
    def energy_engine(self, dtype: str | None = None):
        """The energy engine used for training (``config.energy_dtype``) or, with
        ``dtype="float64"``, the exact engine used for evaluation."""
        from openmm_cmt.energy import create_energy

        dtype = dtype or self.config.energy_dtype
        attr = "_energy" if dtype == self.config.energy_dtype else "_eval_energy"
        if getattr(self, attr) is None:
            engine = create_energy(
                self.molsys, engine=self.config.energy, device=self.device, dtype=getattr(torch, dtype),
                compile=self.config.energy_compile,
            )
            setattr(self, attr, engine)
        return getattr(self, attr)

    def _target(self):
        from openmm_cmt.cmt.target import BoltzmannTarget

        return BoltzmannTarget(self.energy_engine())

    # -- training -----------------------------------------------------------------------
    def _make_trainer(self):
        from openmm_cmt.cmt.distributed import trainer_class

        if self.trainer is None:
            # Inside a torchrun job every process trains its share (openmm_cmt.cmt.distributed).
            self.trainer = trainer_class()(self.generator, self._target(), self.config.cmt_config())
        return self.trainer

    @property
    def history(self) -> list[dict]:
        return [] if self.trainer is None else self.trainer.history

    @property
    def n_evaluations(self) -> int:
        """Target evaluations spent on training so far."""
        return 0 if self.trainer is None else self.trainer.n_evaluations

    def train(
        self,
        config: TrainConfig | str | None = None,
        n_steps: int | None = None,
        callbacks: Iterable[Callable] = (),
        progress: bool = True,
        checkpoint_dir: str | os.PathLike | None = None,
        max_minutes: float | None = None,
    ) -> list[dict]:
        """Run CMT annealing steps until ``n_steps`` (default: the config's) are done.

        More steps than the config's extend the run (``CMTTrainer.extend``): a cosine
        learning-rate schedule then spans all ``n_steps``.

        Parameters
        ----------
        config
            replaces the sampler's config before the first step (a TrainConfig or a
            preset name); ignored once training has started.
        callbacks
            ``callback(sampler, record)`` after every step; returning True stops.
        progress
            print a progress line (steps, evaluations, ESS, time left) to stderr.
        checkpoint_dir
            save there every ``config.checkpoint_every`` steps and at the end,
            holding the folder's lock throughout (RunLockedError if another process
            writes it). A failed save is retried once; if that fails too, training goes
            on with its state in memory, and a failed final save raises RunSaveError
            naming the last good checkpoint (``sampler.save`` elsewhere still works).
            In a data-parallel job every process calls ``train`` alike; rank 0 alone
            holds the lock, writes and prints.
        max_minutes
            a wall-time budget for this call (default: the config's ``max_minutes``).
            Once step times are known (timed after the steps that compile the flow
            calls and fill the replay buffer), a run that would not finish this call's
            steps in time is shortened to the steps that fit (``CMTTrainer.retime``),
            so that its learning-rate schedule still ends on its last step, and
            lengthened again (up to those steps) when later steps run faster; the rate
            only falls either way. It also stops at the deadline. How many steps fit
            depends on the machine; the saved config records the length the run ended
            with.

        Returns
        -------
        list of dict
            The history: one record per annealing step. For a peptide each record also
            has ``basins``: where the step's own draws put each residue's backbone,
            ``{residue: {basin: [share of the draws, reweighted population]}}``
            (``metrics.basin_shares``; in a data-parallel job, rank 0's draws).

        Warns
        -----
        FewEffectiveSamplesWarning
            once, when ``FEW_EFFECTIVE_STEPS`` steps in a row had fewer than
            ``MIN_EFFECTIVE_SAMPLES`` effective samples (steps too large for their draws).
        AnnealingIncompleteWarning
            when the last step has not reached the target (beta = 1).
        """
        if config is not None and self.trainer is None:
            new = preset(config, dim=self.molsys.dim) if isinstance(config, str) else config
            if new.generator != self.config.generator:
                raise ValueError("config changes the generator architecture; build a new sampler for it")
            self.config = new
        from openmm_cmt.cmt.distributed import any_process, is_main

        trainer = self._make_trainer()
        total = trainer.config.n_steps if n_steps is None else n_steps
        if total > trainer.config.n_steps:
            # A longer run: its learning-rate schedule spans the new length, and the
            # config saved with it says so (a later resume continues the same schedule).
            trainer.extend(total)
            self.config.cmt.update(n_steps=total, n_geometric=trainer.config.n_geometric)
        callbacks = list(callbacks)
        every = self.config.checkpoint_every
        max_minutes = self.config.max_minutes if max_minutes is None else max_minutes
        check_setting("max_minutes", max_minutes, float, allow_none=True, minimum=0, inclusive=False)
        # Steps are timed once the flow calls have compiled (steps 0-1) and the replay
        # buffer is full: until then each step's buffer pass grows (and recompiles).
        fill = math.ceil(trainer.config.buffer_size / trainer.config.samples_per_step)
        budget = None if max_minutes is None else TimeBudget(60.0 * max_minutes, warmup_steps=max(2, fill + 1))
        reporter = _Progress(total, enabled=progress and is_main(), budget=budget)
        planned = min(total, trainer.config.n_steps)  # the budget may shorten the run, and lengthen it back to this
        basins = _basin_trace(self.molsys)
        warned_few = False

        def after_step(_trainer, record):
            nonlocal warned_few
            if basins is not None and _trainer.last_draws is not None:
                record["basins"] = basins(*_trainer.last_draws)
            if not warned_few and is_main():
                few = _few_effective_samples(_trainer.history, _trainer.config.samples_per_step)
                if few is not None:
                    warned_few = True
                    warnings.warn(few, FewEffectiveSamplesWarning, stacklevel=2)
            stop = any_process(any(bool(cb(self, record)) for cb in callbacks))
            if budget is not None:
                stop = self._fit_budget(budget, planned, reporter) or stop
            if checkpoint_dir is not None and every and _trainer.step_index % every == 0:
                start = time.perf_counter()
                self._checkpoint(checkpoint_dir, final=False)
                record.setdefault("phase_s", {})["checkpoint"] = time.perf_counter() - start
            reporter.update(record)
            return stop

        if checkpoint_dir is None:
            trainer.run(total, callback=after_step)
            reporter.close()
        else:
            with hold_run_lock(checkpoint_dir) if is_main() else contextlib.nullcontext():  # one writer for the run
                trainer.run(total, callback=after_step)
                reporter.close()
                self._checkpoint(checkpoint_dir, final=True)
        if is_main():
            _warn_if_not_annealed(trainer.history)
        return trainer.history

    def _fit_budget(self, budget: TimeBudget, planned: int, reporter: "_Progress") -> bool:
        """After a step: if fewer steps than ``planned`` (this call's last) still fit in
        ``budget``, make the run that long, from rank 0's estimate so that all processes
        keep one schedule. ``CMTTrainer.retime`` keeps the learning rate continuous and
        falling when the length changes either way, so a run shortened while its steps
        were slow takes back (up to ``planned``) the steps that later, faster ones make
        room for. True to stop."""
        from openmm_cmt.cmt.distributed import active, all_reduce_sum, is_main

        left = budget.step_done()
        if active():  # -1 stands for "not known yet"
            mine = torch.tensor([(-1 if left is None else left) if is_main() else 0])
            left = int(all_reduce_sum(mine).item())
            left = None if left < 0 else left
        if left is None:
            return False
        trainer = self.trainer
        length = max(1, trainer.step_index, min(planned, trainer.step_index + left))
        if length == planned:  # all this call's steps fit: the run's own length, unless the budget cut it
            length = max(planned, trainer.config.n_steps)
        if length == trainer.config.n_steps or trainer.step_index >= trainer.config.n_steps:  # finished stays finished
            return left == 0
        trainer.retime(length)
        self.config.cmt.update(n_steps=trainer.config.n_steps, n_geometric=trainer.config.n_geometric)
        reporter.total = trainer.config.n_steps
        if left > 0 and reporter.enabled and not reporter.shortened:
            reporter.shortened = True
            print(f"\ntime budget: the run is now {trainer.config.n_steps} annealing steps long, the steps that "
                  f"fit in the {budget.seconds_left:.0f} s left", file=sys.stderr, flush=True)
        return left == 0

    def _checkpoint(self, folder, final: bool) -> None:
        """Save, retrying once after an OSError. A second failure mid-run is reported and
        training goes on (the state stays in memory); at the end it raises RunSaveError."""
        from openmm_cmt.cmt.distributed import is_main

        state = self._state()  # collective in a data-parallel job, so taken once
        if not is_main():
            return
        for attempt in (0, 1):
            try:
                self._publish(folder, state)
                return
            except OSError as err:
                error = err
                if attempt == 0:
                    print(f"\nwarning: saving {folder} failed ({err}); retrying in {SAVE_RETRY_SECONDS:g} s",
                          file=sys.stderr, flush=True)
                    time.sleep(SAVE_RETRY_SECONDS)
        if self.last_saved is None:
            where = "none was written"
        else:
            where = f"{self.last_saved[0]} (after annealing step {self.last_saved[1]})"
        message = f"could not save {folder} ({error}); the last good checkpoint: {where}"
        if final:
            self.unsaved_state = state  # for a save elsewhere without another collective
            raise RunSaveError(message + "; the trained state is still in memory") from error
        print(f"\nwarning: {message}; training continues with its state in memory", file=sys.stderr, flush=True)

    # -- sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, batch_size: int | None = None, exact_energies: bool = True,
               generator: torch.Generator | None = None) -> Samples:
        """``n`` generator samples with importance weights for the Boltzmann distribution.

        ``exact_energies`` evaluates the weights with a float64 engine. ``batch_size``:
        samples per flow pass (default :data:`SAMPLE_BATCH` of the device). The samples are
        drawn from ``generator`` (a ``torch.Generator`` on ``self.device``, for
        reproducible samples), by default from torch's global RNG.

        After training in this process, the trainer's compiled sampling (already compiled
        and checked against the eager flow) draws at least a chunk of its fixed size
        (``FlowCalls.chunk_size``), unless a ``batch_size`` is given: the same
        distribution, without compiling again.
        """
        if not (isinstance(n, (int, np.integer)) and n >= 1):
            raise ValueError(f"n must be a positive integer, got {n!r}")
        calls = None if self.trainer is None else self.trainer.calls
        compiled = batch_size is None and calls is not None and calls.flow is self.generator \
            and calls.compiled["sample"] and "sample" in calls.checked and n >= calls.chunk_size
        if compiled:
            batch_size = calls.chunk_size
        elif batch_size is None:
            batch_size = SAMPLE_BATCH.get(torch.device(self.device).type, SAMPLE_BATCH["cuda"])
        if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        engine = self.energy_engine("float64" if exact_energies else None)
        # The compiled graph was traced in the trainer's mode; switching modes would
        # retrace it (the flow's layers behave the same in both).
        was_training = self.generator.training
        if not compiled:
            self.generator.eval()
        draw = calls.sample if compiled else self.generator.sample
        xs, lqs, es = [], [], []
        for start in range(0, n, batch_size):
            x, log_q = draw(min(batch_size, n - start), generator)
            xs.append(x.double().cpu())
            lqs.append(log_q.double().cpu())
            es.append(engine.energy(x.double()).cpu())
        self.generator.train(was_training)
        x, log_q, e = torch.cat(xs).numpy(), torch.cat(lqs).numpy(), torch.cat(es).numpy()
        with np.errstate(invalid="ignore"):
            log_w = np.where(np.isfinite(e), -e / self.molsys.kT - log_q, -np.inf)
        return Samples(x, log_w, log_q, e, topology=self.molsys.topology)

    @torch.no_grad()
    def log_prob(self, x) -> np.ndarray:
        """Generator log density (nats) of positions ``x`` [B, n_atoms, 3] in nm."""
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        if t.ndim != 3 or t.shape[1:] != (self.molsys.n_atoms, 3):
            raise ValueError(f"positions must have shape [batch, {self.molsys.n_atoms}, 3] in nm, got {tuple(t.shape)}")
        dtype = next(self.generator.parameters()).dtype
        return self.generator.log_prob(t.to(self.device, dtype)).double().cpu().numpy()

    # -- persistence --------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> str:
        """Write the run folder as one snapshot (see :mod:`openmm_cmt.io`);
        returns the snapshot's path. Raises RunLockedError when another process writes
        ``folder``. In a data-parallel job every process calls it (the trainer's state is
        gathered); rank 0 writes, the others return None."""
        from openmm_cmt.cmt.distributed import is_main

        state = self._state()
        return self._publish(folder, state) if is_main() else None

    def _state(self) -> dict:
        """The generator and trainer state that ``checkpoint.pt`` holds."""
        return {
            "generator": {k: v.detach().cpu() for k, v in self.generator.state_dict().items()},
            "trainer": None if self.trainer is None else self.trainer.state_dict(),
        }

    def _publish(self, folder, state: dict) -> str:
        folder = os.fspath(folder)
        files = system_files(self.molsys)
        files[CONFIG] = json_text(self.config.to_dict()).encode()
        state = {
            "format_version": FORMAT_VERSION,
            "system_fingerprint": xml_fingerprint(files["system.xml"]),
            "config": self.config.to_json(),
            **state,
        }
        files[CHECKPOINT] = torch_bytes(state)
        snapshot = publish_run(folder, files)
        self.last_saved = (snapshot, len(self.history))
        return snapshot

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str | None = None,
             trust_run: bool = False) -> "BoltzmannGeneratorSampler":
        """A sampler from a run folder written by ``save``.

        Parameters
        ----------
        folder : path
            The run folder.
        device : str, optional
            Replaces the config's device.
        trust_run : bool
            Allow a System whose XML carries serialised Python (an ``openmm.PythonForce``,
            e.g. an openmm-ml potential), which runs code while loading. Only for folders
            from a trusted source.

        Raises
        ------
        CheckpointError
            For a missing, corrupt, mismatched or (without ``trust_run``) unsafe folder.
        """
        import json

        folder = os.fspath(folder)
        snapshot = run_snapshot(folder)
        molsys = load_system(snapshot, trust_run=trust_run)
        state = safe_torch_load(os.path.join(snapshot, CHECKPOINT))
        if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{folder}/{CHECKPOINT} is not a format-{FORMAT_VERSION} openmm_cmt checkpoint")
        if state["system_fingerprint"] != read_json(os.path.join(snapshot, "system.json")).get("fingerprint"):
            raise CheckpointError(f"{folder}/{CHECKPOINT} belongs to another System than {folder}/system.xml")
        config = TrainConfig.from_dict(json.loads(state["config"]))
        if read_json(os.path.join(snapshot, CONFIG)) != config.to_dict():
            raise CheckpointError(f"{folder}/{CONFIG} does not match the config stored in {CHECKPOINT}")
        if device is not None:
            config.device = device
        sampler = cls(molsys, config)
        try:
            sampler.generator.load_state_dict(state["generator"])
        except RuntimeError as err:
            raise CheckpointError(f"generator weights in {folder} do not fit its config: {err}") from err
        if state["trainer"] is not None:
            from openmm_cmt.cmt.distributed import check_world_size, world_size

            check_world_size(state["trainer"], world_size())
            sampler._make_trainer().load_state_dict(state["trainer"])
        sampler.last_saved = (snapshot, len(sampler.history))
        return sampler

    def export(self, path: str | os.PathLike) -> dict:
        """TorchScript file for ``openmmtorch.TorchForce``: E_BG(x) = -kT log q(x)."""
        from openmm_cmt.mcmc.export import export_generator

        return export_generator(self.generator, self.molsys, path)

    def close(self) -> None:
        for engine in (self._energy, self._eval_energy):
            if engine is not None:
                engine.close()
        self._energy = self._eval_energy = None
        if self.trainer is not None:
            self.trainer.target = None
            self.trainer = None


def _check_clashes(molsys) -> None:
    """Refuse atoms at the same place, naming them (no Z-matrix can hold them)."""
    x = np.asarray(molsys.positions, dtype=np.float64)
    n = len(x)
    for start in range(0, n, 512):
        block = x[start:start + 512]
        d = np.linalg.norm(block[:, None, :] - x[None, :, :], axis=-1)
        i, j = np.nonzero(d < CLASH_DISTANCE)
        keep = start + i < j
        if keep.any():
            atoms = list(molsys.topology.atoms())

            def label(k):
                a = atoms[k]
                return f"{k} ({a.name} of {a.residue.name}{a.residue.id})"

            pairs = [f"{label(start + a)} and {label(b)} ({d[a, b]:.4f} nm apart)" for a, b in zip(i[keep], j[keep])]
            more = f" and {len(pairs) - 5} more pairs" if len(pairs) > 5 else ""
            raise ValueError(
                f"atoms {'; '.join(pairs[:5])}{more} of {molsys.name} sit at the same place "
                f"(closer than {CLASH_DISTANCE} nm): fix the structure's coordinates"
            )


def _basin_trace(molsys: MolecularSystem) -> Callable | None:
    """``trace(x, log_q, log_p)``: where a step's draws put each residue's backbone
    (``metrics.basin_shares``: the model's share of each basin and the reweighted
    population), or None for a system without a residue that has both phi and psi.
    A minor basin whose share falls to zero during training is lost for good (no
    later step draws there to be reweighted), so the trace shows when a collapse began."""
    from openmm_cmt import metrics

    try:
        quads = metrics.backbone_dihedral_indices(molsys.topology).reshape(-1, 4)
        labels = metrics.backbone_residue_labels(molsys.topology)
    except ValueError:
        return None

    def trace(x: torch.Tensor, log_q: torch.Tensor, log_p: torch.Tensor) -> dict:
        angles = metrics.dihedrals(x, quads).reshape(x.shape[0], len(labels), 2)
        return metrics.basin_shares(angles, labels, (log_p - log_q).detach().cpu().numpy())

    return trace


class _Progress:
    """One status line: annealing step, evaluations, ESS of the step weights, time left."""

    def __init__(self, total: int, enabled: bool, budget: TimeBudget | None = None):
        self.total, self.enabled, self.budget = total, enabled, budget
        self.shortened = False  # told once that a time budget shortens the run
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()
        # The time left is projected from recent steps: the first ones compile the flow
        # calls and would make an average over the run's start several times too long.
        self.recent: collections.deque[float] = collections.deque(maxlen=5)

    def update(self, record: dict) -> None:
        if not self.enabled:
            return
        done = record["step"] + 1
        elapsed = time.perf_counter() - self.t0
        self.recent.append(record.get("step_wall_s", float("nan")))
        left = (self.total - done) * statistics.median(self.recent)
        if self.budget is not None:
            left = min(left, max(self.budget.seconds_left, 0.0))
        width = 24
        filled = int(width * done / max(self.total, 1))
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] step {done}/{self.total} "
            f"evals {record.get('evaluations', 0):.3g} ESS(step) {record.get('ess', float('nan')):.2g} "
            f"ESS(flow) {record.get('reverse_ess', float('nan')):.2g} "
            f"beta {record.get('beta', float('nan')):.3f} elapsed {elapsed:.0f}s left {left:.0f}s"
        )
        phases = record.get("phase_s") or {}
        if phases:
            slowest = max(phases, key=phases.get)
            line += f" (mostly {slowest} {phases[slowest]:.1f}s)"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)
