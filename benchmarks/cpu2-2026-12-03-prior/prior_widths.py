"""Marginal widths of the Boltzmann distribution in the generator's scaled coordinates.

usage: python prior_widths.py RUN

Draws 20,000 samples from the trained generator in RUN, maps them to the scaled
internal coordinates y in [-1, 1] (half-width ``width_factor`` conditional harmonic
standard deviations), and prints the reweighted standard deviation of each bounded
coordinate by kind, with sum log(0.15 / sd): the entropy (nats, Gaussian approximation)
by which a prior of width 0.15 is broader than the target's marginals.
"""

import sys

import numpy as np
import torch

from openmm_cmt.metrics.basins import normalised_weights
from openmm_cmt.sampler import BoltzmannGeneratorSampler

torch.manual_seed(1)
sampler = BoltzmannGeneratorSampler.load(sys.argv[1], device="cpu")
g = sampler.generator
if g.n_constraints:
    raise SystemExit("this script reads unconstrained systems only")
samples = sampler.sample(20_000)
with torch.no_grad():
    ic, _ = g.transform.to_internal(torch.as_tensor(samples.positions, dtype=torch.float32))
    y = g.scaled_coordinates(ic).double().numpy()
w = normalised_weights(samples.log_weights, len(samples.log_weights))
mean = (w[:, None] * y).sum(0)
sd = np.sqrt((w[:, None] * (y - mean) ** 2).sum(0))
bounded = g.bounded.numpy()
n = sampler.molsys.n_atoms
for kind, rows in (("bonds", slice(0, n - 1)), ("angles", slice(n - 1, 2 * n - 3)), ("dihedrals", slice(2 * n - 3, 3 * n - 6))):
    s = sd[rows][bounded[rows]]
    print(f"{kind}: {len(s)} bounded, sd median {np.median(s):.3f} ({s.min():.3f}-{s.max():.3f}), "
          f"sum log(0.15/sd) {np.log(0.15 / s).sum():.2f} nats")
