"""TorchEnergy on alanine dipeptide (openmmtools' AlanineDipeptideImplicit: amber96
bonded terms, NonbondedForce NoCutoff, OBC1 as a CustomGBForce, CMMotionRemover)
against OpenMM's Reference platform on 1000 random conformations.

Conformations are the reference structure plus Gaussian noise of 0.005, 0.015 or
0.03 nm per coordinate (a third each): from near-equilibrium to strained. OpenMM gets
the float64 positions in both dtypes, so float32 errors include the rounding of the
input. Tolerances tol = 1e-8 (float64) and 1e-5 (float32), relative to:
- energies: the sum over forces of |E_force| (OpenMM's per-force energies, by force
  group). The total crosses zero (|E| = 0.14 kJ/mol among these conformations, with
  terms of +-90), where no fixed-precision sum is accurate relative to |E| itself: in
  float32 the input rounding of the bond lengths alone moves E by ~1e-4 kJ/mol there.
- forces: the norm of the total force over the whole conformation.
"""

import numpy as np
import pytest
import torch

from openmm_cmt.energy.torch_energy import TorchEnergy, TorchEnergyEngine

TOL = {torch.float64: 1e-8, torch.float32: 1e-5}
N_CONFORMATIONS = 1000


@pytest.fixture(scope="module")
def conformations(aldp):
    rng = np.random.default_rng(2024)
    scales = np.repeat([0.005, 0.015, 0.03], -(-N_CONFORMATIONS // 3))[:N_CONFORMATIONS]
    return aldp.positions[None] + scales[:, None, None] * rng.standard_normal((N_CONFORMATIONS, aldp.n_atoms, 3))


@pytest.fixture(scope="module")
def reference(aldp, conformations, openmm_reference_energies):
    """Energies [B], forces [B, N, 3] and the energy scale sum_force |E_force| [B]."""
    energies, forces, per_force = openmm_reference_energies(aldp.system, conformations, forces=True, per_force=True)
    return energies, forces, np.abs(per_force).sum(1)


def _relative_errors(e, f, reference):
    ref_e, ref_f, scale_e = reference
    rel_e = np.abs(e - ref_e) / scale_e
    n = len(ref_e)
    rel_f = np.linalg.norm((f - ref_f).reshape(n, -1), axis=1) / np.linalg.norm(ref_f.reshape(n, -1), axis=1)
    return rel_e, rel_f


def test_force_terms(aldp):
    module = TorchEnergy.from_openmm(aldp.system)
    kinds = [name.split(":")[1] for name in module.term_names()]
    assert kinds == ["HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce",
                     "CustomGBForce"]  # CMMotionRemover has no energy


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_energies_and_forces_match_openmm(aldp, conformations, reference, dtype):
    module = TorchEnergy.from_openmm(aldp.system, dtype=dtype)
    x = torch.tensor(conformations, dtype=dtype, requires_grad=True)
    e = module(x)
    (grad,) = torch.autograd.grad(e.sum(), x)
    rel_e, rel_f = _relative_errors(e.detach().numpy(), -grad.double().numpy(), reference)
    assert np.all(np.isfinite(reference[0]))
    assert rel_e.max() <= TOL[dtype], f"energy: max rel error {rel_e.max():.3g}"
    assert rel_f.max() <= TOL[dtype], f"forces: max rel error {rel_f.max():.3g}"


def test_engine_matches_openmm(aldp, conformations, reference):
    engine = TorchEnergyEngine(aldp, device="cpu", dtype=torch.float32, compile=False,
                               memory_budget_bytes=1 << 24)  # several chunks
    assert engine.chunk_size < N_CONFORMATIONS
    e, f = engine.energy(conformations, forces=True)
    assert e.dtype == np.float64 and f.shape == conformations.shape
    rel_e, rel_f = _relative_errors(e, f, reference)
    assert rel_e.max() <= TOL[torch.float32] and rel_f.max() <= TOL[torch.float32]
    u = engine.reduced_energy(torch.tensor(conformations[:10]))
    assert u.dtype == torch.float64
    assert np.all(np.abs(u.numpy() - reference[0][:10] / aldp.kT) <= TOL[torch.float32] * reference[2][:10] / aldp.kT)
