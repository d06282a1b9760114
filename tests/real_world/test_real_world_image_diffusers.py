"""diffusers LoRA files through rankwise: the PEFT-style folders ``save_lora_weights`` writes and
the older attention-processor files, with diffusers' loader as the oracle (round trip bit for bit,
same outputs for the copy, merges and conversions to and from kohya load and compute the numpy
reference of their update)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
from image_models import (
    diffusers_folder,
    diffusers_outputs,
    kohya_file,
    reference_outputs,
    tiny_text_encoder,
    tiny_unet,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import rankwise as rw
from rankwise.errors import AdapterFormatError

WEIGHTS = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def models():  # type: ignore[no-untyped-def]
    return tiny_unet(), tiny_text_encoder()


def _same_file(a: Path, b: Path) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    for k in x:
        assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape and bool((x[k] == y[k]).all()), k
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        assert fa.metadata() == fb.metadata()


def _reference(adapter: rw.Adapter, unet, te):  # type: ignore[no-untyped-def]
    return reference_outputs({n: adapter.delta(n) for n in adapter.modules}, unet, te)


def test_diffusers_folder_round_trip_and_scalings(tmp_path: Path, models) -> None:  # type: ignore[no-untyped-def]
    unet, te = models
    src = diffusers_folder(tmp_path / "a", unet, te, seed=3)
    a = rw.load_adapter(src)
    assert a.format == "diffusers"
    conv = a.module("unet.down_blocks.0.resnets.0.conv1")
    assert (conv.rank, conv.kernel, conv.scaling) == (2, (3, 3), 4.0)  # rank_pattern, alpha 8
    assert a.module("text_encoder.encoder.layers.0.self_attn.q_proj").scaling == 0.5
    out = a.save(tmp_path / "copy")
    _same_file(src / WEIGHTS, out / WEIGHTS)
    u0, t0 = diffusers_outputs(src, unet, te)
    u1, t1 = diffusers_outputs(out, unet, te)
    np.testing.assert_array_equal(u0, u1)
    np.testing.assert_array_equal(t0, t1)
    ur, tr = _reference(a, unet, te)
    np.testing.assert_allclose(u0, ur, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(t0, tr, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("method", "options"), [("cat", {}), ("lego", {"rank": 3}), ("svd", {"svd_rank": 3})])
def test_merges_of_diffusers_folders_load_into_diffusers(tmp_path: Path, models, method, options) -> None:  # type: ignore[no-untyped-def]
    unet, te = models
    pool = rw.AdapterPool.load([diffusers_folder(tmp_path / f"a{i}", unet, te, seed=20 + i) for i in range(2)])
    merged = rw.merge(pool, method, weights=[0.6, 0.9], **options)
    out = merged.save(tmp_path / "merged")
    assert (out / WEIGHTS).is_file()
    with safe_open(str(out / WEIGHTS), "pt") as f:
        assert "rankwise" in (f.metadata() or {})
    got_u, got_t = diffusers_outputs(out, unet, te)
    ref_u, ref_t = _reference(merged, unet, te)
    np.testing.assert_allclose(got_u, ref_u, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_t, ref_t, rtol=1e-4, atol=1e-4)


def test_kohya_and_diffusers_convert_both_ways(tmp_path: Path, models) -> None:  # type: ignore[no-untyped-def]
    unet, te = models
    k = kohya_file(tmp_path / "k.safetensors", unet, te, seed=5)
    as_diffusers = rw.load_adapter(k).save(tmp_path / "k_diffusers", format="diffusers")
    assert rw.load_adapter(as_diffusers).format == "diffusers"
    np.testing.assert_allclose(
        diffusers_outputs(as_diffusers, unet, te)[0], diffusers_outputs(k, unet, te)[0], rtol=1e-5, atol=1e-5
    )
    d = diffusers_folder(tmp_path / "d", unet, te, seed=6)
    as_kohya = rw.load_adapter(d).save(tmp_path / "d_kohya.safetensors", format="kohya")
    back = rw.load_adapter(as_kohya)
    assert back.format == "kohya"
    assert back.module("unet.down_blocks.0.resnets.0.conv1").scaling == 4.0
    ref = _reference(rw.load_adapter(d), unet, te)
    np.testing.assert_allclose(diffusers_outputs(as_kohya, unet, te)[0], ref[0], rtol=1e-4, atol=1e-4)


def _processor_file(path: Path, src: Path) -> Path:
    """The attention modules of a diffusers file renamed to the attention-processor layout
    (``attn1.processor.to_q_lora.down.weight``, ``to_out.0`` as ``to_out_lora``), B scaled by
    the file's alpha / r, since that layout has no alphas."""
    sd = load_file(str(src / WEIGHTS))
    out = {}
    for key, val in sd.items():
        if not key.startswith("unet.") or ".attn" not in key:
            continue
        stem, _, factor = key.rpartition(".lora_")
        head, _, proj = stem.removesuffix(".0").rpartition(".")
        du = "down" if factor == "A.weight" else "up"
        out[f"{head}.processor.{proj}_lora.{du}.weight"] = val * (2.0 if du == "up" else 1.0)
    save_file(out, str(path), metadata={"format": "pt"})
    return path


def test_processor_file_round_trip(tmp_path: Path, models) -> None:  # type: ignore[no-untyped-def]
    unet, te = models
    src = _processor_file(tmp_path / "proc.safetensors", diffusers_folder(tmp_path / "d", unet, te, seed=8))
    a = rw.load_adapter(src)
    assert a.format == "diffusers-processor"
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0" in a.modules
    assert {m.scaling for m in a.modules.values()} == {1.0}
    out = a.save(tmp_path / "copy.safetensors")
    _same_file(src, out)
    u0, _ = diffusers_outputs(src, unet, te)
    np.testing.assert_array_equal(u0, diffusers_outputs(out, unet, te)[0])
    np.testing.assert_allclose(u0, _reference(a, unet, te)[0], rtol=1e-4, atol=1e-4)
    merged = rw.merge(rw.AdapterPool.load([src, out]), "cat", weights=[0.5, 0.25])
    m = merged.save(tmp_path / "merged.safetensors")
    assert all(".processor.to_" in k for k in load_file(str(m)))
    np.testing.assert_allclose(diffusers_outputs(m, unet, te)[0], _reference(merged, unet, te)[0], rtol=1e-4, atol=1e-4)


def test_format_forced_and_refusals(tmp_path: Path, models) -> None:  # type: ignore[no-untyped-def]
    unet, te = models
    k = kohya_file(tmp_path / "k.safetensors", unet, te, seed=9)
    with pytest.raises(AdapterFormatError, match=r"k\.safetensors.*lora_te_.*not a LoRA factor of the diffusers"):
        rw.load_adapter(k, format="diffusers")
    with pytest.raises(rw.errors.OptionError, match="unknown format 'comfy'"):
        rw.load_adapter(k, format="comfy")
    sd = load_file(str(k))
    sd["lora_unet_x.hada_w1_a"] = sd[next(iter(sd))].clone()
    save_file(sd, str(tmp_path / "loha.safetensors"))
    with pytest.raises(AdapterFormatError, match="hada_w1_a.*LoHa"):
        rw.load_adapter(tmp_path / "loha.safetensors")
    with pytest.raises(rw.errors.OutputExistsError):
        rw.load_adapter(k).save(k)
