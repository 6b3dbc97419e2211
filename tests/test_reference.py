"""Replicated Systems, the per-copy-temperature integrator, swaps and the reference CLI."""

import itertools
import json
import math

import numpy as np
import pytest
import torch  # noqa: F401  (before openmm)
import openmm
from openmm import app

from conftest import reference_energies

from openmm_cmt.energy.openmm_energy import OpenMMEnergy
from openmm_cmt.reference import ReplicaExchange, load_reference
from openmm_cmt.replicas import (
    check_geometry,
    copy_velocities,
    grid_offsets,
    kinetic_temperatures,
    obc_as_custom_gb,
    per_copy_langevin_integrator,
    replicate_system,
    set_copy_temperatures,
)
from openmm_cmt.reference.swaps import (
    RoundTripCounter,
    attempt_swaps,
    states_of_replicas,
    swap_log_acceptance,
)
from openmm_cmt.units import MOLAR_GAS_CONSTANT


def _perturbed(positions, n, scale, seed):
    rng = np.random.default_rng(seed)
    return positions[None] + scale * rng.standard_normal((n, *positions.shape))


def _assert_replica_sum(system, single_positions, platform, e_rtol, f_rtol, n_copies=5):
    """Replicated energy and forces equal the sums over single-molecule Contexts."""
    replicated, offsets = replicate_system(system, n_copies, positions=single_positions)
    xs = _perturbed(single_positions, n_copies, 0.01, seed=n_copies)
    e_singles, f_singles = reference_energies(system, xs, forces=True, platform=platform)
    placed = xs - xs.mean(1, keepdims=True) + offsets[:, None, :]
    (e,), (f,) = reference_energies(replicated, placed.reshape(1, -1, 3), forces=True, platform=platform)
    e_sum = sum(e_singles)
    f_all = np.concatenate(f_singles)
    assert abs(e - e_sum) <= e_rtol * abs(e_sum)
    assert np.abs(f - f_all).max() <= f_rtol * np.abs(f_all).max()


def test_replicated_aldp_energy_and_forces_equal_sum_of_copies(aldp):
    _assert_replica_sum(aldp.system, aldp.positions, "Reference", 1e-8, 1e-8)
    # CPU platform stores float32 coordinates (NOTES section 4: 4e-8 relative)
    _assert_replica_sum(aldp.system, aldp.positions, "CPU", 1e-6, 1e-5, n_copies=9)


def test_replicated_system_drops_only_the_motion_remover(aldp):
    replicated, _ = replicate_system(aldp.system, 3)
    kinds = sorted(type(f).__name__ for f in replicated.getForces())
    assert "CMMotionRemover" not in kinds and "NonbondedForce" not in kinds
    assert kinds.count("CustomNonbondedForce") == 1 and kinds.count("CustomGBForce") == 1
    assert replicated.getNumParticles() == 3 * aldp.n_atoms
    assert replicated.getParticleMass(2 * aldp.n_atoms + 5) == aldp.system.getParticleMass(5)


@pytest.fixture(scope="module")
def obc_system(aldp):
    forcefield = app.ForceField("amber99sbildn.xml", "amber99_obc.xml")
    return forcefield.createSystem(aldp.topology, nonbondedMethod=app.NoCutoff, constraints=None)


def test_obc_force_converts_to_equivalent_custom_gb(aldp, obc_system):
    obc = next(f for f in obc_system.getForces() if isinstance(f, openmm.GBSAOBCForce))
    native, custom = openmm.System(), openmm.System()
    for s, force in ((native, openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(obc))), (custom, obc_as_custom_gb(obc))):
        for i in range(aldp.n_atoms):
            s.addParticle(aldp.system.getParticleMass(i))
        s.addForce(force)
    xs = list(_perturbed(aldp.positions, 3, 0.02, seed=1))
    inside = aldp.positions.copy()
    inside[1] = inside[0] + [0.03, 0.0, 0.0]  # an atom inside a neighbour's scaled sphere
    xs = np.stack(xs + [inside])
    for e_native, f_native, e_custom, f_custom in zip(*reference_energies(native, xs, forces=True),
                                                      *reference_energies(custom, xs, forces=True)):
        assert abs(e_native - e_custom) <= 1e-7 * abs(e_native) + 1e-5
        assert np.abs(f_native - f_custom).max() <= 1e-6 * np.abs(f_native).max()


def test_replicated_native_obc_system_equals_sum_of_copies(aldp, obc_system):
    _assert_replica_sum(obc_system, aldp.positions, "Reference", 1e-8, 1e-6, n_copies=4)


