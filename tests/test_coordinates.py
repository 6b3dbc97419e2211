"""Internal coordinates: Z-matrix construction, the IC bijection, its log-det and chirality.

Independent answers: MDTraj's geometry, a Gram-Schmidt canonical frame, autograd
Jacobians (in the full 3N-dimensional space, with the rigid motion parametrised by
Euler angles whose Haar density is sin(beta)), and the known handedness of L-amino acids.
"""

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import openmm_cmt  # noqa: F401  (torch before openmm)
import mdtraj as md
import openmmtools
from openmm import app

from openmm_cmt.coordinates import (
    InternalCoordinateTransform,
    MoleculeGraph,
    as_molecule_graph,
    build_zmatrix,
    chirality_signs,
    stereocentres,
    validate_zmatrix,
)

DATA = os.path.join(os.path.dirname(openmmtools.__file__), "data")
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.fixture(scope="module")
def aldp_transform(aldp):
    return InternalCoordinateTransform.from_topology(aldp.topology, aldp.positions).double()


@pytest.fixture(scope="module")
def b2_ligand():
    """A bicyclic organic molecule (cucurbituril guest B2, 30 atoms) from an Amber prmtop."""
    prmtop = app.AmberPrmtopFile(os.path.join(DATA, "cb7-b2", "ligand.prmtop"))
    inpcrd = app.AmberInpcrdFile(os.path.join(DATA, "cb7-b2", "ligand.inpcrd"))
    positions = np.array(inpcrd.getPositions(asNumpy=True).value_in_unit(inpcrd.getPositions().unit))
    return prmtop.topology, positions / 1.0


@pytest.fixture(scope="module")
def octapeptide():
    """Residues 1-8 (MNIFEMLR) of T4 lysozyme, read from a PDB with MDTraj."""
    traj = md.load_pdb(os.path.join(DATA, "T4-lysozyme-L99A-implicit", "receptor.pdb"))
    fragment = traj.atom_slice(traj.topology.select("resid 0 to 7"))
    return fragment.topology, fragment.xyz[0].astype(np.float64)


def canonical_frame(x):
    """Positions with atom a0 at the origin, a1 on +x and a2 in the xy-plane (y > 0)."""
    def unit(v):
        return v / v.norm(dim=-1, keepdim=True)

    a0, a1, a2 = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    e1 = unit(a1 - a0)
    e2 = unit((a2 - a0) - ((a2 - a0) * e1).sum(-1, keepdim=True) * e1)
    e3 = torch.cross(e1, e2, dim=-1)
    return torch.cat([((x - a0) * e).sum(-1, keepdim=True) for e in (e1, e2, e3)], dim=-1)


def wrapped(d):
    return torch.remainder(d + math.pi, 2 * math.pi) - math.pi


def random_rotations(n, generator, dtype=torch.float64):
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=generator, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    return q * torch.det(q)[:, None, None]  # proper rotations only


def perturbed(positions, n, scale, generator, dtype=torch.float64):
    x = torch.as_tensor(positions, dtype=torch.float64)
    return (x + scale * torch.randn(n, *x.shape, generator=generator, dtype=torch.float64)).to(dtype)


def random_ic(transform, n, generator, dtype=torch.float64):
    """Valid ICs: bonds in [0.09, 0.16] nm, angles in [1.6, 2.2] rad, free dihedrals."""
    ic = torch.empty(n, transform.dim, dtype=dtype)
    u = lambda k: torch.rand(n, k, generator=generator, dtype=dtype)  # noqa: E731
    ic[:, transform.bond_indices] = 0.09 + 0.07 * u(len(transform.bond_indices))
    ic[:, transform.angle_indices] = 1.6 + 0.6 * u(len(transform.angle_indices))
    ic[:, transform.dihedral_indices] = math.pi * (2 * u(len(transform.dihedral_indices)) - 1)
    return ic


# ---------------------------------------------------------------- Z-matrix


