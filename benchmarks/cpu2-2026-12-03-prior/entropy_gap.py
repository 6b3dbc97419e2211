"""Entropy of the untrained generator q_0 against the Boltzmann distribution's.

usage: python entropy_gap.py RUN [PRIOR_SIGMA ...]

H(p) = E_p[u] + log Z (nats, in the generator's measure), with E_p and log Z estimated
by self-normalised importance sampling from the trained generator in RUN (50,000
samples, float64 energies); H(q_0) = -E_q0[log q_0] for an untrained laptop-preset
generator with each prior width (50,000 samples each).
"""

import sys

import numpy as np
import torch

from openmm_cmt.metrics.basins import weighted_mean
from openmm_cmt.metrics.ess import log_z_estimate, reverse_ess
from openmm_cmt.presets import preset
from openmm_cmt.sampler import BoltzmannGeneratorSampler

N = 50_000


def entropies(samples, kT):
    """(H(q), H(p), reverse ESS) from one weighted draw."""
    log_w = samples.log_weights
    mean_u, _ = weighted_mean(samples.energies / kT, log_w)
    return -np.mean(samples.log_q), mean_u + log_z_estimate(log_w), reverse_ess(log_w)


torch.manual_seed(0)
trained = BoltzmannGeneratorSampler.load(sys.argv[1], device="cpu")
h_q, h_p, ess = entropies(trained.sample(N), trained.molsys.kT)
print(f"trained generator: H(q) = {h_q:.2f}, H(p) = {h_p:.2f} nats (reverse ESS {ess:.3f})")
name = trained.molsys.name
for sigma in [float(s) for s in sys.argv[2:]] or [0.15]:
    config = preset("laptop", generator=dict(prior_sigma=sigma), device="cpu")
    untrained = BoltzmannGeneratorSampler.from_name(name, config=config)
    h_q0, _, ess0 = entropies(untrained.sample(N), untrained.molsys.kT)
    print(f"prior_sigma {sigma}: H(q0) = {h_q0:.2f} nats, H(q0) - H(p) = {h_q0 - h_p:.2f}, reverse ESS of q0 {ess0:.1e}")
