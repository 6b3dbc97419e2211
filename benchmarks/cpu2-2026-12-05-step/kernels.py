"""Per-kernel profile of the laptop flow's compiled training step (Inductor kernel names).

    python kernels.py    (two threads, alanine dipeptide, batch 512)
"""
import copy, sys, time, statistics
import torch
import torch._inductor.config as icfg
icfg.cpp.enable_kernel_profile = True
from torch.profiler import profile, ProfilerActivity
from openmm_cmt.presets import PRESETS
from openmm_cmt.systems import resolve
from openmm_cmt.cmt.compiled import FlowCalls, REGIONAL_KINDS
from openmm_cmt.cmt.trainer import CMTConfig, make_optimizer
from openmm_cmt.flows import Generator, GeneratorConfig
torch.set_num_threads(2)
preset = PRESETS["laptop"]
batch = preset["cmt"]["batch_size"]
rng = torch.Generator().manual_seed(0)
base = Generator.from_system(resolve("alanine-dipeptide"), GeneratorConfig(**dict(preset["generator"], seed=0)))
with torch.no_grad():
    x, _ = base.sample(batch, rng)
w = torch.softmax(torch.randn(batch, dtype=torch.float64, generator=rng), 0)
calls = FlowCalls(base, True, batch, chunk_size=8192, regional=REGIONAL_KINDS)
opt = make_optimizer(calls.params, CMTConfig(lr=1e-4))
def step():
    loss, grads = calls.loss_and_grads(x, w)
    for p, g in zip(calls.params, grads): p.grad = g
    opt.step(); opt.zero_grad(set_to_none=True)
for _ in range(5): step()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(10): step()
ev = prof.key_averages()
print(ev.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=60))
kern = [e for e in ev if e.key.startswith("cpp_fused") or e.key.startswith("kernel_cpp")]
print("n kernels", len(kern), "kernel ms/step", sum(e.self_cpu_time_total for e in kern)/10/1e3, "calls/step", sum(e.count for e in kern)/10)
