"""Exact OpenMM energies of batches, one Context evaluation per conformation.

OpenMM returns one energy per Context call (force groups, CustomCVForce and
TorchForce cannot split a replicated System into per-copy energies; OpenMM issue 2535),
so a batch is spread over a pool of worker processes, each holding one Context. The
workers are fresh interpreters that never import the caller's ``__main__``. Batches
travel in chunks through shared memory; the sockets carry only control messages. This is the engine of record: every other engine is checked against it.
"""

from __future__ import annotations

import pickle
import threading
import warnings

import numpy as np
import torch
import openmm

from openmm_cmt.energy._pool_worker import evaluate, make_context
from openmm_cmt.energy.base import EnergyEngine
from openmm_cmt.energy.platforms import GPU_PLATFORMS, resolve_platform, usable_cores

#: Largest shared-memory block per worker when ``chunk_size`` is automatic (bytes).
_BLOCK_BYTES = 8 * 2**20
_MAX_AUTO_CHUNK = 1024


def _gpu_count(platform: str) -> int:
    if platform == "CUDA" and torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return 1


def _refers_to_main(data: bytes) -> bool:
    """Whether a pickle names an object of ``__main__`` (it would not unpickle elsewhere)."""
    import pickletools

    strings = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST") and str(arg).split()[0] == "__main__":
            return True
        if op.name == "STACK_GLOBAL" and len(strings) >= 2 and strings[-2] == "__main__":
            return True
        if isinstance(arg, str):
            strings.append(arg)
    return False


