"""Bond constraints: generators on the constraint manifold, the mass-weighted measure that
constrained MD samples, and refusals of Systems a generator would sample wrongly."""

import math
import os

import numpy as np
import pytest
import torch
from scipy import stats

import openmm_cmt  # noqa: F401  (torch before openmm)
import openmm
from openmm import app, unit

from openmm_cmt.coordinates.constraints import ConstraintMetric, constrained_ics
from openmm_cmt.energy import create_energy
from openmm_cmt.flows import Generator, GeneratorConfig
from openmm_cmt.mcmc import HybridMC, ManyChainHybridMC
from openmm_cmt.mcmc.proposals import check_system
from openmm_cmt.presets import preset
from openmm_cmt.sampler import BoltzmannGeneratorSampler
from openmm_cmt.systems.molecular_system import MolecularSystem

# A four-site molecule A-B-C-D: A-B and B-C constrained and sharing the light atom B
# between heavy A and C, so that sqrt(det G_M) ~ sin(theta_ABC) / m_B varies strongly
# with the free angle theta_ABC; C-D is a harmonic bond.
MASSES = (40.0, 1.0, 40.0, 12.0)
LENGTHS = (0.10, 0.12)
THETA0, K_THETA = 2.2, 25.0  # rad, kJ/mol/rad^2, angle A-B-C
THETA_BCD = 1.9
BOND_CD, K_CD = 0.15, 2e4
N_BINS = 10


def four_site(constrained=True) -> MolecularSystem:
    top = app.Topology()
    residue = top.addResidue("MOL", top.addChain())
    atoms = [top.addAtom(name, app.element.carbon, residue) for name in ("A", "B", "C", "D")]
    for i, j in ((0, 1), (1, 2), (2, 3)):
        top.addBond(atoms[i], atoms[j])
    system = openmm.System()
    for m in MASSES:
        system.addParticle(m)
    if constrained:
        system.addConstraint(0, 1, LENGTHS[0])
        system.addConstraint(1, 2, LENGTHS[1])
    else:
        flexible = openmm.HarmonicBondForce()
        flexible.addBond(0, 1, LENGTHS[0], 2e5)
        flexible.addBond(1, 2, LENGTHS[1], 2e5)
        system.addForce(flexible)
    bond = openmm.HarmonicBondForce()
    bond.addBond(2, 3, BOND_CD, K_CD)
    system.addForce(bond)
    # A CustomAngleForce, not HarmonicAngleForce: OpenMM's CCMA builds its coupling
    # matrix from HarmonicAngleForce equilibrium angles, which diverges for a light
    # central atom far from them; without angle terms it iterates from scratch.
    angle = openmm.CustomAngleForce("0.5*k*(theta-theta0)^2")
    angle.addPerAngleParameter("theta0")
    angle.addPerAngleParameter("k")
    angle.addAngle(0, 1, 2, [THETA0, K_THETA])
    angle.addAngle(1, 2, 3, [THETA_BCD, K_THETA])
    system.addForce(angle)
    b = np.zeros(3)
    a = np.array([LENGTHS[0], 0.0, 0.0])
    c = LENGTHS[1] * np.array([math.cos(THETA0), math.sin(THETA0), 0.0])
    e = (b - c) / np.linalg.norm(b - c)
    p1 = np.cross(e, [0.0, 0.0, 1.0])
    p1 /= np.linalg.norm(p1)
    p2 = np.cross(e, p1)
    d = c + BOND_CD * (math.cos(THETA_BCD) * e + math.sin(THETA_BCD) * (math.cos(1.0) * p1 + math.sin(1.0) * p2))
    return MolecularSystem("four-site", top, system, np.stack([a, b, c, d]), 300.0)