def _check_chemical_zmatrix(z, graph):
    neighbours = [set(b) for b in graph.neighbours()]
    hydrogen = graph.is_hydrogen
    assert sorted(z[:, 0]) == list(range(graph.n_atoms))
    heavy_rows = np.flatnonzero(~hydrogen[z[:, 0]])
    assert heavy_rows.max() < np.flatnonzero(hydrogen[z[:, 0]]).min(), "heavy atoms must come first"
    for i, (a, j, k, l) in enumerate(z):
        if i >= 1:
            assert j in neighbours[a], f"row {i}: bond_ref must be bonded"
        if i >= 3:
            assert k in neighbours[j], f"row {i}: angle_ref must be bonded to bond_ref"
            assert l in neighbours[j] or l in neighbours[k], f"row {i}: dihedral_ref must be bonded"
        if hydrogen[a]:
            assert not hydrogen[j], f"row {i}: hydrogen {a} must sit on its heavy atom"


def test_zmatrix_alanine_dipeptide(aldp, aldp_transform):
    graph_names = [a.name for a in aldp.topology.atoms()]
    z = build_zmatrix(aldp.topology)
    validate_zmatrix(z, aldp.n_atoms)
    _check_chemical_zmatrix(z, as_molecule_graph(aldp.topology))
    # Root at the C-alpha; the seven main-chain heavy atoms are placed first.
    assert [graph_names[a] for a in z[:3, 0]] == ["CA", "N", "C"]
    assert sorted(graph_names[a] for a in z[:7, 0]) == sorted(["CH3", "C", "N", "CA", "C", "N", "C"])
    # phi and psi are internal coordinates themselves (checked against MDTraj).
    traj = md.Trajectory(aldp.positions[None], md.Topology.from_openmm(aldp.topology))
    ic, _ = aldp_transform.to_internal(torch.as_tensor(aldp.positions)[None])
    for compute in (md.compute_phi, md.compute_psi):
        _, angle = compute(traj)
        assert torch.isclose(ic[0, aldp_transform.dihedral_indices], torch.tensor(float(angle[0, 0])).double(), atol=1e-5).any()


def test_zmatrix_from_openmm_and_mdtraj_topologies_agree(b2_ligand):
    topology, _ = b2_ligand
    z_openmm = build_zmatrix(topology)
    z_mdtraj = build_zmatrix(md.Topology.from_openmm(topology))
    np.testing.assert_array_equal(z_openmm, z_mdtraj)
    _check_chemical_zmatrix(z_openmm, as_molecule_graph(topology))


def test_zmatrix_peptide_from_pdb(octapeptide):
    topology, _ = octapeptide
    z = build_zmatrix(topology)
    graph = as_molecule_graph(topology)
    _check_chemical_zmatrix(z, graph)
    names = np.array(graph.names)
    n_backbone = int(np.isin(names, ["N", "CA", "C"]).sum())
    assert set(names[z[:n_backbone, 0]]) == {"N", "CA", "C"}, "main chain first"
    assert names[z[0, 0]] == "CA"
    assert graph.residue_indices[z[0, 0]] in (3, 4), "root near the middle of the chain"


@st.composite
def molecular_graphs(draw):
    """Random connected graphs: a random tree of 3-14 atoms plus up to two ring bonds."""
    n = draw(st.integers(3, 14))
    bonds = {(draw(st.integers(0, i - 1)), i) for i in range(1, n)}
    for _ in range(draw(st.integers(0, 2))):
        i, j = sorted(draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True)))
        bonds.add((i, j))
    elements = draw(st.lists(st.sampled_from(["C", "N", "O", "H"]), min_size=n, max_size=n))
    return MoleculeGraph.from_bonds(n, sorted(bonds), elements)


@settings(max_examples=25, deadline=None)
@given(graph=molecular_graphs(), seed=st.integers(0, 2**31 - 1))
def test_any_connected_graph_gets_a_bonded_zmatrix(graph, seed):
    z = build_zmatrix(graph)
    validate_zmatrix(z, graph.n_atoms)
    neighbours = [set(b) for b in graph.neighbours()]
    for i, (a, j, k, l) in enumerate(z):
        assert i == 0 or j in neighbours[a]
        assert i < 2 or k in neighbours[j] or (i == 2 and k in neighbours[a])
        assert i < 3 or l in neighbours[j] or l in neighbours[k]
    transform = InternalCoordinateTransform(z).double()
    ic = random_ic(transform, 4, torch.Generator().manual_seed(seed))
    ic_back, _ = transform.to_internal(transform.to_cartesian(ic)[0])
    assert wrapped(ic_back - ic).abs().max() < 1e-10


