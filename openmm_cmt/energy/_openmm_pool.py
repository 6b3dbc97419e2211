"""Parent side of the OpenMMEnergy pool: worker processes fed through shared memory.

Workers are fresh interpreters (``python -c WORKER_CODE``, see ``_pool_worker``) joined
to the parent by a socket pair; they never import the parent's ``__main__``, so a pool
starts the same from a guarded or unguarded script, a notebook or an interactive
session. (Where descriptors cannot be passed on, i.e. on Windows, multiprocessing's
'spawn' is used instead, which needs the usual main guard.)

Each worker owns one input block ([capacity, n_atoms, 3] float64 positions) and one
output block (capacity energies followed by [capacity, n_atoms, 3] forces). A batch is
cut into chunks of at most ``capacity`` rows; an idle worker receives the next chunk as
one ("run", n, forces) message. The parent waits on every worker's socket, which reaches
end-of-file when the worker dies (killed, segfault), so a death is noticed at once. A busy
worker reports at least every two seconds; one silent for ``hang_timeout`` seconds
(stopped, deadlocked) is killed with a warning. Either way it is restarted and its chunk
recomputed. A chunk that fails twice is split in halves, so a single conformation that
crashes OpenMM ends up alone and gets +inf instead of taking the pool down.
"""

from __future__ import annotations

import collections
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.spawn
import os
import pickle
import subprocess
import sys
import threading
import time
import warnings
from multiprocessing import shared_memory

import numpy as np

from openmm_cmt.energy import _pool_worker

_START_METHOD = "spawn"  # Windows only; fork after torch/OpenMM have started threads is unsafe
#: Seconds a busy worker may stay silent before it is replaced (``hang_timeout``).
HANG_TIMEOUT = 30.0
#: The package's parent folder: workers import openmm_cmt from where the parent did.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Process:
    """A worker interpreter started with subprocess, with the few methods of
    multiprocessing.Process the pool uses."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.pid = popen.pid

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        try:
            self.popen.kill()
        except ProcessLookupError:
            pass

    def join(self, timeout=None) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    @property
    def exitcode(self):
        return self.popen.poll()


def _start_interpreter(init: dict):
    """A fresh interpreter running the worker, and the parent's end of its socket."""
    parent_conn, child_conn = multiprocessing.Pipe(duplex=True)  # a socket pair on POSIX
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    executable = multiprocessing.spawn.get_executable() or sys.executable
    try:
        popen = subprocess.Popen(
            [executable, "-c", _pool_worker.WORKER_CODE, str(child_conn.fileno())],
            pass_fds=(child_conn.fileno(),), stdin=subprocess.DEVNULL, env=env,
        )
    finally:
        child_conn.close()  # only the worker holds its end: EOF reaches each side when the other goes
    message = ("init", init, list(sys.path))

    def send():
        try:
            parent_conn.send(message)
        except OSError:
            pass  # it died at once; its end-of-file reports that

    # A large System fills the socket's buffer before the worker reads it; the pool must
    # not block on a worker that never starts (its start deadline handles that).
    threading.Thread(target=send, name="openmm-cmt-worker-init", daemon=True).start()
    return _Process(popen), parent_conn


class WorkerError(RuntimeError):
    """The pool could not start or keep its OpenMM workers alive."""