def theta_abc(x) -> np.ndarray:
    x = np.asarray(x)
    u, v = x[..., 0, :] - x[..., 1, :], x[..., 2, :] - x[..., 1, :]
    cos = np.sum(u * v, -1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
    return np.arccos(np.clip(cos, -1.0, 1.0))


def det_gram(theta) -> np.ndarray:
    """det G_M of the two constraints sharing B (coordinates.constraints docstring)."""
    m_a, m_b, m_c, _ = MASSES
    return (1 / m_a + 1 / m_b) * (1 / m_c + 1 / m_b) - np.cos(theta) ** 2 / m_b**2


def angle_cdf(kT: float, metric: bool = True):
    """CDF of theta_ABC under exp(-u) on the constraint manifold: exp(-u(theta))
    sin(theta) times sqrt(det G_M) with respect to sigma_M, without it for the rigid
    (stiff-spring) limit."""
    theta = np.linspace(1e-6, math.pi - 1e-6, 400_001)
    density = np.exp(-0.5 * K_THETA * (theta - THETA0) ** 2 / kT) * np.sin(theta)
    if metric:
        density = density * np.sqrt(det_gram(theta))
    cdf = np.cumsum(density)
    return theta, cdf / cdf[-1]


def exact_bins(kT: float):
    """Edges of N_BINS equal-probability bins of the exact angle density (outer bins
    open), and the bin probabilities of the density with and without the metric factor."""
    theta, cdf = angle_cdf(kT)
    inner = np.interp(np.arange(1, N_BINS) / N_BINS, cdf, theta)
    _, cdf_rigid = angle_cdf(kT, metric=False)
    rigid = np.diff(np.concatenate([[0.0], np.interp(inner, theta, cdf_rigid), [1.0]]))
    return inner, np.full(N_BINS, 1.0 / N_BINS), rigid


def bin_indicators(theta, inner) -> np.ndarray:
    return np.eye(N_BINS)[np.searchsorted(inner, theta)]


def hotelling_p_value(chains_a: np.ndarray, chains_b: np.ndarray | None = None, expected=None) -> float:
    """p-value that per-chain histograms ``[K, bins]`` (fractions per chain) of
    independent chains have the mean ``expected``, or the same mean as ``chains_b``.
    Chains are independent, so their spread measures the error of the mean however
    autocorrelated each chain is (Hotelling's T^2; one bin dropped, fractions sum to 1)."""
    a = chains_a[:, :-1]
    diff = a.mean(0) - (np.asarray(expected)[:-1] if chains_b is None else chains_b[:, :-1].mean(0))
    cov = np.cov(a.T) / len(a)
    n = len(a)
    if chains_b is not None:
        cov = cov + np.cov(chains_b[:, :-1].T) / len(chains_b)
        n = min(n, len(chains_b))
    t2 = float(diff @ np.linalg.solve(cov, diff))
    p = a.shape[1]
    return float(stats.f.sf(t2 * (n - p) / (p * (n - 1)), p, n - p))


def weighted_p_value(theta, log_w, inner, expected) -> float:
    """Chi-square p-value of self-normalised importance-weighted bin probabilities
    against ``expected`` (delta-method covariance of the ratio estimator)."""
    w = np.exp(log_w - log_w.max())
    w = w / w.sum()
    h = bin_indicators(theta, inner)
    p_hat = w @ h
    centred = (h - p_hat)[:, :-1]
    cov = (centred * w[:, None] ** 2).T @ centred
    diff = (p_hat - expected)[:-1]
    return float(stats.chi2.sf(diff @ np.linalg.solve(cov, diff), N_BINS - 1))


class NoMetric(torch.nn.Module):
    """Drops 0.5 log det G_M: the density relative to the rigid-limit measure instead."""

    def forward(self, x):
        return torch.zeros(x.shape[0], dtype=x.dtype)


@pytest.fixture(scope="module")
def molecule():
    return four_site()


@pytest.fixture(scope="module")
def generator(molecule):
    torch.manual_seed(0)
    return Generator.from_system(molecule, GeneratorConfig(n_layers=2, hidden=16, depth=1, angle_width=1.2, bond_width=0.06,
                                                           prior_sigma=0.3)).double()


# --- the metric and the generator's density ----------------------------------------------


def test_metric_is_half_log_det_of_the_mass_weighted_gram_matrix():
    torch.manual_seed(1)
    # a methyl-like cluster on atom 0 joined to a chain 0-4-5, and an isolated pair
    pairs = [(0, 1), (2, 0), (0, 3), (4, 5), (6, 7), (0, 4)]
    masses = np.array([12.0, 1.0, 1.5, 1.2, 14.0, 1.0, 16.0, 2.0])
    metric = ConstraintMetric(np.array(pairs), masses).double()
    x = torch.randn(4, 8, 3, dtype=torch.float64)
    expected = []
    for xb in x:
        jac = torch.autograd.functional.jacobian(lambda y: torch.stack([(y[i] - y[j]).norm() for i, j in pairs]), xb)
        jac = jac.reshape(len(pairs), -1)
        gram = jac @ torch.diag(torch.tensor(np.repeat(1.0 / masses, 3))) @ jac.T
        expected.append(0.5 * torch.logdet(gram))
    torch.testing.assert_close(metric(x), torch.stack(expected))
    torch.testing.assert_close(torch.jit.script(metric)(x), torch.stack(expected))


def test_generator_holds_constrained_bonds_at_the_system_distances(molecule, generator):
    assert generator.n_constraints == 2 and generator.dim == 3 * 4 - 6 - 2
    torch.manual_seed(2)
    x, log_q = generator.sample(500)
    x = x.detach()
    np.testing.assert_allclose(np.linalg.norm(x[:, 0] - x[:, 1], axis=-1), LENGTHS[0], rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(x[:, 1] - x[:, 2], axis=-1), LENGTHS[1], rtol=1e-12)
    torch.testing.assert_close(generator.log_prob(x), log_q.detach())
    torch.testing.assert_close(torch.jit.script(generator).log_prob(x), log_q.detach())
    # log q = log q_free - log J - 0.5 log det G_M: the metric term alone, analytically
    plain = Generator.from_system(molecule, GeneratorConfig(n_layers=2, hidden=16, depth=1, angle_width=1.2, bond_width=0.06,
                                                            prior_sigma=0.3)).double()
    plain.load_state_dict(generator.state_dict())
    plain.metric = NoMetric()
    difference = (generator.log_prob(x) - plain.log_prob(x)).detach().numpy()
    np.testing.assert_allclose(difference, -0.5 * np.log(det_gram(theta_abc(x.numpy()))), atol=1e-10)
    # off the constraint manifold (1 % longer A-B): outside the support, not NaN
    stretched = x.clone()
    stretched[:, 0] = x[:, 1] + 1.01 * (x[:, 0] - x[:, 1])
    assert torch.isneginf(generator.log_prob(stretched)).all()


def test_importance_weights_give_the_constrained_md_density_and_not_without_the_metric(molecule, generator):
    inner, expected, rigid = exact_bins(molecule.kT)
    assert np.abs(rigid - expected).max() > 0.02  # the factor matters for this molecule
    engine = create_energy(molecule, engine="torch", compile=False)
    torch.manual_seed(3)
    with torch.no_grad():
        x, log_q = generator.sample(40_000)
        u = engine.reduced_energy(x)
        log_q_rigid = log_q + generator.metric(x)  # the density without the metric factor
    u = np.asarray(u, dtype=np.float64)
    theta = theta_abc(x.numpy())
    assert weighted_p_value(theta, -u - log_q.numpy(), inner, expected) > 1e-3
    assert weighted_p_value(theta, -u - log_q_rigid.numpy(), inner, expected) < 1e-6


# --- constrained MD and hybrid MC ----------------------------------------------------------

N_CHAINS = 128
MD = dict(timestep=0.002, collision_rate=10.0, platform="CPU", properties={"Threads": "1"})


def _chains(molecule, generator, md_steps, seed):
    energy = create_energy(molecule, engine="torch", compile=False)
    return ManyChainHybridMC(molecule, generator, N_CHAINS, md_steps=md_steps, energy=energy, seed=seed, **MD)


def _per_chain_histograms(chains, inner, n_cycles, proposals=True, burn_in=0):
    chains.run(burn_in, proposals=proposals)
    counts = np.zeros((chains.n_chains, N_BINS))

    def record(c):
        x = c.positions()
        lengths = np.linalg.norm(x[:, 0] - x[:, 1], axis=-1), np.linalg.norm(x[:, 1] - x[:, 2], axis=-1)
        for length, d in zip(lengths, LENGTHS):
            assert np.abs(length / d - 1.0).max() < 1e-4  # every chain stays on the manifold
        counts[:] += bin_indicators(theta_abc(x), inner)

    chains.run(n_cycles, proposals=proposals, callback=record)
    return counts / n_cycles


@pytest.fixture(scope="module")
def md_histograms(molecule, generator):
    """Per-chain angle histograms of constrained Langevin MD (no generator moves)."""
    inner, _, _ = exact_bins(molecule.kT)
    chains = _chains(molecule, generator, md_steps=100, seed=11)
    return _per_chain_histograms(chains, inner, n_cycles=80, proposals=False, burn_in=10)


def test_constrained_md_samples_the_mass_weighted_surface_measure(molecule, md_histograms):
    _, expected, rigid = exact_bins(molecule.kT)
    assert hotelling_p_value(md_histograms, expected=expected) > 1e-3
    assert hotelling_p_value(md_histograms, expected=rigid) < 1e-6


@pytest.mark.parametrize("metric", [True, False])
def test_hybrid_mc_agrees_with_constrained_md_only_with_the_metric_factor(molecule, generator, md_histograms, metric):
    inner, _, _ = exact_bins(molecule.kT)
    proposal_generator = generator
    if not metric:
        proposal_generator = Generator.from_system(molecule, GeneratorConfig(n_layers=2, hidden=16, depth=1, angle_width=1.2,
                                                                             bond_width=0.06, prior_sigma=0.3)).double()
        proposal_generator.load_state_dict(generator.state_dict())
        proposal_generator.metric = NoMetric()
    chains = _chains(molecule, proposal_generator, md_steps=10, seed=12)
    histograms = _per_chain_histograms(chains, inner, n_cycles=150, burn_in=30)
    assert 0.2 < chains.acceptance_rate < 0.9  # generator jumps dominate the 20 fs of MD
    p_value = hotelling_p_value(histograms, md_histograms)
    if metric:
        assert p_value > 1e-3
    else:  # the same test fails, far beyond its threshold
        assert p_value < 1e-5


def test_hybrid_mc_refuses_mismatched_constraints(molecule, generator):
    flexible = four_site(constrained=False)
    with pytest.raises(ValueError, match="does not constrain"):
        check_system(flexible.system, generator)
    plain = Generator.from_system(flexible, GeneratorConfig(n_layers=2, hidden=16, depth=1))
    with pytest.raises(ValueError, match="does not hold fixed"):
        check_system(molecule.system, plain)
    moved = four_site()
    moved.system.setConstraintParameters(0, 0, 1, 0.11)
    with pytest.raises(ValueError, match="0.110000 nm"):
        check_system(moved.system, generator)


# --- unsupported constraints -----------------------------------------------------------------


def test_constraints_that_are_not_zmatrix_bonds_are_refused():
    z = np.array([[1, -1, -1, -1], [0, 1, -1, -1], [2, 1, 0, -1], [3, 2, 1, 0]])
    fixed, lengths = constrained_ics(z, [(0, 1, 0.1), (2, 1, 0.12)])
    assert fixed.tolist() == [0, 1] and lengths.tolist() == [0.1, 0.12]
    with pytest.raises(ValueError, match=r"constraint 1 between atoms 0 \(A\) and 2 \(C\).*constraints=HBonds"):
        constrained_ics(z, [(0, 1, 0.1), (0, 2, 0.2)], ["A", "B", "C", "D"])
    molsys = four_site()
    molsys.system.addConstraint(0, 2, 0.2)  # an H-X-H-like distance constraint
    with pytest.raises(ValueError, match="not a bond of the molecule's Z-matrix"):
        Generator.from_system(molsys)


def test_harmonic_scaling_leaves_out_the_constrained_bonds(molecule):
    generator = Generator.from_system(molecule, GeneratorConfig(n_layers=2, hidden=16, depth=1, scaling="harmonic"))
    assert generator.dim == 4 and torch.isfinite(generator.ic_half_width).all()


# --- an ordinary OpenMM script -------------------------------------------------------------------


def _aldp_pdb():
    import openmmtools

    return app.PDBFile(os.path.join(os.path.dirname(openmmtools.__file__), "data", "alanine-dipeptide-gbsa",
                                    "alanine-dipeptide.pdb"))


def tiny_config():
    return preset(
        "laptop",
        generator=dict(n_layers=2, hidden=16, depth=1, seed=0),
        cmt=dict(n_steps=3, samples_per_step=256, buffer_size=512, grad_steps_per_step=3, batch_size=128, seed=0),
        energy_compile=False, device="cpu", checkpoint_every=1, eval_samples=512,
    )  # fmt: skip


def test_hbonds_script_trains_and_hybrid_mc_keeps_the_constraints():
    pdb = _aldp_pdb()
    forcefield = app.ForceField("amber14-all.xml", "implicit/obc2.xml")
    system = forcefield.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.002 * unit.picoseconds)
    integrator.setRandomNumberSeed(1)
    simulation = app.Simulation(pdb.topology, system, integrator, openmm.Platform.getPlatformByName("CPU"),
                                {"Threads": "1"})
    simulation.context.setPositions(pdb.positions)
    simulation.minimizeEnergy(maxIterations=100)
    simulation.step(50)

    sampler = BoltzmannGeneratorSampler.from_simulation(simulation, config=tiny_config())
    assert sampler.generator.n_constraints == system.getNumConstraints() == 12
    assert sampler.generator.dim == 3 * 22 - 6 - 12
    sampler.train(progress=False)
    assert len(sampler.history) == 3 and all(np.isfinite(r["loss"]) for r in sampler.history)

    constraints = [system.getConstraintParameters(k) for k in range(system.getNumConstraints())]
    tolerance = integrator.getConstraintTolerance()

    def violation(x):
        return max(abs(np.linalg.norm(x[i] - x[j]) / d.value_in_unit(unit.nanometer) - 1) for i, j, d in constraints)

    torch.manual_seed(4)
    samples = sampler.sample(64)
    assert max(violation(x) for x in samples.positions) < 1e-6
    # Start the chain from the generator draw of least weight, so that jumps get accepted.
    start = samples.positions[np.argmin(np.where(np.isfinite(samples.log_weights), samples.log_weights, np.inf))]
    simulation.context.setPositions(start)
    hybrid = HybridMC(simulation, sampler, md_steps=5, seed=3, batch_size=32)
    accepted = []

    def record(h):
        if h.last["accepted"]:
            x = h.positions()
            v = simulation.context.getState(getVelocities=True).getVelocities(asNumpy=True).value_in_unit(
                unit.nanometer / unit.picosecond)
            accepted.append((violation(x), max(abs(np.dot(v[i] - v[j], x[i] - x[j])) for i, j, _ in constraints)))

    for _ in range(10):  # generator moves alone first: MD would relax the start itself
        hybrid.propose()
        record(hybrid)
    hybrid.run(10, callback=record)
    assert hybrid.n_accepted >= 1 and len(accepted) == hybrid.n_accepted
    assert max(a for a, _ in accepted) < tolerance  # accepted states satisfy the constraints
    assert max(b for _, b in accepted) < 1e-4  # and their fresh velocities are tangent to them
    simulation.step(20)
    state = simulation.context.getState(getEnergy=True, getPositions=True)
    assert np.isfinite(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    assert violation(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)) < 10 * tolerance
    sampler.close()