def test_user_root_atoms(aldp):
    z = build_zmatrix(aldp.topology, root_atoms=(1, 4, 6))  # ACE CH3, C, ALA N
    assert z[:3, 0].tolist() == [1, 4, 6] and z[2, 1:3].tolist() == [4, 1]
    with pytest.raises(ValueError, match="bonded"):
        build_zmatrix(aldp.topology, root_atoms=(1, 6, 8))


def test_bad_zmatrices_raise():
    good = np.array([[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1], [3, 2, 1, 0]])
    validate_zmatrix(good)
    bad = {
        "shape": good[:, :3],
        "exactly once": np.array([[0, -1, -1, -1], [1, 0, -1, -1], [1, 0, 0, -1], [3, 2, 1, 0]]),
        "earlier row": np.array([[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1], [3, 2, 1, 4]]),
        "distinct": np.array([[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1], [3, 2, 1, 1]]),
        "must be -1": np.array([[0, -1, -1, -1], [1, 0, 2, -1], [2, 1, 0, -1], [3, 2, 1, 0]]),
    }
    for message, z in bad.items():
        with pytest.raises(ValueError, match=message):
            validate_zmatrix(z)
    with pytest.raises(ValueError, match="5 atoms"):
        validate_zmatrix(good, n_atoms=5)
    with pytest.raises(ValueError, match="exactly once"):
        InternalCoordinateTransform(bad["exactly once"])


def test_build_zmatrix_rejects_bad_topologies(b2_ligand):
    with pytest.raises(ValueError, match="disconnected"):
        build_zmatrix(MoleculeGraph.from_bonds(6, [(0, 1), (1, 2), (3, 4), (4, 5)]))
    with pytest.raises(ValueError, match="at least 3 atoms"):
        build_zmatrix(MoleculeGraph.from_bonds(2, [(0, 1)]))
    # A non-standard residue in a PDB file without CONECT records has no bonds.
    pdb = app.PDBFile(os.path.join(DATA, "cb7-b2", "ligand.pdb"))
    with pytest.raises(ValueError, match="no bonds"):
        build_zmatrix(pdb.topology)
    with pytest.raises(TypeError, match="Topology"):
        build_zmatrix(np.zeros((3, 3)))


# ---------------------------------------------------------------- the bijection


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("molecule", ["aldp", "b2_ligand"])
def test_round_trips(molecule, dtype, request):
    if molecule == "aldp":
        system = request.getfixturevalue("aldp")
        topology, positions = system.topology, system.positions
    else:
        topology, positions = request.getfixturevalue("b2_ligand")
    transform = InternalCoordinateTransform.from_topology(topology, positions).to(dtype)
    generator = torch.Generator().manual_seed(0)
    x = perturbed(positions, 32, 0.01, generator, dtype)
    z = transform.zmatrix
    x_ordered = x[:, z[:, 0]]  # rows 0, 1, 2 fix the canonical frame
    expected = canonical_frame(x_ordered.double()).to(dtype)

    ic, log_det_ic = transform.to_internal(x)
    x_back, log_det_x = transform.to_cartesian(ic)
    assert x_back.dtype == dtype and ic.shape == (32, 3 * len(positions) - 6)
    assert (x_back[:, z[:, 0]] - expected).abs().max() <= TOL[dtype]
    assert (log_det_ic + log_det_x).abs().max() <= TOL[dtype] * 10

    ic = random_ic(transform, 32, generator, dtype)
    ic_back, log_det_back = transform.to_internal(transform.to_cartesian(ic)[0])
    assert (wrapped(ic_back - ic)).abs().max() <= TOL[dtype]
    assert (log_det_back + transform.to_cartesian(ic)[1]).abs().max() <= TOL[dtype] * 10
    dihedrals = ic_back[:, transform.dihedral_indices]
    assert dihedrals.min() >= -math.pi and dihedrals.max() < math.pi


