from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

# Small thread counts keep the suite's timing stable on 2-core CI machines.
os.environ.setdefault("RANKWISE_NUM_THREADS", "2")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one torch thread is faster, and immune to OpenMP stalls on a busy 2-core
    machine. Test modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
