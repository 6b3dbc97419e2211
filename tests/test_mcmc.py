"""Hybrid MD / Boltzmann-generator Monte Carlo: exactness on a molecule with a known torsion
distribution, a wrong acceptance rule caught by the same test, invariance to rigid motions,
the openmmtools move against the Simulation helper, and many chains against single-chain
computations.

The test molecule: four carbons with harmonic bonds and angles and a double-well torsion
(a CustomTorsionForce). In internal coordinates the Boltzmann density factorises and the
Jacobian's torsion factor is constant, so the torsion marginal is exactly proportional to
exp(-U_torsion(phi)/kT). Chains are autocorrelated: the chi-square statistics below divide
by an integrated autocorrelation time estimated by batch means (independent chains serve as
batches where there are many).
"""

import contextlib
import io
import math

import numpy as np
import pytest
import torch
import openmm
from openmm import app, unit
from scipy import integrate, stats

from conftest import reference_energies

from openmm_cmt.flows import Generator, GeneratorConfig
from openmm_cmt.mcmc.proposals import GeneratorProposal, as_generator, random_rotations
from openmm_cmt.mcmc.simulation import HybridMC
from openmm_cmt.systems import MolecularSystem
from openmm_cmt.units import MOLAR_GAS_CONSTANT

T = 300.0
KT = MOLAR_GAS_CONSTANT * T
BONDS = {(0, 1): (0.15, 0.02), (1, 2): (0.16, 0.02), (2, 3): (0.14, 0.02)}  # b0 nm, std nm
ANGLES = {(0, 1, 2): (1.9, 0.2), (1, 2, 3): (2.0, 0.2)}  # theta0 rad, std rad
# U_torsion / kT = A (1 + cos 2 phi) + B sin phi: wells near -pi/2 (about 80 % of the mass)
# and +pi/2, barriers of about 4 kT at 0 and pi.
A, B = 2.0, 0.8
EDGES = np.linspace(-math.pi, math.pi, 13)
TIMESTEP = 0.002  # ps; the stiffest bond vibrates with a period of about 0.2 ps
FRICTION = 5.0  # 1/ps


def torsion_energy(phi):
    """U_torsion / kT."""
    return A * (1 + np.cos(2 * phi)) + B * np.sin(phi)


def exact_bin_probabilities():
    weight = lambda p: math.exp(-torsion_energy(p))  # noqa: E731
    mass = np.array([integrate.quad(weight, a, b, epsabs=0, epsrel=1e-12)[0] for a, b in zip(EDGES[:-1], EDGES[1:])])
    return mass / mass.sum()


def dihedral(x):
    """Torsion angle of atoms 0-1-2-3 in (-pi, pi], IUPAC sign (checked against OpenMM)."""
    x = np.asarray(x)
    b0, b1, b2 = x[..., 0, :] - x[..., 1, :], x[..., 2, :] - x[..., 1, :], x[..., 3, :] - x[..., 2, :]
    n1, n2 = np.cross(b0, b1), np.cross(b1, b2)
    m = np.cross(n1, b1 / np.linalg.norm(b1, axis=-1, keepdims=True))
    return np.arctan2((m * n2).sum(-1), (n1 * n2).sum(-1))


def _chain_positions(phi=1.0):
    (b01, _), (b12, _), (b23, _) = BONDS.values()
    (t1, _), (t2, _) = ANGLES.values()
    p1 = np.array([b01, 0.0, 0.0])
    p2 = p1 + b12 * np.array([-math.cos(t1), math.sin(t1), 0.0])
    u = (p1 - p2) / np.linalg.norm(p1 - p2)
    n = np.array([0.0, 0.0, 1.0])
    m = np.cross(n, u)
    p3 = p2 + b23 * (math.cos(t2) * u + math.sin(t2) * (math.cos(phi) * m + math.sin(phi) * n))
    return np.stack([np.zeros(3), p1, p2, p3])


