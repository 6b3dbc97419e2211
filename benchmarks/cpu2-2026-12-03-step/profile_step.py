"""Eager and compiled forward-KL steps of the laptop flow (alanine dipeptide), then a
torch.profiler table of five compiled steps.

    T=2 TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python profile_step.py
(KERNELS=1 adds Inductor's per-kernel records.)
"""
import os
import time

import torch

torch.set_num_threads(int(os.environ.get("T", "2")))
import torch._inductor.config as inductor_config  # noqa: E402

from openmm_cmt.cmt.compiled import FlowCalls  # noqa: E402
from openmm_cmt.flows import Generator  # noqa: E402
from openmm_cmt.presets import preset  # noqa: E402
from openmm_cmt.systems import get  # noqa: E402

inductor_config.cpp.enable_kernel_profile = bool(os.environ.get("KERNELS"))
BATCH = int(os.environ.get("B", "512"))
generator = Generator.from_system(get("alanine-dipeptide"), preset("laptop").generator_config())
with torch.no_grad():
    x, _ = generator.sample(BATCH)
weights = torch.full((BATCH,), 1.0 / BATCH)
optimizer = torch.optim.Adam(generator.parameters(), 1e-4)


def stepper(calls):
    def step():
        _, grads = calls.loss_and_grads(x, weights)
        for p, g in zip(calls.params, grads):
            p.grad = g
        optimizer.step()
    return step


eager, compiled = stepper(FlowCalls(generator, False, BATCH)), stepper(FlowCalls(generator, True, BATCH))
start = time.perf_counter()
compiled()
print("first compiled call (s)", round(time.perf_counter() - start, 1), flush=True)
for name, step in (("eager", eager), ("compiled", compiled)):
    step()
    start = time.perf_counter()
    for _ in range(20):
        step()
    print(name, "ms per step", round((time.perf_counter() - start) / 20 * 1e3, 1), flush=True)
if not os.environ.get("NO_PROFILE"):
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(5):
            compiled()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
