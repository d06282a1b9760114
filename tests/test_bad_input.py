"""Broken adapters and bad calls: the exception type, and a message naming file, key and problem."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from peft_factory import make_adapter

A_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
CONFIG = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "bias": "none"}


def write_raw(folder: Path, header: dict, data: bytes, config: dict | None = None) -> Path:
    """An adapter folder whose safetensors file has exactly this header and data."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config or CONFIG))
    h = json.dumps(header).encode()
    (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + data)
    return folder


def good_header(dtype: str = "F32", r: int = 2, d: int = 4) -> tuple[dict, bytes]:
    size = {"F32": 4, "F16": 2}[dtype]
    n = r * d * size
    header = {
        A_KEY: {"dtype": dtype, "shape": [r, d], "data_offsets": [0, n]},
        B_KEY: {"dtype": dtype, "shape": [d, r], "data_offsets": [n, 2 * n]},
    }
    return header, np.ones(2 * r * d, dtype=np.float32 if dtype == "F32" else np.float16).tobytes()


def test_a_well_formed_raw_adapter_loads(tmp_path: Path) -> None:
    """The control case for the broken ones below."""
    adapter = rw.load_adapter(write_raw(tmp_path / "ok", *good_header()))
    assert list(adapter.modules) == ["model.layers.0.self_attn.q_proj"]
    assert adapter.modules["model.layers.0.self_attn.q_proj"].scaling == 2.0


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(rw.AdapterNotFoundError, match=r"nope: adapter folder does not exist"):
        rw.load_adapter(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):  # also the builtin a user would catch
        rw.load_adapter(tmp_path / "nope")


