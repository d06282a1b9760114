"""from_pool: SMoRA rank experts initialised from a LoRA-LEGO merge of a pool of PEFT adapters."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import rankwise as rw
from peft_factory import make_adapter, peft_model, tiny_llama
from rankwise.errors import IncompatibleAdaptersError
from rankwise.smora import SMoRAConfig, from_pool, smora_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TARGETS = ["q_proj", "v_proj"]


@pytest.fixture(scope="module")
def pool_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    return [
        make_adapter(root / f"a{i}", seed=i, r=4, lora_alpha=8, target_modules=TARGETS) for i in range(4)
    ]  # 16 units per module


def test_all_ranks_active_equals_the_merged_lora(pool_dirs, tmp_path):
    pool = rw.AdapterPool.load(pool_dirs)
    merged = rw.merge(pool, method="lego", rank=8, seed=0)
    # top_k = rank and a zero router: every gate is 1, so the layer is the merged LoRA.
    cfg = SMoRAConfig(rank=8, top_k=8, lora_alpha=4.0, target_modules=TARGETS)
    model = from_pool(tiny_llama(), pool, cfg, seed=0)
    layers = smora_layers(model)
    assert sorted(layers) == sorted(merged.modules)
    for name, layer in layers.items():
        delta = (layer.scale * layer.lora_B @ layer.lora_A).detach().numpy()
        np.testing.assert_allclose(delta, merged.delta(name), rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            layer.router.weight.zero_()

    merged.save(tmp_path / "merged")
    ref = peft_model(tmp_path / "merged")
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=1e-4, atol=1e-5)


def test_from_pool_routes_and_trains(pool_dirs):
    cfg = SMoRAConfig(rank=8, top_k=2, target_modules=TARGETS)
    model = from_pool(tiny_llama(), [str(p) for p in pool_dirs], cfg, seed=0)  # list of folders
    assert all(m.lora_B.abs().sum() > 0 for m in smora_layers(model).values())
    model.train()
    ids = torch.randint(0, 64, (2, 8))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_pool_modules_must_be_smora_layers(pool_dirs):
    pool = rw.AdapterPool.load(pool_dirs)
    with pytest.raises(IncompatibleAdaptersError, match="v_proj"):
        from_pool(tiny_llama(), pool, SMoRAConfig(rank=8, top_k=2, target_modules=["q_proj"]))
    with warnings.catch_warnings(record=True) as w:  # extra SMoRA layers: warned, random init
        warnings.simplefilter("always")
        from_pool(tiny_llama(), pool, SMoRAConfig(rank=8, top_k=2, target_modules=[*TARGETS, "o_proj"]))
    assert any("keep their random init" in str(x.message) for x in w)


def test_factors_are_placed_so_all_ranks_give_the_merged_delta():
    # Independent of the merge itself: any merged adapter (modules + folded factors) will do.
    from rankwise.adapter import Adapter

    model = tiny_llama()
    gen = np.random.default_rng(0)
    factors = {
        n: (
            gen.standard_normal((8, m.in_features), dtype=np.float32),
            gen.standard_normal((m.out_features, 8), dtype=np.float32),
        )
        for n, m in model.named_modules()
        if n.endswith(("q_proj", "v_proj"))
    }
    merged = Adapter.from_factors(factors)
    cfg = SMoRAConfig(rank=8, top_k=2, lora_alpha=3.0, target_modules=TARGETS)
    from_pool(model, merged, cfg)
    for name, layer in smora_layers(model).items():
        a, b = factors[name]
        np.testing.assert_array_equal(layer.lora_A.detach().numpy(), a)
        delta = (layer.scale * layer.lora_B @ layer.lora_A).detach().numpy()
        np.testing.assert_allclose(delta, b @ a, rtol=1e-5, atol=1e-5)
    with pytest.raises(IncompatibleAdaptersError, match="needs A"):
        from_pool(tiny_llama(), merged, SMoRAConfig(rank=16, top_k=2, target_modules=TARGETS))
