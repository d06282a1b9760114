"""Loss-free load balancing: it spreads a collapsed router, counts only real tokens, once per
optimizer step, once under gradient checkpointing; routing_stats reports it."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from peft_factory import tiny_llama
from rankwise.smora import (
    SMoRAConfig,
    SMoRALinear,
    attach_balancer,
    inject_smora,
    reset_routing_stats,
    routing_stats,
    smora_attention_mask,
    smora_balance_step,
    smora_layers,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _usage_entropy(layer: SMoRALinear) -> float:
    c = layer.usage_counts.double()
    p = c / c.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def _collapsed_run(balance: bool, steps: int = 60) -> tuple[nn.Module, SMoRALinear]:
    torch.manual_seed(0)
    d, r, k = 8, 16, 2
    model = nn.Sequential(nn.Linear(d, d))
    inject_smora(
        model,
        SMoRAConfig(rank=r, top_k=k, target_modules=["0"], balance=balance, balance_rate=0.02),
    )
    layer = model[0]
    with torch.no_grad():  # collapse: a constant input feature drives ranks 0..k-1 for all tokens
        layer.router.weight[:k, 0] = 4.0
    target = nn.Linear(d, d)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    attach_balancer(opt, model)

    def batch() -> torch.Tensor:
        x = torch.randn(64, d)
        x[:, 0] = 1.0
        return x

    for _ in range(steps):
        x = batch()
        loss = (model(x) - target(x).detach()).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    reset_routing_stats(model)
    model.eval()
    with torch.no_grad():
        model(batch())
    return model, layer


def test_balancing_spreads_a_collapsed_router():
    m_on, on = _collapsed_run(balance=True)
    m_off, off = _collapsed_run(balance=False)
    h_on, h_off = _usage_entropy(on), _usage_entropy(off)
    assert h_off == pytest.approx(math.log(2), abs=1e-6)  # still collapsed on 2 of 16 ranks
    assert h_on > 0.9 * math.log(16)
    assert off.balance_bias.abs().max() == 0  # balance=False never touches the bias
    stats = routing_stats(m_on)["0"]
    assert stats.entropy == pytest.approx(h_on)
    assert stats.normalized_entropy == pytest.approx(h_on / math.log(16))
    assert stats.tokens == 64 and sum(stats.usage) == pytest.approx(1.0)
    assert routing_stats(m_off)["0"].max_load == pytest.approx(8.0)  # 16 ranks * 1/2


def test_update_is_the_sign_rule_once_per_optimizer_step():
    torch.manual_seed(0)
    model = inject_smora(
        nn.Sequential(nn.Linear(8, 8)),
        SMoRAConfig(rank=8, top_k=2, target_modules=["0"], balance_rate=1e-3),
    )
    layer = model[0]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    handle = attach_balancer(opt, model)
    for _ in range(3):  # gradient accumulation: three micro-batches, one step
        model(torch.randn(5, 8)).sum().backward()
        assert layer.balance_bias.abs().max() == 0  # nothing applied before the step
    counts = layer.balance_counts.clone()
    assert int(counts.sum()) == 3 * 5 * 2
    opt.step()
    c = counts.double()
    want = (torch.sign(c.mean() - c) * 1e-3).float()
    torch.testing.assert_close(layer.balance_bias, want, rtol=0, atol=0)
    assert int(layer.balance_counts.sum()) == 0
    handle.remove()
    model(torch.randn(5, 8))
    opt.step()
    torch.testing.assert_close(layer.balance_bias, want, rtol=0, atol=0)  # detached


def test_eval_forwards_do_not_feed_the_balancer():
    model = inject_smora(nn.Sequential(nn.Linear(8, 8)), SMoRAConfig(rank=8, top_k=2, target_modules=["0"]))
    model.eval()
    model(torch.randn(4, 8))
    assert int(model[0].balance_counts.sum()) == 0
    assert int(model[0].usage_counts.sum()) == 8  # but routing_stats sees them
    smora_balance_step(model)
    assert model[0].balance_bias.abs().max() == 0


def _tiny_llama(seed: int = 0):
    # The factory's model in training mode: SMoRA balances only while training.
    return tiny_llama(seed).train()


def _balance_counts(model) -> dict[str, int]:
    return {n: int(m.balance_counts.sum()) for n, m in smora_layers(model).items()}


@pytest.mark.parametrize("positional", [False, True])
def test_padding_tokens_are_not_counted(positional):
    model = inject_smora(_tiny_llama(), SMoRAConfig(rank=8, top_k=2, target_modules="all-linear"))
    assert "lm_head" not in smora_layers(model)  # all-linear skips the output embedding
    model.train()
    ids = torch.randint(0, 64, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 5:] = 0
    mask[2, :3] = 0  # left padding too
    if positional:
        model(ids, mask)
    else:
        model(input_ids=ids, attention_mask=mask)
    real = int(mask.sum())
    assert set(_balance_counts(model).values()) == {real * 2}
    # Without a mask every token counts; the captured mask does not outlive its forward.
    for m in smora_layers(model).values():
        m.balance_counts.zero_()
    model(input_ids=ids)
    assert set(_balance_counts(model).values()) == {21 * 2}


def test_explicit_mask_context_for_plain_models():
    model = inject_smora(nn.Sequential(nn.Linear(8, 8)), SMoRAConfig(rank=8, top_k=2, target_modules=["0"]))
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with smora_attention_mask(model, mask):
        model(x)
    assert int(model[0].balance_counts.sum()) == 8 * 2
    with warnings.catch_warnings(record=True) as w:  # a mask that does not fit: warn, count all
        warnings.simplefilter("always")
        with smora_attention_mask(model, torch.ones(3, 3)):
            model(x)
    assert int(model[0].balance_counts.sum()) == 8 * 2 + 10 * 2
    assert any("does not match the token shape" in str(x.message) for x in w)


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_counts_once(reentrant):
    ids = torch.randint(0, 64, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    counts = []
    for ckpt in (False, True):
        model = inject_smora(_tiny_llama(), SMoRAConfig(rank=8, top_k=2, target_modules=["q_proj"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ckpt:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        model.train()
        with torch.no_grad():
            for m in smora_layers(model).values():
                m.lora_B.normal_()  # so that backward really recomputes the adapted path
        out = model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False)
        out.loss.backward()
        counts.append(_balance_counts(model))
        assert model.model.layers[0].self_attn.q_proj.lora_A.grad.abs().sum() > 0
    assert counts[0] == counts[1]
    assert set(counts[1].values()) == {int(mask.sum()) * 2}
