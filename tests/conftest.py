"""Shared test settings.

One torch thread: CI machines have two cores, and the engine pool's worker processes
or a second test process would otherwise oversubscribe them (tens of times slower for
the small tensors of these tests). Results do not depend on the thread count.
"""

import os

import pytest
import torch

import openmm_cmt  # noqa: F401  (imports torch before openmm, as every user must)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# CI runs the same hypothesis examples on every run, so that a red CI always names a
# reproducible case; local runs keep exploring new ones.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
