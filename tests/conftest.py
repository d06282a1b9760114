from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

import rankwise as rw
from peft_factory import make_adapter

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


@pytest.fixture(scope="module")
def mixed_pool(tmp_path_factory: pytest.TempPathFactory) -> rw.AdapterPool:
    """Three adapters of q/v_proj with ranks 2, 4 and 3 (v_proj 1 by rank_pattern), one rsLoRA."""
    root = tmp_path_factory.mktemp("mixed")
    dirs = [
        make_adapter(root / f"a{i}", seed=10 + i, r=r, lora_alpha=alpha, target_modules=["q_proj", "v_proj"], **kw)
        for i, (r, alpha, kw) in enumerate(
            [(2, 4, {}), (4, 8, {"use_rslora": True}), (3, 5, {"rank_pattern": {"v_proj": 1}})]
        )
    ]
    return rw.AdapterPool.load(dirs)