class OpenMMEnergy(EnergyEngine):
    """Potential energies (and forces) from OpenMM, one exact evaluation per conformation.

    Parameters
    ----------
    molsys
        a ``MolecularSystem`` (its ``system``, ``positions`` and ``kT`` are used).
    platform
        ``"auto"`` (CUDA, else CPU, else Reference:
        :func:`openmm_cmt.energy.platforms.resolve_platform`) or an OpenMM platform
        name (Reference, CPU, CUDA, OpenCL).
    n_workers
        worker processes; ``"auto"`` is one per usable core for CPU platforms
        and one per GPU for GPU platforms. ``0`` loops over one Context in this
        process (no start-up cost: the choice for a few evaluations).
    system_factory
        a picklable zero-argument callable returning the System (or a
        MolecularSystem), called once in each worker. Needed only for Systems that
        cannot be serialised to XML (e.g. an ``openmm.PythonForce`` whose function
        cannot be pickled); without it such a System is evaluated in-process
        (``n_workers=0``) with a RuntimeWarning.
    chunk_size
        conformations per message to a worker. By default chunks are
        guided: each takes 1/(2 n_workers) of the rows still to hand out, at most
        1024 conformations and 8 MiB, so that the workers finish together.
    properties
        OpenMM platform properties overriding the defaults (CPU:
        Threads=1 per Context; CUDA/OpenCL: Precision=mixed).
    hang_timeout
        seconds a busy worker may stay silent (stopped, deadlocked)
        before it is replaced, with a RuntimeWarning (default 30).

    Notes
    -----
    Non-finite positions, and conformations for which OpenMM raises or returns NaN,
    get +inf energy and zero forces (counted in ``n_nonfinite``). A worker that dies
    or hangs is restarted and its chunk recomputed (``n_restarts`` counts them).
    Workers are fresh interpreters that never import the caller's ``__main__``: scripts
    need no ``if __name__ == "__main__":`` guard, and notebooks work. A
    ``system_factory`` must therefore live in an importable module, not in ``__main__``.
    """

    def __init__(
        self,
        molsys,
        platform: str = "auto",
        n_workers="auto",
        system_factory=None,
        chunk_size: int | None = None,
        properties: dict | None = None,
        hang_timeout: float = 30.0,
    ):
        for attr in ("system", "positions", "kT"):
            if not hasattr(molsys, attr):
                raise TypeError(f"molsys must be a MolecularSystem (with .{attr}), got {type(molsys).__name__}")
        super().__init__(molsys.system.getNumParticles(), molsys.kT)
        if n_workers != "auto":
            if isinstance(n_workers, bool) or not isinstance(n_workers, (int, np.integer)) or n_workers < 0:
                raise ValueError(f"n_workers must be 'auto' or an integer >= 0, got {n_workers!r}")
            n_workers = int(n_workers)
        if chunk_size is not None and not (isinstance(chunk_size, int) and chunk_size >= 1):
            raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")
        self.system = molsys.system
        self.positions = np.asarray(molsys.positions, dtype=np.float64)
        self.properties = dict(properties or {})
        self.chunk_size = chunk_size
        self._pool = None
        self._context = None
        self._closed = False
        self._lock = threading.Lock()  # one batch at a time: the workers' blocks are shared

        # ML Systems carry their pickled model in the XML; their recipe is far smaller.
        system_factory = system_factory if system_factory is not None else getattr(molsys, "system_factory", None)
        system_spec = self._system_spec(system_factory) if n_workers != 0 else None
        if system_spec is None and n_workers != 0:
            n_workers = 0

        self.platform = resolve_platform(platform, self.system, self.properties)
        if n_workers == "auto":
            n_workers = _gpu_count(self.platform) if self.platform in GPU_PLATFORMS else usable_cores()
        self.n_workers = int(n_workers)

        if self.n_workers == 0:
            self._context = make_context(self.system, self.platform, self.properties)
        else:
            from openmm_cmt.energy._openmm_pool import WorkerPool

            row_bytes = 8 * (1 + 3 * self.n_atoms)
            capacity = chunk_size or max(1, min(_MAX_AUTO_CHUNK, _BLOCK_BYTES // row_bytes))
            self._pool = WorkerPool(system_spec, self.platform, self._worker_properties(), self.n_workers,
                                    capacity, self.n_atoms, self.positions, hang_timeout=hang_timeout)

    def _worker_properties(self) -> list[dict]:
        """Per-worker platform properties: on several GPUs, worker i uses device i mod count."""
        devices = _gpu_count(self.platform) if self.platform in GPU_PLATFORMS else 1
        out = []
        for i in range(self.n_workers):
            props = dict(self.properties)
            if devices > 1 and "DeviceIndex" not in props:
                props["DeviceIndex"] = str(i % devices)
            out.append(props)
        return out

    def _system_spec(self, system_factory):
        """What a worker needs to rebuild the System, or None to evaluate in-process."""
        if system_factory is not None:
            if not callable(system_factory):
                raise TypeError(f"system_factory must be a zero-argument callable, got {system_factory!r}")
            try:
                data = pickle.dumps(system_factory)
            except Exception as err:
                raise TypeError(
                    f"system_factory must be picklable (a module-level function or functools.partial): {err}"
                ) from err
            if _refers_to_main(data):
                raise TypeError(
                    f"system_factory {system_factory!r} is defined in the __main__ script, which worker processes "
                    "never import: move it into a module of its own, or pass n_workers=0"
                )
            return system_factory
        try:
            return openmm.XmlSerializer.serialize(self.system)
        except Exception as err:
            warnings.warn(
                f"the System cannot be serialised to XML ({err}); evaluating in this process "
                "(n_workers=0). Pass system_factory= to use worker processes.",
                RuntimeWarning,
                stacklevel=3,
            )
            return None

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (empty when evaluating in-process)."""
        return [] if self._pool is None else self._pool.pids

    @property
    def n_restarts(self) -> int:
        """Workers restarted after dying, hanging or raising."""
        return 0 if self._pool is None else self._pool.n_restarts

    def _energy(self, x: torch.Tensor, forces: bool):
        if self._closed:
            raise RuntimeError("this OpenMMEnergy is closed")
        xn = np.ascontiguousarray(x.detach().to("cpu", torch.float64).numpy())
        n = xn.shape[0]
        energies = np.full(n, np.inf)
        all_forces = np.zeros((n, self.n_atoms, 3)) if forces else None
        # Non-finite conformations never reach OpenMM (the CPU platform raises on them).
        finite = np.flatnonzero(np.isfinite(xn).all(axis=(1, 2)))
        if finite.size:
            xs = xn if finite.size == n else np.ascontiguousarray(xn[finite])
            with self._lock:
                if self._pool is not None:
                    e, f = self._pool.evaluate(xs, forces, self.chunk_size)
                else:
                    e = np.empty(xs.shape[0])
                    f = np.empty_like(xs) if forces else None
                    evaluate(self._context, xs, e, f)
            energies[finite] = e
            if forces:
                all_forces[finite] = f
        bad = ~np.isfinite(energies)
        energies[bad] = np.inf
        e_t = torch.from_numpy(energies).to(x.device)
        if not forces:
            return e_t
        all_forces[bad] = 0.0
        return e_t, torch.from_numpy(all_forces).to(x.device)

    def close(self) -> None:
        """Stop the workers and free their shared memory (idempotent)."""
        self._closed = True
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._context = None

    def __repr__(self) -> str:
        where = "in-process" if self.n_workers == 0 else f"{self.n_workers} workers"
        return f"OpenMMEnergy(platform={self.platform!r}, {where}, n_atoms={self.n_atoms})"