def _torsion_force():
    force = openmm.CustomTorsionForce(f"{KT!r}*({A}*(1+cos(2*theta)) + {B}*sin(theta))")
    force.addTorsion(0, 1, 2, 3, [])
    return force


@pytest.fixture(scope="module")
def chain():
    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    atoms = [topology.addAtom(f"C{i + 1}", app.element.carbon, residue) for i in range(4)]
    system = openmm.System()
    for _ in atoms:
        system.addParticle(12.0)
    bonds, angles = openmm.HarmonicBondForce(), openmm.HarmonicAngleForce()
    for (i, j), (b0, std) in BONDS.items():
        topology.addBond(atoms[i], atoms[j])
        bonds.addBond(i, j, b0, KT / std**2)
    for (i, j, k), (t0, std) in ANGLES.items():
        angles.addAngle(i, j, k, t0, KT / std**2)
    for force in (bonds, angles, _torsion_force()):
        system.addForce(force)
    return MolecularSystem("chain", topology, system, _chain_positions(), T)


@pytest.fixture(scope="module")
def generator(chain):
    """A deliberately imperfect generator: a few maximum-likelihood steps on prior draws
    resampled with weight exp(0.6 sin phi), so that q over-weights the minor well about
    threefold (reverse ESS about 10 %)."""
    g = Generator.from_system(chain, GeneratorConfig(n_layers=4, hidden=16, depth=1, bond_width=0.04, angle_width=0.4)).double()
    torch.manual_seed(0)
    with torch.no_grad():
        x, _ = g.sample(20000)
    w = np.exp(0.6 * np.sin(dihedral(x.numpy())))
    data = x[np.random.default_rng(0).choice(len(w), size=20000, p=w / w.sum())]
    optimiser = torch.optim.Adam(g.parameters(), lr=1e-2)
    for _ in range(60):
        loss = -g.log_prob(data[torch.randint(0, len(data), (256,))]).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return g.eval()


def _platform(name):
    return openmm.Platform.getPlatformByName(name), ({"Threads": "1"} if name == "CPU" else {})


def _simulation(molsys, seed=1, platform="CPU", system=None, integrator=None):
    if integrator is None:
        integrator = openmm.LangevinMiddleIntegrator(T * unit.kelvin, FRICTION / unit.picosecond, TIMESTEP * unit.picoseconds)
        integrator.setRandomNumberSeed(seed)
    simulation = app.Simulation(molsys.topology, system or molsys.system, integrator, *_platform(platform))
    simulation.context.setPositions(molsys.positions)
    return simulation


def _reduced_energies(system, x):
    return reference_energies(system, np.asarray(x).reshape(-1, system.getNumParticles(), 3)) / KT


# --- statistics --------------------------------------------------------------------------


def _bin_indicators(phi):
    return (np.digitize(phi, EDGES) - 1)[..., None] == np.arange(len(EDGES) - 1)


def _autocorrelation_time(batches):
    """Integrated autocorrelation time of bin indicators from batch means, ``batches``
    ``[n_batches, batch_length]`` of angles; averaged over bins, at least 1."""
    ind = _bin_indicators(batches).astype(float)  # [n_batches, length, bins]
    var = ind.reshape(-1, ind.shape[-1]).var(0)
    means = ind.mean(1)
    ok = var > 0
    tau = ind.shape[1] * means.var(0, ddof=1)[ok] / var[ok]
    return max(1.0, float(tau.mean()))


def chi_square_against_exact(phi, batches=None):
    """p-value of the binned torsion sample against the exact marginal.

    The Pearson statistic is divided by the autocorrelation time estimated from the batch
    means, whose own sampling error (n_batches - 1 degrees of freedom) makes the reference
    distribution F(bins - 1, n_batches - 1) rather than chi-square. ``batches``:
    ``[n, length]`` view of the sample (default: 20 consecutive blocks of ``phi``)."""
    phi = np.asarray(phi).reshape(-1)
    if batches is None:
        n = len(phi) // 20 * 20
        batches = phi[:n].reshape(20, -1)
    tau = _autocorrelation_time(batches)
    expected = len(phi) * exact_bin_probabilities()
    counts = np.histogram(phi, EDGES)[0]
    statistic = ((counts - expected) ** 2 / expected).sum() / tau
    dof = len(expected) - 1
    return stats.f.sf(statistic / dof, dof, len(batches) - 1), tau


