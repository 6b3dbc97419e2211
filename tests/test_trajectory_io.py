"""Samples, reference frames and MC chains written as .npz, .h5, .dcd, .xtc and .pdb."""

import json

import numpy as np
import pytest
import torch

import openmm_cmt  # noqa: F401  (torch before openmm)
from openmm_cmt.cli import main
from openmm_cmt.presets import preset
from openmm_cmt.sampler import BoltzmannGeneratorSampler
from openmm_cmt.trajectory_io import FORMATS, read_frames, sidecar_path, write_frames

#: Largest coordinate error each format may make, nm.
TOLERANCE = {".npz": 0.0, ".h5": 1e-6, ".dcd": 1e-6, ".xtc": 5.01e-4, ".pdb": 5.01e-5}


@pytest.fixture(scope="module")
def run(aldp, tmp_path_factory):
    """An untrained run folder: its samples are as good as any for file formats."""
    config = preset("laptop", generator=dict(n_layers=2, hidden=16, depth=1, seed=0), energy_compile=False,
                    device="cpu")
    folder = tmp_path_factory.mktemp("run")
    BoltzmannGeneratorSampler(aldp, config).save(folder)
    return folder


@pytest.fixture(scope="module")
def reference_samples(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("samples") / "s.npz"
    assert main(["sample", str(run), "--n", "6", "--seed", "3", "--out", str(out)]) == 0
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("suffix", FORMATS)
def test_sample_command_round_trips_every_format(suffix, run, aldp, reference_samples, tmp_path):
    out = tmp_path / f"samples{suffix}"
    assert main(["sample", str(run), "--n", "6", "--seed", "3", "--out", str(out)]) == 0
    trajectory, arrays = read_frames(out, aldp.topology)
    assert trajectory.n_atoms == aldp.n_atoms == 22 and trajectory.n_frames == 6
    assert [a.name for a in trajectory.topology.atoms] == [a.name for a in aldp.topology.atoms()]
    expected = reference_samples["positions"]
    if suffix in (".npz", ".h5", ".dcd"):  # float32 storage
        expected = expected.astype(np.float32)
    np.testing.assert_allclose(trajectory.xyz, expected, rtol=1e-6 if suffix == ".dcd" else 0,
                               atol=TOLERANCE[suffix])
    for key in ("log_weights", "log_q", "energies"):
        np.testing.assert_array_equal(arrays[key], reference_samples[key])
    assert sidecar_path(out).endswith(".data.npz")
    assert (tmp_path / sidecar_path(out.name)).exists() == (suffix in (".dcd", ".xtc", ".pdb"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary files left


def test_samples_to_mdtraj_keeps_the_topology_and_the_positions(aldp, run):
    import mdtraj

    sampler = BoltzmannGeneratorSampler.load(run)
    torch.manual_seed(0)
    samples = sampler.sample(4)
    trajectory = samples.to_mdtraj()
    assert isinstance(trajectory, mdtraj.Trajectory) and trajectory.n_frames == 4
    assert [(a.name, a.residue.name) for a in trajectory.topology.atoms] == [
        (a.name, a.residue.name) for a in aldp.topology.atoms()]
    np.testing.assert_array_equal(trajectory.xyz, samples.positions.astype(np.float32))
    phi = mdtraj.compute_phi(trajectory)[1]
    assert phi.shape == (4, 1) and np.all(np.abs(phi) <= np.pi)
    sampler.close()


def test_unknown_extensions_are_refused_naming_the_formats(run, aldp, tmp_path, capsys):
    out = tmp_path / "samples.txt"
    assert main(["sample", str(run), "--n", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'.txt'" in err and all(suffix in err for suffix in FORMATS) and "Traceback" not in err
    assert not out.exists()
    with pytest.raises(ValueError, match=r"\.npz, \.h5, \.dcd, \.xtc, \.pdb"):
        write_frames(tmp_path / "x.gro", aldp.topology, aldp.positions[None])
    with pytest.raises(ValueError, match="needs the topology"):
        read_frames(tmp_path / "x.dcd")
    with pytest.raises(ValueError, match=r"shape \[n_frames, 22, 3\]"):
        write_frames(tmp_path / "x.dcd", aldp.topology, aldp.positions[None, :21])


def test_text_and_scalars_survive_every_format(aldp, tmp_path):
    data = {"settings": json.dumps({"a": [1, 2]}), "md_steps": 5, "plain_md": True, "w": np.arange(3.0)}
    x = np.repeat(aldp.positions[None], 3, axis=0)
    for suffix in FORMATS:
        write_frames(tmp_path / f"t{suffix}", aldp.topology, x, data)
        _, arrays = read_frames(tmp_path / f"t{suffix}", aldp.topology)
        assert json.loads(str(arrays["settings"])) == {"a": [1, 2]}, suffix
        assert int(arrays["md_steps"]) == 5 and bool(arrays["plain_md"]), suffix
        np.testing.assert_array_equal(arrays["w"], np.arange(3.0))


def test_mc_command_writes_one_trajectory_chain_after_chain(run, aldp, tmp_path):
    common = ["--n-cycles", "3", "--md-steps", "2", "--n-chains", "2", "--platform", "CPU", "--energy", "torch",
              "--no-compile", "--seed", "1"]
    assert main(["mc", str(run), *common, "--out", str(tmp_path / "mc.npz")]) == 0
    assert main(["mc", str(run), *common, "--out", str(tmp_path / "mc.dcd")]) == 0
    with np.load(tmp_path / "mc.npz") as f:
        positions, accepted = f["positions"], f["accepted"]
    trajectory, arrays = read_frames(tmp_path / "mc.dcd", aldp.topology)
    assert positions.shape == (3, 2, 22, 3) and trajectory.n_frames == 6
    assert arrays["chain"].tolist() == [0, 0, 0, 1, 1, 1] and arrays["cycle"].tolist() == [0, 1, 2] * 2
    np.testing.assert_array_equal(arrays["accepted"], accepted.T.reshape(-1))
    np.testing.assert_allclose(trajectory.xyz[3:], positions[:, 1], rtol=1e-6, atol=1e-6)
    assert int(arrays["md_steps"]) == 2 and not bool(arrays["plain_md"])


def test_reference_command_writes_frames_with_their_energies(aldp, tmp_path, openmm_reference_energies):
    argv = ["reference", "alanine-dipeptide", "--platform", "CPU", "--n-ladders", "1", "--temperatures", "300,400",
            "--time-ps", "0.5", "--equilibration-ps", "0", "--swap-interval-ps", "0.25", "--save-interval-ps",
            "0.25", "--seed", "2", "--quiet", "--out", str(tmp_path / "ref.h5")]
    assert main(argv) == 0
    trajectory, arrays = read_frames(tmp_path / "ref.h5")
    assert trajectory.n_atoms == 22 and trajectory.n_frames == arrays["energies"].shape[0] == 2
    assert "frames" not in arrays and arrays["phi_psi"].shape == (2, 2)
    assert json.loads(str(arrays["settings"]))["temperatures"] == [300.0, 400.0]
    e = openmm_reference_energies(aldp.system, trajectory.xyz.astype(np.float64))
    np.testing.assert_allclose(arrays["energies"], e, rtol=1e-3, atol=1e-3)
