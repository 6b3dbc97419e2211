"""Where the generator's phi > 0 samples sit, and their weights, against the reference.

    python minor_basins.py RUN    (draws 100k samples, seed 11)
"""
import numpy as np, torch, mdtraj as md
from openmm_cmt.sampler import BoltzmannGeneratorSampler
import sys
s = BoltzmannGeneratorSampler.load(sys.argv[1])
torch.manual_seed(11)
smp = s.sample(100_000)
top = md.Topology.from_openmm(s.molsys.topology)
traj = md.Trajectory(np.asarray(smp.positions, dtype=np.float32), top)
phi_idx, phi = md.compute_phi(traj); psi_idx, psi = md.compute_psi(traj)
lw = np.asarray(smp.log_weights, dtype=np.float64); ok = np.isfinite(lw)
w = np.exp(lw - lw[ok].max()); w[~ok] = 0; w /= w.sum()
print('ESS', 1 / (w ** 2).sum() / len(w))
from importlib.resources import files
ref = np.load(files('openmm_cmt') / 'data' / 'alanine-tetrapeptide-reference.npz')
print(ref.files)
for r in range(phi.shape[1]):
    m = phi[:, r] > 0
    print(f"residue {r+2}: unweighted {m.mean():.4f}, reweighted {w[m].sum():.4f}, mean weight ratio in basin {w[m].mean()*len(w):.2f}, max w share there {w[m].max() if m.any() else 0:.2e}, n={m.sum()}")
rphi, rpsi = ref['phi'], ref['psi']
print('ref phi shape', rphi.shape)
bins = [-np.pi, -2, -1, 0, 1, 2, np.pi]
for r in range(phi.shape[1]):
    m = phi[:, r] > 0; rm = rphi[:, r] > 0
    g = np.histogram(psi[m, r], bins=bins, weights=w[m])[0]
    h = np.histogram(rpsi[rm, r], bins=bins)[0] / len(rphi)
    gp = np.histogram(phi[m, r], bins=[0, 0.5, 1, 1.5, 2, np.pi], weights=w[m])[0]
    hp = np.histogram(rphi[rm, r], bins=[0, 0.5, 1, 1.5, 2, np.pi])[0] / len(rphi)
    print(f"res {r+2} psi bins gen", np.round(g, 4), "ref", np.round(h, 4))
    print(f"res {r+2} phi bins gen", np.round(gp, 4), "ref", np.round(hp, 4))
