"""Replica exchange with the dynamics in torch (TorchEnergy forces): the integrator's
order, its thermostat, and energies that OpenMM's Reference platform reproduces."""

import numpy as np
import pytest

from openmm_cmt import systems
from openmm_cmt.reference import ReplicaExchange, TorchReplicas, check_reference, load_reference
from openmm_cmt.replicas import copy_velocities, kinetic_temperatures


def _total_energy_spread(molsys, timestep, time_ps=0.05):
    r = TorchReplicas(molsys, 4, timestep=timestep, collision_rate=0.0, seed=0, compile=False)
    r.set_temperatures(np.full(4, 300.0))
    r.set_velocities(copy_velocities(r.masses, np.full(4, 300.0), np.random.default_rng(0)))
    totals = []
    for _ in range(int(round(time_ps / timestep))):
        r.step(1)
        v = r.get_velocities()
        totals.append(r.potential_energies() + 0.5 * (r.masses[None, :, None] * v**2).sum(axis=(1, 2)))
    totals = np.array(totals)
    return totals.max(0) - totals.min(0)


@pytest.mark.slow
def test_without_friction_the_integrator_is_velocity_verlet_of_second_order(aldp):
    coarse, fine = _total_energy_spread(aldp, 0.0005), _total_energy_spread(aldp, 0.00025)
    # the total energy of a symplectic second-order scheme fluctuates as h^2
    assert np.all((coarse / fine > 3.0) & (coarse / fine < 5.0)), coarse / fine
    assert np.all(fine < 0.3)


@pytest.mark.slow
def test_each_copy_reaches_its_own_temperature(aldp):
    temps = np.repeat([300.0, 600.0], 8)
    r = TorchReplicas(aldp, len(temps), timestep=0.001, collision_rate=10.0, seed=3, compile=False)
    r.set_temperatures(temps)
    r.set_velocities(copy_velocities(r.masses, np.full(len(temps), 450.0), np.random.default_rng(1)))
    r.step(200)
    samples = []
    for _ in range(100):
        r.step(5)
        samples.append(kinetic_temperatures(r.get_velocities(), r.masses))
    measured = np.mean(samples, axis=0).reshape(2, 8).mean(1)
    # 66 degrees of freedom per copy, 8 copies, about 10 independent samples in 0.5 ps
    error = np.array([300.0, 600.0]) * np.sqrt(2.0 / 66 / 8 / 10)
    assert np.all(np.abs(measured - [300.0, 600.0]) < 5 * error), measured


@pytest.mark.slow
def test_torch_replica_exchange_energies_match_openmm_reference(aldp, openmm_reference_energies):
    with ReplicaExchange(aldp, [300.0, 400.0, 550.0], n_ladders=2, engine="torch", seed=4, compile=False, swap_interval=0.05,
                         save_interval=0.05) as rex:
        samples = rex.run(0.2, equilibration_ps=0.1)
        x = rex.replicas.get_positions()
        e_torch = rex.replicas.potential_energies()
    e_openmm = openmm_reference_energies(aldp.system, x)
    np.testing.assert_allclose(e_torch, e_openmm, rtol=1e-11, atol=1e-9)
    assert samples.frames.shape == (2 * 4, aldp.n_atoms, 3)
    # stored energies belong to the stored (float32) frames
    e_frames = openmm_reference_energies(aldp.system, samples.frames.astype(np.float64))
    np.testing.assert_allclose(samples.energies, e_frames, rtol=1e-4, atol=1e-2)
    assert samples.settings["engine"] == "torch" and samples.settings["platform"] == "torch-cpu"
    check_reference(samples.settings, aldp)
    assert sum(samples.diagnostics["swap_attempts"]) > 0
    assert all(0.0 <= a <= 1.0 for a in samples.diagnostics["swap_acceptance"])


def test_reference_cli_with_the_torch_engine(aldp, tmp_path):
    from openmm_cmt.cli import main

    out = tmp_path / "ref.npz"
    argv = ["reference", "alanine-dipeptide", "--out", str(out), "--engine", "torch", "--device", "cpu",
            "--n-ladders", "2", "--temperatures", "300,450", "--time-ps", "0.1", "--equilibration-ps", "0.05",
            "--swap-interval-ps", "0.05", "--save-interval-ps", "0.05", "--seed", "2", "--compile", "false", "--quiet"]
    assert main(argv) == 0
    ref = load_reference(out)
    assert ref["frames"].shape == (2 * 2, aldp.n_atoms, 3) and ref["settings"]["engine"] == "torch"
    check_reference(ref["settings"], aldp)


def test_torch_dynamics_refuse_constraints():
    molsys = systems.get("alanine-dipeptide")
    molsys.system.addConstraint(0, 1, 0.1)
    with pytest.raises(ValueError, match="constraints"):
        TorchReplicas(molsys, 2)


def test_compile_setting_reaches_the_force_engine(aldp):
    # building the torch.compile wrapper is lazy: nothing compiles until the first force call
    assert not TorchReplicas(aldp, 2, compile=False).energy.compiled_forces
    assert TorchReplicas(aldp, 2, compile=True).energy.compiled_forces
    with pytest.raises(ValueError, match="compile"):
        TorchReplicas(aldp, 2, compile="sometimes")
