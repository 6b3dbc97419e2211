"""The OpenMM worker pool from user scripts: no main guard needed, user code never re-run,
stopped workers replaced within the stated timeout."""

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
from openmm import app, unit

from openmm_cmt.energy import OpenMMEnergy
from openmm_cmt.systems import alanine_dipeptide

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# An ordinary OpenMM script: no `if __name__ == "__main__":` guard anywhere.
_UNGUARDED = textwrap.dedent(
    """
    import sys
    import numpy as np
    from openmm import app
    from openmm_cmt.energy import OpenMMEnergy
    from openmm_cmt.systems import MolecularSystem

    with open(sys.argv[1], "a") as marker:
        marker.write("body ran\\n")
    pdb = app.PDBFile(sys.argv[3])
    forcefield = app.ForceField("amber14-all.xml", "implicit/gbn2.xml")
    system = forcefield.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff)
    molsys = MolecularSystem("aldp-gbn2", pdb.topology, system, pdb.getPositions(asNumpy=True), 300.0)
    x = np.load(sys.argv[2])
    engine = OpenMMEnergy(molsys, platform="CPU", n_workers=2)
    energies = np.asarray(engine.energy(x))
    print("PIDS", *engine.worker_pids)
    print("ENERGIES", *[repr(float(e)) for e in energies])
    engine.close()
    """
)


@pytest.mark.slow
def test_unguarded_script_starts_a_pool_and_runs_once(tmp_path, openmm_reference_energies):
    aldp = alanine_dipeptide()
    x = aldp.positions[None] + 0.01 * np.random.default_rng(0).standard_normal((40, aldp.n_atoms, 3))
    np.save(tmp_path / "x.npy", x)
    with open(tmp_path / "aldp.pdb", "w") as f:
        app.PDBFile.writeFile(aldp.topology, aldp.positions * 10.0 * unit.angstrom, f)
    script = tmp_path / "user_script.py"
    script.write_text(_UNGUARDED)
    marker = tmp_path / "marker.txt"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, str(script), str(marker), str(tmp_path / "x.npy"),
                           str(tmp_path / "aldp.pdb")],
                          capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bootstrapping" not in proc.stderr
    assert marker.read_text() == "body ran\n"  # the workers never ran the script again
    lines = proc.stdout.splitlines()
    pids = [int(p) for p in next(line for line in lines if line.startswith("PIDS")).split()[1:]]
    assert len(set(pids)) == 2
    energies = np.array([float(v) for v in next(line for line in lines if line.startswith("ENERGIES")).split()[1:]])
    system = app.ForceField("amber14-all.xml", "implicit/gbn2.xml").createSystem(aldp.topology,
                                                                                 nonbondedMethod=app.NoCutoff)
    np.testing.assert_allclose(energies, openmm_reference_energies(system, x), rtol=1e-5)


def _local_factory():
    return alanine_dipeptide().system


def test_system_factory_from_main_is_refused_clearly(monkeypatch):
    aldp = alanine_dipeptide()
    monkeypatch.setattr(_local_factory, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "_local_factory", _local_factory, raising=False)
    with pytest.raises(TypeError, match="__main__"):
        OpenMMEnergy(aldp, platform="Reference", n_workers=1, system_factory=_local_factory)


@pytest.mark.slow
def test_stopped_worker_is_replaced_within_the_timeout_with_a_warning():
    aldp = alanine_dipeptide()
    x = aldp.positions[None] + 0.01 * np.random.default_rng(1).standard_normal((1500, aldp.n_atoms, 3))
    with OpenMMEnergy(aldp, platform="Reference", n_workers=1, hang_timeout=3.0) as engine:
        expected = np.asarray(engine.energy(x[:5]))
        victim = engine.worker_pids[0]

        def stop_when_busy():
            while not any(w.state == "busy" for w in engine._pool.workers):
                time.sleep(0.01)
            os.kill(victim, signal.SIGSTOP)

        stopper = threading.Thread(target=stop_when_busy, daemon=True)
        stopper.start()
        start = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            e = np.asarray(engine.energy(x))
        stopper.join()
        assert victim not in engine.worker_pids and engine.n_restarts >= 1
        # 3 s of silence, plus one Reference evaluation and the replacement's start-up
        assert time.monotonic() - start < 90.0
        assert any("no sign of life for 3 s" in str(w.message) and str(victim) in str(w.message) for w in caught)
        np.testing.assert_allclose(e[:5], expected, rtol=1e-12)
        assert np.isfinite(e).all()
    assert not os.path.exists(f"/proc/{victim}") or open(f"/proc/{victim}/stat").read().split()[2] in "ZX"
