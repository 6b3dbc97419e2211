"""OpenMMEnergy against plain OpenMM Context loops; bad input; worker failures; clean-up."""

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest
import torch
import openmm
from openmm import unit

from openmm_cmt.energy import OpenMMEnergy
from openmm_cmt.energy._pool_worker import evaluate, make_context
from openmm_cmt.energy.platforms import AUTO_PLATFORMS, available_platforms, create_context, resolve_platform
from openmm_cmt.systems import MolecularSystem

N_CONFORMATIONS = 1000


def proc_state(pid):
    """'R', 'S', ... for a live process, None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
    return None if state in ("Z", "X") else state


def live_children():
    """Live child processes of this test process, except Python's resource tracker
    (a per-interpreter singleton that multiprocessing keeps until exit)."""
    me, out = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] not in ("Z", "X") and b"resource_tracker" not in cmdline:
            out.add(int(entry))
    return out


def wait_gone(pids, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(proc_state(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if proc_state(p)]


@pytest.fixture(scope="module")
def conformations(aldp):
    rng = np.random.default_rng(0)
    return aldp.positions[None] + 0.015 * rng.standard_normal((N_CONFORMATIONS, aldp.n_atoms, 3))


@pytest.fixture(scope="module")
def pool(aldp):
    engine = OpenMMEnergy(aldp, platform="auto", n_workers=2)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(aldp, pool, conformations, openmm_reference_energies):
    return openmm_reference_energies(aldp.system, conformations, forces=True, platform=pool.platform)


def test_auto_platform_is_cuda_else_cpu(pool):
    expected = "CUDA" if "CUDA" in available_platforms() and torch.cuda.is_available() else "CPU"
    assert pool.platform == expected
    assert pool.n_workers == 2 and len(pool.worker_pids) == 2


def test_pool_energies_equal_single_context_loop(pool, conformations, reference):
    e_ref, _ = reference
    e = pool.energy(conformations)
    assert isinstance(e, np.ndarray) and e.dtype == np.float64 and e.shape == (N_CONFORMATIONS,)
    assert np.all(np.isfinite(e_ref)) and np.std(e_ref) > 1.0  # varied, finite test set
    np.testing.assert_array_less(np.abs(e - e_ref) / np.abs(e_ref), 1e-6)


def test_pool_forces_equal_single_context_loop(pool, conformations, reference):
    e_ref, f_ref = reference
    e, f = pool.energy(conformations, forces=True)
    assert f.shape == (N_CONFORMATIONS, 22, 3)
    np.testing.assert_array_less(np.abs(e - e_ref) / np.abs(e_ref), 1e-6)
    scale = np.abs(f_ref).max(axis=(1, 2), keepdims=True)
    np.testing.assert_array_less(np.abs(f - f_ref) / scale, 1e-6)


def test_reduced_energy_torch_in_torch_out(pool, aldp, conformations, reference, openmm_reference_energies):
    e_ref, f_ref = reference
    x = torch.as_tensor(conformations[:50], dtype=torch.float32)
    u, g = pool.reduced_energy(x, forces=True)
    assert isinstance(u, torch.Tensor) and u.dtype == torch.float64 and u.shape == (50,)
    u_ref = openmm_reference_energies(aldp.system, x.double().numpy(), platform=pool.platform) / aldp.kT
    np.testing.assert_allclose(u.numpy(), u_ref, rtol=1e-6)
    # __call__ is reduced_energy
    np.testing.assert_allclose(pool(x).numpy(), u.numpy(), rtol=0)
    assert g.dtype == torch.float64 and g.shape == (50, 22, 3)


def test_chunking_does_not_change_results(aldp, pool, conformations, reference):
    e_ref, _ = reference
    for x, expected in ((conformations[:1], e_ref[:1]), (conformations[:3], e_ref[:3]), (conformations[:0], e_ref[:0])):
        np.testing.assert_allclose(pool.energy(x), expected, rtol=1e-6)
    # fixed chunks that do not divide the batch, through the pool itself
    e, _ = pool._pool.evaluate(conformations[:101], False, chunk_size=7)
    np.testing.assert_allclose(e, e_ref[:101], rtol=1e-6)


@pytest.mark.parametrize(
    "shape", [(4, 21, 3), (4, 22, 2), (22, 3), (66,), (2, 4, 22, 3)], ids=["atoms", "xyz", "2d", "1d", "4d"]
)
def test_bad_shapes_raise_value_error_naming_expected_shape(pool, shape):
    with pytest.raises(ValueError, match=r"\[batch, 22, 3\]"):
        pool.energy(np.zeros(shape))


def test_integer_positions_are_rejected(pool):
    with pytest.raises(ValueError, match="floating point"):
        pool.energy(np.zeros((2, 22, 3), dtype=np.int64))


def test_nonfinite_positions_give_inf_and_are_counted(pool, conformations, reference):
    e_ref, _ = reference
    x = conformations[:6].copy()
    x[1, 3, 0] = np.nan
    x[4, 0, 2] = np.inf
    x[5, 7, 1] = -np.inf
    before = pool.n_nonfinite
    e, f = pool.energy(x, forces=True)
    bad = [1, 4, 5]
    assert np.all(e[bad] == np.inf) and np.all(f[bad] == 0.0)
    good = [0, 2, 3]
    np.testing.assert_allclose(e[good], e_ref[good], rtol=1e-6)
    assert pool.n_nonfinite - before == 3


def test_nan_energy_from_openmm_gives_inf(pool, conformations):
    x = conformations[:3].copy()
    x[1, 0] = x[1, 1]  # two atoms on top of each other: OpenMM returns NaN
    before = pool.n_nonfinite
    e = pool.energy(x)
    assert np.isfinite(e[0]) and e[1] == np.inf and np.isfinite(e[2])
    assert pool.n_nonfinite - before == 1


def test_openmm_exception_for_one_conformation_gives_inf(aldp, conformations, openmm_reference_energies):
    """The worker routine itself: CPU raises on NaN coordinates; the next one is fine."""
    context = make_context(aldp.system, "CPU")
    x = conformations[:3].copy()
    x[1, 2, 1] = np.nan
    e, f = np.empty(3), np.empty((3, 22, 3))
    evaluate(context, x, e, f)
    expected = openmm_reference_energies(aldp.system, conformations[[0, 2]], platform="CPU")
    assert e[1] == np.inf and np.all(f[1] == 0)
    np.testing.assert_allclose(e[[0, 2]], expected, rtol=1e-12)


def test_killed_worker_is_restarted_and_the_call_completes(pool, conformations, reference):
    e_ref, _ = reference
    x = np.tile(conformations, (8, 1, 1))
    victim = pool.worker_pids[0]
    restarts = pool.n_restarts
    killer = threading.Timer(0.2, os.kill, (victim, signal.SIGKILL))
    killer.start()
    e = pool.energy(x)
    killer.join()
    assert pool.n_restarts > restarts, "the worker should have died mid-batch"
    assert victim not in pool.worker_pids and len(pool.worker_pids) == 2
    np.testing.assert_array_less(np.abs(e - np.tile(e_ref, 8)) / np.abs(np.tile(e_ref, 8)), 1e-6)
    np.testing.assert_allclose(pool.energy(conformations[:10]), e_ref[:10], rtol=1e-6)


def test_in_process_engine_and_named_platform(aldp, conformations, openmm_reference_energies):
    engine = OpenMMEnergy(aldp, platform="reference", n_workers=0)
    assert engine.platform == "Reference" and engine.worker_pids == []
    x = conformations[:20]
    np.testing.assert_allclose(engine.energy(x), openmm_reference_energies(aldp.system, x), rtol=1e-12)
    assert engine.n_evaluations == 20
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.energy(x)


def test_bad_arguments(aldp):
    with pytest.raises(ValueError, match="platform must be 'auto' or one of"):
        OpenMMEnergy(aldp, platform="Quantum", n_workers=0)
    with pytest.raises(ValueError, match="n_workers"):
        OpenMMEnergy(aldp, n_workers=-1)
    with pytest.raises(ValueError, match="chunk_size"):
        OpenMMEnergy(aldp, n_workers=0, chunk_size=0)
    with pytest.raises(TypeError, match="MolecularSystem"):
        OpenMMEnergy(aldp.system)


def _harmonic_pair_system(compute):
    """Two particles held by an openmm.PythonForce."""
    system = openmm.System()
    system.addParticle(1.0)
    system.addParticle(1.0)
    system.addForce(openmm.PythonForce(compute))
    topology = openmm.app.Topology()
    residue = topology.addResidue("PAIR", topology.addChain())
    for name in ("A", "B"):
        topology.addAtom(name, openmm.app.element.argon, residue)
    return MolecularSystem("pair", topology, system, np.array([[0.0, 0, 0], [0.1, 0, 0]]), 300.0)


def _spring(state):
    x = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    d = x[1] - x[0]
    return 50.0 * float(d @ d), np.array([100.0 * d, -100.0 * d])


def _spring_factory():
    return _harmonic_pair_system(lambda state: _spring(state)).system


def test_unserialisable_python_force_falls_back_to_in_process(conformations):
    pair = _harmonic_pair_system(lambda state: _spring(state))  # a lambda cannot be pickled
    with pytest.warns(RuntimeWarning, match="in this process"):
        engine = OpenMMEnergy(pair, platform="Reference", n_workers=2)
    assert engine.n_workers == 0
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    d = x[:, 1] - x[:, 0]
    np.testing.assert_allclose(engine.energy(x), 50.0 * (d * d).sum(1), rtol=1e-12)
    engine.close()


def test_system_factory_rebuilds_unserialisable_system_in_workers():
    pair = _harmonic_pair_system(lambda state: _spring(state))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = OpenMMEnergy(pair, platform="Reference", n_workers=1, system_factory=_spring_factory)
    x = np.random.default_rng(2).standard_normal((7, 2, 3))
    d = x[:, 1] - x[:, 0]
    e, f = engine.energy(x, forces=True)
    np.testing.assert_allclose(e, 50.0 * (d * d).sum(1), rtol=1e-12)
    np.testing.assert_allclose(f[:, 0], 100.0 * d, rtol=1e-12)
    with pytest.raises(TypeError, match="picklable"):
        OpenMMEnergy(pair, platform="Reference", n_workers=1, system_factory=lambda: pair.system)
    pids = engine.worker_pids
    engine.close()
    assert wait_gone(pids) == []


def test_close_leaves_no_child_processes(aldp):
    before = live_children()
    with OpenMMEnergy(aldp, platform="CPU", n_workers=2) as engine:
        pids = engine.worker_pids
        assert len(pids) == 2 and set(pids) <= live_children()
        engine.energy(np.repeat(aldp.positions[None], 4, axis=0))
    assert all(proc_state(p) is None for p in pids)
    assert not any(p.pid in pids for p in __import__("multiprocessing").active_children())
    assert live_children() <= before
    engine.close()  # idempotent


def test_garbage_collection_leaves_no_child_processes(aldp):
    before = live_children()
    engine = OpenMMEnergy(aldp, platform="CPU", n_workers=1)
    pids = engine.worker_pids
    del engine
    gc.collect()
    assert wait_gone(pids, timeout=5.0) == []
    assert live_children() <= before


_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    import numpy as np
    import openmm
    from openmm import app
    from openmm_cmt.energy import OpenMMEnergy
    from openmm_cmt.systems import MolecularSystem

    if __name__ == "__main__":
        # A shell that starts the test suite in the background (as CI may) hands its
        # children an ignored SIGINT; restore Python's own handler, as in a terminal.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        system = openmm.XmlSerializer.deserialize(open(sys.argv[1]).read())
        positions = np.load(sys.argv[2])
        topology = app.Topology()
        residue = topology.addResidue("MOL", topology.addChain())
        for i in range(len(positions)):
            topology.addAtom(f"A{i}", None, residue)
        engine = OpenMMEnergy(MolecularSystem("mol", topology, system, positions, 300.0), platform="CPU", n_workers=1)
        print("PIDS", *engine.worker_pids, flush=True)
        x = positions[None] + 0.01 * np.random.default_rng(0).standard_normal((200000, len(positions), 3))
        def interrupt_when_busy():
            # Ctrl-C in the middle of the batch, whatever the machine's load: wait until a
            # worker holds a chunk, then interrupt.
            while not any(w.state == "busy" for w in engine._pool.workers):
                time.sleep(0.01)
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt_when_busy, daemon=True).start()
        try:
            engine.energy(x)
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
        # the pool recovers from the interrupt ...
        print("ENERGY", engine.energy(x[:3])[0], flush=True)
        print("PIDS", *engine.worker_pids, flush=True)
        # ... and its workers go when the parent dies without any clean-up
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_interrupted_then_killed_parent_leaves_no_workers(tmp_path, aldp, openmm_reference_energies):
    (tmp_path / "system.xml").write_text(openmm.XmlSerializer.serialize(aldp.system))
    np.save(tmp_path / "positions.npy", aldp.positions)
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "system.xml"), str(tmp_path / "positions.npy")],
        capture_output=True, text=True, timeout=180, env=env,
    )
    lines = proc.stdout.splitlines()
    pids = [int(p) for line in lines if line.startswith("PIDS") for p in line.split()[1:]]
    assert "INTERRUPTED" in lines, proc.stdout + proc.stderr
    assert len(pids) == 2 and len(set(pids)) == 2, proc.stdout  # the interrupted worker was replaced
    x0 = aldp.positions[None] + 0.01 * np.random.default_rng(0).standard_normal((1, 22, 3))
    energy = float(next(line.split()[1] for line in lines if line.startswith("ENERGY")))
    np.testing.assert_allclose(energy, openmm_reference_energies(aldp.system, x0, platform="CPU")[0], rtol=1e-6)
    assert proc.returncode == -signal.SIGKILL
    assert wait_gone(pids) == []


def test_one_meaning_of_auto_platform(aldp):
    # The first of AUTO_PLATFORMS that creates a Context, for energies and dynamics alike.
    first = next(p for p in AUTO_PLATFORMS if p in available_platforms()
                 and (p != "CUDA" or torch.cuda.is_available()))
    assert resolve_platform("auto", aldp.system) == first
    context, name = create_context(aldp.system, openmm.VerletIntegrator(0.001), "auto")
    assert name == first and context.getPlatform().getName() == first
    assert resolve_platform("reference", aldp.system) == "Reference"
    with pytest.raises(ValueError, match="platform must be 'auto' or one of"):
        resolve_platform("NoSuchPlatform", aldp.system)
