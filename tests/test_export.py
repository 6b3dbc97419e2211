"""The exported generator: TorchScript file for openmmtorch.TorchForce (Reference and CPU),
the PythonForce variant, metadata, compatibility checks, and the export command."""

import json

import numpy as np
import pytest
import torch
import openmm
from openmm import app

from openmm_cmt.flows import Generator, GeneratorConfig
from openmm_cmt.mcmc.export import (
    METADATA_FILE,
    check_compatible,
    export_generator,
    generator_python_force,
    load_generator,
    load_generator_force,
    read_metadata,
)


@pytest.fixture(scope="module")
def generator(aldp):
    """A small float64 generator with non-trivial weights (a fresh flow is the identity)."""
    g = Generator.from_system(aldp, GeneratorConfig(n_layers=4, hidden=32, depth=1)).double()
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in g.parameters():
            p.copy_(torch.randn(p.shape, generator=rng, dtype=p.dtype) * 0.03)
    return g.eval()


@pytest.fixture(scope="module")
def exported(aldp, generator, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "generator.pt"
    metadata = export_generator(generator, aldp, path)
    return path, metadata


@pytest.fixture(scope="module")
def conformations(generator):
    """Generator samples moved by random rigid motions (log q is invariant to them)."""
    torch.manual_seed(1)
    with torch.no_grad():
        x, _ = generator.sample(4)
    rng = np.random.default_rng(1)
    out = []
    for xi in x.numpy():
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        q = q if np.linalg.det(q) > 0 else -q
        out.append(xi @ q.T + rng.normal(size=3))
    return np.array(out)


def _expected_energy_and_forces(generator, kT, x):
    """-kT log q(x) and its negative autograd gradient, from the eager generator."""
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    energy = -kT * generator.log_prob(t[None])[0]
    (grad,) = torch.autograd.grad(energy, t)
    return energy.item(), -grad.numpy()


def _system(aldp, force):
    """aldp's particles with ``force`` alone."""
    system = openmm.System()
    for i in range(aldp.n_atoms):
        system.addParticle(aldp.system.getParticleMass(i))
    system.addForce(force)
    return system


def test_metadata_and_scripted_methods(aldp, generator, exported, conformations):
    path, metadata = exported
    assert read_metadata(path) == metadata
    assert metadata["n_atoms"] == 22 and metadata["elements"] == aldp.elements
    assert metadata["atom_names"] == [a.name for a in aldp.topology.atoms()]
    assert metadata["temperature_K"] == aldp.temperature and metadata["kT_kJ_per_mol"] == pytest.approx(aldp.kT)
    assert metadata["units"] == {"length": "nm", "energy": "kJ/mol", "log_prob": "nats"}
    np.testing.assert_allclose(metadata["masses_dalton"], aldp.masses)
    module = load_generator(path, aldp.system, aldp.topology)
    assert json.loads(module.metadata_json) == metadata
    assert module.n_atoms == 22 and list(module.elements) == aldp.elements and module.kT == pytest.approx(aldp.kT)

    x = torch.as_tensor(conformations)
    expected = generator.log_prob(x).detach().numpy()
    np.testing.assert_allclose(module.log_prob(x).detach().numpy(), expected, rtol=0, atol=1e-10)
    for xi in x:
        assert module(xi).item() == pytest.approx(-aldp.kT * generator.log_prob(xi[None]).item(), abs=1e-9)
    torch.manual_seed(5)
    sample_x, sample_log_q = module.sample(3)
    torch.manual_seed(5)
    expected_x, expected_log_q = generator.sample(3)
    np.testing.assert_allclose(sample_x.detach().numpy(), expected_x.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(sample_log_q.detach().numpy(), expected_log_q.detach().numpy(), atol=1e-9)
    with pytest.raises(Exception, match="22, 3"):
        module(x[0, :21])


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_torch_force_gives_minus_kT_log_q_and_its_gradient(aldp, generator, exported, conformations, platform,
                                                            openmm_reference_energies):
    path, _ = exported
    system = _system(aldp, load_generator_force(path, aldp.system, aldp.topology))
    energies, all_forces = openmm_reference_energies(system, conformations, forces=True, platform=platform)
    for x, energy, forces in zip(conformations, energies, all_forces):
        # Both platforms hand TorchForce double-precision positions and keep its float64
        # outputs, so the agreement is to rounding.
        expected_energy, expected_forces = _expected_energy_and_forces(generator, aldp.kT, x)
        assert energy == pytest.approx(expected_energy, abs=1e-9 * max(1.0, abs(expected_energy)))
        np.testing.assert_allclose(forces, expected_forces, rtol=1e-9, atol=1e-9 * np.abs(expected_forces).max())
        assert np.abs(expected_forces).max() > 1.0  # non-trivial forces


def test_python_force_agrees_and_serialises(aldp, generator, exported, conformations, openmm_reference_energies):
    path, _ = exported
    system = _system(aldp, generator_python_force(path, aldp.system, aldp.topology))
    restored = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    results = [openmm_reference_energies(s, conformations, forces=True) for s in (system, restored)]
    for k, x in enumerate(conformations):
        expected_energy, expected_forces = _expected_energy_and_forces(generator, aldp.kT, x)
        for energies, forces in results:
            assert energies[k] == pytest.approx(expected_energy, abs=1e-8)
            np.testing.assert_allclose(forces[k], expected_forces, rtol=1e-8, atol=1e-8)
    scripted = load_generator(path)
    system = _system(aldp, generator_python_force(scripted, aldp.system))
    energy = openmm_reference_energies(system, conformations[:1])[0]
    assert energy == pytest.approx(_expected_energy_and_forces(generator, aldp.kT, conformations[0])[0], abs=1e-8)


def test_wrong_atom_count_or_order_is_rejected(aldp, exported, tmp_path):
    path, metadata = exported
    fewer = openmm.System()
    for i in range(21):
        fewer.addParticle(aldp.system.getParticleMass(i))
    for loader in (load_generator_force, generator_python_force, load_generator):
        with pytest.raises(ValueError, match="22 atoms.*21"):
            loader(path, fewer)
    # Swap a hydrogen (particle 0) with a carbon (particle 1): masses no longer match.
    order = [1, 0] + list(range(2, 22))
    swapped = openmm.System()
    for i in order:
        swapped.addParticle(aldp.system.getParticleMass(i))
    with pytest.raises(ValueError, match="atom order differs"):
        load_generator_force(path, swapped)
    # Same masses, but two hydrogens named in another order: only the topology tells.
    hydrogens = [i for i, e in enumerate(aldp.elements) if e == "H"]
    topology = app.Topology()
    residue = topology.addResidue("X", topology.addChain())
    atoms = list(aldp.topology.atoms())
    names = [a.name for a in atoms]
    names[hydrogens[0]], names[hydrogens[-1]] = names[hydrogens[-1]], names[hydrogens[0]]
    for atom, name in zip(atoms, names):
        topology.addAtom(name, atom.element, residue)
    check_compatible(metadata, aldp.system)  # masses alone cannot see it
    with pytest.raises(ValueError, match="atom order differs"):
        check_compatible(metadata, aldp.system, topology)
    with pytest.raises(ValueError, match="atom order differs"):
        generator_python_force(path, aldp.system, topology)

    not_an_archive = tmp_path / "junk.pt"
    not_an_archive.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        read_metadata(not_an_archive)
    foreign = tmp_path / "foreign.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(foreign))
    with pytest.raises(ValueError, match=METADATA_FILE):
        read_metadata(foreign)
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="export"):
        generator_python_force(torch.nn.Linear(2, 2))


def test_export_checks_the_system_and_keeps_the_generator(aldp, generator, tmp_path):
    from openmm_cmt.systems import MolecularSystem

    parameters = [p.detach().clone() for p in generator.parameters()]
    metadata = export_generator(generator, aldp, tmp_path / "g32.pt", dtype=torch.float32)
    assert metadata["dtype"] == "float32"
    assert all(p.dtype == torch.float64 for p in generator.parameters()), "export must not convert the generator"
    assert all(torch.equal(a, b) for a, b in zip(parameters, generator.parameters()))
    module = load_generator(tmp_path / "g32.pt")
    x = aldp.positions
    assert module(torch.as_tensor(x)).dtype == torch.float64  # the dtype of the positions
    assert module(torch.as_tensor(x)).item() == pytest.approx(
        -aldp.kT * generator.log_prob(torch.as_tensor(x)[None]).item(), rel=1e-4, abs=1e-3
    )
    other = MolecularSystem("butane-like", *_four_atoms(), temperature=300.0)
    with pytest.raises(ValueError, match="22 atoms"):
        export_generator(generator, other, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def _four_atoms():
    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    atoms = [topology.addAtom(f"C{i}", app.element.carbon, residue) for i in range(4)]
    for a, b in zip(atoms[:-1], atoms[1:]):
        topology.addBond(a, b)
    system = openmm.System()
    for _ in atoms:
        system.addParticle(12.0)
    positions = np.array([[0, 0, 0], [0.15, 0, 0], [0.2, 0.14, 0], [0.35, 0.15, 0.05]], dtype=float)
    return topology, system, positions


def test_export_command_writes_the_same_file_as_the_sampler(tmp_path):
    from openmm_cmt.cli import main
    from openmm_cmt.sampler import BoltzmannGeneratorSampler
    from openmm_cmt.systems import MolecularSystem

    topology, system, positions = _four_atoms()
    bonds = openmm.HarmonicBondForce()
    for i in range(3):
        bonds.addBond(i, i + 1, 0.15, 1000.0)
    system.addForce(bonds)
    sampler = BoltzmannGeneratorSampler(MolecularSystem("four", topology, system, positions, 300.0), "laptop")
    sampler.save(tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "cli.pt")]) == 0
    sampler.export(tmp_path / "api.pt")
    cli, api = read_metadata(tmp_path / "cli.pt"), read_metadata(tmp_path / "api.pt")
    assert cli == api and cli["system"] == "four" and cli["n_atoms"] == 4
    x = torch.as_tensor(positions)[None] + 0.01 * torch.randn(5, 4, 3, dtype=torch.float64)
    module = load_generator(tmp_path / "cli.pt")
    np.testing.assert_allclose(module.log_prob(x).detach().numpy(), sampler.log_prob(x.numpy()), rtol=1e-6, atol=1e-5)
    assert main(["export", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "x.pt")]) != 0