class _Worker:
    """Parent-side handle: the process, its pipe and its two shared-memory blocks."""

    def __init__(self, index: int, capacity: int, n_atoms: int):
        self.index = index
        row = 8 * 3 * n_atoms
        self.in_block = shared_memory.SharedMemory(create=True, size=max(1, capacity * row))
        self.out_block = shared_memory.SharedMemory(create=True, size=max(1, capacity * (8 + row)))
        self.x_in = np.ndarray((capacity, n_atoms, 3), dtype=np.float64, buffer=self.in_block.buf)
        self.e_out = np.ndarray((capacity,), dtype=np.float64, buffer=self.out_block.buf)
        self.f_out = np.ndarray((capacity, n_atoms, 3), dtype=np.float64, buffer=self.out_block.buf, offset=8 * capacity)
        self.process = None
        self.conn = None
        self.state = "down"  # down | starting | idle | busy
        self.chunk = None  # (start, stop, failures) while busy
        self.deadline = float("inf")
        self.seconds_per_evaluation = None

    def stop(self, graceful: bool, timeout: float = 2.0) -> None:
        """End the process: ask it to stop (graceful) or kill it; always reap it."""
        if self.conn is not None:
            if graceful:
                try:
                    self.conn.send(("stop",))
                except Exception:
                    pass
            self.conn.close()
            self.conn = None
        if self.process is not None:
            if not graceful:
                self.process.kill()
            self.process.join(timeout)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5.0)
            self.process = None
        self.state = "down"
        self.chunk = None

    def release_blocks(self) -> None:
        self.x_in = self.e_out = self.f_out = None
        for block in (self.in_block, self.out_block):
            try:
                block.close()
                block.unlink()
            except FileNotFoundError:
                pass


class _Resources:
    """Everything the pool owns; kept apart from the pool so that weakref.finalize can
    release it without keeping the pool alive."""

    def __init__(self):
        self.workers: list[_Worker] = []

    def release(self) -> None:
        live = [w for w in self.workers if w.conn is not None]
        for w in live:  # ask all first, so that they shut down in parallel
            try:
                w.conn.send(("stop",))
            except Exception:
                pass
        deadline = time.monotonic() + 3.0
        for w in self.workers:
            if w.process is not None:
                w.process.join(max(0.0, deadline - time.monotonic()))
            w.stop(graceful=False)
            w.release_blocks()
        self.workers.clear()