def test_unsupported_forces_and_geometry_give_clear_errors(aldp):
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(aldp.system))
    system.addForce(openmm.CustomExternalForce("x"))
    with pytest.raises(ValueError, match="CustomExternalForce"):
        replicate_system(system, 2)
    cutoff_system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(aldp.system))
    for f in cutoff_system.getForces():
        if isinstance(f, openmm.NonbondedForce):
            f.setNonbondedMethod(openmm.NonbondedForce.CutoffNonPeriodic)
    with pytest.raises(ValueError, match="NoCutoff"):
        replicate_system(cutoff_system, 2)
    with pytest.raises(ValueError, match="cutoff"):
        replicate_system(aldp.system, 2, cutoff=0.5, positions=aldp.positions)
    with pytest.raises(ValueError, match="cutoff < spacing"):
        replicate_system(aldp.system, 2, spacing=1.0, cutoff=1.5)


def test_grid_is_centred_and_geometry_check_catches_drift(aldp):
    for n in (1, 7, 27, 30):
        g = grid_offsets(n, 5.0)
        d = np.sqrt(((g[:, None] - g[None]) ** 2).sum(-1)) + np.eye(n) * 1e9
        assert g.shape == (n, 3) and d.min() >= 5.0 - 1e-12
        assert np.all(np.abs(g).max(0) <= 5.0 * (math.ceil(n ** (1 / 3) - 1e-9) - 1) / 2 + 1e-12)
    g = grid_offsets(8, 5.0)
    x = aldp.positions - aldp.positions.mean(0)
    placed = x[None] + g[:, None]
    check_geometry(placed, g, 5.0, 1.5)
    drifted = placed.copy()
    neighbour = int(np.argmin(np.abs(np.linalg.norm(g - g[0], axis=1) - 5.0) + (np.arange(8) == 0) * 1e9))
    drifted[0] += 0.6 * (g[neighbour] - g[0])  # 3 nm towards a neighbour: within the cutoff
    with pytest.raises(ValueError, match="re-centre"):
        check_geometry(drifted, g, 5.0, 1.5)


def test_per_copy_integrator_reaches_each_copy_temperature():
    """Dimers with soft bonds, three copies at 100, 400 and 1600 K: the mean kinetic
    energy per degree of freedom of each copy is kT_c / 2 (equipartition)."""
    n_atoms, temps = 60, np.array([100.0, 400.0, 1600.0])
    mass = 12.0
    system = openmm.System()
    bonds = openmm.HarmonicBondForce()
    for c in range(len(temps)):
        for i in range(n_atoms):
            system.addParticle(mass)
        for i in range(0, n_atoms, 2):
            bonds.addBond(c * n_atoms + i, c * n_atoms + i + 1, 0.3, 200.0)
    system.addForce(bonds)
    integrator = per_copy_langevin_integrator(timestep=0.002, collision_rate=20.0)
    integrator.setRandomNumberSeed(7)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 4, (len(temps) * n_atoms, 3))
    x[1::2] = x[0::2] + [0.3, 0.0, 0.0]
    context.setPositions(x)
    set_copy_temperatures(integrator, temps, n_atoms)
    # start every copy at 300 K so that each has to move to its own temperature
    context.setVelocities(copy_velocities(np.full(n_atoms, mass), np.full(3, 300.0), rng).reshape(-1, 3))
    integrator.step(200)
    samples = []
    for _ in range(150):
        integrator.step(10)
        v = context.getState(getVelocities=True).getVelocities(asNumpy=True)._value.reshape(3, n_atoms, 3)
        samples.append(kinetic_temperatures(v, np.full(n_atoms, mass)))
    measured = np.mean(samples, axis=0)
    # per-sample relative sd sqrt(2/180); samples are about 1/(gamma*10 dt) = 2.5 apart in correlation time
    error = temps * math.sqrt(2.0 / (3 * n_atoms)) / math.sqrt(150)
    assert np.all(np.abs(measured - temps) < 5 * error + 0.005 * temps), (measured, temps)


def test_swap_log_acceptance_is_the_ratio_of_boltzmann_factors():
    rng = np.random.default_rng(0)
    beta = 1.0 / (MOLAR_GAS_CONSTANT * np.array([300.0, 450.0]))
    for _ in range(20):
        e_low, e_high = rng.normal(-100, 20, 2)
        before = -beta[0] * e_low - beta[1] * e_high
        after = -beta[0] * e_high - beta[1] * e_low
        assert math.isclose(swap_log_acceptance(beta[0], beta[1], e_low, e_high), after - before, rel_tol=1e-12, abs_tol=1e-12)


