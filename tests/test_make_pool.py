"""benches/make_pool.py writes adapters that PEFT and rankwise both load, with the same deltas."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from peft_factory import lora_layers, tiny_llama

_BENCHES = Path(__file__).resolve().parents[1] / "benches"


def _make_pool_module():
    spec = importlib.util.spec_from_file_location("rw_bench_make_pool", _BENCHES / "make_pool.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


mp = _make_pool_module()


@pytest.mark.parametrize(
    ("dtype", "rank", "clustered"),
    [("f32", 4, None), ("f16", [2, 6], 3), ("bf16", 8, None)],
)
def test_tiny_pool_loads_in_peft_and_rankwise_with_equal_deltas(tmp_path, dtype, rank, clustered):
    import torch
    from peft import PeftModel

    import rankwise as rw

    paths = mp.make_pool(tmp_path / "pool", 2, "tiny", rank=rank, dtype=dtype, seed=3, clustered=clustered)
    assert [p.name for p in paths] == ["adapter_0000", "adapter_0001"]
    cfg = json.loads((paths[1] / "adapter_config.json").read_text())
    want_r = rank if isinstance(rank, int) else rank[1]
    got = (cfg["peft_type"], cfg["r"], cfg["lora_alpha"], cfg["task_type"])
    assert got == ("LORA", want_r, 2.0 * want_r, "CAUSAL_LM")
    assert sorted(cfg["target_modules"]) == sorted(mp.ALL_LINEAR)

    pool = rw.AdapterPool.load(paths)
    assert len(pool.modules) == 14
    assert pool.ranks(pool.modules[0]) == ([rank, rank] if isinstance(rank, int) else rank)
    assert pool[0].dtype == dtype.upper()

    for j, path in enumerate(paths):
        pm = PeftModel.from_pretrained(tiny_llama(), str(path), adapter_name="x")
        layers = lora_layers(pm)
        assert sorted(layers) == sorted(pool.modules)
        for name, layer in layers.items():
            d_out, d_in = pool.shape(name)
            assert tuple(layer.base_layer.weight.shape) == (d_out, d_in)
            with torch.no_grad():
                want = layer.get_delta_weight("x").float().numpy()
            got = pool[j].delta(name)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=f"{path} {name}")
            assert np.abs(got).max() > 0


def test_seeded_and_clustered_structure(tmp_path):
    import rankwise as rw

    a = mp.make_pool(tmp_path / "a", 3, "tiny", rank=4, seed=7, clustered=2)
    b = mp.make_pool(tmp_path / "b", 3, "tiny", rank=4, seed=7, clustered=2)
    c = mp.make_pool(tmp_path / "c", 3, "tiny", rank=4, seed=8, clustered=2)
    st = "adapter_model.safetensors"
    assert all((p / st).read_bytes() == (q / st).read_bytes() for p, q in zip(a, b))
    assert (a[0] / st).read_bytes() != (c[0] / st).read_bytes()

    # Every unit is one of K=2 prototypes up to sign/scale and ~10 % noise: the canonical units'
    # a-parts (up to sign) sit within a small distance of one of at most 2 points.
    pool = rw.AdapterPool.load(a)
    m = pool.modules[0]
    d_out, _ = pool.shape(m)
    units, _ = pool.unit_matrix(m)
    ua = units[:, d_out:] / np.linalg.norm(units[:, d_out:], axis=1, keepdims=True)
    sim = np.abs(ua @ ua.T)  # |cos| between a-parts
    groups = (sim > 0.95).astype(int)
    assert len({tuple(row) for row in groups}) <= 2
    assert sim.min() < 0.9  # two distinct prototypes, not one