class WorkerPool:
    """``n_workers`` processes, each holding one OpenMM Context of the same System.

    Parameters
    ----------
    system_spec
        the System as XML, or a picklable zero-argument callable building it.
    platform, properties
        OpenMM platform name and property overrides: one dict
        for all workers, or a list with one dict per worker (e.g. DeviceIndex).
    n_workers
        number of processes (>= 1).
    capacity
        most conformations per chunk (the size of each shared-memory block).
    n_atoms
        particles per conformation.
    positions
        a valid conformation [n_atoms, 3] (nm); each worker times one
        evaluation of it at start-up, which also proves its Context works.
    start_timeout
        seconds a worker may take to start (import, Context creation).
    hang_timeout
        seconds a busy worker may stay silent before it is killed and
        replaced with a RuntimeWarning (plus three times its time per evaluation).
        Between conformations a busy worker reports when ``min(2, hang_timeout / 10)``
        seconds have passed since its last report.
    """

    def __init__(self, system_spec, platform, properties, n_workers, capacity, n_atoms, positions, start_timeout=120.0,
                 hang_timeout=HANG_TIMEOUT):
        import weakref

        if isinstance(properties, (list, tuple)):
            if len(properties) != n_workers:
                raise ValueError(f"need one properties dict per worker ({n_workers}), got {len(properties)}")
            self._properties = [dict(p) for p in properties]
        else:
            self._properties = [dict(properties or {})] * n_workers
        self._args = (system_spec, platform)
        self.capacity = int(capacity)
        self.n_atoms = int(n_atoms)
        self._positions = np.asarray(positions, dtype=np.float64)
        self._start_timeout = float(start_timeout)
        if not hang_timeout > 0:
            raise ValueError(f"hang_timeout must be positive (seconds), got {hang_timeout!r}")
        self._hang_timeout = float(hang_timeout)
        self._heartbeat = min(2.0, self._hang_timeout / 10.0)
        self._mp = multiprocessing.get_context(_START_METHOD)
        self._resources = _Resources()
        self._finalizer = weakref.finalize(self, self._resources.release)
        self.n_restarts = 0
        try:
            for i in range(n_workers):
                self._resources.workers.append(_Worker(i, self.capacity, self.n_atoms))
            for w in self._resources.workers:
                self._spawn(w)
            self._wait_until_started()
        except BaseException:
            self.close()
            raise

    @property
    def workers(self) -> list[_Worker]:
        return self._resources.workers

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.process is not None]

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def _spawn(self, w: _Worker) -> None:
        system_spec, platform = self._args
        init = dict(system_spec=system_spec, platform=platform, properties=self._properties[w.index],
                    in_name=w.in_block.name, out_name=w.out_block.name, capacity=self.capacity,
                    n_atoms=self.n_atoms, positions=self._positions, heartbeat=self._heartbeat)
        if os.name == "posix":
            if not isinstance(system_spec, str):
                init["system_spec"] = pickle.dumps(system_spec)  # unpickled where errors are reported
            w.process, w.conn = _start_interpreter(init)
        else:
            parent_conn, child_conn = self._mp.Pipe(duplex=True)
            w.process = self._mp.Process(target=_pool_worker.worker_main, args=(child_conn,), kwargs=init,
                                         name=f"openmm-cmt-energy-{w.index}", daemon=True)
            w.process.start()
            child_conn.close()
            w.conn = parent_conn
        w.state = "starting"
        w.deadline = time.monotonic() + self._start_timeout

    def _wait_until_started(self) -> None:
        while any(w.state == "starting" for w in self.workers):
            self._wait(self.workers)
            for w in self.workers:
                if w.state != "starting":
                    continue
                message, reason = self._receive(w)
                if message is not None and message[0] == "ready":
                    w.state, w.seconds_per_evaluation = "idle", float(message[1])
                elif reason is not None:
                    raise WorkerError(f"OpenMM worker {w.index} failed to start: {reason}")

    def _wait(self, workers) -> None:
        """Block until a pipe or sentinel of a waiting worker is ready, or the nearest deadline."""
        waiting = [w for w in workers if w.state in ("starting", "busy")]
        if not waiting:
            return
        timeout = max(0.0, min(w.deadline for w in waiting) - time.monotonic())
        handles = [w.conn for w in waiting]
        handles += [w.process.sentinel for w in waiting if hasattr(w.process, "sentinel")]  # spawn only
        multiprocessing.connection.wait(handles, timeout=min(timeout, 5.0))

    def _receive(self, w: _Worker):
        """(message, None) when ``w`` has answered, (None, reason) when it has failed,
        (None, None) when it is still working."""
        try:
            if w.conn.poll():
                message = w.conn.recv()
                if message[0] == "error":
                    return None, f"exception in worker:\n{message[1]}"
                return message, None
        except (EOFError, OSError):
            pass
        else:
            if w.process.is_alive():
                if time.monotonic() > w.deadline:
                    if w.state == "busy":
                        return None, f"no sign of life for {self._hang_timeout:g} s (stopped or hung)"
                    return None, f"no answer within its deadline ({w.state})"
                return None, None
        w.process.join(1.0)
        return None, f"process died (exit code {w.process.exitcode})"

    def evaluate(self, x: np.ndarray, forces: bool, chunk_size: int | None = None):
        """Energies [B] (and forces [B, n_atoms, 3]) of the finite conformations ``x``.

        With ``chunk_size=None`` chunks are guided: each takes 1/(2 n_workers) of what
        is left (at most ``capacity``, at least ~5 ms of work), so chunks start large
        and shrink towards the end of the batch, where they even out the workers' finish.
        """
        if self.closed:
            raise RuntimeError("the OpenMM worker pool is closed")
        n = x.shape[0]
        energies = np.full(n, np.inf)
        all_forces = np.zeros((n, self.n_atoms, 3)) if forces else None
        retry = collections.deque()  # chunks of failed workers, served first
        cursor = 0  # rows [0, cursor) have been handed out
        max_restarts = self.n_restarts + 4 * len(self.workers) + 2 * int(np.log2(self.capacity + 1)) + 8

        def next_chunk():
            nonlocal cursor
            if retry:
                return retry.popleft()
            size = self._chunk_length(n - cursor, chunk_size)
            cursor += size
            return cursor - size, cursor, 0

        try:
            for w in self.workers:
                if w.state == "down":
                    self._spawn(w)
            while retry or cursor < n or any(w.state == "busy" for w in self.workers):
                for w in self.workers:
                    if w.state == "idle" and (retry or cursor < n):
                        self._assign(w, next_chunk(), x, forces)
                self._wait(self.workers)
                for w in self.workers:
                    if w.state not in ("starting", "busy"):
                        continue
                    message, reason = self._receive(w)
                    if message is not None:
                        if message[0] == "alive" and w.state == "busy":
                            w.deadline = self._busy_deadline(w)
                        elif message[0] == "ready" and w.state == "starting":
                            w.state, w.seconds_per_evaluation = "idle", float(message[1])
                        elif message[0] == "done" and w.state == "busy":
                            start, stop, _ = w.chunk
                            energies[start:stop] = w.e_out[: stop - start]
                            if forces:
                                all_forces[start:stop] = w.f_out[: stop - start]
                            w.state, w.chunk = "idle", None
                    elif reason is not None:
                        self._recover(w, reason, retry, energies, max_restarts)
        except BaseException:
            # Ctrl-C or a fatal error: workers in the middle of a chunk would answer
            # into the next call, so end them now; the next call restarts them.
            for w in self.workers:
                if w.state in ("starting", "busy"):
                    w.stop(graceful=False)
            raise
        return energies, all_forces

    def _chunk_length(self, remaining: int, chunk_size: int | None) -> int:
        if chunk_size is not None:
            return max(1, min(int(chunk_size), self.capacity, remaining))
        known = [w.seconds_per_evaluation for w in self.workers if w.seconds_per_evaluation]
        smallest = math.ceil(0.005 / max(known)) if known else 1  # keep messages << work
        guided = math.ceil(remaining / (2 * len(self.workers)))
        return max(1, min(max(guided, smallest), self.capacity, remaining))

    def _assign(self, w: _Worker, chunk, x, forces) -> None:
        start, stop, _ = chunk
        w.x_in[: stop - start] = x[start:stop]
        w.chunk, w.state = chunk, "busy"
        w.deadline = self._busy_deadline(w)
        try:
            w.conn.send(("run", stop - start, bool(forces)))
        except (BrokenPipeError, OSError):
            pass  # the sentinel reports the death; the chunk is recovered there

    def _busy_deadline(self, w: _Worker) -> float:
        """When a busy worker that has just been heard from counts as hung: after
        ``hang_timeout`` s of silence, more when one evaluation takes longer."""
        return time.monotonic() + self._hang_timeout + 3.0 * (w.seconds_per_evaluation or 0.0)

    def _recover(self, w: _Worker, reason: str, pending, energies, max_restarts: int) -> None:
        """Restart a failed worker and put its chunk back (split after a second failure)."""
        was_starting = w.state == "starting"
        chunk = w.chunk
        if w.state == "busy" and "no sign of life" in reason:
            pid = getattr(w.process, "pid", "?")
            warnings.warn(f"OpenMM worker {w.index} (pid {pid}) gave {reason}; replacing it and recomputing its "
                          "conformations", RuntimeWarning, stacklevel=4)
        w.stop(graceful=False)
        self.n_restarts += 1
        if self.n_restarts > max_restarts:
            raise WorkerError(f"OpenMM workers keep failing ({self.n_restarts} restarts); last: {reason}")
        if was_starting and w.seconds_per_evaluation is None:
            raise WorkerError(f"OpenMM worker {w.index} failed to start: {reason}")
        if chunk is not None:
            start, stop, failures = chunk
            if failures == 0:
                pending.appendleft((start, stop, 1))
            elif stop - start > 1:
                middle = (start + stop) // 2
                pending.appendleft((middle, stop, 1))
                pending.appendleft((start, middle, 1))
            else:
                energies[start] = np.inf  # this conformation crashes OpenMM twice
        self._spawn(w)
