"""Run folders as untrusted input and as one unit: no code runs on load, one writer at a
time, saves published whole, failures reported before or during training."""

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import openmm

from openmm_cmt import io as run_io
from openmm_cmt.cli import main
from openmm_cmt.presets import preset
from openmm_cmt.sampler import BoltzmannGeneratorSampler
from openmm_cmt.systems import files as system_files
from openmm_cmt.systems.files import UntrustedRunError
from openmm_cmt.systems import MolecularSystem, alanine_dipeptide

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SET = ["--set", "generator.n_layers=2", "--set", "generator.hidden=16", "--set", "generator.depth=1",
            "--set", "cmt.samples_per_step=128", "--set", "cmt.buffer_size=256", "--set", "cmt.grad_steps_per_step=2",
            "--set", "cmt.batch_size=64", "--set", "energy_compile=false", "--set", "checkpoint_every=1",
            "--set", "generator.scaling=fixed"]


def tiny_config(n_steps=2):
    return preset(
        "laptop",
        generator=dict(n_layers=2, hidden=16, depth=1, scaling="fixed"),
        cmt=dict(n_steps=n_steps, samples_per_step=128, buffer_size=256, grad_steps_per_step=2, batch_size=64),
        energy_compile=False, device="cpu", checkpoint_every=1, eval_samples=64,
    )


@pytest.fixture(scope="module")
def trained():
    """A sampler as saved before training (run-folder mechanics need no training)."""
    return BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config=tiny_config(n_steps=1))


@pytest.fixture
def run(trained, tmp_path):
    folder = tmp_path / "run"
    trained.save(folder)
    return folder


# -- no code execution on load -------------------------------------------------------------


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling creates the marker file
        return open, (self.marker, "w")


def _plant(folder, marker):
    """What an attacker controlling the folder can do: a PythonForce whose function is a
    pickle with a __reduce__ payload, with manifest and fingerprint made consistent."""
    snapshot = run_io.run_snapshot(folder)
    xml_path = os.path.join(snapshot, "system.xml")
    function = pickle.dumps(_Payload(str(marker))).hex()
    force = (f'<Force forceGroup="0" function="{function}" name="PythonForce" type="PythonForce" '
             'usesPeriodic="0" version="2"><GlobalParameters/><Particles/></Force>')
    xml = open(xml_path).read().replace("</Forces>", force + "\n\t</Forces>")
    open(xml_path, "w").write(xml)
    meta_path = os.path.join(snapshot, "system.json")
    meta = json.load(open(meta_path))
    meta["fingerprint"] = hashlib.sha256(xml.encode()).hexdigest()
    open(meta_path, "w").write(json.dumps(meta))
    manifest_path = os.path.join(snapshot, "manifest.json")
    manifest = json.load(open(manifest_path))
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256(open(os.path.join(snapshot, name), "rb").read()).hexdigest()
    open(manifest_path, "w").write(json.dumps(manifest))