def test_internal_coordinates_match_mdtraj(aldp, aldp_transform):
    generator = torch.Generator().manual_seed(1)
    x = perturbed(aldp.positions, 8, 0.02, generator)
    ic, _ = aldp_transform.to_internal(x)
    traj = md.Trajectory(x.numpy(), md.Topology.from_openmm(aldp.topology))
    z = aldp_transform.zmatrix.numpy()
    t = aldp_transform
    np.testing.assert_allclose(ic[:, t.bond_indices], md.compute_distances(traj, z[1:, :2]), atol=1e-6)
    np.testing.assert_allclose(ic[:, t.angle_indices], md.compute_angles(traj, z[2:, :3]), atol=1e-5)
    np.testing.assert_allclose(
        wrapped(ic[:, t.dihedral_indices] - torch.as_tensor(md.compute_dihedrals(traj, z[3:]), dtype=torch.float64)),
        0,
        atol=1e-5,
    )


def test_reference_ic_and_layout(aldp, aldp_transform):
    t = aldp_transform
    n = aldp.n_atoms
    assert t.dim == 3 * n - 6
    torch.testing.assert_close(torch.cat([t.bond_indices, t.angle_indices, t.dihedral_indices]), torch.arange(t.dim))
    ic, _ = t.to_internal(torch.as_tensor(aldp.positions)[None])
    # Stored in the default dtype (float32) at construction, like any module parameter.
    torch.testing.assert_close(t.reference_ic, ic[0].float().double(), atol=0, rtol=0)
    assert t.circular.sum() == n - 3 - len(t.chiral_dihedrals)
    assert not t.circular[t.chiral_dihedrals].any() and not t.circular[t.bond_indices].any()
    assert InternalCoordinateTransform(t.zmatrix).reference_ic.numel() == 0


