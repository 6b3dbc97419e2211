"""ML-potential targets through openmm-ml (openmm_cmt.systems.ml), offline.

Independent answers: ASE calculators called directly (eV -> kJ/mol from the SI
constants), classical energies of the parts from fresh OpenMM Contexts, and a torchani
model with locally made random weights called directly. TorchEnergy's batched ANI terms
(openmm_cmt.energy.torch_energy.ml) are checked against OpenMM's own evaluation of the
same System.
"""

import functools
import math
import pickle
import time
import warnings

import numpy as np
import pytest
import openmm
import torch
from openmm import app, unit

openmmml = pytest.importorskip("openmmml", reason="openmm-ml is an optional dependency (the 'ml' extra)")
ase = pytest.importorskip("ase", reason="ASE is needed for openmm-ml's 'ase' potential")
from ase.calculators.emt import EMT  # noqa: E402

from openmm_cmt.energy import create_energy  # noqa: E402
from openmm_cmt.energy.openmm_energy import OpenMMEnergy  # noqa: E402
from openmm_cmt.energy.torch_energy import TorchEnergy, TorchEnergyEngine, UnsupportedSystemError  # noqa: E402
from openmm_cmt.systems import MolecularSystem, resolve  # noqa: E402
from openmm_cmt.systems import ml  # noqa: E402

#: 1 eV in kJ/mol from the SI definitions (e * N_A / 1000), independent of ase.units.
EV_KJ_PER_MOL = 1.602176634e-19 * 6.02214076e23 / 1000.0
#: ase.units (which openmm-ml converts with) uses CODATA 2014: its eV in kJ/mol is
#: 96.4853329, 7.9e-9 relative above the exact SI value. Energies agree to this.
CODATA_RTOL = 2e-8


def _conformations(molsys, n, seed=0, noise=0.005):
    rng = np.random.default_rng(seed)
    return molsys.positions[None] + noise * rng.standard_normal((n, molsys.n_atoms, 3))


def _emt_direct(molsys, x):
    """Energies (kJ/mol) and forces (kJ/mol/nm) from ASE's EMT called directly."""
    atoms = ase.Atoms(numbers=[a.element.atomic_number for a in molsys.topology.atoms()], calculator=EMT())
    energies, forces = [], []
    for xi in x:
        atoms.set_positions(10.0 * xi)  # nm -> Angstrom
        energies.append(atoms.get_potential_energy() * EV_KJ_PER_MOL)
        forces.append(atoms.get_forces() * EV_KJ_PER_MOL * 10.0)  # eV/A -> kJ/mol/nm
    return np.array(energies), np.array(forces)


@pytest.fixture(scope="module")
def emt_aldp(aldp):
    return MolecularSystem.from_ml_potential(aldp.topology, aldp.positions, "ase", calculator=EMT(), name="aldp-emt")


def test_ase_potential_matches_calculator_in_process_and_in_workers(emt_aldp, openmm_reference_energies):
    x = _conformations(emt_aldp, 6)
    e_ref, f_ref = _emt_direct(emt_aldp, x)
    with OpenMMEnergy(emt_aldp, platform="CPU", n_workers=0) as engine:
        e, f = engine.energy(x, forces=True)
    np.testing.assert_allclose(e, e_ref, rtol=CODATA_RTOL, atol=1e-6)
    np.testing.assert_allclose(f, f_ref, rtol=1e-7, atol=1e-4)
    # The recipe a worker would rebuild the System from (OpenMMEnergy's system_factory)
    # survives pickling and gives the same energies. Workers fed from the System XML are
    # create_energy's default, tested below.
    factory = pickle.loads(pickle.dumps(emt_aldp.system_factory))
    np.testing.assert_allclose(openmm_reference_energies(factory(), x), e_ref, rtol=CODATA_RTOL, atol=1e-6)


def test_torch_energy_refuses_python_force_and_auto_falls_back(emt_aldp):
    with pytest.raises(UnsupportedSystemError, match="computing openmmml.models.asepotential._computeASE has no batched"):
        TorchEnergy.from_openmm(emt_aldp.system)
    engine = create_energy(emt_aldp, engine="auto")
    try:
        # workers rebuild the PythonForce from the System XML, which pickles its function
        assert isinstance(engine, OpenMMEnergy) and engine.n_workers >= 1
        x = _conformations(emt_aldp, 3, seed=1)
        np.testing.assert_allclose(engine.energy(x), _emt_direct(emt_aldp, x)[0], rtol=CODATA_RTOL, atol=1e-6)
    finally:
        engine.close()


