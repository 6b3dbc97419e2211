"""Systems: alanine dipeptide as the papers use it, the registry and MolecularSystem.from_pdb."""

import numpy as np
import pytest
import torch  # noqa: F401  (before openmm)
import openmm
from openmm import app, unit

import openmm_cmt.systems as systems
from openmm_cmt.systems import MolecularSystem


@pytest.fixture(scope="module")
def aldp_pdb(aldp, tmp_path_factory):
    path = tmp_path_factory.mktemp("pdb") / "aldp.pdb"
    with open(path, "w") as fh:
        app.PDBFile.writeFile(aldp.topology, aldp.positions * unit.nanometer, fh)
    return path


def test_alanine_dipeptide_is_openmmtools_implicit_without_constraints(aldp, openmm_reference_energies):
    from openmmtools import testsystems

    expected = testsystems.AlanineDipeptideImplicit(constraints=None)
    e_direct = openmm_reference_energies(expected.system, expected.positions.value_in_unit(unit.nanometer)[None])[0]
    assert openmm_reference_energies(aldp.system, aldp.positions[None])[0] == pytest.approx(e_direct, rel=1e-12, abs=1e-9)
    assert aldp.n_atoms == 22 and aldp.dim == 60 and aldp.system.getNumConstraints() == 0
    assert aldp.temperature == 300.0
    assert aldp.kT == pytest.approx(300.0 * 8.314462618e-3, rel=1e-8)
    forces = {type(f).__name__: f for f in aldp.system.getForces()}
    assert "CustomGBForce" in forces  # OBC1 as a CustomGBForce, as in FAB / TA-BG / CMT
    assert forces["NonbondedForce"].getNonbondedMethod() == openmm.NonbondedForce.NoCutoff
    assert aldp.positions.shape == (22, 3) and aldp.positions.dtype == np.float64
    assert [r.name for r in aldp.topology.residues()] == ["ACE", "ALA", "NME"]


def test_registry_get_and_unknown_name(aldp):
    assert "alanine-dipeptide" in systems.names()
    got = systems.get("alanine-dipeptide")
    assert isinstance(got, MolecularSystem) and got.name == "alanine-dipeptide"
    np.testing.assert_array_equal(got.positions, aldp.positions)
    with pytest.raises(KeyError, match="alanine-dipeptide"):
        systems.get("no-such-molecule")


def test_systems_of_other_packages_come_through_entry_points(aldp, monkeypatch):
    from importlib.metadata import EntryPoint

    from openmm_cmt.systems import registry

    group = registry.ENTRY_POINT_GROUP
    installed = [EntryPoint("plugin-dipeptide", "openmm_cmt.systems.alanine_dipeptide:alanine_dipeptide", group),
                 EntryPoint("not-callable", "math:pi", group), EntryPoint("missing", "no_such_package.systems:x", group),
                 EntryPoint("not-a-system", "builtins:dict", group),
                 EntryPoint("alanine-dipeptide", "no_such_package.systems:x", group)]
    asked = []

    def entry_points(*, group):
        asked.append(group)
        return installed

    monkeypatch.setattr(registry, "entry_points", entry_points)
    assert {"plugin-dipeptide", "alanine-dipeptide", "elil"} <= set(systems.names())
    got = systems.resolve("plugin-dipeptide", temperature=310.0)
    assert isinstance(got, MolecularSystem) and got.temperature == 310.0
    np.testing.assert_array_equal(got.positions, aldp.positions)
    assert set(asked) == {"openmm_cmt.systems"}
    assert systems.get("alanine-dipeptide").name == "alanine-dipeptide"  # the built-in one wins
    with pytest.raises(ValueError, match="'not-callable' of entry point 'math:pi' .* is not a callable"):
        systems.get("not-callable")
    with pytest.raises(ValueError, match="'missing' .* does not load: No module named 'no_such_package'"):
        systems.get("missing")
    with pytest.raises(ValueError, match="returned dict, not a MolecularSystem"):
        systems.get("not-a-system")
    with pytest.raises(KeyError, match="plugin-dipeptide"):
        systems.get("no-such-molecule")


@pytest.mark.parametrize(
    "forcefield_files, implicit, force_name",
    [(("amber14-all.xml",), "obc1", "CustomGBForce"), (("amber99sbildn.xml", "amber99_obc.xml"), None, "GBSAOBCForce")],
    ids=["amber14-obc1", "amber99sbildn-obc"],
)
def test_from_pdb_matches_a_direct_forcefield_build(aldp, aldp_pdb, forcefield_files, implicit, force_name,
                                                    openmm_reference_energies):
    molsys = MolecularSystem.from_pdb(aldp_pdb, forcefield_files, temperature=310.0, implicit_solvent=implicit)
    assert molsys.name == "aldp" and molsys.n_atoms == 22 and molsys.temperature == 310.0
    np.testing.assert_allclose(molsys.positions, aldp.positions, atol=1e-4)  # PDB keeps 0.001 Angstrom
    assert force_name in [type(f).__name__ for f in molsys.system.getForces()]
    assert molsys.system.getNumConstraints() == 0

    # Independent build with OpenMM's own API.
    pdb = app.PDBFile(str(aldp_pdb))
    files = list(forcefield_files) + (["implicit/obc1.xml"] if implicit else [])
    system = app.ForceField(*files).createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    expected = openmm_reference_energies(system, pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer)[None])[0]
    assert np.isfinite(expected)
    assert openmm_reference_energies(molsys.system, molsys.positions[None])[0] == pytest.approx(expected, rel=1e-10, abs=1e-8)


def test_from_pdb_bad_input(tmp_path, aldp_pdb):
    with pytest.raises(FileNotFoundError, match="not found"):
        MolecularSystem.from_pdb(tmp_path / "missing.pdb")
    garbage = tmp_path / "garbage.pdb"
    garbage.write_text("this is not a PDB file\n")
    with pytest.raises(ValueError):
        MolecularSystem.from_pdb(garbage)
    # Without hydrogens the force field cannot match the residues.
    no_h = tmp_path / "noh.pdb"
    no_h.write_text("".join(line for line in open(aldp_pdb) if not (line.startswith("ATOM") or line.startswith("HETATM"))
                            or line[76:78].strip() != "H"))
    with pytest.raises(ValueError, match="hydrogens"):
        MolecularSystem.from_pdb(no_h, ("amber14-all.xml",))
    with pytest.raises(ValueError, match="implicit solvent"):
        MolecularSystem.from_pdb(aldp_pdb, implicit_solvent="vacuum-ish")


def test_molecular_system_validates_its_fields(aldp):
    with pytest.raises(ValueError, match=r"\(22, 3\)"):
        MolecularSystem("x", aldp.topology, aldp.system, np.zeros((21, 3)), 300.0)
    with pytest.raises(ValueError, match="temperature"):
        MolecularSystem("x", aldp.topology, aldp.system, aldp.positions, -1.0)
