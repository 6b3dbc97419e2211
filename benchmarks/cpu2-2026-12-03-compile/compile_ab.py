"""Compile time and steady speed of the trainer's flow calls, one compile mode per process.

Run two (or more) modes side by side, each on one thread with a fresh Inductor cache, so
that both see the same machine:

    for mode in whole regional; do
        TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python compile_ab.py $mode TAG 2 > ab-$mode.log &
    done; wait

``whole``: every call as one graph; ``regional``: every call block by block (coupling
layers, internal-coordinate transform); ``eager``: no compiling. The laptop preset's flow
on alanine dipeptide: first calls of sampling (32,768), log_prob (32,768) and one
forward-KL step (batch 512), then, once every process has compiled (a barrier of files
``/tmp/ready-TAG-*``; the last argument is the number of processes), the median of three
timings of each.
"""

import os
import statistics
import sys
import time

import torch

torch.set_num_threads(1)
from openmm_cmt.cmt.compiled import KINDS, FlowCalls  # noqa: E402
from openmm_cmt.flows import Generator  # noqa: E402
from openmm_cmt.presets import preset  # noqa: E402
from openmm_cmt.systems import get  # noqa: E402

mode, tag, n_processes = sys.argv[1], sys.argv[2], int(sys.argv[3])
g = Generator.from_system(get("alanine-dipeptide"), preset("laptop").generator_config())
calls = FlowCalls(g, mode != "eager", 512, regional=KINDS if mode == "regional" else ())
gen = torch.Generator().manual_seed(0)
w = torch.full((512,), 1 / 512)
first = {}
t = time.perf_counter(); x, _ = calls.sample(32768, gen); first["sample"] = time.perf_counter() - t
t = time.perf_counter(); calls.log_prob(x); first["log_prob"] = time.perf_counter() - t
t = time.perf_counter(); calls.loss_and_grads(x[:512], w); first["loss"] = time.perf_counter() - t
print(mode, "first calls", {k: round(v, 1) for k, v in first.items()}, "total", round(sum(first.values()), 1), flush=True)
open(f"/tmp/ready-{tag}-{mode}", "w").close()
while len([f for f in os.listdir("/tmp") if f.startswith(f"ready-{tag}-")]) < n_processes:
    time.sleep(1)
steady = {"sample_32k": [], "log_prob_32k": [], "loss_step": []}
for _ in range(3):
    t = time.perf_counter(); calls.sample(32768, gen); steady["sample_32k"].append(time.perf_counter() - t)
    t = time.perf_counter(); calls.log_prob(x); steady["log_prob_32k"].append(time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(20):
        calls.loss_and_grads(x[512 * i:512 * (i + 1)], w)
    steady["loss_step"].append((time.perf_counter() - t) / 20)
print(mode, "steady (median of 3)", {k: round(statistics.median(v), 4) for k, v in steady.items()}, calls.compiled,
      flush=True)
