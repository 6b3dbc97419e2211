"""Worker side of the OpenMMEnergy pool: one process, one OpenMM Context.

The parent starts each worker as a fresh interpreter running :func:`main` (see
``WORKER_CODE``), connected by a socket whose descriptor it passes on: the worker never
imports the parent's ``__main__``, so the user's script is never run again (scripts need
no ``if __name__ == "__main__":`` guard, and notebooks work). Positions arrive in a
shared-memory block, energies (and forces) leave through another; the socket only
carries short control messages:

    parent -> worker: ("init", kwargs of worker_main, parent's sys.path)   once, first
                      ("run", n, forces)   evaluate rows [0, n) of the input block
                      ("stop",)
    worker -> parent: ("ready", seconds_per_evaluation) once the Context works
                      ("alive", i)  at most every ``heartbeat`` seconds during a chunk
                      ("done", n)
                      ("error", traceback_text) before the worker exits

The worker ignores SIGINT (the parent handles Ctrl-C and stops it) and exits when the
socket closes, so a parent that dies leaves no worker behind.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback

import numpy as np
import openmm
from openmm import unit

# No torch here: a worker interpreter loads this file on its own (WORKER_CODE) and starts
# in half a second instead of several. Systems with a TorchForce get OpenMM's Torch plugin
# loaded afterwards (load_openmmtorch), which works in either import order.

_KJ_PER_MOL = unit.kilojoule_per_mole
_KJ_PER_MOL_NM = unit.kilojoule_per_mole / unit.nanometer

#: Platform properties of an energy Context unless the caller overrides them (this file
#: runs without the package, so it does not read openmm_cmt.energy.platforms). One thread per CPU
#: Context: the pool supplies the parallelism, and for small molecules extra threads
#: only add synchronisation cost. Mixed precision keeps GPU energies accurate.
DEFAULT_PROPERTIES = {
    "CPU": {"Threads": "1"},
    "CUDA": {"Precision": "mixed"},
    "OpenCL": {"Precision": "mixed"},
}


def system_from_xml(xml: str) -> openmm.System:
    if "TorchForce" in xml:
        # Deserialising a TorchForce needs the plugin's serialisation proxy.
        from openmm_cmt._openmmtorch import load_openmmtorch

        load_openmmtorch()
    return openmm.XmlSerializer.deserialize(xml)


def _needs_torch_plugin(system: openmm.System) -> bool:
    return any(type(f).__name__ == "TorchForce" for f in system.getForces())


def make_context(system: openmm.System, platform: str, properties: dict | None = None) -> openmm.Context:
    """A Context for energy evaluations only (the integrator is never stepped)."""
    props = dict(DEFAULT_PROPERTIES.get(platform, {}))
    props.update(properties or {})
    return openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform), props)


def evaluate(context: openmm.Context, x: np.ndarray, energies: np.ndarray, forces: np.ndarray | None,
             heartbeat=None) -> None:
    """Fill ``energies[i]`` (kJ/mol) and, if given, ``forces[i]`` (kJ/mol/nm) for each
    conformation ``x[i]`` (nm), one OpenMM evaluation each; ``heartbeat(i)`` is called
    before each one.

    A conformation with non-finite coordinates, or one for which OpenMM raises, gets
    +inf energy and zero forces; the Context stays usable for the next one.
    """
    finite = np.isfinite(x).all(axis=(1, 2))
    for i in range(x.shape[0]):
        if heartbeat is not None:
            heartbeat(i)
        if not finite[i]:
            energies[i] = np.inf
            if forces is not None:
                forces[i] = 0.0
            continue
        try:
            context.setPositions(x[i])
            state = context.getState(getEnergy=True, getForces=forces is not None)
            energies[i] = state.getPotentialEnergy().value_in_unit(_KJ_PER_MOL)
            if forces is not None:
                forces[i] = state.getForces(asNumpy=True).value_in_unit(_KJ_PER_MOL_NM)
        except Exception:  # OpenMMException for this conformation only
            energies[i] = np.inf
            if forces is not None:
                forces[i] = 0.0


def seconds_per_evaluation(context: openmm.Context, positions: np.ndarray, min_seconds: float = 0.0) -> tuple[float, float]:
    """Time single-conformation evaluations of ``positions`` after one warm-up call.

    Returns (seconds per evaluation, energy of ``positions`` in kJ/mol). Times at least
    one evaluation and keeps going until ``min_seconds`` have passed.
    """
    x = np.asarray(positions, dtype=np.float64)[None]
    e = np.empty(1)
    evaluate(context, x, e, None)
    count, start = 0, time.perf_counter()
    while True:
        evaluate(context, x, e, None)
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / count, float(e[0])


#: What the parent runs in a fresh interpreter, with the socket's descriptor as argument:
#: this file alone, without importing the openmm_cmt package (and torch with it).
WORKER_CODE = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "import importlib.util\n"
    f"spec = importlib.util.spec_from_file_location('openmm_cmt_pool_worker', {os.path.abspath(__file__)!r})\n"
    "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); module.main()\n"
)


def main() -> None:
    """Entry point of a worker interpreter: ``sys.argv[1]`` is the socket's descriptor."""
    from multiprocessing.connection import Connection

    conn = Connection(int(sys.argv[1]))
    try:
        kind, kwargs, path = conn.recv()
    except (EOFError, OSError):
        return
    try:
        if kind != "init":
            raise RuntimeError(f"expected an init message, got {kind!r}")
        # The parent's import path, so that a system_factory from the user's own module
        # unpickles here; the parent's __main__ is never imported.
        sys.path[:] = list(dict.fromkeys(path + sys.path))
        kwargs = dict(kwargs, system_spec=_unpickle(kwargs["system_spec"]))
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        finally:
            conn.close()
        return
    worker_main(conn, **kwargs)


