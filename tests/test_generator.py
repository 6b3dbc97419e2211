"""The Generator: round trips, Jacobians, invariances, chirality, scripting, an ML fit on
alanine-dipeptide MD, and the density contract on a molecule with a known answer."""

import math

import numpy as np
import pytest
import torch
import openmm
from openmm import app, unit

from openmm_cmt.coordinates import chirality_signs, stereocentres
from openmm_cmt.flows import CIRCULAR, Generator, GeneratorConfig
from openmm_cmt.systems import MolecularSystem
from openmm_cmt.units import MOLAR_GAS_CONSTANT

SMALL = dict(n_layers=4, hidden=32, depth=1)




def _randomise(generator, std, seed=0):
    """Non-trivial flow weights (a fresh flow is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in generator.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return generator


def _angle_diff(a, b, circular):
    d = a - b
    return torch.where(circular, torch.remainder(d + math.pi, 2 * math.pi) - math.pi, d)


def _random_rotation(seed):
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@pytest.fixture(scope="module")
def aldp_generator64(aldp):
    return _randomise(Generator.from_system(aldp, GeneratorConfig(**SMALL)), std=0.03).double()


# --- maps and densities ----------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_latent_roundtrip(aldp, dtype, tol):
    generator = _randomise(Generator.from_system(aldp, GeneratorConfig(**SMALL)), std=0.03).to(dtype)
    torch.manual_seed(0)
    z = generator.sample_latent(500)
    x, logdet = generator.latent_to_positions(z)
    z_back, inv_logdet = generator.positions_to_latent(x)
    circular = generator.flow.kinds == CIRCULAR
    assert _angle_diff(z_back, z, circular).abs().max().item() <= tol
    assert (logdet + inv_logdet).abs().max().item() <= 1e3 * tol  # sums of ~100 terms of size ~10
    assert torch.isfinite(generator.log_prob(x)).all()


def test_sample_log_q_equals_log_prob(aldp_generator64):
    torch.manual_seed(1)
    x, log_q = aldp_generator64.sample(300)
    assert x.shape == (300, 22, 3) and log_q.shape == (300,)
    torch.testing.assert_close(aldp_generator64.log_prob(x), log_q, rtol=0, atol=1e-9)


def test_log_prob_invariant_to_rotation_and_translation(aldp_generator64):
    torch.manual_seed(2)
    x, log_q = aldp_generator64.sample(100)
    moved = x @ _random_rotation(3).T + torch.tensor([0.7, -2.0, 5.0], dtype=torch.float64)
    torch.testing.assert_close(aldp_generator64.log_prob(moved), log_q, rtol=0, atol=1e-8)


def test_samples_are_in_the_canonical_frame(aldp_generator64):
    x, _ = aldp_generator64.sample(50)
    rows = aldp_generator64.transform.zmatrix[:3, 0]
    assert torch.all(x[:, rows[0]] == 0)
    assert torch.all(x[:, rows[1], 1:] == 0) and torch.all(x[:, rows[1], 0] > 0)
    assert torch.all(x[:, rows[2], 2] == 0) and torch.all(x[:, rows[2], 1] > 0)


def test_out_of_support_positions_get_minus_infinity_and_finite_gradients(aldp, aldp_generator64):
    x, _ = aldp_generator64.sample(5)
    x = x.detach()
    bond_row = aldp_generator64.transform.zmatrix[5]  # atom, bonded reference, ...
    stretched = x[0].clone()
    stretched[bond_row[0]] += 0.5 * (stretched[bond_row[0]] - stretched[bond_row[1]]) / 0.1
    nan = x[1].clone()
    nan[3, 0] = float("nan")
    coincident = x[2].clone()
    coincident[bond_row[0]] = coincident[bond_row[1]]
    mirrored = x[3].clone() * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)  # flips every stereocentre
    batch = torch.stack([stretched, nan, coincident, mirrored, x[4]])
    params = list(aldp_generator64.parameters())
    log_q = aldp_generator64.log_prob(batch)
    assert torch.all(log_q[:4] == -math.inf)
    assert torch.isfinite(log_q[4])
    grads = torch.autograd.grad(log_q[4], params, allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


def test_scripted_generator_equals_eager(aldp):
    generator = _randomise(Generator.from_system(aldp, GeneratorConfig(**SMALL)), std=0.03)
    scripted = torch.jit.script(generator)
    assert scripted.n_atoms == 22 and scripted.elements == aldp.elements and scripted.temperature == aldp.temperature
    torch.manual_seed(4)
    x, log_q = generator.sample(64)
    torch.manual_seed(4)
    xs, log_qs = scripted.sample(64)
    assert torch.equal(x, xs) and torch.equal(log_q, log_qs)
    assert torch.equal(generator.log_prob(x), scripted.log_prob(x))
    z = generator.sample_latent(8)
    assert torch.equal(generator.positions_to_latent(x)[0], scripted.positions_to_latent(x)[0])
    assert torch.equal(generator.prior_log_prob(z), scripted.prior_log_prob(z))


def test_chirality_is_preserved_in_generated_samples(aldp):
    # Broad random weights: samples far from the reference, chirality still fixed.
    generator = _randomise(Generator.from_system(aldp, GeneratorConfig(**SMALL)), std=0.1)
    centres = stereocentres(aldp.topology)
    assert len(centres) >= 1
    reference = chirality_signs(torch.as_tensor(aldp.positions), centres)
    torch.manual_seed(5)
    with torch.no_grad():
        x, _ = generator.sample(3000)
    signs = chirality_signs(x.double(), centres)
    assert torch.all(signs == reference)
    # Unconstrained dihedrals do move: the samples are not just the reference.
    assert x.std(0).max() > 0.1


def test_generator_settings_are_checked_against_generator_config():
    import dataclasses

    from openmm_cmt.presets import TrainConfig, preset

    known = ", ".join(sorted(f.name for f in dataclasses.fields(GeneratorConfig)))
    for make in (lambda: TrainConfig(generator={"typo": 1}), lambda: preset("laptop", generator={"typo": 1})):
        with pytest.raises(ValueError) as err:
            make()
        assert str(err.value) == f"unknown generator setting 'typo'; expected one of {known}"
    with pytest.raises(ValueError, match="generator.hidden must be an integer >= 1 or null, got 1.5"):
        TrainConfig(generator={"hidden": 1.5})
    with pytest.raises(ValueError, match="masking must be one of"):
        TrainConfig(generator={"masking": "checkerboard"})
    config = preset("laptop", generator={"hidden": 64})
    assert config.generator_config() == GeneratorConfig(**config.to_dict()["generator"])
    assert config.generator_config().hidden == 64 and config.generator_config().sized().depth == 2


def test_presets_and_bad_arguments(aldp):
    gpu = Generator.from_system(aldp, GeneratorConfig(preset="gpu", n_layers=2))
    assert gpu.build_config["hidden"] == 256 and gpu.build_config["depth"] == 5 and gpu.build_config["n_layers"] == 2
    with pytest.raises(ValueError, match="preset"):
        Generator.from_system(aldp, GeneratorConfig(preset="tpu"))
    with pytest.raises(ValueError, match="bond_width"):
        Generator.from_system(aldp, GeneratorConfig(bond_width=0.0))
    with pytest.raises(ValueError, match="shape"):
        gpu.log_prob(torch.zeros(2, 21, 3))


# --- Jacobian against autograd on a 4-atom chain ---------------------------------------

CHAIN_BONDS = {(0, 1): (0.15, 0.02), (1, 2): (0.16, 0.02), (2, 3): (0.14, 0.02)}  # b0 nm, std nm
CHAIN_ANGLES = {(0, 1, 2): (1.9, 0.2), (1, 2, 3): (2.0, 0.2)}  # theta0 rad, std rad
CHAIN_T = 300.0


def _chain_positions():
    (b01, _), (b12, _), (b23, _) = CHAIN_BONDS.values()
    (t1, _), (t2, _) = CHAIN_ANGLES.values()
    p0 = np.zeros(3)
    p1 = np.array([b01, 0.0, 0.0])
    p2 = p1 + b12 * np.array([-math.cos(t1), math.sin(t1), 0.0])
    u = (p1 - p2) / np.linalg.norm(p1 - p2)
    n = np.array([0.0, 0.0, 1.0])
    m = np.cross(n, u)
    phi = 1.0
    p3 = p2 + b23 * (math.cos(t2) * u + math.sin(t2) * (math.cos(phi) * m + math.sin(phi) * n))
    return np.stack([p0, p1, p2, p3])


@pytest.fixture(scope="module")
def chain():
    """Four carbons, harmonic bonds and angles only: the Boltzmann distribution of the
    internal DOF factorises, with the Jacobian b^2 for bonds and sin(theta) for angles."""
    kT = MOLAR_GAS_CONSTANT * CHAIN_T
    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    atoms = [topology.addAtom(f"C{i + 1}", app.element.carbon, residue) for i in range(4)]
    system = openmm.System()
    bonds = openmm.HarmonicBondForce()
    angles = openmm.HarmonicAngleForce()
    for _ in atoms:
        system.addParticle(12.0)
    for (i, j), (b0, std) in CHAIN_BONDS.items():
        topology.addBond(atoms[i], atoms[j])
        bonds.addBond(i, j, b0, kT / std**2)
    for (i, j, k), (t0, std) in CHAIN_ANGLES.items():
        angles.addAngle(i, j, k, t0, kT / std**2)
    system.addForce(bonds)
    system.addForce(angles)
    return MolecularSystem("chain", topology, system, _chain_positions(), CHAIN_T)


def test_log_det_matches_autograd_jacobian_of_canonical_coordinates(chain):
    """latent_to_positions' log_det = log|det d(free canonical coords)/dz| + log(b1^2 y2),
    the rigid-motion volume factor of the density convention."""
    generator = _randomise(Generator.from_system(chain, GeneratorConfig(n_layers=4, hidden=8, depth=1)), std=0.1).double()
    rows = generator.transform.zmatrix[:, 0]
    torch.manual_seed(6)
    z = generator.sample_latent(4)
    _, logdet = generator.latent_to_positions(z)

    def free_coordinates(t):
        x = generator.latent_to_positions(t[None])[0][0]
        return torch.cat([x[rows[1], :1], x[rows[2], :2], x[rows[3:]].reshape(-1)])

    for i in range(len(z)):
        jac = torch.autograd.functional.jacobian(free_coordinates, z[i])
        x = generator.latent_to_positions(z[i : i + 1])[0][0]
        rigid = torch.log(x[rows[1], 0] ** 2 * x[rows[2], 1])
        assert logdet[i].item() == pytest.approx((torch.linalg.slogdet(jac)[1] + rigid).item(), abs=1e-9)


# --- density contract ------------------------------------------------------------------


def _chain_reduced_energy(x, kT):
    """u = E / kT of the chain, in closed form (checked against OpenMM below)."""
    u = torch.zeros(x.shape[0], dtype=x.dtype)
    for (i, j), (b0, std) in CHAIN_BONDS.items():
        u = u + 0.5 * ((torch.linalg.norm(x[:, i] - x[:, j], dim=-1) - b0) / std) ** 2
    for (i, j, k), (t0, std) in CHAIN_ANGLES.items():
        a, b = x[:, i] - x[:, j], x[:, k] - x[:, j]
        cos = (a * b).sum(-1) / (torch.linalg.norm(a, dim=-1) * torch.linalg.norm(b, dim=-1))
        u = u + 0.5 * ((torch.arccos(cos) - t0) / std) ** 2
    return u


def _exact_mean(value, log_density, low, high):
    from scipy import integrate

    norm = integrate.quad(lambda t: math.exp(log_density(t)), low, high, epsabs=0, epsrel=1e-12, limit=200)[0]
    return integrate.quad(lambda t: value(t) * math.exp(log_density(t)), low, high, epsabs=0, epsrel=1e-12, limit=200)[0] / norm


def test_density_contract_importance_weights_recover_boltzmann_averages(chain, openmm_reference_energies):
    """Self-normalised averages with w = exp(-u - log_prob) match exact Boltzmann averages
    of bonds, angles and the free torsion, Jacobian factors included."""
    generator = _randomise(Generator.from_system(chain, GeneratorConfig(n_layers=4, hidden=16, depth=1, bond_width=0.1, angle_width=1.0)), std=0.05)
    generator = generator.double()
    torch.manual_seed(7)
    with torch.no_grad():
        x, log_q = generator.sample(100_000)
    u = _chain_reduced_energy(x, chain.kT)

    for i, energy in enumerate(openmm_reference_energies(chain.system, x[:5].numpy())):
        assert u[i].item() == pytest.approx(energy / chain.kT, rel=1e-9)

    log_w = -u - log_q
    w = torch.exp(log_w - log_w.max())
    w = w / w.sum()
    ess = 1.0 / (w**2).sum().item()
    assert ess > 2000

    def check(values, exact, uniform_exact=None):
        mean = (w * values).sum().item()
        stderr = math.sqrt((w**2 * (values - mean) ** 2).sum().item())
        assert abs(mean - exact) < 5 * stderr, (mean, exact, stderr)
        if uniform_exact is not None:  # the Jacobian factor is detectable here
            assert abs(mean - uniform_exact) > 5 * stderr, (mean, uniform_exact, stderr)

    dist = lambda i, j: torch.linalg.norm(x[:, i] - x[:, j], dim=-1)
    for (i, j), (b0, std) in CHAIN_BONDS.items():
        gauss = lambda b: -0.5 * ((b - b0) / std) ** 2
        exact = _exact_mean(lambda b: b, lambda b: gauss(b) + 2 * math.log(b), max(b0 - 10 * std, 1e-9), b0 + 10 * std)
        check(dist(i, j), exact, uniform_exact=b0)
    for (i, j, k), (t0, std) in CHAIN_ANGLES.items():
        a, b = x[:, i] - x[:, j], x[:, k] - x[:, j]
        theta = torch.arccos((a * b).sum(-1) / (torch.linalg.norm(a, dim=-1) * torch.linalg.norm(b, dim=-1)))
        gauss = lambda t: -0.5 * ((t - t0) / std) ** 2
        exact = _exact_mean(lambda t: t, lambda t: gauss(t) + math.log(math.sin(t)), 1e-9, math.pi - 1e-9)
        check(theta, exact)
    # The torsion is free: uniform on the circle.
    ic, _ = generator.transform.to_internal(x)
    phi = ic[:, generator.transform.dihedral_indices[0]]
    check(torch.cos(phi), 0.0)
    check(torch.sin(phi), 0.0)


# --- maximum likelihood on MD of alanine dipeptide -------------------------------------


@pytest.fixture(scope="module")
def aldp_md_frames(aldp):
    """250 frames, 50 fs apart, of Langevin MD at 300 K started at the reference."""
    integrator = openmm.LangevinMiddleIntegrator(aldp.temperature * unit.kelvin, 1.0 / unit.picosecond, 0.001 * unit.picoseconds)
    integrator.setRandomNumberSeed(11)
    platform = openmm.Platform.getPlatformByName("CPU")
    context = openmm.Context(aldp.system, integrator, platform, {"Threads": "1"})
    context.setPositions(aldp.positions)
    context.setVelocitiesToTemperature(aldp.temperature * unit.kelvin, 12)
    integrator.step(1000)  # equilibrate bond and angle vibrations
    frames = []
    for _ in range(250):
        integrator.step(50)
        frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return torch.tensor(np.array(frames), dtype=torch.float32)


def test_maximum_likelihood_fit_to_md_lowers_held_out_nll(aldp, aldp_md_frames):
    generator = Generator.from_system(aldp, GeneratorConfig(**SMALL))
    train, test = aldp_md_frames[:200], aldp_md_frames[200:]
    nll_before = -generator.log_prob(test).mean().item()
    assert math.isfinite(nll_before)
    optimizer = torch.optim.Adam(generator.parameters(), lr=2e-3)
    torch.manual_seed(8)
    for _ in range(40):
        batch = train[torch.randint(0, len(train), (100,))]
        loss = -generator.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    nll_after = -generator.log_prob(test).mean().item()
    # Bonds and angles alone have tens of nats to gain over the broad prior.
    assert nll_after < nll_before - 20, (nll_before, nll_after)


def test_rebuild_from_build_config_and_state_dict(aldp, aldp_generator64):
    state = aldp_generator64.state_dict()
    assert not any("reversed_layers" in key for key in state)
    rebuilt = Generator.from_system(aldp, GeneratorConfig(**aldp_generator64.build_config)).double()
    rebuilt.load_state_dict(state)
    x, log_q = aldp_generator64.sample(20)
    torch.testing.assert_close(rebuilt.log_prob(x), log_q, rtol=0, atol=1e-10)