def test_swap_frequencies_match_metropolis_probability():
    temps = np.array([300.0, 400.0])
    n = 40000
    energies = np.tile([-80.0, -78.0], (n, 1))  # replica 0 (cold) has the lower energy
    replica_at = np.tile([0, 1], (n, 1))
    _, accepted = attempt_swaps(replica_at, energies, temps, 0, np.random.default_rng(1))
    beta = 1 / (MOLAR_GAS_CONSTANT * temps)
    p = min(1.0, math.exp((beta[0] - beta[1]) * (-80.0 + 78.0)))
    assert abs(accepted.mean() - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert np.array_equal(replica_at[accepted[:, 0]], np.tile([1, 0], (accepted.sum(), 1)))
    assert np.array_equal(replica_at[~accepted[:, 0]], np.tile([0, 1], ((~accepted).sum(), 1)))


def test_swap_chain_samples_the_permutation_distribution():
    """Alternating even/odd rounds over 3 temperatures with fixed replica energies leave
    the distribution over the 6 assignments proportional to exp(-sum_r beta_{s(r)} E_r)."""
    temps = np.array([300.0, 500.0, 900.0])
    beta = 1 / (MOLAR_GAS_CONSTANT * temps)
    energies_by_replica = np.array([-10.0, -4.0, 1.0])
    n = 30000
    replica_at = np.tile(np.arange(3), (n, 1))
    energies = np.tile(energies_by_replica, (n, 1))
    rng = np.random.default_rng(2)
    for k in range(40):
        attempt_swaps(replica_at, energies, temps, k % 2, rng)
    assert np.all(np.sort(replica_at, 1) == np.arange(3))
    state = states_of_replicas(replica_at)
    assert np.all(np.take_along_axis(state, replica_at, 1) == np.arange(3))
    perms = list(itertools.permutations(range(3)))
    weights = np.array([math.exp(-sum(beta[s[r]] * energies_by_replica[r] for r in range(3))) for s in perms])
    exact = weights / weights.sum()
    observed = np.array([np.all(state == np.array(s), axis=1).mean() for s in perms])
    assert np.all(np.abs(observed - exact) < 5 * np.sqrt(exact * (1 - exact) / n) + 1e-3), (observed, exact)


def test_swaps_reject_nonfinite_energies():
    with pytest.raises(ValueError, match="non-finite"):
        attempt_swaps(np.array([[0, 1]]), np.array([[np.nan, 1.0]]), [300.0, 400.0], 0, np.random.default_rng(0))


def test_round_trips_count_bottom_top_bottom():
    counter = RoundTripCounter(1, 3)
    # replica 0 path: 0 -> 1 -> 2 -> 1 -> 0 -> 2 -> 0; replica 2 starts at the top
    path0 = [0, 1, 2, 1, 0, 2, 0]
    for s in path0:
        others = [k for k in range(3) if k != s]
        counter.update(np.array([[s, others[0], others[1]]]))
    assert counter.round_trips[0, 0] == 2
    counter2 = RoundTripCounter(1, 2)
    for s in [1, 0, 1]:  # starts at the top: top -> bottom is not a round trip
        counter2.update(np.array([[s, 1 - s]]))
    assert counter2.round_trips[0, 0] == 0


def test_swap_moves_temperatures_and_rescales_velocities(aldp):
    energy = OpenMMEnergy(aldp, platform="Reference", n_workers=0)
    rex = ReplicaExchange(aldp, [300.0, 600.0], n_ladders=1, platform="Reference", energy=energy, seed=3)
    v_before = rex.replicas.get_velocities()
    old = rex.copy_temperatures()
    rex.replica_at[0] = [1, 0]
    rex._apply_temperatures(old)
    assert np.allclose(rex.copy_temperatures(), [600.0, 300.0])
    v_after = rex.replicas.get_velocities()
    assert np.allclose(v_after[0], v_before[0] * math.sqrt(2.0), rtol=1e-6)
    assert np.allclose(v_after[1], v_before[1] / math.sqrt(2.0), rtol=1e-6)
    kT = np.array(rex.replicas.integrator.getPerDofVariableByName("kT"))[:, 0]
    assert np.allclose(kT[: aldp.n_atoms], MOLAR_GAS_CONSTANT * 600.0)
    assert np.allclose(kT[aldp.n_atoms :], MOLAR_GAS_CONSTANT * 300.0)
    with pytest.raises(ValueError, match="increase"):
        ReplicaExchange(aldp, [300.0, 300.0], platform="Reference", energy=energy)


@pytest.mark.slow
def test_reference_cli_writes_a_valid_file(aldp, tmp_path):
    from openmm_cmt.cli import main

    out = tmp_path / "ref.npz"
    argv = [
        "reference", "alanine-dipeptide", "--out", str(out), "--platform", "CPU", "--n-ladders", "2",
        "--temperatures", "300,400,550", "--time-ps", "1.0", "--equilibration-ps", "0.5",
        "--swap-interval-ps", "0.25", "--save-interval-ps", "0.25", "--seed", "5", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    ref = load_reference(out)
    n_frames = 2 * 4
    assert ref["frames"].shape == (n_frames, aldp.n_atoms, 3)
    assert ref["energies"].shape == (n_frames,) and np.all(np.isfinite(ref["energies"]))
    assert ref["phi_psi"].shape == (n_frames, 2) and np.all(np.abs(ref["phi_psi"]) <= np.pi)
    diag, settings = ref["diagnostics"], ref["settings"]
    for key in ("swap_acceptance", "round_trips_total", "ram_tv_split_half", "phi_positive_fraction", "wall_s"):
        assert key in diag
    assert len(diag["swap_acceptance"]) == 2 and all(0.0 <= a <= 1.0 for a in diag["swap_acceptance"])
    assert diag["ram_tv_split_half"]["bins"] == 100 and diag["ram_tv_split_half"]["n_first"] == n_frames // 2
    (residue,) = diag["residues"]  # alanine dipeptide has one (phi, psi) pair
    assert sum(b["population"] for b in residue["basins"].values()) == pytest.approx(1.0)
    assert residue["ram_tv_split_half"] == diag["ram_tv_split_half"]
    assert settings["temperatures"] == [300.0, 400.0, 550.0] and settings["n_ladders"] == 2
    # what evaluate checks: the System the frames come from and their temperature
    from openmm_cmt.reference import check_reference, system_fingerprint

    assert settings["system_fingerprint"] == system_fingerprint(aldp.system) and settings["temperature_K"] == 300.0
    check_reference(settings, aldp)
    assert json.loads(json.dumps(diag)) == diag
    # the stored energies are those of the stored frames (independent OpenMM evaluation)
    for k, e in zip((0, n_frames - 1), reference_energies(aldp.system, ref["frames"][[0, n_frames - 1]])):
        assert abs(e - ref["energies"][k]) < 1e-3 * max(1.0, abs(e))
    assert not list(tmp_path.glob(".tmp-*"))


def test_reference_cli_rejects_bad_temperatures(tmp_path, capsys):
    from openmm_cmt.cli import main

    argv = ["reference", "alanine-dipeptide", "--out", str(tmp_path / "r.npz"), "--temperatures", "300,abc"]
    assert main(argv) == 2
    assert "--temperatures" in capsys.readouterr().err


def test_residue_diagnostics_give_each_residue_its_basins_and_split_agreement():
    from openmm_cmt.reference import residue_diagnostics

    ladders = np.tile([0, 1], 4)  # frames in time order, ladders interleaved
    phi = np.stack([np.full(8, -1.0), np.where(ladders == 0, 1.0, -1.0)], axis=1)
    psi = np.stack([np.zeros(8), np.full(8, 2.0)], axis=1)
    first, second = residue_diagnostics(phi, psi, ladders, n_ladders=2)
    assert first["basins"]["alpha_R"] == {"population": 1.0, "sem": 0.0}
    assert first["ram_tv_split_half"]["tv"] == 0.0 and first["ram_tv_split_ladders"]["tv"] == 0.0
    # residue 1 sits in alpha_L in ladder 0 and in beta in ladder 1: the ladders disagree completely
    assert second["basins"]["alpha_L/C7ax"]["population"] == 0.5
    assert second["basins"]["alpha_L/C7ax"]["sem"] == pytest.approx(0.5)
    assert second["basins"]["beta/PPII"]["population"] == 0.5
    assert second["ram_tv_split_ladders"]["tv"] == pytest.approx(1.0)
    assert second["ram_tv_split_half"]["tv"] == pytest.approx(0.0)
    single = residue_diagnostics(phi, psi, np.zeros(8, dtype=int), n_ladders=1)
    assert single[1]["basins"]["alpha_L/C7ax"]["sem"] is None and "ram_tv_split_ladders" not in single[1]