def two_sample_chi_square(phi1, phi2):
    """p-value that two autocorrelated torsion samples share one distribution (the
    statistic scaled as in ``chi_square_against_exact``, with 20 batches per sample)."""
    def summary(phi):
        n = len(phi) // 20 * 20
        return np.histogram(phi, EDGES)[0], len(phi), _autocorrelation_time(phi[:n].reshape(20, -1))

    (c1, n1, t1), (c2, n2, t2) = summary(phi1), summary(phi2)
    pooled = (c1 + c2) / (n1 + n2)
    ok = pooled > 0
    statistic = ((c1 / n1 - c2 / n2)[ok] ** 2 / (pooled[ok] * (t1 / n1 + t2 / n2))).sum()
    dof = int(ok.sum()) - 1
    return stats.f.sf(statistic / dof, dof, 19)


# --- the test molecule -------------------------------------------------------------------


def test_torsion_convention_matches_openmm(chain):
    """The exact marginal uses ``dihedral``: its angle must be OpenMM's theta."""
    system = openmm.System()
    for _ in range(4):
        system.addParticle(12.0)
    system.addForce(_torsion_force())
    x = _chain_positions(0.0)[None] + np.random.default_rng(0).normal(scale=0.03, size=(20, 4, 3))
    assert np.allclose(_reduced_energies(system, x), torsion_energy(dihedral(x)), rtol=1e-10, atol=1e-10)


# --- proposals ---------------------------------------------------------------------------


def test_proposals_are_rigid_motions_of_generator_draws(chain, generator):
    masses = chain.masses
    centres = np.random.default_rng(1).normal(size=(300, 3))
    state = torch.get_rng_state()
    draws, log_q_draws = GeneratorProposal(generator, batch_size=64, seed=5).draw(300)
    x, log_q = GeneratorProposal(generator, batch_size=64, seed=5).propose(centres, masses)
    assert torch.equal(state, torch.get_rng_state()), "a seeded proposal must not touch torch's global RNG"
    np.testing.assert_array_equal(log_q, log_q_draws)
    distances = lambda y: np.linalg.norm(y[:, :, None] - y[:, None, :], axis=-1)  # noqa: E731
    np.testing.assert_allclose(distances(x), distances(draws), atol=1e-12)
    np.testing.assert_allclose((x * masses[:, None]).sum(1) / masses.sum(), centres, atol=1e-12)
    np.testing.assert_allclose(generator.log_prob(torch.as_tensor(x)).detach().numpy(), log_q, atol=1e-8)


def test_seeded_proposals_draw_from_their_own_torch_generator(generator):
    """A seeded proposal reproduces its draws whatever torch's global RNG does, and its
    draws leave the global RNG state as they found it."""
    state = torch.get_rng_state()
    first = GeneratorProposal(generator, batch_size=16, seed=11)
    x1, _ = first.draw(16)
    x2, log_q2 = first.draw(16)  # a second generator call
    assert torch.equal(state, torch.get_rng_state()), "a proposal draw must not touch torch's global RNG"
    assert not np.array_equal(x2, x1), "a second generator call continues the stream, it does not restart it"
    torch.manual_seed(123)
    again = GeneratorProposal(generator, batch_size=16, seed=11)
    np.testing.assert_array_equal(again.draw(16)[0], x1)
    np.testing.assert_array_equal(again.draw(16)[1], log_q2)
    other = GeneratorProposal(generator, batch_size=16, seed=12).draw(16)[0]
    assert not np.array_equal(other, x1)
    # Without a seed the draws come from torch's global RNG.
    torch.manual_seed(4)
    unseeded, _ = GeneratorProposal(generator, batch_size=16).draw(16)
    torch.manual_seed(4)
    with torch.no_grad():
        expected, _ = generator.sample(16)
    np.testing.assert_array_equal(unseeded, expected.numpy())