# --- refusals at construction ----------------------------------------------------------------------


def _from_system(system, topology=None, temperature=300.0):
    molsys = four_site()
    # Extra particles sit apart on a line, so that only the check under test can refuse them.
    positions = 2.0 + 0.3 * np.arange(system.getNumParticles() * 3, dtype=float).reshape(-1, 3)
    positions[:4] = molsys.positions
    return BoltzmannGeneratorSampler.from_system(topology or molsys.topology, system, positions, temperature,
                                                 config=tiny_config())


def test_periodic_systems_and_explicit_solvent_are_refused():
    system = four_site().system
    force = openmm.NonbondedForce()
    for _ in range(4):
        force.addParticle(0.0, 0.3, 0.0)
    force.setNonbondedMethod(openmm.NonbondedForce.PME)
    system.addForce(force)
    system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) for row in 3.0 * np.eye(3)))
    with pytest.raises(ValueError, match="periodic boundary conditions.*implicit solvent"):
        _from_system(system)
    modeller = app.Modeller(four_site().topology, four_site().positions * unit.nanometer)
    water = app.Topology()
    residue = water.addResidue("HOH", water.addChain())
    atoms = [water.addAtom(n, e, residue) for n, e in (("O", app.element.oxygen), ("H1", app.element.hydrogen),
                                                        ("H2", app.element.hydrogen))]
    water.addBond(atoms[0], atoms[1])
    water.addBond(atoms[0], atoms[2])
    modeller.add(water, np.array([[1.0, 1, 1], [1.1, 1, 1], [1.0, 1.1, 1]]) * unit.nanometer)
    solvated = openmm.System()
    for m in MASSES + (16.0, 1.0, 1.0):
        solvated.addParticle(m)
    with pytest.raises(ValueError, match="explicit solvent.*1 water.*implicit/obc2.xml"):
        _from_system(solvated, modeller.topology)


