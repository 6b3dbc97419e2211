"""Eager sampling and log densities of 32,768 rows by chunk size, laptop and cpu flows (alternating blocks)."""
import time, torch, json, sys
import openmm_cmt  # noqa
from openmm_cmt.presets import preset
from openmm_cmt.flows import Generator
from openmm_cmt.systems import resolve
out = {}
for name in ("laptop", "cpu"):
    g = Generator.from_system(resolve("alanine-dipeptide"), preset(name).generator_config())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x_all, _ = g.sample(32768, generator=gen)
    def sample(size):
        with torch.no_grad():
            z = g.sample_latent(32768, gen)
            for s in range(0, 32768, size):
                x, ld = g.latent_to_positions(z[s:s+size]); g.prior_log_prob(z[s:s+size]) - ld
    def logp(size):
        with torch.no_grad():
            for s in range(0, 32768, size):
                g.log_prob(x_all[s:s+size])
    res = {}
    for size in (2048, 4096, 8192, 32768):
        sample(size); logp(size)
    for rep in range(3):
        for size in (2048, 4096, 8192, 32768):
            for kind, fn in (("sample", sample), ("log_prob", logp)):
                t = time.perf_counter(); fn(size); res.setdefault(f"{kind} {size}", []).append(round(time.perf_counter() - t, 3))
    out[name] = res
    print(name, json.dumps(res), flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