def test_invariant_to_rigid_motions(aldp, aldp_transform):
    generator = torch.Generator().manual_seed(2)
    x = perturbed(aldp.positions, 16, 0.02, generator)
    moved = x @ random_rotations(16, generator).transpose(-1, -2) + torch.randn(16, 1, 3, generator=generator, dtype=torch.float64)
    ic, log_det = aldp_transform.to_internal(x)
    ic_moved, log_det_moved = aldp_transform.to_internal(moved)
    assert wrapped(ic_moved - ic).abs().max() < 1e-10
    assert (log_det_moved - log_det).abs().max() < 1e-10
    # A mirror image is not a rigid motion: it flips every dihedral.
    ic_mirror, _ = aldp_transform.to_internal(x * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(wrapped(ic_mirror[:, aldp_transform.dihedral_indices] + ic[:, aldp_transform.dihedral_indices]).abs().max(), torch.tensor(0.0, dtype=torch.float64), atol=1e-10, rtol=0)


# ---------------------------------------------------------------- log-det


def _euler_zyz(angles):
    def rz(t):
        c, s, o, z = torch.cos(t), torch.sin(t), torch.ones_like(t), torch.zeros_like(t)
        return torch.stack([torch.stack([c, -s, z]), torch.stack([s, c, z]), torch.stack([z, z, o])])

    def ry(t):
        c, s, o, z = torch.cos(t), torch.sin(t), torch.ones_like(t), torch.zeros_like(t)
        return torch.stack([torch.stack([c, z, s]), torch.stack([z, o, z]), torch.stack([-s, z, c])])

    return rz(angles[0]) @ ry(angles[1]) @ rz(angles[2])


SMALL_ZMATRICES = {
    # Built from a branched 6-atom graph: atom 2 bonded to atom 0, improper rows.
    "built": build_zmatrix(MoleculeGraph.from_bonds(6, [(0, 1), (1, 2), (2, 3), (1, 4), (4, 5)], ["C"] * 6)),
    # A user chain with atom 2 bonded to atom 1.
    "user": np.array([[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1], [3, 2, 1, 0], [4, 1, 2, 0]]),
}


@pytest.mark.parametrize("name", sorted(SMALL_ZMATRICES))
def test_log_det_equals_autograd_jacobian(name):
    """exp(log_det) is the volume element of x over (translation, Haar rotation, ICs).

    Full map (t, ZYZ Euler angles, ic) -> R x_canonical(ic) + t in R^{3N}: its Jacobian
    determinant is sin(beta) exp(log_det(ic)) (sin(beta) is the Haar density of ZYZ
    Euler angles, total 8 pi^2 as for dOmega dpsi).
    """
    transform = InternalCoordinateTransform(SMALL_ZMATRICES[name]).double()
    n = transform.n_atoms
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        ic = random_ic(transform, 1, generator)[0]
        euler = torch.tensor([0.3, 1.1, -2.0], dtype=torch.float64) + torch.rand(3, generator=generator, dtype=torch.float64)
        t = torch.randn(3, generator=generator, dtype=torch.float64)

        def full_map(params):
            x, _ = transform.to_cartesian(params[6:].unsqueeze(0))
            return (x[0] @ _euler_zyz(params[3:6]).T + params[:3]).reshape(-1)

        jac = torch.autograd.functional.jacobian(full_map, torch.cat([t, euler, ic]))
        assert jac.shape == (3 * n, 3 * n)
        _, log_abs_det = torch.linalg.slogdet(jac)
        _, log_det = transform.to_cartesian(ic.unsqueeze(0))
        torch.testing.assert_close(log_abs_det - torch.log(torch.sin(euler[1])), log_det[0], atol=1e-10, rtol=0)

        # The canonical-frame part: the 3N - 6 free Cartesian coordinates, plus log(b1^2 y2).
        z = transform.zmatrix
        free = [3 * int(z[1, 0])] + [3 * int(z[2, 0]), 3 * int(z[2, 0]) + 1]
        free += [3 * int(a) + c for a in z[3:, 0] for c in range(3)]
        jac_canonical = torch.autograd.functional.jacobian(
            lambda q: transform.to_cartesian(q.unsqueeze(0))[0].reshape(-1), ic
        )[free]
        x, _ = transform.to_cartesian(ic.unsqueeze(0))
        rigid = 2 * torch.log(ic[0]) + torch.log(x[0, z[2, 0], 1])
        torch.testing.assert_close(torch.linalg.slogdet(jac_canonical)[1] + rigid, log_det[0], atol=1e-10, rtol=0)


def test_degenerate_geometry_is_finite():
    transform = InternalCoordinateTransform(SMALL_ZMATRICES["user"]).double()
    x = torch.tensor([[[0.0, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [0.3, 0, 0], [0.3, 0.1, 0]]], dtype=torch.float64, requires_grad=True)
    ic, log_det = transform.to_internal(x)  # all of 0, 1, 2, 3 collinear
    assert torch.isfinite(ic).all() and not torch.isnan(log_det).any()
    ic[:, transform.dihedral_indices].sum().backward()
    assert torch.isfinite(x.grad).all()
    straight = ic.detach().clone()
    x_back, _ = transform.to_cartesian(straight)
    assert torch.isfinite(x_back).all()


# ---------------------------------------------------------------- chirality


def test_l_amino_acids_share_one_handedness(aldp, octapeptide):
    """All C-alpha of natural L residues have the sign of L-alanine's (N, CB, C) triple."""
    topology, positions = octapeptide
    centres = stereocentres(topology)
    names = [a.name for a in topology.atoms]
    is_alpha = np.array([names[c] == "CA" for c in centres[:, 0]])
    assert is_alpha.sum() == 8 and (~is_alpha).sum() == 1  # + Ile CB
    assert all(names[n] in ("N", "CB", "C") for n in centres[is_alpha, 1:].ravel())
    signs = chirality_signs(torch.as_tensor(positions)[None], centres)[0]
    l_alanine = chirality_signs(torch.as_tensor(aldp.positions)[None], aldp.topology)[0]
    assert l_alanine.shape == (1,)
    assert (signs[torch.as_tensor(is_alpha)] == l_alanine).all()
    assert len(stereocentres(MoleculeGraph.from_bonds(5, [(0, 1), (0, 2), (0, 3), (0, 4)], ["C", "H", "H", "H", "H"]))) == 0


@pytest.mark.parametrize("molecule", ["aldp", "octapeptide"])
def test_chiral_dihedrals_in_half_range_preserve_chirality(molecule, request):
    if molecule == "aldp":
        system = request.getfixturevalue("aldp")
        topology, positions = system.topology, system.positions
    else:
        topology, positions = request.getfixturevalue(molecule)
    transform = InternalCoordinateTransform.from_topology(topology, positions).double()
    centres = stereocentres(topology)
    # Every stereocentre is held by a bounded dihedral.
    assert set(transform.chirality_centres[:, 0].tolist()) == set(centres[:, 0].tolist())
    generator = torch.Generator().manual_seed(4)
    n = 256
    ic = random_ic(transform, n, generator)
    low, high = transform.chiral_bounds[:, 0], transform.chiral_bounds[:, 1]
    ic[:, transform.chiral_dihedrals] = low + (high - low) * torch.rand(n, len(low), generator=generator, dtype=torch.float64)
    x, _ = transform.to_cartesian(ic)
    reference = torch.as_tensor(positions)[None]
    for c in (transform.chirality_centres, centres):
        expected = chirality_signs(reference, c)
        assert (chirality_signs(x, c) == expected).all(), "every sample keeps the reference handedness"
    # The test can fail: flipping the first chiral dihedral inverts its centre.
    flipped = ic.clone()
    flipped[:, transform.chiral_dihedrals[0]] *= -1
    x_flipped, _ = transform.to_cartesian(flipped)
    first = transform.chirality_centres[:1]
    assert (chirality_signs(x_flipped, first) == -chirality_signs(reference, first)).all()


def test_fix_methyl_permutation(aldp):
    plain = InternalCoordinateTransform.from_topology(aldp.topology, aldp.positions)
    fixed = InternalCoordinateTransform.from_topology(aldp.topology, aldp.positions, fix_methyl_permutation=True)
    names = [a.name for a in aldp.topology.atoms()]
    extra = fixed.chirality_centres[len(plain.chiral_dihedrals):]
    # The 2nd and 3rd hydrogens of the three methyl groups, relative to the 1st.
    assert len(extra) == 6 and all(names[a].startswith("H") for a in extra[:, 1])
    assert all(names[l].startswith("H") for l in extra[:, 3])
    assert set(fixed.chiral_dihedrals.tolist()) > set(plain.chiral_dihedrals.tolist())
    assert fixed.circular.sum() == plain.circular.sum() - 6
    # Within the bounds, the cyclic order of each methyl's hydrogens is that of the reference.
    generator = torch.Generator().manual_seed(5)
    fixed = fixed.double()
    ic = random_ic(fixed, 128, generator)
    low, high = fixed.chiral_bounds[:, 0], fixed.chiral_bounds[:, 1]
    ic[:, fixed.chiral_dihedrals] = low + (high - low) * torch.rand(128, len(low), generator=generator, dtype=torch.float64)
    x, _ = fixed.to_cartesian(ic)
    reference = torch.as_tensor(aldp.positions)[None]
    assert (chirality_signs(x, fixed.chirality_centres) == chirality_signs(reference, fixed.chirality_centres)).all()


def test_warns_without_reference_for_stereocentres(aldp):
    with pytest.warns(UserWarning, match="stereocentres"):
        transform = InternalCoordinateTransform(build_zmatrix(aldp.topology), topology=aldp.topology)
    assert transform.chiral_dihedrals.numel() == 0


# ---------------------------------------------------------------- TorchScript, dtype, errors


def test_scripted_equals_eager(aldp):
    eager = InternalCoordinateTransform.from_topology(aldp.topology, aldp.positions, fix_methyl_permutation=True)
    scripted = torch.jit.script(eager)
    generator = torch.Generator().manual_seed(6)
    for dtype in (torch.float32, torch.float64):
        e, s = eager.to(dtype), scripted.to(dtype)
        x = perturbed(aldp.positions, 8, 0.01, generator, dtype)
        for a, b in zip(e.to_internal(x), s.to_internal(x)):
            assert a.dtype == dtype and torch.equal(a, b)
        ic = random_ic(e, 8, generator, dtype)
        for a, b in zip(e.to_cartesian(ic), s.to_cartesian(ic)):
            assert torch.equal(a, b)
        assert s.reference_ic.dtype == dtype and s.chiral_bounds.dtype == dtype
        assert torch.equal(s.circular, e.circular) and torch.equal(s.chiral_dihedrals, e.chiral_dihedrals)


def test_shape_errors(aldp_transform):
    with pytest.raises(ValueError, match=r"\[batch, 22, 3\]"):
        aldp_transform.to_internal(torch.zeros(2, 21, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[batch, 60\]"):
        aldp_transform.to_cartesian(torch.zeros(2, 59, dtype=torch.float64))
    with pytest.raises(ValueError, match="reference_positions"):
        InternalCoordinateTransform(aldp_transform.zmatrix, reference_positions=np.zeros((21, 3)))
    with pytest.raises(ValueError, match="shape"):
        chirality_signs(torch.zeros(2, 22, 2), np.array([[0, 1, 2, 3]]))
