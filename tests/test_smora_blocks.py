"""SMoRA with ranks grouped in blocks: the paper's unified view (SMoRA, MoE-LoRA, LoRA)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from peft_factory import tiny_llama
from rankwise.errors import AdapterFormatError, OptionError
from rankwise.smora import (
    SMoRAConfig,
    SMoRALinear,
    inject_smora,
    load_smora,
    routing_stats,
    save_smora,
    smora_balance_step,
    smora_layers,
)
from rankwise.smora.io import CONFIG_NAME, WEIGHTS_NAME

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _layer(rank=16, top_k=2, block_size=4, path="dense", seed=0, d_in=10, d_out=6, **kw) -> SMoRALinear:
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out).double()
    cfg = SMoRAConfig(rank=rank, top_k=top_k, block_size=block_size, path=path, lora_alpha=3.0, **kw)
    layer = SMoRALinear(base, cfg)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.3)
        layer.router.weight.normal_(0, 1.0)
        layer.balance_bias.uniform_(-0.05, 0.05)
    return layer


def _reference(layer: SMoRALinear, x: np.ndarray) -> np.ndarray:
    """numpy, token by token: top-k blocks of sigmoid(R x) + beta, gates k s_e / sum, each block a
    rank-b LoRA, scaled by alpha / (k b)."""
    w0 = layer.base_layer.weight.detach().numpy()
    b0 = layer.base_layer.bias.detach().numpy()
    a, b = layer.lora_A.detach().numpy(), layer.lora_B.detach().numpy()
    r = layer.router.weight.detach().numpy()
    beta = layer.balance_bias.detach().double().numpy()
    k, bs = layer.top_k, layer.block_size
    out = []
    for t in x:
        s = 1 / (1 + np.exp(-(r @ t))) + beta
        top = np.argsort(-s)[:k]
        g = k * s[top] / s[top].sum()
        delta = sum(ge * b[:, e * bs : (e + 1) * bs] @ (a[e * bs : (e + 1) * bs] @ t) for e, ge in zip(top, g))
        out.append(w0 @ t + b0 + layer.lora_alpha / (k * bs) * delta)
    return np.stack(out)


@pytest.mark.parametrize("path", ["dense", "gathered"])
@pytest.mark.parametrize(("rank", "top_k", "block_size"), [(16, 3, 1), (16, 2, 4), (16, 1, 8), (16, 1, 16)])
def test_blocks_match_numpy_reference(path, rank, top_k, block_size):
    layer = _layer(rank=rank, top_k=top_k, block_size=block_size, path=path)
    assert layer.router.weight.shape == (rank // block_size, 10)
    x = torch.randn(2, 7, 10, dtype=torch.float64)
    with torch.no_grad():
        got = layer(x).reshape(-1, 6).numpy()
    want = _reference(layer, x.reshape(-1, 10).numpy())
    # The layer routes in float32 (gates to ~1e-7 relative) whatever the compute dtype.
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_dense_and_gathered_agree_with_blocks_fwd_and_bwd():
    dense = _layer(rank=32, top_k=2, block_size=4, path="dense")
    gathered = copy.deepcopy(dense)
    gathered.path = "gathered"
    x = torch.randn(3, 5, 10, dtype=torch.float64)
    for m in (dense, gathered):
        m(x).square().sum().backward()
    torch.testing.assert_close(dense(x), gathered(x), rtol=1e-12, atol=1e-12)
    for p in ("lora_A", "lora_B"):
        torch.testing.assert_close(getattr(dense, p).grad, getattr(gathered, p).grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dense.router.weight.grad, gathered.router.weight.grad, rtol=1e-10, atol=1e-12)


def test_gradients_reach_only_the_selected_block():
    layer = _layer(rank=16, top_k=1, block_size=4, path="gathered")
    x = torch.randn(1, 10, dtype=torch.float64)
    idx, _ = layer.route(layer.router(x))
    layer(x).sum().backward()
    rows = layer.lora_A.grad.abs().sum(1) != 0
    want = torch.zeros(16, dtype=torch.bool)
    e = int(idx[0, 0])
    want[e * 4 : (e + 1) * 4] = True
    assert torch.equal(rows, want)


def test_one_block_top1_is_peft_lora():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(10, 6))
    r, alpha = 8, 16.0
    pm = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=alpha, target_modules=["0"]))
    plora = pm.base_model.model[0]
    with torch.no_grad():
        plora.lora_B["default"].weight.normal_(0, 0.5)
    ours = inject_smora(
        copy.deepcopy(base), SMoRAConfig(rank=r, top_k=1, block_size=r, lora_alpha=alpha, target_modules=["0"])
    )
    layer = ours[0]
    assert layer.scale == plora.scaling["default"]
    with torch.no_grad():
        layer.router.weight.normal_()  # any router: one block, top-1, its gate is exactly 1
        layer.lora_A.copy_(plora.lora_A["default"].weight)
        layer.lora_B.copy_(plora.lora_B["default"].weight)
    x = torch.randn(4, 10)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), plora(x), rtol=1e-5, atol=1e-6)


def test_moe_lora_8x8_top1_against_a_loop_over_experts():
    layer = _layer(rank=64, top_k=1, block_size=8, d_in=12, d_out=5)
    x = torch.randn(20, 12, dtype=torch.float64)
    with torch.no_grad():
        got = layer(x)
        e = (torch.sigmoid(layer.router(x)) + layer.balance_bias.double()).argmax(-1)
        want = layer.base_layer(x)
        for t in range(20):
            sl = slice(int(e[t]) * 8, int(e[t]) * 8 + 8)
            want[t] += layer.lora_alpha / 8 * layer.lora_B[:, sl] @ (layer.lora_A[sl] @ x[t])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # float32 gates: 1 to ~1e-7


def test_balancing_counts_blocks():
    layer = _layer(rank=16, top_k=1, block_size=4, balance_rate=0.1)
    layer.train()
    with torch.no_grad():
        layer.balance_bias.zero_()
        layer.router.weight.zero_()
        layer.router.weight[2].fill_(5.0)  # block 2 wins for positive inputs
    x = torch.rand(9, 10, dtype=torch.float64)
    layer(x)
    assert layer.balance_counts.tolist() == [0, 0, 9, 0]
    layer.balance_step()
    np.testing.assert_allclose(layer.balance_bias.numpy(), [0.1, 0.1, -0.1, 0.1], rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"rank": 12, "block_size": 5}, "block_size (5) must divide rank (12)"),
        ({"rank": 16, "top_k": 3, "block_size": 8}, "top_k (3) must be <= rank (16) / block_size (8) = 2"),
        ({"block_size": 0}, "block_size must be an integer >= 1"),
        ({"block_size": 2.0}, "block_size must be an integer >= 1"),
    ],
)
def test_bad_block_size_is_a_clear_error(kwargs, needle):
    with pytest.raises(OptionError) as e:
        SMoRAConfig(**kwargs)
    assert needle in str(e.value)


TARGETS = ["q_proj", "v_proj"]


def test_block_size_1_saves_todays_bytes(tmp_path):
    """block_size 1 writes what rankwise wrote before block_size existed: the JSON without the
    key and per-rank router/bias tensors, byte for byte."""
    model = inject_smora(tiny_llama(0), SMoRAConfig(rank=8, top_k=2, target_modules=TARGETS, block_size=1))
    out = save_smora(model, tmp_path / "a")
    cfg = SMoRAConfig(rank=8, top_k=2, target_modules=TARGETS)
    old_config = {f: getattr(cfg, f) for f in ("rank", "top_k", "lora_alpha", "dropout", "target_modules")}
    old_config.update(balance=cfg.balance, balance_rate=cfg.balance_rate, path=cfg.path)
    layers = smora_layers(model)
    meta = {"format": "rankwise-smora", "format_version": 1, "config": old_config, "modules": list(layers)}
    assert (out / CONFIG_NAME).read_text() == json.dumps(meta, indent=2) + "\n"
    sd = {}
    for n, m in layers.items():
        assert m.router.weight.shape == (8, m.in_features) and m.balance_bias.shape == (8,)
        sd.update({f"{n}.lora_A": m.lora_A, f"{n}.lora_B": m.lora_B})
        sd.update({f"{n}.router.weight": m.router.weight, f"{n}.balance_bias": m.balance_bias})
    save_file({k: v.detach().contiguous() for k, v in sd.items()}, str(tmp_path / "ref.safetensors"), {"format": "pt"})
    assert (out / WEIGHTS_NAME).read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_blocks_save_load_roundtrip(tmp_path):
    cfg = SMoRAConfig(rank=8, top_k=1, block_size=4, target_modules=TARGETS, balance_rate=0.01)
    model = inject_smora(tiny_llama(0).train(), cfg)
    ids = torch.randint(0, 64, (2, 9))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        smora_balance_step(model)
    model.eval()
    out = save_smora(model, tmp_path / "a")
    assert json.loads((out / CONFIG_NAME).read_text())["config"]["block_size"] == 4
    fresh = load_smora(tiny_llama(0), out).eval()
    assert next(iter(smora_layers(fresh).values())).n_blocks == 2
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, fresh(input_ids=ids).logits)
    other = inject_smora(tiny_llama(0), SMoRAConfig(rank=8, top_k=1, block_size=2, target_modules=TARGETS))
    with pytest.raises(AdapterFormatError, match="block_size"):
        load_smora(other, out)


def test_routing_stats_per_block():
    model = nn.Sequential(nn.Linear(10, 6))
    inject_smora(model, SMoRAConfig(rank=16, top_k=1, block_size=4, target_modules=["0"]))
    layer = model[0]
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[1].fill_(5.0)
    model(torch.rand(5, 10))
    st = routing_stats(model)["0"]
    assert st.usage == [0.0, 1.0, 0.0, 0.0] and st.tokens == 5
    assert st.max_load == 4.0 and st.min_load == 0.0 and st.entropy == 0.0
