"""Adapter (adapter.py): folders made by PEFT -> loaded -> saved -> loaded by PEFT give identical
outputs and deltas; the factors, state dict and source of a loaded adapter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import rankwise as rw
from peft_factory import logits, lora_layers, make_adapter, peft_model
from precision import assert_within, chain_error

CASES = {
    "f32": dict(dtype="F32"),
    "f16": dict(dtype="F16"),
    "bf16": dict(dtype="BF16"),
    "rslora": dict(dtype="F32", use_rslora=True, lora_alpha=6),
    "patterns": dict(
        dtype="F32",
        r=4,
        rank_pattern={"q_proj": 2, "model.layers.1.mlp.down_proj": 6},
        alpha_pattern={"v_proj": 3, "layers.0.mlp.up_proj": 11},
    ),
    "rslora_patterns_bf16": dict(
        dtype="BF16", use_rslora=True, rank_pattern={"k_proj": 3}, alpha_pattern={"o_proj": 5}
    ),
}


def _float32_delta_bound(adapter: rw.Adapter, name: str) -> np.ndarray:
    """How far two float32 computations of scaling·B@A (ours in numpy, PEFT's in torch) may be
    apart: each sums r products in its own order and rounds the scaling and the product by it."""
    a, b = adapter.factors(name)
    return 2 * chain_error([b, a], roundings=2) * abs(adapter.modules[name].scaling)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(root / name, seed=i, **kw) for i, (name, kw) in enumerate(CASES.items())}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_through_peft_gives_identical_outputs(made: dict[str, Path], tmp_path: Path, case: str) -> None:
    dtype = CASES[case]["dtype"]
    src = made[case]
    adapter = rw.load_adapter(src)
    assert adapter.dtype == dtype
    out = adapter.save(tmp_path / "copy")
    original = logits(peft_model(src, dtype=dtype))
    copied = logits(peft_model(out, dtype=dtype))
    assert torch.equal(original, copied)
    # Byte-identical tensors, too.
    from safetensors.torch import load_file

    a = load_file(str(src / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


@pytest.mark.parametrize("case", list(CASES))
def test_folded_scaling_matches_peft_delta(made: dict[str, Path], case: str) -> None:
    adapter = rw.load_adapter(made[case])
    layers = lora_layers(peft_model(made[case], dtype="F32"))
    assert set(layers) == set(adapter.modules)
    for name, layer in layers.items():
        info = adapter.modules[name]
        assert info.rank == layer.r["a0"]
        assert info.scaling == pytest.approx(layer.scaling["a0"], rel=1e-12)
        want = layer.get_delta_weight("a0").detach().numpy()
        bound = _float32_delta_bound(adapter, name)
        assert_within(adapter.delta(name), want, bound, name)
        a, b = adapter.factors(name, folded=True)
        assert_within(b @ a, want, bound, name)


def test_state_dict_uses_peft_keys_and_dtypes(made: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    src = made["bf16"]
    want = load_file(str(src / "adapter_model.safetensors"))
    got = rw.load_adapter(src).state_dict("torch")
    assert got.keys() == want.keys()
    assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], want[k]) for k in want)
    npd = rw.load_adapter(made["f16"]).state_dict("numpy")
    assert all(v.dtype == np.float16 for v in npd.values())
    with pytest.raises(ValueError, match="framework"):
        rw.load_adapter(src).state_dict("jax")  # type: ignore[arg-type]


def test_fan_in_fan_out_is_kept(tmp_path: Path) -> None:
    """GPT-2 style Conv1D: PEFT's delta is (B @ A).T; the factors keep the nn.Linear layout."""
    import json

    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    def base() -> torch.nn.Module:
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16)).eval()

    pm = get_peft_model(
        base(), LoraConfig(r=3, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False)
    )
    pm.save_pretrained(str(tmp_path / "g"))
    adapter = rw.load_adapter(tmp_path / "g")
    (name,) = adapter.modules
    layer = lora_layers(pm)[name]
    want = layer.get_delta_weight("default").detach().numpy()
    assert_within(adapter.delta(name).T, want, _float32_delta_bound(adapter, name).T, name)
    adapter.save(tmp_path / "g2")
    assert json.loads((tmp_path / "g2" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    ids = torch.arange(10)[None]
    with torch.no_grad():
        y1 = PeftModel.from_pretrained(base(), str(tmp_path / "g"))(input_ids=ids).logits
        y2 = PeftModel.from_pretrained(base(), str(tmp_path / "g2"))(input_ids=ids).logits
    assert torch.equal(y1, y2)


def test_save_refuses_non_empty_target_and_overwrites_on_request(made: dict[str, Path], tmp_path: Path) -> None:
    adapter = rw.load_adapter(made["f32"])
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(rw.OutputExistsError, match="not empty"):
        adapter.save(target)
    assert (target / "keep.txt").exists()
    adapter.save(target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp debris
    empty = tmp_path / "empty"
    empty.mkdir()
    adapter.save(empty)  # an empty folder is fine
    assert rw.load_adapter(empty).modules.keys() == adapter.modules.keys()


def test_source_is_the_mapped_file_or_none(made: dict[str, Path]) -> None:
    """A loaded adapter's factors come from its mapped file (``source``, read-only); an adapter
    built from factors has none; adapters loaded together share one MappedFiles."""
    adapter = rw.load_adapter(made["f16"])
    src = adapter.source
    assert src is not None and src.path == made["f16"] / "adapter_model.safetensors"
    assert src.nbytes == src.path.stat().st_size
    name = next(iter(adapter.modules))
    info = adapter.modules[name]
    a, b = adapter.factors(name)
    assert np.array_equal(src.read(info.key_a), a) and np.array_equal(src.read(info.key_b), b)
    with pytest.raises(AttributeError):
        adapter.source = None  # type: ignore[misc]
    memory = rw.Adapter.from_factors({name: (a, b)})
    assert memory.source is None
    pool = rw.AdapterPool.load([made["f32"], made["f16"]])
    s0, s1 = pool[0].source, pool[1].source
    assert s0 is not None and s1 is not None and s0.files is s1.files and (s0.index, s1.index) == (0, 1)