def _aldp_and_water(aldp):
    """Alanine dipeptide plus one water 0.7 nm from its centroid, amber14 + flexible TIP3P."""
    water = app.Topology()
    residue = water.addResidue("HOH", water.addChain())
    o = water.addAtom("O", app.element.oxygen, residue)
    h1 = water.addAtom("H1", app.element.hydrogen, residue)
    h2 = water.addAtom("H2", app.element.hydrogen, residue)
    water.addBond(o, h1)
    water.addBond(o, h2)
    centre = aldp.positions.mean(axis=0) + np.array([0.7, 0.0, 0.0])
    angle = math.radians(104.52)
    water_xyz = centre + np.array([[0, 0, 0], [0.09572, 0, 0], [0.09572 * math.cos(angle), 0.09572 * math.sin(angle), 0]])
    modeller = app.Modeller(aldp.topology, aldp.positions * unit.nanometer)
    modeller.add(water, water_xyz * unit.nanometer)
    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")

    def classical(topology):
        return forcefield.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)

    positions = modeller.getPositions().value_in_unit(unit.nanometer)
    return modeller.topology, np.array(positions), classical(modeller.topology), classical(aldp.topology)


def test_mixed_ml_mm_is_mm_minus_ml_region_plus_ml(aldp, openmm_reference_energies):
    topology, positions, mm_full, mm_solute = _aldp_and_water(aldp)
    solute = list(range(aldp.n_atoms))
    mixed = MolecularSystem.from_ml_potential(topology, positions, "ase", ml_atoms=solute, classical_system=mm_full,
                                              calculator=EMT())
    assert mixed.n_atoms == aldp.n_atoms + 3
    x = _conformations(mixed, 4, seed=2)
    # Reference platform: double precision throughout, so the check is of the definition
    with OpenMMEnergy(mixed, platform="Reference", n_workers=0) as engine:
        e = engine.energy(x)
    # openmm-ml's mechanical embedding: E = E_MM(all) - E_MM(ML region alone) + E_ML(ML region)
    e_ml = _emt_direct(aldp, x[:, solute])[0]
    expected = openmm_reference_energies(mm_full, x) - openmm_reference_energies(mm_solute, x[:, solute]) + e_ml
    np.testing.assert_allclose(e, expected, rtol=0, atol=1e-6 + CODATA_RTOL * np.abs(e_ml).max())
    # the water-solute interaction is really there (the test would miss a dropped term otherwise)
    interaction = openmm_reference_energies(mm_full, x) - openmm_reference_energies(mm_solute, x[:, solute])
    assert np.all(np.abs(interaction) > 1.0)


def test_ml_region_must_be_whole_molecules_and_arguments_are_checked(aldp):
    topology, positions, mm_full, _ = _aldp_and_water(aldp)
    with pytest.raises(ValueError, match="whole molecules"):
        MolecularSystem.from_ml_potential(topology, positions, "ase", ml_atoms=[0, 1, 2], classical_system=mm_full,
                                          calculator=EMT())
    with pytest.raises(ValueError, match="classical_system"):
        MolecularSystem.from_ml_potential(topology, positions, "ase", ml_atoms=[22, 23, 24], calculator=EMT())
    with pytest.raises(ValueError, match="distinct atom indices"):
        MolecularSystem.from_ml_potential(topology, positions, "ase", ml_atoms=[22, 99], classical_system=mm_full,
                                          calculator=EMT())
    with pytest.raises(ValueError, match="unknown ML potential 'no-such-model'.*ani2x"):
        MolecularSystem.from_ml_potential(topology, positions, "no-such-model")
    with pytest.raises(ValueError, match="spec is '<system>:<potential>'"):
        resolve("alanine-dipeptide:")


# -- missing weights ------------------------------------------------------------------------


