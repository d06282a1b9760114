"""export_lora: a routed SMoRA model -> a plain PEFT LoRA folder of its expected update."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from peft_factory import tiny_llama
from rankwise.errors import OptionError, OutputExistsError
from rankwise.smora import SMoRAConfig, export_lora, inject_smora, routing_stats, smora_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _smora(block_size: int = 1, seed: int = 0):
    model = inject_smora(
        tiny_llama(0), SMoRAConfig(rank=8, top_k=2, block_size=block_size, lora_alpha=4.0, target_modules=TARGETS)
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in smora_layers(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * 0.3)
            m.router.weight.copy_(torch.randn(m.router.weight.shape, generator=gen))
            m.balance_bias.copy_(torch.rand(m.balance_bias.shape, generator=gen) * 0.1)
    return model.eval()


def _batches():
    gen = torch.Generator().manual_seed(3)
    ids = [torch.randint(0, 64, (2, 7), generator=gen) for _ in range(2)]
    mask = torch.ones(2, 7, dtype=torch.int64)
    mask[1, 4:] = 0  # padding: its tokens must not count
    return [{"input_ids": ids[0], "attention_mask": mask}, {"input_ids": ids[1]}], mask


def _reference_deltas(model, batches, mask) -> dict[str, np.ndarray]:
    """numpy: capture each layer's inputs, route them (top-k blocks of sigmoid(R x) + beta,
    gates k s / sum), average each rank's gate over the real tokens, ΔW = scale B diag(ḡ) A."""
    layers = smora_layers(model)
    seen: dict[str, list[np.ndarray]] = {n: [] for n in layers}
    hooks = [
        m.register_forward_hook(lambda mod, a, o, n=n: seen[n].append(a[0].detach().numpy())) for n, m in layers.items()
    ]
    with torch.no_grad():
        for b in batches:
            model(**b)
    for h in hooks:
        h.remove()
    keep = [mask.numpy().reshape(-1) != 0, np.ones(14, dtype=bool)]
    out = {}
    for n, m in layers.items():
        r = m.router.weight.detach().numpy().astype(np.float64)
        beta = m.balance_bias.detach().numpy().astype(np.float64)
        k, bs = m.top_k, m.block_size
        total, count = np.zeros(m.n_blocks), 0
        for x, kp in zip(seen[n], keep):
            for t in x.reshape(-1, m.in_features)[kp].astype(np.float64):
                s = 1 / (1 + np.exp(-(r @ t))) + beta
                top = np.argsort(-s)[:k]
                total[top] += k * s[top] / s[top].sum()
                count += 1
        g = np.repeat(total / count, bs)
        a, b = m.lora_A.detach().numpy().astype(np.float64), m.lora_B.detach().numpy().astype(np.float64)
        out[n] = m.scale * (b * g) @ a
    return out


def _peft(folder):
    from peft import PeftModel

    return PeftModel.from_pretrained(tiny_llama(0), str(folder)).eval()


def _peft_deltas(pm) -> dict[str, np.ndarray]:
    out = {}
    for n, mod in pm.base_model.model.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            a = mod.lora_A["default"].weight.detach().numpy().astype(np.float64)
            b = mod.lora_B["default"].weight.detach().numpy().astype(np.float64)
            out[n] = mod.scaling["default"] * b @ a
    return out


@pytest.mark.parametrize("block_size", [1, 4])
def test_export_is_the_expected_update_and_loads_in_peft(tmp_path, block_size):
    model = _smora(block_size)
    batches, mask = _batches()
    want = _reference_deltas(model, batches, mask)
    before = {n: m.usage_counts.clone() for n, m in smora_layers(model).items()}
    out = export_lora(model, batches, path=tmp_path / "lora")
    for n, m in smora_layers(model).items():
        assert torch.equal(m.usage_counts, before[n])  # routing stats untouched

    pm = _peft(out)
    got = _peft_deltas(pm)
    assert sorted(got) == sorted(want)
    for n in want:
        np.testing.assert_allclose(got[n], want[n], rtol=1e-4, atol=1e-6, err_msg=n)

    # Outputs: the base model with W += ΔW (torch, float64 deltas rounded once to float32).
    ref = tiny_llama(0)
    with torch.no_grad():
        for n, d in want.items():
            ref.get_submodule(n).weight += torch.from_numpy(d).float()
        ids = torch.randint(0, 64, (3, 9), generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(pm(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(ref(input_ids=ids).logits, tiny_llama(0)(input_ids=ids).logits)

    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 8 and cfg["peft_type"] == "LORA"
    with pytest.raises(OutputExistsError):
        export_lora(model, batches, path=out)


def test_export_compressed_with_svd_is_the_truncated_svd(tmp_path):
    model = _smora()
    batches, mask = _batches()
    want = _reference_deltas(model, batches, mask)
    got = _peft_deltas(_peft(export_lora(model, batches, rank=3, path=tmp_path / "r3")))
    for n, d in want.items():
        u, s, vt = np.linalg.svd(d, full_matrices=False)
        best = (u[:, :3] * s[:3]) @ vt[:3]
        assert np.linalg.matrix_rank(got[n], tol=1e-6 * s[0]) <= 3
        np.testing.assert_allclose(got[n], best, rtol=1e-3, atol=1e-5 * s[0], err_msg=n)


def test_export_compressed_with_lego_loads_and_approximates(tmp_path):
    model = _smora()
    batches, mask = _batches()
    want = _reference_deltas(model, batches, mask)
    got = _peft_deltas(_peft(export_lora(model, batches, rank=6, method="lego", path=tmp_path / "lego")))
    for n, d in want.items():
        assert got[n].shape == d.shape
        rel = np.linalg.norm(got[n] - d) / np.linalg.norm(d)
        assert rel < 1.0, (n, rel)  # closer to the expected update than the zero update


def test_export_bad_input_is_a_clear_error(tmp_path):
    model = _smora()
    batches, _ = _batches()
    with pytest.raises(OptionError, match="method must be one of"):
        export_lora(model, batches, path=tmp_path / "a", method="pca")
    with pytest.raises(OptionError, match="rank must be None or an integer"):
        export_lora(model, batches, rank=0, path=tmp_path / "a")
    with pytest.raises(OptionError, match="gave no tokens"):
        export_lora(model, [], path=tmp_path / "a")
    with pytest.raises(OptionError, match="no SMoRA layers"):
        export_lora(tiny_llama(0), batches, path=tmp_path / "a")
    assert not (tmp_path / "a").exists()
    assert routing_stats(model)  # the model still works after the failed exports
