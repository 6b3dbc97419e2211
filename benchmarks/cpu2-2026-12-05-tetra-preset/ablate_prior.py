"""The cpu preset on the alanine tetrapeptide with the narrower prior (0.12) alone, for
N annealing steps of a schedule spanning 220: python ablate_prior.py RUN N."""
import json, sys
from openmm_cmt.sampler import BoltzmannGeneratorSampler
from openmm_cmt.presets import preset
cfg = preset("cpu", dim=120, generator=dict(prior_sigma=0.12, seed=0), cmt=dict(n_steps=220, seed=0))
s = BoltzmannGeneratorSampler.from_name("alanine-tetrapeptide", config=cfg)
h = s.train(n_steps=int(sys.argv[2]), checkpoint_dir=sys.argv[1])
json.dump(h, open(sys.argv[1] + "/history-partial.json", "w"))
