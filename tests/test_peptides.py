"""Peptides built from sequence: size, stereochemistry, geometry, protonation, minimum."""

import os

import numpy as np
import openmm
import pytest
from openmm import app, unit

import openmm_cmt  # noqa: F401  (torch before openmm)
from openmm_cmt.systems import _residue_geometry as geometry
from openmm_cmt.systems import get, names, peptide, resolve
from openmm_cmt.systems.peptide import MINIMIZER_TOLERANCE, place

ALL_20 = "ACDEFGHIKLMNPQRSTVWY"

# name -> (sequence, caps, atoms, net charge); atom counts from the residue formulas:
# ACE 6 + Ala 10 per residue + NME 6; Glu 15 + 2 extra N-terminal H, Leu/Ile 19, OXT 1.
REGISTERED = {
    "alanine-tetrapeptide": ("AAA", True, 42, 0),
    "alanine-hexapeptide": ("AAAAA", True, 62, 0),
    "elil": ("ELIL", False, 75, -1),
}


@pytest.fixture(scope="module")
def built():
    """name -> (MolecularSystem, sequence, caps, net charge)."""
    systems = {name: (get(name), seq, caps, charge) for name, (seq, caps, _, charge) in REGISTERED.items()}
    # Asp, Glu -1 and Lys, Arg +1 cancel; the zwitterion's termini cancel too.
    systems["all20-capped"] = (peptide(ALL_20, caps=True), ALL_20, True, 0)
    systems["all20-zwitterion"] = (peptide(ALL_20, caps=False), ALL_20, False, 0)
    return systems


SYSTEM_KEYS = [*REGISTERED, "all20-capped", "all20-zwitterion"]


def _atoms(residue):
    return {atom.name: atom.index for atom in residue.atoms()}


def _signed_volume(center, a, b, c):
    return float(np.dot(a - center, np.cross(b - center, c - center)))


def _torsion(a, b, c, d):
    b1 = c - b
    b1 = b1 / np.linalg.norm(b1)
    v = (a - b) - np.dot(a - b, b1) * b1
    w = (d - c) - np.dot(d - c, b1) * b1
    return np.degrees(np.arctan2(np.dot(np.cross(b1, v), w), np.dot(v, w)))


@pytest.mark.parametrize("name", list(REGISTERED))
def test_registered_sizes(name, built):
    system = built[name][0]
    n_atoms = REGISTERED[name][2]
    assert name in names()
    assert system.name == name
    assert system.n_atoms == n_atoms == system.topology.getNumAtoms()
    assert system.dim == 3 * n_atoms - 6
    assert system.temperature == 300.0
    assert resolve(name, temperature=350.0).temperature == 350.0


def test_nerf_place_reproduces_internal_coordinates():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b, c = rng.normal(size=(3, 3))
        bond, angle, torsion = rng.uniform(0.5, 2.0), rng.uniform(20.0, 170.0), rng.uniform(-180.0, 180.0)
        d = place(a, b, c, bond, angle, torsion)
        assert np.linalg.norm(d - c) == pytest.approx(bond, rel=1e-12)
        cos = np.dot(b - c, d - c) / (np.linalg.norm(b - c) * np.linalg.norm(d - c))
        assert np.degrees(np.arccos(cos)) == pytest.approx(angle, abs=1e-9)
        assert _torsion(a, b, c, d) == pytest.approx(torsion, abs=1e-9)


def _aldp_ca_volume_sign():
    from openmmtools import testsystems

    aldp = testsystems.AlanineDipeptideImplicit(constraints=None)
    x = aldp.positions.value_in_unit(unit.nanometer)
    ala = next(r for r in aldp.topology.residues() if r.name == "ALA")
    i = _atoms(ala)
    return np.sign(_signed_volume(x[i["CA"]], x[i["N"]], x[i["C"]], x[i["CB"]]))


@pytest.mark.parametrize("key", SYSTEM_KEYS)
def test_every_ca_is_l(key, built):
    reference = _aldp_ca_volume_sign()  # openmmtools' alanine dipeptide is L-Ala
    assert reference != 0
    system = built[key][0]
    x = system.positions
    checked = 0
    for residue in system.topology.residues():
        i = _atoms(residue)
        if "CB" in i:
            volume = _signed_volume(x[i["CA"]], x[i["N"]], x[i["C"]], x[i["CB"]])
            assert np.sign(volume) == reference, f"{residue} is not L"
            assert abs(volume) > 1e-4  # nm^3: a real tetrahedron, not a flattened centre
            checked += 1
    assert checked == sum(letter != "G" for letter in built[key][1])


