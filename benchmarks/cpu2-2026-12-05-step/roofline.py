"""A preset flow's training step, eager and compiled, and the matrix products inside it.

    python roofline.py [PRESET [OUT.json]]    (two threads, alanine dipeptide, batch of the preset)

In the compiled step's profile the self time of the compiled graphs ("Call
CompiledFxGraph") is that of Inductor's fused kernels; the matrix products run outside them.
"""
import copy, json, sys, time, statistics
import torch
from torch.profiler import profile, ProfilerActivity
from openmm_cmt.presets import PRESETS
from openmm_cmt.systems import resolve
from openmm_cmt.cmt.compiled import FlowCalls, REGIONAL_KINDS
from openmm_cmt.cmt.trainer import CMTConfig, make_optimizer
from openmm_cmt.flows import Generator, GeneratorConfig

torch.set_num_threads(2)
name = sys.argv[1] if len(sys.argv) > 1 else "laptop"
preset = PRESETS[name]
molsys = resolve("alanine-dipeptide")
batch = preset["cmt"]["batch_size"]
rng = torch.Generator().manual_seed(0)
base = Generator.from_system(molsys, GeneratorConfig(**dict(preset["generator"], seed=0)))
with torch.no_grad():
    x, _ = base.sample(batch, rng)
w = torch.softmax(torch.randn(batch, dtype=torch.float64, generator=rng), 0)
out = {"preset": name, "batch": batch, "params": base.n_parameters()}
for mode in ("eager", "compiled"):
    gen = copy.deepcopy(base)
    calls = FlowCalls(gen, mode == "compiled", batch, chunk_size=8192, regional=REGIONAL_KINDS)
    opt = make_optimizer(calls.params, CMTConfig(lr=1e-4))
    def step():
        loss, grads = calls.loss_and_grads(x, w)
        for p, g in zip(calls.params, grads):
            p.grad = g
        opt.step(); opt.zero_grad(set_to_none=True)
    t = time.perf_counter(); step(); out[f"{mode}_first_s"] = time.perf_counter() - t
    for _ in range(3): step()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10): step()
        times.append((time.perf_counter() - t) / 10)
    out[f"{mode}_step_ms"] = 1e3 * statistics.median(times)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(10): step()
    tot = {}
    shapes = {}
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key in ("aten::mm", "aten::addmm"):
            tot[e.key] = tot.get(e.key, 0) + e.self_cpu_time_total / 10 / 1e3
            shapes.setdefault(e.key, []).append((str(e.input_shapes), e.count // 10, round(e.self_cpu_time_total / 10 / 1e3, 3)))
    out[f"{mode}_gemm_ms_per_step"] = tot
    out[f"{mode}_gemm_shapes"] = shapes
    ops = {e.key: e.self_cpu_time_total / 10 / 1e3 for e in prof.key_averages()}
    out[f"{mode}_fused_kernels_ms_per_step"] = sum(v for k, v in ops.items() if "CompiledFxGraph" in k)
    out[f"{mode}_other_ms_per_step"] = {k: ops.get(k, 0.0) for k in ("aten::cumsum", "aten::scatter_reduce_", "aten::_fused_adam_")}
    print(mode, json.dumps({k: v for k, v in out.items() if k.startswith(mode) and not k.endswith("shapes")}), flush=True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
json.dump(out, open(sys.argv[2] if len(sys.argv) > 2 else f"roofline-{name}.json", "w"), indent=1)