def test_missing_ani_weights_raise_fast_with_the_file_named(aldp, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHANI_DATA_DIR", str(tmp_path))
    expected = str(tmp_path / "StateDicts" / "ani2x_state_dict.pt")
    start = time.perf_counter()
    with pytest.raises(ml.ModelWeightsUnavailableError) as info:
        MolecularSystem.from_ml_potential(aldp.topology, aldp.positions, "ani2x", download=False)
    assert time.perf_counter() - start < 5.0
    assert info.value.path == expected and expected in str(info.value) and "TORCHANI_DATA_DIR" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    # the CLI spelling, with downloads switched off by the environment
    monkeypatch.setenv("OPENMM_CMT_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ml.ModelWeightsUnavailableError, match="ani2x_state_dict.pt"):
        resolve("alanine-dipeptide:ani2x")
    assert time.perf_counter() - start < 5.0


def test_missing_local_model_file_is_named(aldp, tmp_path):
    missing = tmp_path / "model.model"
    with pytest.raises(ml.ModelWeightsUnavailableError, match="model.model"):
        MolecularSystem.from_ml_potential(aldp.topology, aldp.positions, "mace", modelPath=str(missing))


def test_network_probe_and_stalled_download_give_up_in_time(monkeypatch):
    # A name that never resolves (RFC 2606): the probe answers False within its time.
    start = time.perf_counter()
    assert not ml._reachable("weights.invalid", 1.0)
    assert time.perf_counter() - start < 2.0
    # A server that accepts and then never answers: the download guard's socket timeout
    # ends the read, and the failure is recognised as a network one.
    import socket
    import urllib.request

    monkeypatch.setattr(ml, "DOWNLOAD_TIMEOUT", 0.5)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        start = time.perf_counter()
        with pytest.raises(Exception) as info, ml._download_guard(offline=False):
            urllib.request.urlopen(f"http://127.0.0.1:{server.getsockname()[1]}/ani2x_state_dict.pt")
        assert time.perf_counter() - start < 3.0
        assert ml._network_error(info.value) is not None
    finally:
        server.close()
    assert socket.getdefaulttimeout() is None  # restored


# -- ANI-2x with local weights --------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ani2x(tmp_path_factory):
    """A torchani ANI-2x of random weights saved where torchani looks for the real ones."""
    torchani = pytest.importorskip("torchani", reason="torchani is needed for the ANI potentials")
    from torchani.arch import Assembler
    from torchani.utils import SYMBOLS_2X

    torch.manual_seed(0)
    # The ANI-2x architecture as torchani.models.ANI2x assembles it, without fetching weights.
    asm = Assembler(periodic_table_index=True)
    asm.set_symbols(SYMBOLS_2X)
    asm.set_global_cutoff_fn("cosine")
    asm.set_aev_computer(radial="ani2x", angular="ani2x", strategy="pyaev")
    asm.set_atomic_networks(ctor="ani2x")
    asm.set_neighborlist("all_pairs")
    asm.set_gsaes_as_self_energies("wb97x-631gd")
    model = asm.assemble(8)
    data_dir = tmp_path_factory.mktemp("torchani")
    (data_dir / "StateDicts").mkdir()
    torch.save(model.state_dict(), data_dir / "StateDicts" / "ani2x_state_dict.pt")
    model.requires_grad_(False)
    return data_dir, model, torchani


def _ani_direct(model, torchani, molsys, x, atoms=None):
    atoms = list(range(molsys.n_atoms)) if atoms is None else atoms
    species = torch.tensor([[a.element.atomic_number for a in molsys.topology.atoms()]])[:, atoms]
    out = []
    for xi in x:
        coords = torch.tensor(10.0 * xi[atoms], dtype=torch.float32)[None]
        out.append(float(model((species, coords)).energies[0]) * torchani.units.hartree2kjoulemol(1))
    return np.array(out)


def test_ani2x_spec_builds_from_local_weights(local_ani2x, monkeypatch):
    data_dir, model, torchani = local_ani2x
    monkeypatch.setenv("TORCHANI_DATA_DIR", str(data_dir))
    monkeypatch.setenv("OPENMM_CMT_OFFLINE", "1")  # present weights need no network
    molsys = resolve("alanine-dipeptide:ani2x")
    assert molsys.name == "alanine-dipeptide:ani2x" and molsys.n_atoms == 22
    x = _conformations(molsys, 2, seed=3)
    expected = _ani_direct(model, torchani, molsys, x)
    with OpenMMEnergy(molsys, platform="CPU", n_workers=0) as engine:
        # float32 model: relative precision about 1e-7 of energies near -1e6 kJ/mol
        np.testing.assert_allclose(engine.energy(x), expected, rtol=2e-6)
    # TorchEnergy batches the eight-network ensemble
    np.testing.assert_allclose(TorchEnergy.from_openmm(molsys.system)(torch.tensor(x)).numpy(), expected, rtol=2e-6)


def test_ani2x_ml_mm_batched_matches_openmm_and_finite_differences(aldp, local_ani2x, monkeypatch, openmm_reference_energies):
    data_dir, model, torchani = local_ani2x
    monkeypatch.setenv("TORCHANI_DATA_DIR", str(data_dir))
    topology, positions, mm_full, mm_solute = _aldp_and_water(aldp)
    solute = list(range(aldp.n_atoms))
    mixed = MolecularSystem.from_ml_potential(topology, positions, "ani2x", ml_atoms=solute, classical_system=mm_full,
                                              modelIndex=0, download=False)
    x = _conformations(mixed, 4, seed=4)
    with OpenMMEnergy(mixed, platform="Reference", n_workers=0) as engine:
        e_omm, f_omm = engine.energy(x, forces=True)
    expected = (openmm_reference_energies(mm_full, x) - openmm_reference_energies(mm_solute, x[:, solute])
                + _ani_direct(model[0], torchani, mixed, x, solute))
    np.testing.assert_allclose(e_omm, expected, rtol=2e-6)
    # TorchEnergy compiles the whole ML/MM System: the ANI term next to the classical ones
    probe = TorchEnergyEngine(mixed, device="cpu", compile=False)
    batched = TorchEnergyEngine(mixed, device="cpu", compile=False, memory_budget_bytes=3 * probe.bytes_per_conformation())
    assert batched.chunk_size == 3  # two chunks: the chunking is exercised
    kinds = [name.split(":")[1] for name in batched.term_names()]
    assert {"PythonForce", "HarmonicBondForce", "NonbondedForce"} <= set(kinds)
    e_b, f_b = batched.energy(x, forces=True)
    assert batched.n_evaluations == 4
    np.testing.assert_allclose(e_b, e_omm, rtol=2e-6)
    scale = np.abs(f_omm).max()
    np.testing.assert_allclose(f_b, f_omm, rtol=0, atol=1e-4 * scale)
    # Forces are -dE/dx in kJ/mol/nm (not per Angstrom): central differences of the
    # energy on the three largest force components. The float32 model resolves energies
    # near -1e6 kJ/mol to about 0.1 kJ/mol, so h = 0.01 nm leaves about 10 kJ/mol/nm of noise.
    h = 1e-2
    for flat in np.argsort(-np.abs(f_b[0]).ravel())[:3]:
        atom, axis = divmod(int(flat), 3)
        step = np.zeros_like(x[:1])
        step[0, atom, axis] = h
        fd = -(batched.energy(x[:1] + step) - batched.energy(x[:1] - step))[0] / (2 * h)
        assert abs(fd - f_b[0, atom, axis]) < 0.05 * abs(f_b[0, atom, axis]) + 15.0


@pytest.fixture(scope="module")
def ani_aldp(aldp, local_ani2x):
    """Alanine dipeptide with one ANI-2x network of random weights (pure ML)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHANI_DATA_DIR", str(local_ani2x[0]))
        return MolecularSystem.from_ml_potential(aldp.topology, aldp.positions, "ani2x", modelIndex=0, download=False)


def _openmm_ml_ani_system(molsys, model, periodic=False):
    """The System openmm-ml's ANI potential builds for ``model``, with openmm-ml's own
    computation (forces per Angstrom in openmm-ml 1.8) rather than the one openmm_cmt
    substitutes."""
    from openmmml.models.anipotential import _computeANI

    species = torch.tensor([[a.element.atomic_number for a in molsys.topology.atoms()]])
    pbc = torch.tensor([True, True, True]) if periodic else None
    system = openmm.System()
    for i in range(molsys.n_atoms):
        system.addParticle(molsys.system.getParticleMass(i))
    system.setDefaultPeriodicBoxVectors(*(np.eye(3) * 3.0))
    force = openmm.PythonForce(functools.partial(_computeANI, model=model, species=species, pbc=pbc))
    force.setUsesPeriodicBoundaryConditions(periodic)
    system.addForce(force)
    return system


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ani_term_matches_openmm_energies_and_forces(ani_aldp, dtype):
    x = _conformations(ani_aldp, 6, seed=5, noise=0.01)
    with OpenMMEnergy(ani_aldp, platform="Reference", n_workers=0) as engine:
        e_omm, f_omm = engine.energy(x, forces=True)
    module = TorchEnergy.from_openmm(ani_aldp.system, dtype=dtype)
    assert module.term_names() == ["0:PythonForce"]  # CMMotionRemover has no energy
    assert next(module.terms[0].model.parameters()).dtype == dtype  # computes in the dtype it was built with
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    e = module(xt)
    (grad,) = torch.autograd.grad(e.sum(), xt)
    assert e.dtype == torch.float64
    # float32 model in OpenMM: relative precision about 1e-7 of energies near -1e6 kJ/mol
    np.testing.assert_allclose(e.detach().numpy(), e_omm, rtol=2e-6)
    np.testing.assert_allclose(-grad.numpy(), f_omm, rtol=0, atol=1e-4 * np.abs(f_omm).max())


def test_ani_term_of_openmm_ml_own_computation(ani_aldp, local_ani2x, openmm_reference_energies):
    plain = _openmm_ml_ani_system(ani_aldp, local_ani2x[1][0])
    x = _conformations(ani_aldp, 4, seed=6, noise=0.01)
    np.testing.assert_allclose(TorchEnergy.from_openmm(plain)(torch.tensor(x)).numpy(),
                               openmm_reference_energies(plain, x), rtol=2e-6)


def test_create_energy_batches_ani_eagerly(ani_aldp, openmm_reference_energies):
    x = _conformations(ani_aldp, 3, seed=7, noise=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither a failed memory dry run nor a failed compilation
        engine = create_energy(ani_aldp, engine="auto", device="cpu", compile="auto")
    # torch.compile and the meta-device dry run cannot follow torchani's neighbour lists
    assert isinstance(engine, TorchEnergyEngine) and not engine.compiled and engine.chunk_size > 64
    np.testing.assert_allclose(engine.energy(x), openmm_reference_energies(ani_aldp.system, x), rtol=2e-6)
    with pytest.warns(RuntimeWarning, match="data-dependent shapes"):
        assert not TorchEnergyEngine(ani_aldp, device="cpu", compile=True).compiled


def test_periodic_ani_is_refused(ani_aldp, local_ani2x):
    system = _openmm_ml_ani_system(ani_aldp, local_ani2x[1][0], periodic=True)
    with pytest.raises(UnsupportedSystemError, match="periodic ANI potential has no batched form"):
        TorchEnergy.from_openmm(system)


# -- training ---------------------------------------------------------------------------------


def test_cmt_smoke_training_on_an_ml_target(emt_aldp):
    from openmm_cmt.cmt import BoltzmannTarget, CMTConfig, CMTTrainer
    from openmm_cmt.flows import Generator, GeneratorConfig

    generator = Generator.from_system(emt_aldp, GeneratorConfig(n_layers=2, hidden=16, depth=1, seed=0))
    config = CMTConfig(n_steps=2, samples_per_step=64, buffer_size=128, grad_steps_per_step=4, batch_size=32, seed=0)
    with OpenMMEnergy(emt_aldp, platform="CPU", n_workers=0) as engine:
        trainer = CMTTrainer(generator, BoltzmannTarget(engine), config)
        history = trainer.run()
        assert engine.n_evaluations == 2 * 64 == trainer.n_evaluations
    assert len(history) == 2
    for record in history:
        assert math.isfinite(record["loss"]) and 0.0 < record["ess"] <= 1.0
    x, log_q = generator.sample(8)
    assert torch.isfinite(log_q).all()
