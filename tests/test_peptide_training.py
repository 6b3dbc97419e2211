"""A short CMT run on the alanine tetrapeptide: the whole stack on d = 120."""

import json

import numpy as np
import pytest
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


def test_presets_fit_larger_systems_by_forward_kl():
    from openmm_cmt.presets import LARGER_SYSTEM_SETTINGS, TUNED_DIM

    assert LARGER_SYSTEM_SETTINGS["cmt"]["fit_order"] == 1.0
    for name in ("laptop", "cpu", "gpu"):
        assert preset(name).cmt["fit_order"] == 2.0
        assert preset(name, dim=TUNED_DIM).cmt["fit_order"] == 2.0
        assert preset(name, dim=TUNED_DIM + 1).cmt["fit_order"] == 1.0
        # the rest of the preset is untouched
        tuned, larger = preset(name, dim=TUNED_DIM).to_dict(), preset(name, dim=120).to_dict()
        larger["cmt"]["fit_order"] = tuned["cmt"]["fit_order"]
        assert larger == tuned
    # an explicit setting wins over the size rule
    assert preset("cpu", dim=120, cmt=dict(fit_order=2.0)).cmt["fit_order"] == 2.0
    for bad in (0, -3, 1.5, True, "120"):
        with pytest.raises(ValueError, match="dim must be a positive integer"):
            preset("cpu", dim=bad)


def test_samplers_and_the_cli_take_presets_for_the_system_size(tmp_path):
    from openmm_cmt.cli import main

    assert BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config="cpu").config.cmt["fit_order"] == 2.0
    assert BoltzmannGeneratorSampler.from_name("alanine-tetrapeptide", config="cpu").config.cmt["fit_order"] == 1.0
    tiny = {"generator.n_layers": 1, "generator.hidden": 8, "generator.depth": 1, "cmt.samples_per_step": 64,
            "cmt.buffer_size": 64, "cmt.batch_size": 64, "cmt.grad_steps_per_step": 1, "energy_compile": "false"}
    args = ["--device", "cpu", "--quiet", "--no-evaluate", "--steps", "1"]
    args += [a for k, v in tiny.items() for a in ("--set", f"{k}={v}")]
    for extra, order in (([], 1.0), (["--set", "cmt.fit_order=2"], 2.0)):
        run = tmp_path / f"run{order:g}"
        assert main(["train", "alanine-tetrapeptide", "--out", str(run), *args, *extra]) == 0
        assert json.loads((run / "config.json").read_text())["cmt"]["fit_order"] == order
