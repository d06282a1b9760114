"""kohya / LoCon files (written from sd-scripts' conventions) through rankwise, with diffusers'
own loader as the oracle: the round trip keeps every tensor bit for bit, diffusers computes the
same outputs from rankwise's copy, and rankwise's merges load into diffusers and compute the
numpy reference of their update."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
from image_models import (
    diffusers_outputs,
    kohya_file,
    outputs,
    reference_outputs,
    tiny_text_encoder,
    tiny_unet,
)
from safetensors import safe_open
from safetensors.torch import load_file

import rankwise as rw


@pytest.fixture(scope="module")
def models():  # type: ignore[no-untyped-def]
    return tiny_unet(), tiny_text_encoder()


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def test_kohya_file_is_read_with_locon_and_alpha(tmp_path: Path, models) -> None:  # type: ignore[no-untyped-def]
    unet, te = models
    src = kohya_file(tmp_path / "a.safetensors", unet, te, seed=1)
    a = rw.load_adapter(src)
    assert a.format == "kohya"
    sd = load_file(str(src))
    conv = a.module("unet.down_blocks.0.resnets.0.conv1")
    assert conv.kernel == (3, 3) and conv.d_in == 8 * 9
    stem = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert conv.scaling == pytest.approx(float(sd[stem + ".alpha"]) / 4)
    # delta = alpha / r · up @ flattened down, against torch's own reshape
    want = (sd[stem + ".lora_up.weight"].flatten(1) @ sd[stem + ".lora_down.weight"].flatten(1)).numpy()
    np.testing.assert_allclose(a.delta(conv.name), want * conv.scaling, rtol=1e-6, atol=1e-7)
    assert "text_encoder.encoder.layers.0.self_attn.q_proj" in a.modules  # transformers 5 paths
    assert len(a.modules) * 3 == len(sd)


def test_kohya_round_trip_is_bit_identical_and_diffusers_agrees(tmp_path: Path, models) -> None:  # type: ignore[no-untyped-def]
    unet, te = models
    src = kohya_file(tmp_path / "a.safetensors", unet, te, seed=2)
    out = rw.load_adapter(src).save(tmp_path / "copy.safetensors")
    a, b = load_file(str(src)), load_file(str(out))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and bool((a[k] == b[k]).all()), k
    meta = _metadata(out)
    assert meta["ss_network_dim"] == "4" and meta["ss_network_module"] == "networks.lora"
    u0, t0 = diffusers_outputs(src, unet, te)
    u1, t1 = diffusers_outputs(out, unet, te)
    np.testing.assert_array_equal(u0, u1)
    np.testing.assert_array_equal(t0, t1)
    # diffusers applies what rankwise reads: alpha / r · up @ down on each module
    ad = rw.load_adapter(src)
    ur, tr = reference_outputs({n: ad.delta(n) for n in ad.modules}, unet, te)
    base_u, _ = outputs(unet, te)
    assert np.abs(u0 - base_u).max() > 1e-3  # the LoRA changes the output
    np.testing.assert_allclose(u0, ur, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(t0, tr, rtol=1e-4, atol=1e-4)


METHOD_OPTIONS = {
    "aligned": {},
    "cat": {},
    "linear": {},
    "lego": {"rank": 4},
    "svd": {"svd_rank": 4},
    "ties": {"density": 0.5},
    "dare_linear": {"density": 0.5},
    "dare_ties": {"density": 0.5},
    "magnitude_prune": {"density": 0.5},
    "ties_svd": {"density": 0.5, "svd_rank": 4},
    "dare_linear_svd": {"density": 0.5, "svd_rank": 4},
    "dare_ties_svd": {"density": 0.5, "svd_rank": 4},
    "magnitude_prune_svd": {"density": 0.5, "svd_rank": 4},
}


def test_every_method_covered() -> None:
    assert set(METHOD_OPTIONS) == set(rw.merge_methods())


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_merges_of_kohya_files_load_into_diffusers(tmp_path: Path, models, method: str) -> None:  # type: ignore[no-untyped-def]
    unet, te = models
    files = [kohya_file(tmp_path / f"{i}.safetensors", unet, te, seed=10 + i) for i in range(2)]
    pool = rw.AdapterPool.load(files)
    merged = rw.merge(pool, method, weights=[0.7, 0.5], **METHOD_OPTIONS[method])
    out = merged.save(tmp_path / "merged.safetensors")
    keys = load_file(str(out)).keys()
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
    meta = _metadata(out)
    assert meta["ss_network_module"] == "networks.lora" and '"method"' in meta["rankwise"]
    got_u, got_t = diffusers_outputs(out, unet, te)
    back = rw.load_adapter(out)
    assert back.module("unet.down_blocks.0.resnets.0.conv1").kernel == (3, 3)
    ref_u, ref_t = reference_outputs({n: merged.delta(n) for n in merged.modules}, unet, te)
    np.testing.assert_allclose(got_u, ref_u, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_t, ref_t, rtol=1e-4, atol=1e-4)
    if method == "cat":  # exact: the merged update is the weighted sum of the deltas
        for n in merged.modules:
            want = sum(w * a.delta(n) for w, a in zip([0.7, 0.5], pool))
            np.testing.assert_allclose(merged.delta(n), want, rtol=1e-5, atol=1e-6)