def _template(residue_name):
    import pdbfixer

    path = os.path.join(os.path.dirname(pdbfixer.__file__), "templates", f"{residue_name}.pdb")
    pdb = app.PDBFile(path)
    return pdb.topology, pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer)


# (centre, three neighbours): side-chain chiral centres (CB of Ile and Thr), and the
# prochiral CB of Val and CG of Leu, whose methyls are named by the IUPAC convention.
SIDE_CHAIN_CENTRES = {
    "ILE": ("CB", "CA", "CG1", "CG2"),
    "THR": ("CB", "CA", "OG1", "CG2"),
    "VAL": ("CB", "CA", "CG1", "CG2"),
    "LEU": ("CG", "CB", "CD1", "CD2"),
}


@pytest.mark.parametrize("key", ["all20-capped", "all20-zwitterion"])
def test_residues_match_pdbfixer_templates(key, built):
    """Heavy atoms, chiral centres and methyl naming as in pdbfixer's residue templates."""
    system = built[key][0]
    x = system.positions
    residues = [r for r in system.topology.residues() if r.name not in ("ACE", "NME")]
    assert [r.name for r in residues] == [geometry.ONE_TO_THREE[letter] for letter in ALL_20]
    centres = 0
    for residue in residues:
        template_topology, tx = _template(residue.name)
        t = {a.name: a.index for a in template_topology.atoms()}
        heavy = {a.name for a in residue.atoms() if a.element.symbol != "H"}
        expected = {a.name for a in template_topology.atoms() if a.element.symbol != "H"} - {"OXT"}
        if residue is residues[-1] and key == "all20-zwitterion":
            expected |= {"OXT"}
        assert heavy == expected, residue
        i = _atoms(residue)
        quadruples = [("CA", "N", "C", "CB")] if "CB" in i else []
        if residue.name in SIDE_CHAIN_CENTRES:
            quadruples.append(SIDE_CHAIN_CENTRES[residue.name])
        for quadruple in quadruples:
            ours = _signed_volume(*(x[i[n]] for n in quadruple))
            theirs = _signed_volume(*(tx[t[n]] for n in quadruple))
            assert np.sign(ours) == np.sign(theirs) != 0, f"{residue} {quadruple[0]}"
            centres += 1
    assert centres == 19 + 4  # every CA but Gly's; Ile, Thr, Val CB; Leu CG


def _backbone_atom(residue):
    """The carbon that defines omega on this residue's side of a peptide bond."""
    i = _atoms(residue)
    if residue.name == "ACE":
        return i["CH3"]
    if residue.name == "NME":
        return i["C"]
    return i["CA"]


@pytest.mark.parametrize("key", SYSTEM_KEYS)
def test_peptide_bonds_are_trans(key, built):
    system = built[key][0]
    x = system.positions
    residues = list(system.topology.residues())
    for left, right in zip(residues[:-1], residues[1:]):
        c, n = _atoms(left)["C"], _atoms(right)["N"]
        assert any({a.index, b.index} == {c, n} for a, b in system.topology.bonds())
        omega = _torsion(x[_backbone_atom(left)], x[c], x[n], x[_backbone_atom(right)])
        assert abs(omega) > 150.0, f"{left}-{right} omega {omega:.1f}"


@pytest.mark.parametrize("key", SYSTEM_KEYS)
def test_bond_lengths_near_force_field_equilibrium(key, built):
    system = built[key][0]
    x = system.positions
    (bonds,) = [f for f in system.system.getForces() if isinstance(f, openmm.HarmonicBondForce)]
    assert bonds.getNumBonds() == system.topology.getNumBonds()
    for k in range(bonds.getNumBonds()):
        i, j, r0, _ = bonds.getBondParameters(k)
        r0 = r0.value_in_unit(unit.nanometer)
        r = np.linalg.norm(x[i] - x[j])
        assert 0.7 * r0 < r < 1.3 * r0, f"bond {i}-{j}: {r:.4f} nm, equilibrium {r0:.4f} nm"


