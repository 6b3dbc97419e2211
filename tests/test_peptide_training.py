"""A short CMT run on the alanine tetrapeptide (issue 8): the whole stack on d = 120."""

import numpy as np
import torch

import openmm_cmt  # noqa: F401
from openmm_cmt.coordinates import chirality_signs, stereocentres
from openmm_cmt.presets import preset
from openmm_cmt.sampler import BoltzmannGeneratorSampler


def test_cmt_smoke_run_on_tetrapeptide():
    config = preset(
        "laptop",
        generator=dict(n_layers=2, hidden=16, depth=1),
        cmt=dict(n_steps=2, samples_per_step=256, buffer_size=512, grad_steps_per_step=3, batch_size=128),
        energy_compile=False,
        device="cpu",
    )
    sampler = BoltzmannGeneratorSampler.from_name("alanine-tetrapeptide", config=config)
    assert sampler.molsys.dim == 120
    assert type(sampler.energy_engine()).__name__ == "TorchEnergyEngine"
    sampler.train(progress=False)
    assert sampler.n_evaluations == 2 * 256 == sampler.energy_engine().n_evaluations
    assert all(np.isfinite(r["loss"]) and r["ess"] > 0 for r in sampler.history)

    torch.manual_seed(0)
    s = sampler.sample(500)
    assert np.isfinite(s.log_q).all()
    assert np.isfinite(s.log_weights).mean() > 0.9
    centres = stereocentres(sampler.molsys.topology)
    reference = chirality_signs(torch.as_tensor(sampler.molsys.positions)[None], centres)
    generated = chirality_signs(torch.as_tensor(s.positions), centres)
    assert centres.shape[0] == 3  # one CA per alanine
    assert bool((generated == reference).all())