def test_pdb_with_water_is_refused_before_parametrisation(tmp_path, capsys):
    pdb = _aldp_pdb()
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.addSolvent(app.ForceField("amber14-all.xml", "amber14/tip3p.xml"), numAdded=3)
    path = tmp_path / "solvated.pdb"
    with open(path, "w") as f:
        app.PDBFile.writeFile(modeller.topology, modeller.positions, f)
    with pytest.raises(ValueError, match="explicit solvent.*water"):
        MolecularSystem.from_pdb(path, implicit_solvent="obc2")
    from openmm_cmt.cli import main

    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "explicit solvent" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing started


def test_virtual_sites_drude_amoeba_and_massless_particles_are_refused():
    system = four_site().system
    system.setParticleMass(3, 0.0)
    system.setVirtualSite(3, openmm.TwoParticleAverageSite(1, 2, 0.5, 0.5))
    with pytest.raises(ValueError, match="virtual site.*particle 3"):
        _from_system(system)
    system = four_site().system
    system.setParticleMass(0, 0.0)
    with pytest.raises(ValueError, match="massless"):
        _from_system(system)
    for force in (openmm.DrudeForce(), openmm.AmoebaMultipoleForce()):
        system = four_site().system
        system.addForce(force)
        with pytest.raises(ValueError, match="Drude|AMOEBA"):
            _from_system(system)