def test_random_rotations_are_uniform_proper_rotations():
    r = random_rotations(20000, np.random.default_rng(0))
    np.testing.assert_allclose(r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    # Haar measure: E[R] = 0 and E[R_ij^2] = 1/3 (each column is uniform on the sphere).
    n = len(r)
    assert np.abs(r.mean(0)).max() < 5 * math.sqrt(1 / 3 / n)
    assert np.abs((r**2).mean(0) - 1 / 3).max() < 5 * math.sqrt(4 / 45 / n)


def test_acceptance_ratio_is_invariant_to_rigid_motions(chain, generator):
    hybrid = HybridMC(_simulation(chain, platform="Reference"), generator, md_steps=0, seed=0)
    rng = np.random.default_rng(3)
    torch.manual_seed(3)
    with torch.no_grad():
        proposals, _ = generator.sample(5)
    for i in range(5):
        x = chain.positions + rng.normal(scale=0.01, size=(4, 3))
        x_new = proposals[i].numpy()
        ratio = hybrid.log_acceptance_ratio(x, x_new)
        # Independent answer: a fresh Context and the eager generator.
        u_old, u_new = _reduced_energies(chain.system, np.stack([x, x_new]))
        log_q = generator.log_prob(torch.as_tensor(np.stack([x, x_new]))).detach().numpy()
        expected = -(u_new - u_old) + log_q[0] - log_q[1]
        assert ratio["log_acceptance"] == pytest.approx(expected, abs=1e-9)
        r1, r2 = random_rotations(2, rng)
        moved = hybrid.log_acceptance_ratio(x @ r1.T + rng.normal(size=3), x_new @ r2.T + rng.normal(size=3))
        assert moved["log_acceptance"] == pytest.approx(ratio["log_acceptance"], abs=1e-8)
        assert abs(ratio["log_acceptance"]) > 1e-3  # a non-trivial ratio


# --- exactness of the chain --------------------------------------------------------------


class IgnoringQ(HybridMC):
    """A wrong rule: Metropolis on the energy alone, as if the proposal were symmetric.
    Its stationary distribution is proportional to p(x) q(x)."""

    def log_acceptance_ratio(self, x, x_new, log_q_old=None, log_q_new=None):
        return super().log_acceptance_ratio(x, x_new, 0.0, 0.0)


def _run_torsions(hybrid, n_cycles, burn_in=100):
    phi, accepted = [], []

    def record(h):
        phi.append(dihedral(h.positions()))
        accepted.append(h.last["accepted"])

    hybrid.run(n_cycles, callback=record)
    return np.array(phi[burn_in:]), np.array(accepted, dtype=float)


def standard_error(series, n_batches=20):
    """Standard error of the mean of an autocorrelated series, by batch means."""
    n = len(series) // n_batches * n_batches
    return float(np.asarray(series[:n]).reshape(n_batches, -1).mean(1).std(ddof=1) / math.sqrt(n_batches))


@pytest.fixture(scope="module")
def hybrid_md_chain(chain, generator):
    """Torsions and acceptances of a hybrid chain, 10 Langevin steps per proposal."""
    hybrid = HybridMC(_simulation(chain, seed=2), generator, md_steps=10, seed=4)
    return _run_torsions(hybrid, 900)


@pytest.mark.parametrize("md_steps", [0, 10])
def test_hybrid_chain_reproduces_the_torsion_distribution(chain, generator, hybrid_md_chain, md_steps):
    if md_steps:
        phi, accepted = hybrid_md_chain
    else:
        phi, accepted = _run_torsions(HybridMC(_simulation(chain), generator, md_steps=0, seed=3), 6000)
    p_value, tau = chi_square_against_exact(phi)
    assert 0.05 < accepted.mean() < 0.6, accepted.mean()  # the generator is imperfect, not useless
    assert p_value > 1e-3, (p_value, tau)
    # The minor well is over-weighted by q; the chain must still give it its exact share.
    minor = np.mean(phi > 0)
    exact_minor = integrate.quad(lambda p: math.exp(-torsion_energy(p)), 0, math.pi)[0] / integrate.quad(
        lambda p: math.exp(-torsion_energy(p)), -math.pi, math.pi
    )[0]
    assert abs(minor - exact_minor) < 5 * math.sqrt(tau * exact_minor * (1 - exact_minor) / len(phi))


@pytest.mark.parametrize("md_steps", [0, 10])
def test_the_same_test_fails_for_a_wrong_acceptance_rule(chain, generator, md_steps):
    hybrid = IgnoringQ(_simulation(chain), generator, md_steps=md_steps, seed=3)
    phi, _ = _run_torsions(hybrid, 6000 if md_steps == 0 else 600)
    p_value, tau = chi_square_against_exact(phi)
    assert p_value < 1e-6, (p_value, tau)


# --- openmmtools ---------------------------------------------------------------------------


def _seeded_langevin_move_class():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from openmmtools import mcmc

    class SeededLangevinMove(mcmc.LangevinDynamicsMove):
        """openmmtools seeds its integrators randomly; a fixed seed makes the test repeatable."""

        def _get_integrator(self, thermodynamic_state):
            integrator = super()._get_integrator(thermodynamic_state)
            integrator.setRandomNumberSeed(7)
            return integrator

    return SeededLangevinMove


def test_openmmtools_move_matches_the_simulation_helper(chain, generator, hybrid_md_chain):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from openmmtools import cache, mcmc, states
    from openmm_cmt.mcmc.moves import BoltzmannGeneratorMove

    SeededLangevinMove = _seeded_langevin_move_class()
    platform, properties = _platform("CPU")
    context_cache = cache.ContextCache(platform=platform, platform_properties=properties)
    thermodynamic_state = states.ThermodynamicState(chain.system, T * unit.kelvin)
    sampler_state = states.SamplerState(chain.positions * unit.nanometer)
    bg_move = BoltzmannGeneratorMove(generator, seed=6)
    langevin = SeededLangevinMove(
        timestep=TIMESTEP * unit.picoseconds, collision_rate=FRICTION / unit.picosecond, n_steps=10,
        reassign_velocities=False,
    )
    move = mcmc.SequenceMove([langevin, bg_move])
    phi, accepted = [], []
    for _ in range(900):
        move.apply(thermodynamic_state, sampler_state, context_cache=context_cache)
        phi.append(dihedral(sampler_state.positions.value_in_unit(unit.nanometer)))
        accepted.append(bg_move.last["accepted"])
    phi, accepted = np.array(phi[100:]), np.array(accepted, dtype=float)

    assert bg_move.n_proposed == 900
    assert bg_move.statistics == {"n_accepted": accepted.sum(), "n_proposed": 900}
    assert chi_square_against_exact(phi)[0] > 1e-3
    reference_phi, reference_accepted = hybrid_md_chain
    assert two_sample_chi_square(phi, reference_phi) > 1e-3
    difference = accepted.mean() - reference_accepted.mean()
    assert abs(difference) < 5 * math.hypot(standard_error(accepted), standard_error(reference_accepted))

    # openmmtools-style (de)serialisation keeps the statistics and a working generator.
    state = bg_move.__getstate__()
    restored = BoltzmannGeneratorMove.__new__(BoltzmannGeneratorMove)
    restored.__setstate__(state)
    assert restored.statistics == bg_move.statistics
    x = torch.as_tensor(sampler_state.positions.value_in_unit(unit.nanometer))[None]
    assert restored.proposal.log_prob(x)[0] == pytest.approx(generator.log_prob(x).item(), abs=1e-10)
    restored.apply(thermodynamic_state, sampler_state, context_cache=context_cache)
    assert restored.n_proposed == bg_move.n_proposed + 1


# --- many chains ---------------------------------------------------------------------------


def _openmm_engine(chain):
    from openmm_cmt.energy.openmm_energy import OpenMMEnergy

    return OpenMMEnergy(chain, platform="Reference", n_workers=0)


def test_many_chains_agree_with_single_chain_computations(chain, generator):
    from openmm_cmt.mcmc.many_chains import ManyChainHybridMC

    K = 6
    mc = ManyChainHybridMC(
        chain, generator, K, md_steps=20, timestep=TIMESTEP, platform="CPU", energy=_openmm_engine(chain), seed=8,
        properties={"Threads": "1"},
    )
    for _ in range(4):
        mc.run(1)
        last = mc.last
        np.testing.assert_allclose(last["u_old"], _reduced_energies(chain.system, last["x_old"]), rtol=1e-10)
        np.testing.assert_allclose(last["u_new"], _reduced_energies(chain.system, last["x_new"]), rtol=1e-10)
        for key, x in (("log_q_old", last["x_old"]), ("log_q_new", last["x_new"])):
            np.testing.assert_allclose(last[key], generator.log_prob(torch.as_tensor(x)).detach().numpy(), atol=1e-8)
        expected = -(last["u_new"] - last["u_old"]) + last["log_q_old"] - last["log_q_new"]
        np.testing.assert_allclose(last["log_acceptance"], expected, atol=1e-12)
        np.testing.assert_array_equal(last["accepted"], np.log(last["uniform"]) < expected)
        # Accepted chains now hold their proposal, the others their old state (up to a translation).
        x = mc.positions()
        kept = np.where(last["accepted"][:, None, None], last["x_new"], last["x_old"])
        shift = (x - kept).mean(1, keepdims=True)
        np.testing.assert_allclose(x, kept + shift, atol=1e-9)
        total = mc.replicas.potential_energy() / KT
        assert total == pytest.approx(_reduced_energies(chain.system, x).sum(), rel=1e-5)
    assert mc.n_proposed.tolist() == [4] * K
    assert 0 < mc.n_accepted.sum() < 4 * K
    stats_ = mc.statistics
    assert stats_["n_proposed"] == 4 * K and stats_["proposals_per_second"] > 0


def test_many_generator_chains_sample_the_torsion_distribution(chain, generator):
    """Proposal rounds only; independent chains are the batches of the batch means."""
    from openmm_cmt.mcmc.many_chains import ManyChainHybridMC

    K, rounds, burn_in = 60, 90, 30
    mc = ManyChainHybridMC(
        chain, generator, K, md_steps=0, platform="CPU", energy=_openmm_engine(chain), seed=9, properties={"Threads": "1"}
    )
    phi = []
    mc.run(rounds, callback=lambda m: phi.append(dihedral(m.positions())))
    phi = np.array(phi[burn_in:]).T  # [K, rounds - burn_in]
    p_value, tau = chi_square_against_exact(phi, batches=phi)
    assert p_value > 1e-3, (p_value, tau)


# --- the Simulation helper as a drop-in ----------------------------------------------------


def test_step_and_reporter_interleave_proposals_with_the_users_md(chain, generator):
    simulation = _simulation(chain)
    hybrid = HybridMC(simulation, generator, md_steps=10, seed=0)
    hybrid.step(35)
    assert simulation.currentStep == 35 and hybrid.n_proposed == 3
    simulation.reporters.append(hybrid.reporter())
    simulation.step(45)  # proposals at steps 40, 50, 60, 70, 80
    assert simulation.currentStep == 80 and hybrid.n_proposed == 8
    assert hybrid.statistics["n_accepted"] == hybrid.n_accepted


def test_rejected_proposal_leaves_the_context_unchanged(chain, generator):
    simulation = _simulation(chain)
    hybrid = HybridMC(simulation, generator, md_steps=0, seed=0)
    for _ in range(20):
        before = simulation.context.getState(getPositions=True, getVelocities=True)
        accepted = hybrid.propose()
        after = simulation.context.getState(getPositions=True, getVelocities=True)
        same_x = np.array_equal(before.getPositions(asNumpy=True)._value, after.getPositions(asNumpy=True)._value)
        same_v = np.array_equal(before.getVelocities(asNumpy=True)._value, after.getVelocities(asNumpy=True)._value)
        assert (same_x and same_v) != accepted
    assert 0 < hybrid.n_accepted < 20


def test_generator_from_an_exported_file_or_a_sampler(chain, generator, tmp_path):
    from types import SimpleNamespace

    from openmm_cmt.mcmc.export import export_generator

    export_generator(generator, chain, tmp_path / "g.pt")
    x = torch.as_tensor(chain.positions)[None]
    expected = generator.log_prob(x).item()
    for source in (str(tmp_path / "g.pt"), SimpleNamespace(generator=generator)):
        hybrid = HybridMC(_simulation(chain), source, md_steps=5, seed=0)
        assert hybrid.proposal.log_prob(x)[0] == pytest.approx(expected, abs=1e-10)
        hybrid.run(3)
        assert hybrid.n_proposed == 3
    renamed = app.Topology()
    residue = renamed.addResidue("MOL", renamed.addChain())
    for i, atom in enumerate(chain.topology.atoms()):
        renamed.addAtom(f"X{i}", atom.element, residue)
    with pytest.raises(ValueError, match="atom order differs"):
        as_generator(str(tmp_path / "g.pt"), chain.system, renamed)


def test_bad_input_gives_clear_errors(chain, generator):
    with pytest.raises(ValueError, match="md_steps"):
        HybridMC(_simulation(chain), generator, md_steps=-1)
    with pytest.raises(ValueError, match="temperature"):
        HybridMC(_simulation(chain, integrator=openmm.VerletIntegrator(0.001)), generator)
    constrained = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(chain.system))
    constrained.addConstraint(0, 1, 0.15)
    with pytest.raises(ValueError, match="constraints"):
        HybridMC(_simulation(chain, system=constrained), generator)
    bigger = openmm.System()
    for _ in range(5):
        bigger.addParticle(12.0)
    with pytest.raises(ValueError, match="4 atoms"):
        as_generator(generator, bigger)
    with pytest.raises(TypeError, match="Generator"):
        as_generator(object())