@pytest.mark.parametrize("key", SYSTEM_KEYS)
def test_positions_are_a_local_minimum(key, built, openmm_reference_energies):
    system, sequence, caps, _ = built[key]
    start = peptide(sequence, caps=caps, minimize=False).positions
    displaced = system.positions + np.random.default_rng(1).normal(scale=0.002, size=(5, *system.positions.shape))
    energies, forces = openmm_reference_energies(
        system.system, np.concatenate([system.positions[None], start[None], displaced]), forces=True
    )
    energy = energies[0]
    assert np.isfinite(energy)

    # Stationary: OpenMM's forces meet the minimiser's RMS tolerance.
    assert np.sqrt(np.mean(forces[0] ** 2)) <= MINIMIZER_TOLERANCE

    # Downhill from the ideal-geometry build.
    assert energy < energies[1]

    # A minimum, not a saddle: small random displacements cost energy.
    assert np.all(energies[2:] > energy)

    # Unstrained: at 300 K each harmonic bond and angle term holds kT/2 on average
    # (equipartition); a minimum must hold well under that.
    strain, terms = _harmonic_strain(system.system, system.positions)
    assert 0.0 <= strain < 0.5 * system.kT * terms


def _harmonic_strain(system, x):
    """Energy of the HarmonicBond and HarmonicAngle terms, in numpy, and their count."""
    (bonds,) = [f for f in system.getForces() if isinstance(f, openmm.HarmonicBondForce)]
    (angles,) = [f for f in system.getForces() if isinstance(f, openmm.HarmonicAngleForce)]
    energy = 0.0
    for k in range(bonds.getNumBonds()):
        i, j, r0, kb = bonds.getBondParameters(k)
        r = np.linalg.norm(x[i] - x[j])
        energy += 0.5 * kb.value_in_unit(unit.kilojoule_per_mole / unit.nanometer**2) * (r - r0.value_in_unit(unit.nanometer)) ** 2
    for k in range(angles.getNumAngles()):
        i, j, m, theta0, ka = angles.getAngleParameters(k)
        u, v = x[i] - x[j], x[m] - x[j]
        theta = np.arccos(np.clip(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)), -1.0, 1.0))
        energy += 0.5 * ka.value_in_unit(unit.kilojoule_per_mole / unit.radian**2) * (theta - theta0.value_in_unit(unit.radian)) ** 2
    return energy, bonds.getNumBonds() + angles.getNumAngles()


@pytest.mark.parametrize("key", SYSTEM_KEYS)
def test_net_charge_and_termini(key, built):
    system, _, caps, charge = built[key]
    (nonbonded,) = [f for f in system.system.getForces() if isinstance(f, openmm.NonbondedForce)]
    total = sum(
        nonbonded.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge) for i in range(system.n_atoms)
    )
    assert total == pytest.approx(charge, abs=1e-6)

    residues = list(system.topology.residues())
    hydrogens = {atom.index: 0 for atom in system.topology.atoms()}
    for a, b in system.topology.bonds():
        if a.element.symbol == "H":
            hydrogens[b.index] += 1
        if b.element.symbol == "H":
            hydrogens[a.index] += 1
    if caps:
        assert residues[0].name == "ACE" and residues[-1].name == "NME"
    else:
        first, last = _atoms(residues[0]), _atoms(residues[-1])
        expected_nh = 2 if residues[0].name == "PRO" else 3
        assert hydrogens[first["N"]] == expected_nh  # NH3+
        assert "OXT" in last and hydrogens[last["OXT"]] == 0 and hydrogens[last["O"]] == 0  # COO-
    for residue in residues:
        if residue.name == "HIS":
            assert {"HE2"} <= set(_atoms(residue)) and "HD1" not in _atoms(residue)  # HIE


def test_single_residue():
    system = peptide("H")
    residues = list(system.topology.residues())
    assert [r.name for r in residues] == ["ACE", "HIS", "NME"]
    assert "HE2" in _atoms(residues[1]) and "HD1" not in _atoms(residues[1])  # HIE
    assert system.n_atoms == 6 + 17 + 6
    # Amber has no free-amino-acid templates: a clear error, not a crash.
    with pytest.raises(ValueError, match="cannot parametrise HIS"):
        peptide("H", caps=False)