def test_a_missing_temperature_is_refused():
    molsys = four_site()
    with pytest.raises(ValueError, match="no temperature"):
        _from_system(molsys.system, temperature=None)
    simulation = app.Simulation(molsys.topology, molsys.system, openmm.VerletIntegrator(0.001),
                                openmm.Platform.getPlatformByName("Reference"))
    simulation.context.setPositions(molsys.positions)
    with pytest.raises(ValueError, match="pass temperature="):
        BoltzmannGeneratorSampler.from_simulation(simulation, config=tiny_config())
    sampler = BoltzmannGeneratorSampler.from_simulation(simulation, temperature=310 * unit.kelvin, config=tiny_config())
    assert sampler.molsys.temperature == 310.0


# --- the same measure in exported files, openmmtools moves and saved runs ----------------------


def test_exported_energy_uses_the_constrained_measure(molecule, generator, tmp_path, openmm_reference_energies):
    from openmm_cmt.mcmc.export import (
        check_compatible, export_generator, generator_python_force, load_generator, read_metadata,
    )

    path = tmp_path / "generator.pt"
    metadata = export_generator(generator, molecule, path)
    assert metadata["constraints"] == [[0, 1, LENGTHS[0]], [1, 2, LENGTHS[1]]]
    assert read_metadata(path)["constraints"] == metadata["constraints"]
    with pytest.raises(ValueError, match="does not constrain"):
        check_compatible(metadata, four_site(constrained=False).system)
    assert len(check_system(molecule.system, load_generator(path, molecule.system))) == 2
    system = openmm.System()
    for m in MASSES:
        system.addParticle(m)
    system.addConstraint(0, 1, LENGTHS[0])
    system.addConstraint(1, 2, LENGTHS[1])
    system.addForce(generator_python_force(path, system))
    torch.manual_seed(5)
    x, log_q = generator.sample(3)
    for energy, lq in zip(openmm_reference_energies(system, x.detach().numpy()), log_q.detach().numpy()):
        assert energy == pytest.approx(-molecule.kT * lq, rel=1e-9)  # -kT log q, metric factor included


