"""Where the first compiled forward-KL step of the laptop flow spends its time
(``torch._dynamo.utils.compile_times``).

    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python compile_times.py
"""
import time

import torch

torch.set_num_threads(2)
import torch._dynamo.utils as dynamo_utils  # noqa: E402

from openmm_cmt.cmt.compiled import FlowCalls  # noqa: E402
from openmm_cmt.flows import Generator  # noqa: E402
from openmm_cmt.presets import preset  # noqa: E402
from openmm_cmt.systems import get  # noqa: E402

generator = Generator.from_system(get("alanine-dipeptide"), preset("laptop").generator_config())
with torch.no_grad():
    x, _ = generator.sample(512)
calls = FlowCalls(generator, True, 512)
start = time.perf_counter()
calls.loss_and_grads(x, torch.full((512,), 1.0 / 512))
print("first compiled call (s)", round(time.perf_counter() - start, 1), flush=True)
print(dynamo_utils.compile_times(repr="str", aggregate=True))
