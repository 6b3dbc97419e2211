"""Where a trained alanine-dipeptide generator's importance weights go wrong.

usage: python misfit.py RUN [OTHER_RUN ...]

On 100,000 samples of the generator in RUN (exact float64 energies), with
w = p~(x) / q(x) normalised to mean 1 (so Var(w) = 1 / ESS - 1):

1. first-order indices Var(E[w | y_j]) / Var(w) of every scaled internal coordinate y_j
   (25 quantile bins; the noise floor is about 25 / n = 2.5e-4), and of every pair of
   circular coordinates (12 x 12 bins; floor about 1.4e-3);
2. how much of log w a smooth function of the coordinates explains: least squares of
   log w (the lowest 1 % left out) on polynomial features, fitted on 70 % of the samples
   and tested on the rest;
3. correlation of log w with -u_k / kT of every force and of the Lennard-Jones energy of
   every non-excluded atom pair (20,000 of the samples, OpenMM's Reference platform);
4. with OTHER_RUNs: correlation of the runs' log w on each run's samples, and the reverse
   ESS of their equal mixture (50,000 samples from each).
"""

import copy
import sys

import numpy as np
import openmm
import openmm.unit as U
import torch

from openmm_cmt.metrics import reverse_ess
from openmm_cmt.sampler import BoltzmannGeneratorSampler

torch.set_num_threads(1)
torch.manual_seed(0)
runs = sys.argv[1:]
sampler = BoltzmannGeneratorSampler.load(runs[0], device="cpu")
g = sampler.generator
samples = sampler.sample(100_000)
with torch.no_grad():
    ic, _ = g.transform.to_internal(torch.as_tensor(samples.positions, dtype=torch.float32))
    y = g.scaled_coordinates(ic).double().numpy()
    torsion = ic.double().numpy()
log_w = samples.log_weights
finite = np.isfinite(log_w)
w = np.exp(log_w - log_w[finite].max())
w = w / w.mean() - 1.0
variance = w.var()
n = len(w)
print(f"{runs[0]}: {n} samples, reverse ESS {reverse_ess(log_w):.3f}, Var(w) {variance:.3f} (1/ESS - 1 {1 / reverse_ess(log_w) - 1:.3f})")

# 1. first-order indices
kinds = g.flow.kinds.numpy()
n_atoms = sampler.molsys.n_atoms
names = [f"bond{i}" for i in range(n_atoms - 1)] + [f"angle{i}" for i in range(n_atoms - 2)] + [f"dihedral{i}" for i in range(n_atoms - 3)]
circular = np.where(kinds == 2)[0]


def first_order(bins: np.ndarray, n_bins: int) -> float:
    count = np.bincount(bins, None, n_bins)
    mean = np.bincount(bins, w, n_bins) / np.maximum(count, 1)
    return float((count * mean**2).sum() / n / variance)


def quantile_bins(column, n_bins=25):
    edges = np.quantile(column, np.linspace(0, 1, n_bins + 1))
    return np.clip(np.searchsorted(edges, column, side="right") - 1, 0, n_bins - 1)


indices = sorted(((first_order(quantile_bins(y[:, j]), 25), names[j], "circular" if kinds[j] == 2 else "bounded")
                  for j in range(y.shape[1])), reverse=True)
print("\n1. first-order indices of w (largest 8):")
for value, name, kind in indices[:8]:
    print(f"   {name:11s} {kind:8s} {value:.4f}")
print(f"   sum over all {len(indices)} coordinates: {sum(v for v, _, _ in indices):.4f}")
print("   pairs of circular coordinates (12 x 12 bins):")
for a in range(len(circular)):
    for b in range(a + 1, len(circular)):
        i, j = circular[a], circular[b]
        cell = np.clip(((y[:, i] + 1) * 6).astype(int), 0, 11) * 12 + np.clip(((y[:, j] + 1) * 6).astype(int), 0, 11)
        print(f"   {names[i]:11s} {names[j]:11s} {first_order(cell, 144):.4f}")

# 2. smooth functions of the coordinates
bounded = np.where(kinds != 2)[0]
yb = y[:, bounded]
upper = np.triu_indices(len(bounded))
fourier = np.concatenate([f(k * torsion[:, circular]) for k in (1, 2, 3) for f in (np.cos, np.sin)], 1)
quadratic = (yb[:, :, None] * yb[:, None, :])[:, upper[0], upper[1]]
features = {
    "linear in y": [yb],
    "quadratic in y": [yb, quadratic],
    "torsions' Fourier terms, orders 1-3": [fourier],
    "quadratic and Fourier": [yb, quadratic, fourier],
}
train, test = slice(0, int(0.7 * n)), slice(int(0.7 * n), n)
print("\n2. least squares of log w on smooth features (R2 on the held-out 30 %, lowest 1 % of log w left out):")
for label, parts in features.items():
    X = np.concatenate([np.ones((n, 1))] + parts, 1)
    keep = finite[train] & (log_w[train] > np.quantile(log_w[train][finite[train]], 0.01))
    coef, *_ = np.linalg.lstsq(X[train][keep], log_w[train][keep], rcond=None)
    held = finite[test] & (log_w[test] > np.quantile(log_w[test][finite[test]], 0.01))
    residual = log_w[test][held] - X[test][held] @ coef
    print(f"   {label:38s} {X.shape[1]:5d} features  R2 {1 - residual.var() / log_w[test][held].var():.3f}")