def _unpickle(spec):
    import pickle

    return pickle.loads(spec) if isinstance(spec, bytes) else spec


def _attach(name: str):
    """Attach a shared-memory block the parent owns, without registering it with a
    resource tracker of this interpreter (which would unlink it when the worker exits)."""
    from multiprocessing import resource_tracker, shared_memory

    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    register = resource_tracker.register
    resource_tracker.register = lambda *args, **kwargs: None
    try:
        return shared_memory.SharedMemory(name=name)
    finally:
        resource_tracker.register = register


def worker_main(conn, system_spec, platform, properties, in_name, out_name, capacity, n_atoms, positions,
                heartbeat: float = 2.0):
    """Serve ("run", n, forces) requests until "stop" or until the connection closes.

    ``system_spec`` is the System as XML, or a picklable zero-argument callable that
    builds it (for Systems that do not survive serialisation). During a chunk the worker
    sends ("alive", i) at most every ``heartbeat`` seconds, so that the parent can tell a
    slow worker from a stopped one.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    last = [time.monotonic()]

    def beat(i):
        now = time.monotonic()
        if now - last[0] >= heartbeat:
            last[0] = now
            conn.send(("alive", i))

    blocks = []
    try:
        blocks = [_attach(in_name), _attach(out_name)]
        x_in = np.ndarray((capacity, n_atoms, 3), dtype=np.float64, buffer=blocks[0].buf)
        e_out = np.ndarray((capacity,), dtype=np.float64, buffer=blocks[1].buf)
        f_out = np.ndarray((capacity, n_atoms, 3), dtype=np.float64, buffer=blocks[1].buf, offset=8 * capacity)
        if isinstance(system_spec, str):
            system = system_from_xml(system_spec)
        else:
            system = system_spec()
            system = getattr(system, "system", system)  # a MolecularSystem is fine too
        if _needs_torch_plugin(system):
            from openmm_cmt._openmmtorch import load_openmmtorch

            load_openmmtorch()
        if system.getNumParticles() != n_atoms:
            raise ValueError(f"the worker's System has {system.getNumParticles()} particles, expected {n_atoms}")
        context = make_context(system, platform, properties)
        seconds, _ = seconds_per_evaluation(context, positions)
        conn.send(("ready", seconds))
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break  # the parent is gone
            if message[0] != "run":
                break
            _, n, want_forces = message
            last[0] = time.monotonic()
            evaluate(context, x_in[:n], e_out[:n], f_out[:n] if want_forces else None, beat)
            conn.send(("done", n))
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        pass
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except Exception:
            pass
    finally:
        # numpy views must go before the blocks can close
        x_in = e_out = f_out = None  # noqa: F841
        for block in blocks:
            try:
                block.close()
            except Exception:
                pass
        conn.close()
