"""SMoRALinear: the math against PEFT's LoRA, gradients, the two compute paths, dtypes, config."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from precision import assert_within, chain_error, gamma
from rankwise.errors import MergeConfigError, RankwiseError
from rankwise.smora import SMoRAConfig, SMoRALinear, choose_path, inject_smora, smora_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Tiny(nn.Module):
    def __init__(self, d_in: int = 16, d_out: int = 12) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.proj(x))


def _layer(d_in=16, d_out=12, rank=16, top_k=4, path="dense", seed=0, **kw) -> SMoRALinear:
    torch.manual_seed(seed)
    cfg = SMoRAConfig(rank=rank, top_k=top_k, path=path, balance=False, **kw)
    layer = SMoRALinear(nn.Linear(d_in, d_out), cfg)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.1)  # B starts at 0; make the adapter do something
    return layer


def _trainable(layer: SMoRALinear) -> list[torch.Tensor]:
    return [layer.lora_A, layer.lora_B, layer.router.weight]


# -- identity with PEFT's LoRA ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["dense", "gathered"])
def test_full_topk_zero_router_equals_peft_lora(path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = Tiny()
    r, alpha = 8, 16.0
    peft_model = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], lora_dropout=0.0),
    )
    plora = peft_model.base_model.model.proj
    with torch.no_grad():
        plora.lora_B["default"].weight.normal_(0, 0.5)
    assert plora.scaling["default"] == alpha / r

    ours = inject_smora(
        copy.deepcopy(base),
        SMoRAConfig(rank=r, top_k=r, lora_alpha=alpha, target_modules=["proj"], path=path),
    )
    layer = ours.proj
    assert layer.scale == alpha / r  # lora_alpha / k with k = r: PEFT's alpha / r
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.lora_A.copy_(plora.lora_A["default"].weight)
        layer.lora_B.copy_(plora.lora_B["default"].weight)

    # Zero router: every score is 0.5; top_k = rank: every gate is exactly 1.
    _, gates = layer.route(torch.zeros(5, r))
    assert torch.equal(gates, torch.ones(5, r))

    x = torch.randn(3, 7, 16)
    # The adapted layers, both in float32: W0·x + bias + (B·(A·x))·scale summed in each
    # library's own order, which depends on the host's kernels (precision.py).
    with torch.no_grad():
        got, want = layer(x).numpy(), plora(x).numpy()
    xs = x.reshape(-1, 16).numpy()
    w0, bias = plora.base_layer.weight.detach().numpy(), plora.base_layer.bias.detach().numpy()
    a, b = plora.lora_A["default"].weight.detach().numpy(), plora.lora_B["default"].weight.detach().numpy()
    base_err = chain_error([xs, w0.T], roundings=1) + gamma(1) * np.abs(bias)
    lora_err = chain_error([xs, a.T, b.T], roundings=3) * (alpha / r)
    bound = 2 * (base_err + lora_err + gamma(1) * np.abs(want.reshape(xs.shape[0], -1)))
    assert_within(got.reshape(bound.shape), want.reshape(bound.shape), bound, "SMoRA vs PEFT LoRA")
    assert not torch.equal(peft_model(x), base(x))  # the adapter is not a no-op


def test_starts_as_base_layer():
    torch.manual_seed(0)
    lin = nn.Linear(16, 12)
    layer = SMoRALinear(copy.deepcopy(lin), SMoRAConfig(rank=16, top_k=4))
    x = torch.randn(4, 16)
    assert torch.equal(layer(x), lin(x))  # B = 0: the adapter starts at exactly 0


# -- gates and gradients -----------------------------------------------------------------------


def test_gates_follow_the_paper():
    layer = _layer(rank=8, top_k=3)
    with torch.no_grad():
        layer.balance_bias.copy_(torch.linspace(-0.05, 0.05, 8))
    logits = torch.randn(10, 8)
    idx, gates = layer.route(logits)
    s = torch.sigmoid(logits) + layer.balance_bias
    want_idx = s.topk(3, dim=-1).indices
    assert torch.equal(idx.sort(-1).values, want_idx.sort(-1).values)
    sel = s.gather(-1, idx)
    torch.testing.assert_close(gates, 3 * sel / sel.sum(-1, keepdim=True))
    torch.testing.assert_close(gates.sum(-1), torch.full((10,), 3.0))


@pytest.mark.parametrize("path", ["dense", "gathered"])
def test_gradients_reach_only_selected_ranks_and_router(path):
    layer = _layer(rank=16, top_k=4, path=path)
    x = torch.randn(1, 1, 16)  # one token: exactly k ranks are active
    idx, _ = layer.route(layer.router(x.reshape(1, -1)))
    active = torch.zeros(16, dtype=torch.bool)
    active[idx.reshape(-1)] = True
    layer(x).square().sum().backward()

    a_rows = layer.lora_A.grad.abs().sum(1) != 0
    b_cols = layer.lora_B.grad.abs().sum(0) != 0
    r_rows = layer.router.weight.grad.abs().sum(1) != 0
    assert torch.equal(a_rows, active)
    assert torch.equal(b_cols, active)
    assert torch.equal(r_rows, active)  # the gates depend on the selected scores only
    assert layer.base_layer.weight.grad is None and layer.base_layer.bias.grad is None
    assert not layer.base_layer.weight.requires_grad


def test_dense_and_gathered_paths_agree_fwd_and_bwd():
    dense = _layer(d_in=24, d_out=20, rank=32, top_k=5, path="dense", seed=1)
    gathered = copy.deepcopy(dense)
    gathered.path = "gathered"
    x = torch.randn(2, 9, 24)
    xd, xg = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    w = torch.randn(2, 9, 20)
    yd, yg = dense(xd), gathered(xg)
    torch.testing.assert_close(yd, yg, rtol=1e-5, atol=1e-5)
    (yd * w).sum().backward()
    (yg * w).sum().backward()
    for pd, pg in zip(_trainable(dense), _trainable(gathered)):
        torch.testing.assert_close(pd.grad, pg.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xd.grad, xg.grad, rtol=1e-5, atol=1e-5)


def test_paths_agree_with_dropout_in_training():
    dense = _layer(rank=16, top_k=4, path="dense", dropout=0.3)
    gathered = copy.deepcopy(dense)
    gathered.path = "gathered"
    x = torch.randn(6, 16)
    torch.manual_seed(5)
    yd = dense(x)
    torch.manual_seed(5)
    yg = gathered(x)
    torch.testing.assert_close(yd, yg, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(16,), (5, 16), (2, 3, 4, 16)])
def test_any_leading_batch_shape(shape):
    layer = _layer()
    x = torch.randn(*shape)
    y = layer(x)
    assert y.shape == (*shape[:-1], 12)
    flat = layer(x.reshape(-1, 16)).reshape(y.shape)
    torch.testing.assert_close(y, flat)


# -- dtypes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("path", ["dense", "gathered"])
def test_autocast_low_precision(dtype, path):
    layer = _layer(rank=16, top_k=4, path=path)
    x = torch.randn(4, 5, 16)
    ref = layer(x)
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.05)
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in _trainable(layer))


def test_bf16_model_keeps_float32_balance_bias():
    layer = _layer().to(torch.bfloat16)
    assert layer.lora_A.dtype == torch.bfloat16
    assert layer.balance_bias.dtype == torch.float32
    y = layer(torch.randn(3, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    layer.balance_rate = 1e-5
    layer.balance = True
    layer.balance_counts.copy_(torch.arange(16))
    layer.balance_step()
    assert layer.balance_bias.abs().max().item() == pytest.approx(1e-5)  # not rounded away


def test_float32_adapter_on_bf16_base():
    layer = _layer()
    layer.base_layer.to(torch.bfloat16)
    y = layer(torch.randn(3, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


# -- config -----------------------------------------------------------------------------------


def test_config_defaults_are_the_papers():
    c = SMoRAConfig()
    assert (c.rank, c.top_k, c.lora_alpha, c.dropout) == (64, 8, 16.0, 0.0)
    assert c.scale == 2.0 and c.balance and c.balance_rate == 1e-5
    assert c.target_modules == "all-linear"
    assert SMoRAConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"rank": 8, "top_k": 9}, "top_k (9) must be <= rank (8)"),
        ({"rank": 0}, "rank must be an integer >= 1"),
        ({"rank": 4.0}, "rank must be an integer"),
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"lora_alpha": -1.0}, "lora_alpha must be a finite number > 0"),
        ({"lora_alpha": float("nan")}, "lora_alpha"),
        ({"dropout": 1.0}, "dropout must be in [0, 1)"),
        ({"balance_rate": -1e-5}, "balance_rate"),
        ({"balance": "yes"}, "balance must be a bool"),
        ({"path": "sparse"}, "path must be one of"),
        ({"target_modules": []}, "non-empty list"),
        ({"target_modules": ["q_proj", ""]}, "module names like"),
        ({"target_modules": "(unclosed"}, "not a valid regex"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, needle):
    with pytest.raises(MergeConfigError, match=None) as e:
        SMoRAConfig(**kwargs)
    assert needle in str(e.value)
    assert isinstance(e.value, ValueError) and isinstance(e.value, RankwiseError)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(MergeConfigError, match="unknown SMoRA config key"):
        SMoRAConfig.from_dict({"rank": 8, "top_k": 2, "topk": 3})


def test_unknown_target_module_lists_available_names():
    with pytest.raises(MergeConfigError) as e:
        inject_smora(Tiny(), SMoRAConfig(rank=4, top_k=2, target_modules=["q_proj"]))
    assert "'q_proj' matches no module" in str(e.value) and "proj" in str(e.value)
    with pytest.raises(MergeConfigError, match="SMoRA wraps nn.Linear only"):
        inject_smora(Tiny(), SMoRAConfig(rank=4, top_k=2, target_modules=["act"]))
    with pytest.raises(MergeConfigError, match="matches no nn.Linear"):
        inject_smora(Tiny(), SMoRAConfig(rank=4, top_k=2, target_modules=r"layer\.\d+"))


def test_inject_twice_is_an_error_and_regex_targets_work():
    m = inject_smora(Tiny(), SMoRAConfig(rank=4, top_k=2, target_modules=r"pro."))
    assert list(smora_layers(m)) == ["proj"]
    with pytest.raises(MergeConfigError, match="already has SMoRA"):
        inject_smora(m, SMoRAConfig(rank=4, top_k=2, target_modules=["proj"]))


def test_auto_path_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_path(cpu, 64, 8) == "dense"
    assert choose_path(cuda, 64, 8) == "dense"
    assert choose_path(cpu, 1024, 8) == "dense"
    assert choose_path(cpu, 2048, 8) == "gathered"
    assert choose_path(cuda, 2048, 8) == "dense"