def test_openmmtools_move_keeps_constraints_and_tangent_velocities(molecule, generator):
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from openmmtools import cache, states
    from openmm_cmt.mcmc.moves import BoltzmannGeneratorMove

    engine = create_energy(molecule, engine="torch", compile=False)
    torch.manual_seed(6)
    with torch.no_grad():
        x, log_q = generator.sample(256)
        log_w = -np.asarray(engine.reduced_energy(x)) - log_q.numpy()
    start = x.numpy()[np.argmin(log_w)]  # the least likely draw: jumps away get accepted
    thermodynamic_state = states.ThermodynamicState(molecule.system, molecule.temperature * unit.kelvin)
    sampler_state = states.SamplerState(start * unit.nanometer)
    context_cache = cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"))
    move = BoltzmannGeneratorMove(generator, seed=7)
    for _ in range(5):
        move.apply(thermodynamic_state, sampler_state, context_cache=context_cache)
    assert move.n_accepted >= 1
    y = sampler_state.positions.value_in_unit(unit.nanometer)
    v = sampler_state.velocities.value_in_unit(unit.nanometer / unit.picosecond)
    for (i, j), d in zip(((0, 1), (1, 2)), LENGTHS):
        assert np.linalg.norm(y[i] - y[j]) == pytest.approx(d, rel=1e-9)
        assert abs(np.dot(v[i] - v[j], y[i] - y[j])) < 1e-6
    with pytest.raises(ValueError, match="redrawn"):
        BoltzmannGeneratorMove(generator, redraw_velocities=False).apply(
            thermodynamic_state, sampler_state, context_cache=context_cache)


