"""Harmonic IC scaling of the generator's prior (openmm_cmt.flows.scaling)."""

import numpy as np
import pytest
import torch

import openmm_cmt  # noqa: F401
from openmm_cmt.coordinates.graph import as_molecule_graph
from openmm_cmt.energy import create_energy
from openmm_cmt.energy.openmm_energy import OpenMMEnergy
from openmm_cmt.flows import Generator, GeneratorConfig
from openmm_cmt.flows.coupling import CIRCULAR
from openmm_cmt.flows.scaling import amide_torsions, harmonic_scaling, ic_curvatures, improper_dihedrals
from openmm_cmt.reference import bundled_reference, load_reference
from openmm_cmt.systems import alanine_dipeptide

ALDP = alanine_dipeptide()


def _exact_u(x):
    with OpenMMEnergy(ALDP, platform="Reference", n_workers=0) as engine:
        return engine.reduced_energy(x)


def _dihedral_names(transform):
    names = [a.name for a in ALDP.topology.atoms()]
    z = transform.zmatrix.numpy()
    return {int(i): tuple(names[j] for j in z[k + 3]) for k, i in enumerate(transform.dihedral_indices.tolist())}


def test_backbone_torsions_stay_free_and_amides_and_impropers_are_bounded():
    generator = Generator.from_system(ALDP, GeneratorConfig(scaling="harmonic"))
    t = generator.transform
    graph = as_molecule_graph(ALDP.topology)
    kinds, centre, half = harmonic_scaling(t, _exact_u, graph.bonds, graph.elements)
    names = _dihedral_names(t)
    phi = [i for i, n in names.items() if n == ("C", "N", "CA", "C")]
    psi = [i for i, n in names.items() if n == ("N", "C", "CA", "N")]
    assert len(phi) == 1 and len(psi) == 1
    assert kinds[phi[0]] == CIRCULAR and kinds[psi[0]] == CIRCULAR
    amides = amide_torsions(t, graph.bonds, graph.elements).tolist()
    assert len(amides) == 2  # the ACE-ALA and ALA-NME peptide bonds
    assert all(kinds[i] != CIRCULAR for i in amides)
    assert all(kinds[i] != CIRCULAR for i in improper_dihedrals(t, graph.bonds).tolist())
    # Every bounded interval contains the reference and lies where the maps are regular.
    ref = t.reference_ic.double()
    bounded = torch.tensor([k != CIRCULAR for k in kinds])
    delta = torch.remainder(ref - centre + np.pi, 2 * np.pi) - np.pi
    assert bool((delta[bounded].abs() < half[bounded]).all())
    assert bool((half[t.angle_indices] < torch.minimum(ref[t.angle_indices], np.pi - ref[t.angle_indices])).all())


def test_curvatures_are_positive_at_the_minimum_for_bonds_and_angles():
    t = Generator.from_system(ALDP).transform
    c = ic_curvatures(t, _exact_u)
    assert np.all(c[t.bond_indices.numpy()] > 0) and np.all(c[t.angle_indices.numpy()] > 0)
    # A C-H stretch is far stiffer than an angle bend, in reduced units per nm^2 vs per rad^2.
    assert np.median(c[t.bond_indices.numpy()]) > 100 * np.median(c[t.angle_indices.numpy()])
    with pytest.raises(TypeError, match="reduced_energy must be a callable"):
        ic_curvatures(t, ALDP)


def test_harmonic_prior_is_far_closer_to_the_target_than_fixed_widths():
    torch.manual_seed(0)
    engine = create_energy(ALDP, engine="torch", compile=False)
    medians = {}
    for scaling in ("fixed", "harmonic"):
        g = Generator.from_system(ALDP, GeneratorConfig(scaling=scaling, prior_sigma=0.15))
        with torch.no_grad():
            x, _ = g.sample(2000)
        medians[scaling] = float(engine.reduced_energy(x.double()).median())
    assert medians["harmonic"] < 100.0 < 1000.0 < medians["fixed"]


def test_reference_frames_lie_in_the_support_except_cis_amides():
    g = Generator.from_system(ALDP, GeneratorConfig(scaling="harmonic", prior_sigma=0.15))
    frames = torch.as_tensor(load_reference(bundled_reference("alanine-dipeptide"))["frames"])
    with torch.no_grad():
        log_q = g.log_prob(frames.float())
    outside = ~torch.isfinite(log_q)
    assert outside.float().mean() < 1e-3
    if outside.any():
        # Frames outside the support are exactly those with a cis amide (|omega| < pi/2).
        ic, _ = g.transform.to_internal(frames[outside].float())
        graph = as_molecule_graph(ALDP.topology)
        amides = amide_torsions(g.transform, graph.bonds, graph.elements)
        assert bool((ic[:, amides].abs() < np.pi / 2).any(1).all())
