"""The core's safetensors reader and writer (``rankwise._core.MappedFiles``,
``write_safetensors``) on broken files: the exception type, and a message naming file, tensor
key and problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from peft_factory import make_adapter
from raw_adapter import A_KEY, B_KEY, good_header, write_raw


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


def test_unknown_dtype(tmp_path: Path) -> None:
    header, data = good_header()
    header[A_KEY]["dtype"] = "F17"
    with pytest.raises(rw.AdapterFormatError, match=rf"tensor '{A_KEY}': unknown dtype 'F17'"):
        rw.load_adapter(write_raw(tmp_path / "a", header, data))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["F32", "F16"])
def test_nan_or_inf_values(tmp_path: Path, bad: float, dtype: str) -> None:
    header, data = good_header(dtype)
    arr = np.frombuffer(data, dtype=np.float32 if dtype == "F32" else np.float16).copy()
    arr[11] = bad  # B, flat index 3
    what = "NaN" if np.isnan(bad) else ("inf" if bad > 0 else "-inf")
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
        match=rf"bad/adapter_model.safetensors: tensor '{key}': contains NaN \(first at flat index {index}\)",
    ):
        rw.merge(pool, "svd")


def test_writer_writes_fortran_order_in_c_order(tmp_path: Path) -> None:
    """Fortran-order data is written in C order (never transposed)."""
    from rankwise import _core

    arr = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    _core.write_safetensors(str(tmp_path / "x.safetensors"), [("a", "F32", arr)])
    back = _core.MappedFiles.open([str(tmp_path / "x.safetensors")]).read(0, "a")
    np.testing.assert_array_equal(back, arr)