# --- command line ------------------------------------------------------------------------


def test_mc_command_runs_chains_and_writes_a_trajectory(chain, tmp_path):
    from openmm_cmt.cli import main
    from openmm_cmt.sampler import BoltzmannGeneratorSampler

    BoltzmannGeneratorSampler(chain, "laptop").save(tmp_path / "run")
    common = ["--n-cycles", "4", "--md-steps", "5", "--n-chains", "3", "--platform", "CPU"]
    common += ["--energy", "torch", "--no-compile"]
    assert main(["mc", str(tmp_path / "run"), *common, "--out", str(tmp_path / "mc.npz")]) == 0
    with np.load(tmp_path / "mc.npz") as out:
        assert out["positions"].shape == (4, 3, 4, 3) and out["accepted"].shape == (4, 3)
        assert out["acceptance_rate"] == pytest.approx(out["accepted"].mean())
        assert np.isfinite(out["positions"]).all() and not out["plain_md"]
    assert main(["mc", str(tmp_path / "run"), *common, "--plain-md", "--out", str(tmp_path / "md.npz")]) == 0
    with np.load(tmp_path / "md.npz") as out:
        assert out["positions"].shape == (4, 3, 4, 3) and not out["accepted"].any() and out["plain_md"]
    assert main(["mc", str(tmp_path / "run"), "--n-cycles", "0"]) == 2