def test_a_saved_constrained_run_loads_with_the_same_density(tmp_path):
    sampler = _from_system(four_site().system)
    assert sampler.generator.n_constraints == 2
    sampler.save(tmp_path)
    loaded = BoltzmannGeneratorSampler.load(tmp_path)
    torch.manual_seed(8)
    x, log_w = sampler.sample(64)
    np.testing.assert_allclose(loaded.log_prob(x), sampler.log_prob(x), rtol=1e-6)
    torch.testing.assert_close(loaded.generator.constraint_lengths, sampler.generator.constraint_lengths)


@pytest.mark.parametrize("constraints", ["AllBonds", "HAngles"])
def test_allbonds_without_rings_work_and_hangles_are_refused(constraints):
    pdb = _aldp_pdb()
    system = app.ForceField("amber14-all.xml", "implicit/obc2.xml").createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=getattr(app, constraints))
    molsys = MolecularSystem("aldp", pdb.topology, system, pdb.getPositions(asNumpy=True), 300.0)
    if constraints == "HAngles":
        with pytest.raises(ValueError, match=r"constraint \d+ between atoms \d+ \(H\w*\) and \d+ \(H\w*\).*HAngles"):
            Generator.from_system(molsys)
        return
    generator = Generator.from_system(molsys, GeneratorConfig(n_layers=2, hidden=16, depth=1)).double()
    assert generator.n_constraints == 21 and generator.dim == 60 - 21  # every bond of the tree
    torch.manual_seed(9)
    x, log_q = generator.sample(16)
    torch.testing.assert_close(generator.log_prob(x.detach()), log_q.detach())
    for k in range(system.getNumConstraints()):
        i, j, d = system.getConstraintParameters(k)
        np.testing.assert_allclose(np.linalg.norm(x[:, i].detach() - x[:, j].detach(), axis=-1),
                                   d.value_in_unit(unit.nanometer), rtol=1e-12)


def test_ring_closing_constraints_are_refused():
    top = app.Topology()
    residue = top.addResidue("RNG", top.addChain())
    atoms = [top.addAtom(f"C{i}", app.element.carbon, residue) for i in range(4)]
    bonds = ((0, 1), (1, 2), (2, 0), (0, 3))
    system = openmm.System()
    for i, j in bonds:
        top.addBond(atoms[i], atoms[j])
    for _ in atoms:
        system.addParticle(12.0)
    for i, j in bonds:
        system.addConstraint(i, j, 0.15)
    positions = np.array([[0.0, 0, 0], [0.15, 0, 0], [0.075, 0.13, 0], [-0.1, -0.1, 0.05]])
    molsys = MolecularSystem("ring", top, system, positions, 300.0)
    with pytest.raises(ValueError, match="ring-closing bond under constraints=AllBonds"):
        Generator.from_system(molsys)


def test_hybrid_mc_refuses_other_masses_of_constrained_atoms(molecule, generator):
    repartitioned = four_site()
    repartitioned.system.setParticleMass(1, 3.0)  # hydrogen-mass-repartitioning style
    with pytest.raises(ValueError, match="particle 1 has mass 3.000 Da"):
        check_system(repartitioned.system, generator)


def test_cli_refuses_an_amoeba_force_field_before_training(tmp_path, capsys):
    from openmm_cmt.cli import main

    path = os.path.join(os.path.dirname(__import__("openmmtools").__file__), "data", "alanine-dipeptide-gbsa",
                        "alanine-dipeptide.pdb")
    assert main(["train", path, "--forcefield", "amoeba2018.xml", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "AMOEBA polarisable force field" in err and "amber14-all.xml" in err
    assert not (tmp_path / "run").exists()