# 3. energy terms
m = 20_000
system = copy.deepcopy(sampler.molsys.system)
labels = []
for k, force in enumerate(system.getForces()):
    force.setForceGroup(k)
    labels.append(type(force).__name__)
nonbonded = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
lennard_jones = copy.deepcopy(nonbonded)
for p in range(lennard_jones.getNumParticles()):
    _, sigma, epsilon = lennard_jones.getParticleParameters(p)
    lennard_jones.setParticleParameters(p, 0.0, sigma, epsilon)
for e in range(lennard_jones.getNumExceptions()):
    a, b, _, sigma, epsilon = lennard_jones.getExceptionParameters(e)
    lennard_jones.setExceptionParameters(e, a, b, 0.0, sigma, epsilon)
lennard_jones.setForceGroup(len(labels))
system.addForce(lennard_jones)
labels.append("Lennard-Jones part of NonbondedForce")
context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
temperature = sampler.molsys.temperature
temperature = temperature.value_in_unit(U.kelvin) if hasattr(temperature, "value_in_unit") else float(temperature)
kT = (U.MOLAR_GAS_CONSTANT_R * temperature * U.kelvin).value_in_unit(U.kilojoule_per_mole)
energies = np.zeros((m, len(labels)))
for k in range(m):
    context.setPositions(samples.positions[k])
    for group in range(len(labels)):
        state = context.getState(getEnergy=True, groups={group})
        energies[k, group] = state.getPotentialEnergy().value_in_unit(U.kilojoule_per_mole)
sub = log_w[:m]
central = np.isfinite(sub) & (sub > np.quantile(sub[np.isfinite(sub)], 0.01))
print(f"\n3. correlation of log w with -u_k / kT ({m} samples, lowest 1 % of log w left out; sd of log w {sub[central].std():.3f}):")
for k, label in enumerate(labels):
    x = -energies[central, k] / kT
    if x.std() > 0:
        print(f"   {label:38s} sd {x.std():6.3f}  correlation {np.corrcoef(sub[central], x)[0, 1]: .3f}")
n_forces = len(sampler.molsys.system.getForces())
X = np.c_[np.ones(central.sum()), -energies[central][:, :n_forces] / kT]
coef, *_ = np.linalg.lstsq(X, sub[central], rcond=None)
print(f"   R2 of log w on the forces' -u_k / kT together: {1 - np.var(sub[central] - X @ coef) / np.var(sub[central]):.3f}")

atoms = [f"{a.residue.name}{a.residue.index}:{a.name}" for a in sampler.molsys.topology.atoms()]
N = nonbonded.getNumParticles()
params = [nonbonded.getParticleParameters(i) for i in range(N)]
sig = np.array([p[1].value_in_unit(U.nanometer) for p in params])
eps = np.array([p[2].value_in_unit(U.kilojoule_per_mole) for p in params])
pair_sigma, pair_epsilon = 0.5 * (sig[:, None] + sig[None]), np.sqrt(eps[:, None] * eps[None])
for e in range(nonbonded.getNumExceptions()):
    a, b, _, sigma, epsilon = nonbonded.getExceptionParameters(e)
    pair_sigma[a, b] = pair_sigma[b, a] = sigma.value_in_unit(U.nanometer)
    pair_epsilon[a, b] = pair_epsilon[b, a] = epsilon.value_in_unit(U.kilojoule_per_mole)
x = samples.positions[:m][central]
rows = []
for i in range(N):
    for j in range(i + 1, N):
        if pair_epsilon[i, j] == 0:
            continue
        r = np.linalg.norm(x[:, i] - x[:, j], axis=1)
        u = 4 * pair_epsilon[i, j] * ((pair_sigma[i, j] / r) ** 12 - (pair_sigma[i, j] / r) ** 6)
        if u.std() > 0:
            rows.append((np.corrcoef(sub[central], -u / kT)[0, 1], atoms[i], atoms[j], np.median(r)))
rows.sort(reverse=True)
print(f"   Lennard-Jones pairs most correlated with log w (of {len(rows)}):")
for corr, a, b, r in rows[:8]:
    print(f"   {a:>9s} {b:>9s}  correlation {corr:.3f}  median distance {r:.3f} nm")

# 4. other runs
if len(runs) > 1:
    samplers = [sampler] + [BoltzmannGeneratorSampler.load(r, device="cpu") for r in runs[1:]]
    K, half = len(samplers), 50_000
    log_p, log_q = [], []
    for k, s in enumerate(samplers):
        torch.manual_seed(100 + k)
        draw = s.sample(half)
        log_p.append(draw.log_weights + draw.log_q)
        log_q.append(np.stack([t.log_prob(draw.positions) if t is not s else draw.log_q for t in samplers]))
        own = draw.log_weights
        lw = log_p[-1][None] - log_q[-1]
        ok = np.isfinite(lw).all(0)
        ok &= own > np.quantile(own[ok], 0.01)
        corr = [np.corrcoef(lw[k, ok], lw[j, ok])[0, 1] for j in range(K)]
        print(f"\n4. on {half} samples of {runs[k]} (reverse ESS {reverse_ess(own):.3f}): correlation of its log w with each run's: {np.round(corr, 3)}")
    lp, lq = np.concatenate(log_p), np.concatenate(log_q, 1)
    mixture = lp - (np.logaddexp.reduce(lq, 0) - np.log(K))
    print(f"   equal mixture of the {K} generators: reverse ESS {reverse_ess(mixture):.3f}")
