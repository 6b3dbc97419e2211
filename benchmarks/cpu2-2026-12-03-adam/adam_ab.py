"""Adam's multi-tensor (foreach) update against the fused kernel, inside the compiled
laptop-preset training step on alanine dipeptide (batch 512, gradient clipping as the
trainer does), alternating blocks of 40 steps in one process.

    TORCHINDUCTOR_CACHE_DIR=... python adam_ab.py
"""
import time

import torch

from openmm_cmt import systems
from openmm_cmt.cmt.compiled import FlowCalls
from openmm_cmt.cmt.trainer import CMTConfig, make_optimizer
from openmm_cmt.flows import Generator, GeneratorConfig
from openmm_cmt.presets import PRESETS

preset = PRESETS["laptop"]
rng = torch.Generator().manual_seed(0)
generator = Generator.from_system(systems.get("alanine-dipeptide"), GeneratorConfig(**preset["generator"]))
with torch.no_grad():
    # a trained-like flow: the freshly built one is the identity and runs faster
    for q in generator.parameters():
        q.add_(0.01 * torch.randn(q.shape, generator=rng))
    x, _ = generator.sample(512, rng)
weights = torch.softmax(torch.randn(512, dtype=torch.float64, generator=rng), 0)
calls = FlowCalls(generator, True, 512)
params = calls.params
optimizers = {"foreach": torch.optim.Adam(params, lr=1e-5, foreach=True),
              "fused": make_optimizer(params, CMTConfig(lr=1e-5))}


def step(optimizer):
    _, grads = calls.loss_and_grads(x, weights)
    for q, g in zip(params, grads):
        q.grad = g
    torch.nn.utils.clip_grad_norm_(params, 10.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


start = time.perf_counter()
step(optimizers["foreach"])
print(f"first call (compiling) {time.perf_counter() - start:.1f} s", flush=True)
for block in range(4):
    for name, optimizer in optimizers.items():
        for _ in range(5):
            step(optimizer)
        start = time.perf_counter()
        for _ in range(40):
            step(optimizer)
        print(f"block {block} {name}: {(time.perf_counter() - start) / 40 * 1e3:.1f} ms per step", flush=True)