def test_planted_payload_never_runs_without_trust(run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    _plant(run, marker)
    commands = [
        ["evaluate", str(run), "--reference", "none"],
        ["sample", str(run), "--n", "8", "--out", str(tmp_path / "s.npz")],
        ["export", str(run), "--out", str(tmp_path / "g.pt")],
        ["mc", str(run), "--n-cycles", "1", "--md-steps", "1"],
        ["train", "alanine-dipeptide", "--out", str(run), "--resume", "--quiet", "--no-evaluate"],
        ["train", str(run), "--out", str(tmp_path / "other"), "--quiet", "--no-evaluate"],
        ["reference", str(run), "--out", str(tmp_path / "ref.npz")],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "PythonForce" in err and "--trust-run" in err and "Traceback" not in err, (argv, err)
        assert not marker.exists(), argv
    with pytest.raises(UntrustedRunError, match="trust_run=True"):
        BoltzmannGeneratorSampler.load(run)
    assert not marker.exists()
    # The payload is live: trusting the folder runs it (then the System itself fails to load).
    with pytest.raises(Exception):
        BoltzmannGeneratorSampler.load(run, trust_run=True)
    assert marker.exists()


def test_pickle_detection_leaves_numbers_alone():
    xml = openmm.XmlSerializer.serialize(alanine_dipeptide().system)
    system_files.check_system_xml(xml.replace('mass="1.008"', 'mass="800200002"', 1), "x")  # no error
    hidden = pickle.dumps(print).hex()
    with pytest.raises(UntrustedRunError, match="pickled attribute 'energy'"):
        system_files.check_system_xml(xml.replace('<Force ', f'<Force energy="{hidden}" ', 1), "x")
    with pytest.raises(UntrustedRunError, match="'SomePluginForce'"):
        system_files.check_system_xml(xml.replace('type="HarmonicBondForce"', 'type="SomePluginForce"', 1), "x")


def test_ml_potential_run_needs_trust_and_keeps_its_recipe(tmp_path):
    pytest.importorskip("openmmml")
    pytest.importorskip("ase")
    from ase.calculators.emt import EMT

    from openmm_cmt.energy import OpenMMEnergy

    aldp = alanine_dipeptide()
    emt = MolecularSystem.from_ml_potential(aldp.topology, aldp.positions, "ase", calculator=EMT(), name="aldp-emt")
    sampler = BoltzmannGeneratorSampler(emt, tiny_config())
    sampler.save(tmp_path / "ml")
    with pytest.raises(UntrustedRunError, match="PythonForce"):
        BoltzmannGeneratorSampler.load(tmp_path / "ml")
    loaded = BoltzmannGeneratorSampler.load(tmp_path / "ml", trust_run=True)
    assert loaded.molsys.system_factory is not None
    x = aldp.positions[None] + 0.005 * np.random.default_rng(0).standard_normal((3, 22, 3))
    with OpenMMEnergy(emt, platform="CPU", n_workers=0) as reference:
        expected = np.asarray(reference.energy(x))
    for system in (loaded.molsys.system, loaded.molsys.system_factory()):
        molsys = MolecularSystem("m", aldp.topology, system, aldp.positions, 300.0)
        with OpenMMEnergy(molsys, platform="CPU", n_workers=0) as engine:
            np.testing.assert_allclose(np.asarray(engine.energy(x)), expected, rtol=1e-10)


# -- one unit, one writer ------------------------------------------------------------------


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, and no clean-up either."""


def test_save_killed_between_files_leaves_the_previous_state(trained, run, monkeypatch):
    before = BoltzmannGeneratorSampler.load(run).generator.state_dict()
    changed = BoltzmannGeneratorSampler.load(run)
    with torch.no_grad():
        for p in changed.generator.parameters():
            p.add_(1.0)
    write, written = run_io._write_new, []

    def dies_after_two(path, data):
        if len(written) == 2:
            raise _Killed
        written.append(path)
        write(path, data)

    monkeypatch.setattr(run_io, "_write_new", dies_after_two)
    monkeypatch.setattr(run_io.shutil, "rmtree", lambda *a, **k: None)  # a kill cleans nothing
    with pytest.raises(_Killed):
        changed.save(run)
    monkeypatch.undo()
    assert any(n.startswith(".partial-") for n in os.listdir(run / "snapshots"))
    for k, v in BoltzmannGeneratorSampler.load(run).generator.state_dict().items():
        assert torch.equal(v, before[k]), k

    # killed after the snapshot is complete but before the pointer flips
    def dies(*args):
        raise _Killed

    monkeypatch.setattr(run_io, "_point", dies)
    with pytest.raises(_Killed):
        changed.save(run)
    monkeypatch.undo()
    for k, v in BoltzmannGeneratorSampler.load(run).generator.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the next save completes and keeps itself and the save it replaces
    changed.save(run)
    after = BoltzmannGeneratorSampler.load(run).generator.state_dict()
    assert all(torch.equal(v, changed.generator.state_dict()[k]) for k, v in after.items())
    assert sorted(os.listdir(run / "snapshots")) == ["000001", "000003"]


def test_files_get_default_permissions_and_old_layout_loads(trained, tmp_path):
    old = os.umask(0o022)
    try:
        trained.save(tmp_path / "run")
        run_io.atomic_write_text(tmp_path / "single.txt", "x")
    finally:
        os.umask(old)
    snapshot = run_io.run_snapshot(tmp_path / "run")
    for name in ("checkpoint.pt", "system.xml", "manifest.json"):
        assert os.stat(os.path.join(snapshot, name)).st_mode & 0o777 == 0o644, name
    assert os.stat(tmp_path / "single.txt").st_mode & 0o777 == 0o644
    # a folder in the layout before snapshots: the files themselves at the top
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("system.xml", "topology.pdb", "system.json", "config.json", "checkpoint.pt"):
        shutil.copyfile(os.path.join(snapshot, name), legacy / name)
    loaded = BoltzmannGeneratorSampler.load(legacy)
    assert loaded.history == trained.history
    loaded.save(legacy)  # converts it
    assert os.path.islink(legacy / "checkpoint.pt") and BoltzmannGeneratorSampler.load(legacy).history == trained.history


def test_second_writer_fails_at_once_naming_the_holder(run, tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import importlib.util, sys, time\n"
         f"spec = importlib.util.spec_from_file_location('rl', {os.path.join(ROOT, 'openmm_cmt', 'run_lock.py')!r})\n"
         "rl = importlib.util.module_from_spec(spec); spec.loader.exec_module(rl)\n"
         f"with rl.hold_run_lock({str(run)!r}):\n"
         "    print('held', flush=True); sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["train", "alanine-dipeptide", "--out", str(run), "--resume", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"being written by process {holder.pid}" in err and "Traceback" not in err
        with pytest.raises(Exception, match=f"process {holder.pid}"):
            BoltzmannGeneratorSampler.load(run).save(run)
    finally:
        holder.communicate("", timeout=30)
    BoltzmannGeneratorSampler.load(run).save(run)  # the lock went with its holder


def test_two_concurrent_trains_one_fails_clearly(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "alanine-dipeptide", "--out", str(out), "--steps", "1", "--no-evaluate", "--quiet", *TINY_SET]
    first = subprocess.Popen([sys.executable, "-m", "openmm_cmt.cli", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        # the second train starts while the first holds the folder (its lock names it)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            lock = out / ".lock"
            if lock.exists() and lock.read_text().strip() == str(first.pid):
                break
            time.sleep(0.01)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert first.poll() is None, "the first train should still be running"
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stdout + stderr
    assert err.strip() == (f"openmm-cmt train: error: {out} is being written by process {first.pid} "
                           f"(lock {os.path.realpath(out / '.lock')}); wait for it to end or choose another folder")
    assert len(BoltzmannGeneratorSampler.load(out).history) == 1
    # once it is done, another train on the same folder is refused for holding a run
    assert main(argv) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err


# -- failures before and during training ---------------------------------------------------


def test_unwritable_out_fails_before_training_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["train", "alanine-dipeptide", "--out", str(blocker / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(blocker / "run") in err and "Traceback" not in err


def test_failed_saves_are_retried_reported_and_rescued(tmp_path, capsys, monkeypatch):
    import openmm_cmt.sampler as sampler_module

    real, calls = sampler_module.publish_run, []

    def flaky(folder, files, **kwargs):
        calls.append(folder)
        if len(calls) in (1, 3, 4, 5, 6):  # step 1 fails once; step 2 twice; the final save twice
            raise OSError(28, "No space left on device", str(folder))
        return real(folder, files, **kwargs)

    monkeypatch.setattr(sampler_module, "publish_run", flaky)
    monkeypatch.setattr(sampler_module, "SAVE_RETRY_SECONDS", 0.0)
    out = tmp_path / "run"
    code = main(["train", "alanine-dipeptide", "--out", str(out), "--steps", "2", "--no-evaluate", "--quiet",
                 *TINY_SET])
    err = capsys.readouterr().err
    assert code == 2
    assert "retrying" in err and "training continues" in err
    final = err.strip().splitlines()[-1]
    assert final.startswith("openmm-cmt train: error: could not save")
    assert "snapshots/000001 (after annealing step 1)" in final
    rescue = final.split("saved to ")[1].split(" instead")[0]
    assert len(BoltzmannGeneratorSampler.load(rescue).history) == 2
    assert len(BoltzmannGeneratorSampler.load(out).history) == 1
    shutil.rmtree(rescue)


def test_resume_refuses_options_it_would_ignore(run, capsys):
    for extra in (["--seed", "3"], ["--set", "cmt.lr=0.1"], ["--preset", "gpu"], ["--energy", "openmm"]):
        assert main(["train", "alanine-dipeptide", "--out", str(run), "--resume", *extra]) == 2
        err = capsys.readouterr().err
        assert extra[0] in err and "--resume" in err and "Traceback" not in err
    assert main(["train", "alanine-tetrapeptide", "--out", str(run), "--resume"]) == 2
    assert "holds a run of 'alanine-dipeptide'" in capsys.readouterr().err


@pytest.mark.parametrize("setting, expected", [
    ("cmt.lr=bogus", "cmt.lr must be a finite number > 0, got 'bogus'"),
    ("checkpoint_every=-7", "checkpoint_every must be an integer >= 0, got -7"),
    ("generator.hidden=1.5", "generator.hidden must be an integer >= 1 or null, got 1.5"),
    ("generator.typo=1", "unknown generator setting 'typo'; expected one of"),
    ("cmt.n_steps=true", "cmt.n_steps must be an integer >= 1, got True"),
])
def test_bad_settings_give_one_line_naming_the_key(setting, expected, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "alanine-dipeptide", "--out", str(out), "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err
    assert not out.exists()  # no empty run folder left behind


def test_clashing_atoms_are_named():
    aldp = alanine_dipeptide()
    positions = aldp.positions.copy()
    positions[7] = positions[4]
    clash = MolecularSystem("clash", aldp.topology, aldp.system, positions, 300.0)
    atoms = list(aldp.topology.atoms())
    with pytest.raises(ValueError, match=rf"atoms 4 \({atoms[4].name} of .*\) and 7 \({atoms[7].name} of"):
        BoltzmannGeneratorSampler(clash, tiny_config())


def test_without_symlinks_a_pointer_file_does(trained, tmp_path, monkeypatch):
    def no_symlinks(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(run_io.os, "symlink", no_symlinks)
    folder = tmp_path / "run"
    trained.save(folder)
    trained.save(folder)
    assert (folder / "current").read_text().strip() == "snapshots/000002"
    assert sorted(os.listdir(folder / "snapshots")) == ["000001", "000002"]  # and the one it replaced
    assert not (folder / "checkpoint.pt").exists()
    assert BoltzmannGeneratorSampler.load(folder).history == trained.history
    assert main(["train", "alanine-dipeptide", "--out", str(folder)]) == 2  # still a run, not a fresh folder


@pytest.mark.parametrize("argv, expected", [
    (["sample", "RUN", "--n", "0", "--out", "x.npz"], "argument --n: must be an integer >= 1, got '0'"),
    (["mc", "RUN", "--timestep", "-0.001"], "argument --timestep: must be a number > 0, got '-0.001'"),
    (["reference", "alanine-dipeptide", "--out", "r.npz", "--time-ps", "nan"], "argument --time-ps: must be a number > 0, got 'nan'"),
    (["train", "alanine-dipeptide", "--steps", "1.5"], "argument --steps: must be an integer >= 1, got '1.5'"),
    (["evaluate", "RUN", "--seed", "-1"], "argument --seed: must be an integer >= 0, got '-1'"),
])
def test_numeric_options_are_checked_before_anything_runs(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(expected) and err[-1].startswith(f"openmm-cmt {argv[0]}: error:")