def test_missing_config(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(rw.AdapterNotFoundError, match=r"adapter_config.json: missing"):
        rw.load_adapter(tmp_path / "a")


def test_config_not_json(tmp_path: Path) -> None:
    folder = write_raw(tmp_path / "a", *good_header())
    (folder / "adapter_config.json").write_text("{'r': 8,")
    with pytest.raises(rw.AdapterFormatError, match=r"adapter_config.json: not valid JSON"):
        rw.load_adapter(folder)


def test_missing_weights_and_pickled_weights(tmp_path: Path) -> None:
    folder = write_raw(tmp_path / "a", *good_header())
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(rw.AdapterNotFoundError, match=r"adapter_model.safetensors: missing"):
        rw.load_adapter(folder)
    (folder / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(rw.AdapterFormatError, match=r"adapter_model.bin: pickled weights are not read"):
        rw.load_adapter(folder)


def test_truncated_safetensors(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "a", r=2, target_modules=["q_proj"])
    st = folder / "adapter_model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[:-10])
    with pytest.raises(
        rw.AdapterFormatError, match=r"adapter_model.safetensors: tensor '.*': .*past the end of the data.*truncated"
    ):
        rw.load_adapter(folder)
    st.write_bytes(data[:5])
    with pytest.raises(
        rw.AdapterFormatError, match=r"adapter_model.safetensors: invalid safetensors file: file is 5 bytes"
    ):
        rw.load_adapter(folder)
    st.write_bytes(data[:20])
    with pytest.raises(
        rw.AdapterFormatError,
        match=r"header length field says \d+ bytes but the file has only 12 after it \(truncated\?\)",
    ):
        rw.load_adapter(folder)


def test_header_offsets_past_end(tmp_path: Path) -> None:
    header, data = good_header()
    header[B_KEY]["data_offsets"] = [32, 64 + 4]
    header[B_KEY]["shape"] = [4, 2]
    folder = write_raw(tmp_path / "a", header, data)
    with pytest.raises(rw.AdapterFormatError, match=rf"tensor '{B_KEY}': data_offsets \[32, 68\] run past the end"):
        rw.load_adapter(folder)


def test_overlapping_offsets(tmp_path: Path) -> None:
    header, data = good_header()
    header[B_KEY]["data_offsets"] = [16, 48]
    folder = write_raw(tmp_path / "a", header, data)
    with pytest.raises(rw.AdapterFormatError, match=rf"tensor '{B_KEY}': data overlaps the data of tensor '{A_KEY}'"):
        rw.load_adapter(folder)


def test_shape_does_not_match_byte_length(tmp_path: Path) -> None:
    header, data = good_header()
    header[A_KEY]["shape"] = [2, 3]
    folder = write_raw(tmp_path / "a", header, data)
    with pytest.raises(rw.AdapterFormatError, match=rf"tensor '{A_KEY}': shape \[2, 3\] of F32 needs 24 bytes"):
        rw.load_adapter(folder)


def test_unknown_and_unsupported_dtypes(tmp_path: Path) -> None:
    header, data = good_header()
    header[A_KEY]["dtype"] = "F17"
    with pytest.raises(rw.AdapterFormatError, match=rf"tensor '{A_KEY}': unknown dtype 'F17'"):
        rw.load_adapter(write_raw(tmp_path / "a", header, data))
    header, data = good_header()
    header[A_KEY]["dtype"] = "I32"
    with pytest.raises(rw.AdapterFormatError, match=rf"tensor '{A_KEY}': dtype I32 is not supported"):
        rw.load_adapter(write_raw(tmp_path / "b", header, data))


def test_lora_a_without_lora_b(tmp_path: Path) -> None:
    header, data = good_header()
    del header[B_KEY]
    with pytest.raises(rw.AdapterFormatError, match=rf"tensor '{A_KEY}' has no matching lora_B"):
        rw.load_adapter(write_raw(tmp_path / "a", header, data[:32]))


def test_rank_mismatch_between_a_and_b(tmp_path: Path) -> None:
    header, data = good_header()
    header[B_KEY]["shape"] = [8, 1]
    with pytest.raises(rw.AdapterFormatError, match=rf"tensor '{B_KEY}': rank mismatch: lora_B has shape \[8, 1\]"):
        rw.load_adapter(write_raw(tmp_path / "a", header, data))


def test_rank_disagrees_with_config(tmp_path: Path) -> None:
    cfg = dict(CONFIG, r=3)
    with pytest.raises(
        rw.AdapterFormatError, match=rf"tensor '{A_KEY}': rank 2 but .*adapter_config.json gives this module rank 3"
    ):
        rw.load_adapter(write_raw(tmp_path / "a", *good_header(), config=cfg))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["F32", "F16"])
def test_nan_or_inf_values(tmp_path: Path, bad: float, dtype: str) -> None:
    header, data = good_header(dtype)
    arr = np.frombuffer(data, dtype=np.float32 if dtype == "F32" else np.float16).copy()
    arr[11] = bad  # B, flat index 3
    what = "NaN" if np.isnan(bad) else "Inf"
    with pytest.raises(rw.AdapterFormatError, match=rf"tensor '{B_KEY}': contains {what} \(first at flat index 3\)"):
        rw.load_adapter(write_raw(tmp_path / "a", header, arr.tobytes()))


@pytest.mark.parametrize("key, index", [(A_KEY, 5), (B_KEY, 3)])
def test_nan_reaches_the_svd_merge_with_its_file_and_key(tmp_path: Path, key: str, index: int) -> None:
    """Loaded without the finite check, a NaN still stops the svd merge, which reads the
    factors straight from the mapped files, naming the file and the tensor."""
    rng = np.random.default_rng(0)
    header, _ = good_header(d=8)
    good = write_raw(tmp_path / "good", header, rng.standard_normal(32).astype(np.float32).tobytes())
    values = rng.standard_normal(32).astype(np.float32)
    values[index + (16 if key == B_KEY else 0)] = np.nan
    bad = write_raw(tmp_path / "bad", header, values.tobytes())
    pool = rw.AdapterPool.load([good, bad], check_finite=False)
    with pytest.raises(
        rw.AdapterFormatError,
        match=rf"bad/adapter_model.safetensors: tensor '{key}': contains NaN or Inf \(first at flat index {index}\)",
    ):
        rw.merge(pool, "svd")


def test_unsupported_features_are_named(tmp_path: Path) -> None:
    dora = make_adapter(tmp_path / "dora", r=2, target_modules=["q_proj"], use_dora=True)
    with pytest.raises(rw.AdapterFormatError, match=r"adapter_config.json: DoRA \(use_dora=true\) is not supported"):
        rw.load_adapter(dora)
    # The same adapter with the flag removed is still caught by its tensors.
    cfg = json.loads((dora / "adapter_config.json").read_text())
    cfg["use_dora"] = False
    (dora / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(rw.AdapterFormatError, match=r"tensor '.*lora_magnitude_vector.*': DoRA is not supported"):
        rw.load_adapter(dora)
    folder = write_raw(tmp_path / "bias", *good_header(), config=dict(CONFIG, bias="all"))
    with pytest.raises(rw.AdapterFormatError, match=r"bias='all'"):
        rw.load_adapter(folder)
    folder = write_raw(tmp_path / "mts", *good_header(), config=dict(CONFIG, modules_to_save=["lm_head"]))
    with pytest.raises(rw.AdapterFormatError, match=r"modules_to_save"):
        rw.load_adapter(folder)
    folder = write_raw(tmp_path / "ia3", *good_header(), config=dict(CONFIG, peft_type="IA3"))
    with pytest.raises(rw.AdapterFormatError, match=r"peft_type is IA3"):
        rw.load_adapter(folder)


def test_pool_with_mismatched_module_sets(tmp_path: Path) -> None:
    a = make_adapter(tmp_path / "a", r=2, target_modules=["q_proj", "v_proj"])
    b = make_adapter(tmp_path / "b", r=2, target_modules=["q_proj"])
    with pytest.raises(
        rw.IncompatibleAdaptersError, match=r"/b: lacks 2 module\(s\) of .*/a, e.g. 'model.layers.0.self_attn.v_proj'"
    ):
        rw.AdapterPool.load([a, b])


def test_pool_with_mismatched_dims(tmp_path: Path) -> None:
    header, data = good_header()
    a = write_raw(tmp_path / "a", header, data)
    header2 = {
        A_KEY: {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]},
        B_KEY: {"dtype": "F32", "shape": [6, 2], "data_offsets": [32, 80]},
    }
    b = write_raw(tmp_path / "b", header2, np.ones(20, dtype=np.float32).tobytes())
    with pytest.raises(
        rw.IncompatibleAdaptersError, match=r"/b: module 'model.layers.0.self_attn.q_proj' is 6×4 .* it is 4×4"
    ):
        rw.AdapterPool.load([a, b])


def test_pool_glob_matching_nothing_and_empty_pool(tmp_path: Path) -> None:
    with pytest.raises(rw.RankwiseError, match="matches no adapter folder"):
        rw.AdapterPool.load(str(tmp_path / "zz*"))
    with pytest.raises(rw.MergeConfigError, match="no adapter folders"):
        rw.AdapterPool.load([])


def test_output_target_not_empty(tmp_path: Path) -> None:
    adapter = rw.load_adapter(write_raw(tmp_path / "a", *good_header()))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep")
    with pytest.raises(rw.OutputExistsError, match=r"out: folder is not empty; pass overwrite=True"):
        adapter.save(tmp_path / "out")
    (tmp_path / "file").write_text("")
    with pytest.raises(rw.OutputExistsError, match=r"exists and is not a folder"):
        adapter.save(tmp_path / "file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_output_folder_not_writable_leaves_nothing(tmp_path: Path) -> None:
    adapter = rw.load_adapter(write_raw(tmp_path / "a", *good_header()))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(rw.RankwiseError, match=r"ro/out: cannot create the output folder"):
            adapter.save(ro / "out")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_failed_write_leaves_nothing_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure mid-write (here: the config write raises) removes the temp folder, and the
    target is untouched. Works as root too, unlike the permission test."""
    adapter = rw.load_adapter(write_raw(tmp_path / "a", *good_header()))
    out = tmp_path / "out"

    def boom(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", boom)
    with pytest.raises(OSError, match="No space left"):
        adapter.save(out)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_output_parent_unusable_leaves_nothing(tmp_path: Path) -> None:
    """Unwritable in a way root cannot bypass: the parent of the target is a regular file."""
    adapter = rw.load_adapter(write_raw(tmp_path / "a", *good_header()))
    (tmp_path / "plain").write_text("")
    with pytest.raises(rw.RankwiseError, match=r"plain/out: cannot create the output folder"):
        adapter.save(tmp_path / "plain" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "plain"]


def test_writer_writes_fortran_order_in_c_order(tmp_path: Path) -> None:
    """Fortran-order data is written in C order (never transposed)."""
    from rankwise import _core

    arr = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    _core.write_safetensors(str(tmp_path / "x.safetensors"), [("a", "F32", arr)])
    back = _core.MappedFiles.open([str(tmp_path / "x.safetensors")]).read(0, "a")
    np.testing.assert_array_equal(back, arr)