@pytest.mark.parametrize("bad", ["AXA", "B", "AJ", "A A", "A1", "", None, 5])
def test_unknown_letters_raise(bad):
    with pytest.raises(ValueError, match="ACDEFGHIKLMNPQRSTVWY"):
        peptide(bad)


def test_lower_case_and_fresh_copies():
    first = peptide("aga")
    assert first.name == "ACE-AGA-NME"
    first.positions[:] = 0.0
    first.system.setParticleMass(0, 1.0)
    second = peptide("AGA")
    assert np.abs(second.positions).sum() > 0
    assert second.system.getParticleMass(0).value_in_unit(unit.dalton) != 1.0
    assert second.n_atoms == 6 + 10 + 7 + 10 + 6  # ACE Ala Gly Ala NME


# ------------------------------------------- the rest of the stack on these systems


@pytest.mark.parametrize("key", [*REGISTERED, "all20-capped"])
def test_torch_energy_equals_openmm(key, built, openmm_reference_energies):
    import torch

    from openmm_cmt.energy.torch_energy import TorchEnergy

    system = built[key][0]
    rng = np.random.default_rng(2)
    xs = system.positions + np.concatenate(
        [np.zeros((1, system.n_atoms, 3)), rng.normal(scale=0.01, size=(5, system.n_atoms, 3))]
    )
    expected_energy, expected_forces = openmm_reference_energies(system.system, xs, forces=True)
    module = TorchEnergy.from_openmm(system.system, dtype=torch.float64)
    x = torch.tensor(xs, requires_grad=True)
    energy = module(x)
    (grad,) = torch.autograd.grad(energy.sum(), x)
    np.testing.assert_allclose(energy.detach().numpy(), expected_energy, rtol=1e-8, atol=1e-6)
    scale = np.abs(expected_forces).max()
    np.testing.assert_allclose(-grad.numpy(), expected_forces, rtol=0, atol=1e-7 * scale)


@pytest.mark.parametrize("key", SYSTEM_KEYS)
def test_zmatrix_round_trip_and_chirality(key, built):
    import torch

    from openmm_cmt.coordinates import InternalCoordinateTransform, chirality_signs, stereocentres

    system, sequence, _, _ = built[key]
    transform = InternalCoordinateTransform.from_topology(system.topology, system.positions).double()
    assert transform.dim == system.dim

    centres = stereocentres(system.topology)
    # Every CA but Gly's, and CB of Ile and Thr.
    assert len(centres) == sum(letter != "G" for letter in sequence) + sequence.count("I") + sequence.count("T")
    assert set(transform.chirality_centres[:, 0].tolist()) == set(centres[:, 0].tolist())

    generator = torch.Generator().manual_seed(3)
    reference = torch.as_tensor(system.positions)[None]
    x = reference + 0.01 * torch.randn(8, system.n_atoms, 3, generator=generator, dtype=torch.float64)
    ic, log_det_forward = transform.to_internal(x)
    x_back, log_det_inverse = transform.to_cartesian(ic)
    # Equal up to a rigid motion: every interatomic distance is reproduced.
    def distances(y):
        return (y[:, :, None] - y[:, None]).norm(dim=-1)

    torch.testing.assert_close(distances(x_back), distances(x), rtol=0, atol=1e-10)
    torch.testing.assert_close(log_det_forward + log_det_inverse, torch.zeros(8, dtype=torch.float64), rtol=0, atol=1e-9)
    # The chiral dihedrals of the minimum lie in the half-ranges, and the minimum's
    # handedness is what the constraints keep.
    ic_reference = transform.reference_ic[transform.chiral_dihedrals]
    low, high = transform.chiral_bounds[:, 0], transform.chiral_bounds[:, 1]
    assert ((ic_reference > low) & (ic_reference < high)).all()
    x_reference, _ = transform.to_cartesian(transform.reference_ic[None])
    assert (chirality_signs(x_reference, centres) == chirality_signs(reference, centres)).all()


def test_bad_force_field_raises():
    with pytest.raises(ValueError, match="no-such-forcefield.xml"):
        peptide("AA", forcefield=("no-such-forcefield.xml",))
    with pytest.raises(ValueError, match="at least one"):
        peptide("AA", forcefield=())
