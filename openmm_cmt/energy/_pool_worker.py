"""Worker side of the OpenMMEnergy pool: one process, one OpenMM Context.

The parent starts this module's ``worker_main`` with the 'spawn' method. Positions
arrive in a shared-memory block, energies (and forces) leave through another; the
Pipe only carries short control messages:

    parent -> worker: ("run", n, forces)   evaluate rows [0, n) of the input block
                      ("stop",)
    worker -> parent: ("ready", seconds_per_evaluation) once the Context works
                      ("done", n)
                      ("error", traceback_text) before the worker exits

The worker ignores SIGINT (the parent handles Ctrl-C and stops it) and exits when the
pipe closes, so a parent that dies leaves no worker behind.
"""

from __future__ import annotations

import signal
import time
import traceback

import numpy as np
import torch  # noqa: F401  (before openmm: OpenMM's Torch plugin needs torch loaded first)
import openmm
from openmm import unit

_KJ_PER_MOL = unit.kilojoule_per_mole
_KJ_PER_MOL_NM = unit.kilojoule_per_mole / unit.nanometer

#: Platform properties used unless the caller overrides them. One thread per CPU
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


def make_context(system: openmm.System, platform: str, properties: dict | None = None) -> openmm.Context:
    """A Context for energy evaluations only (the integrator is never stepped)."""
    props = dict(DEFAULT_PROPERTIES.get(platform, {}))
    props.update(properties or {})
    return openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform), props)


def evaluate(context: openmm.Context, x: np.ndarray, energies: np.ndarray, forces: np.ndarray | None) -> None:
    """Fill ``energies[i]`` (kJ/mol) and, if given, ``forces[i]`` (kJ/mol/nm) for each
    conformation ``x[i]`` (nm), one OpenMM evaluation each.

    A conformation with non-finite coordinates, or one for which OpenMM raises, gets
    +inf energy and zero forces; the Context stays usable for the next one.
    """
    finite = np.isfinite(x).all(axis=(1, 2))
    for i in range(x.shape[0]):
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


def worker_main(conn, system_spec, platform, properties, in_name, out_name, capacity, n_atoms, positions):
    """Serve ("run", n, forces) requests until "stop" or until the pipe closes.

    ``system_spec`` is the System as XML, or a picklable zero-argument callable that
    builds it (for Systems that do not survive serialisation).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from multiprocessing import shared_memory

    blocks = []
    try:
        blocks = [shared_memory.SharedMemory(name=in_name), shared_memory.SharedMemory(name=out_name)]
        x_in = np.ndarray((capacity, n_atoms, 3), dtype=np.float64, buffer=blocks[0].buf)
        e_out = np.ndarray((capacity,), dtype=np.float64, buffer=blocks[1].buf)
        f_out = np.ndarray((capacity, n_atoms, 3), dtype=np.float64, buffer=blocks[1].buf, offset=8 * capacity)
        if isinstance(system_spec, str):
            system = system_from_xml(system_spec)
        else:
            system = system_spec()
            system = getattr(system, "system", system)  # a MolecularSystem is fine too
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
            evaluate(context, x_in[:n], e_out[:n], f_out[:n] if want_forces else None)
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
