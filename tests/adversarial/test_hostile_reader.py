"""Hostile safetensors files and mapped data: malformed headers (compared with the reference
``safetensors`` reader: rankwise may be stricter, never looser), claimed sizes that would abort
an allocation, non-finite and out-of-range values, files changed after they were mapped, and
values that overflow float32 when folded. Each case runs in a child (``harness``)."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from harness import expect_error, expect_ok, tree_digest
from safetensors import safe_open

from raw_adapter import A_KEY, B_KEY, CONFIG, write_raw

WEIGHTS = "adapter_model.safetensors"


def entry(shape: list[int], begin: int, end: int, dtype: str = "F32") -> str:
    return json.dumps({"dtype": dtype, "shape": shape, "data_offsets": [begin, end]})


def write_text_header(folder: Path, header: str | bytes, data: bytes, config: dict | None = None) -> Path:
    """An adapter folder whose safetensors header is exactly this text (duplicate keys and
    whitespace survive, unlike a dict)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config or CONFIG))
    h = header.encode() if isinstance(header, str) else header
    (folder / WEIGHTS).write_bytes(struct.pack("<Q", len(h)) + h + data)
    return folder


def reference_rejects(path: Path) -> bool:
    """Whether the reference reader refuses the file (opening it and reading every tensor)."""
    try:
        with safe_open(str(path), "np") as f:
            for k in f.keys():
                f.get_tensor(k)
    except Exception:
        return True
    return False


def load(folder: Path) -> str:
    return f"import rankwise as rw\nrw.AdapterPool.load([{str(folder)!r}])\n"


A2, B2 = entry([2, 4], 0, 32), entry([4, 2], 32, 64)
GOOD = np.ones(16, np.float32).tobytes()

# name: (header text, data, match, whether the reference reader also refuses it)
HEADERS: dict[str, tuple[str | bytes, bytes, str, bool]] = {
    "duplicate tensor key": (
        f'{{"{A_KEY}":{A2},"{A_KEY}":{A2},"{B_KEY}":{B2}}}',
        GOOD,
        rf"key '{A_KEY}' appears twice",
        False,
    ),
    "duplicate metadata key": (
        f'{{"__metadata__":{{"format":"pt","format":"np"}},"{A_KEY}":{A2},"{B_KEY}":{B2}}}',
        GOOD,
        "key 'format' appears twice",
        False,
    ),
    "zero-size tensor between overlapping ones": (
        f'{{"{A_KEY}":{A2},"z":{entry([0], 16, 16)},"{B_KEY}":{entry([4, 2], 16, 48)}}}',
        bytes(48),
        "tensor 'z'.*overlaps",
        True,
    ),
    "overlapping tensors": (
        f'{{"{A_KEY}":{A2},"{B_KEY}":{entry([4, 2], 16, 48)}}}',
        bytes(48),
        f"tensor '{B_KEY}'.*overlaps the data of tensor '{A_KEY}'",
        True,
    ),
    "gap between tensors": (
        f'{{"{A_KEY}":{A2},"{B_KEY}":{entry([4, 2], 40, 72)}}}',
        bytes(72),
        f"tensor '{B_KEY}'.*gap after the data of tensor '{A_KEY}'",
        True,
    ),
    "data not starting at 0": (
        f'{{"{A_KEY}":{entry([2, 4], 8, 40)},"{B_KEY}":{entry([4, 2], 40, 72)}}}',
        bytes(72),
        f"tensor '{A_KEY}'.*gap after the start of the data",
        True,
    ),
    "trailing bytes": (
        f'{{"{A_KEY}":{A2},"{B_KEY}":{B2}}}',
        GOOD + bytes(8),
        "72 bytes.*cover only 64.*trailing",
        True,
    ),
    "unknown dtype": (
        f'{{"{A_KEY}":{entry([2, 4], 0, 32, "F12")},"{B_KEY}":{B2}}}',
        GOOD,
        "unknown dtype 'F12'",
        True,
    ),
    "entry that is not an object": (f'{{"{A_KEY}":[1,2],"{B_KEY}":{B2}}}', GOOD, "entry is not an object", True),
    "metadata a list": (
        f'{{"__metadata__":[1],"{A_KEY}":{A2},"{B_KEY}":{B2}}}',
        GOOD,
        "__metadata__ is not an object",
        True,
    ),
    "metadata value not a string": (
        f'{{"__metadata__":{{"format":1}},"{A_KEY}":{A2},"{B_KEY}":{B2}}}',
        GOOD,
        "__metadata__ value of 'format' is not a string",
        True,
    ),
    "metadata null": (
        f'{{"__metadata__":null,"{A_KEY}":{A2},"{B_KEY}":{B2}}}',
        GOOD,
        "__metadata__ is not an object",
        False,
    ),
    "header not starting with a brace": (
        f' {{"{A_KEY}":{A2},"{B_KEY}":{B2}}}',
        GOOD,
        r"does not start with '\{'",
        False,
    ),
    "header a JSON array": ("[1, 2]", b"", r"does not start with '\{'", True),
    "header not JSON": ('{"a": tru', b"", "not valid JSON", True),
    "header with invalid UTF-8": (b'{"\xff":' + A2.encode() + b"}", bytes(32), "not valid JSON", True),
    "header nested 10,000 deep": ('{"__metadata__":' + "[" * 10000 + "]" * 10000 + "}", b"", "not valid JSON", True),
    "shape with a float": (
        f'{{"{A_KEY}":{entry([2.0, 4], 0, 32)},"{B_KEY}":{B2}}}',
        GOOD,
        "non-negative integer",
        True,
    ),  # type: ignore[list-item]
    "negative data offset": (f'{{"{A_KEY}":{entry([2, 4], -8, 32)},"{B_KEY}":{B2}}}', GOOD, "data_offsets", True),
    "offsets ending before they begin": (
        f'{{"{A_KEY}":{entry([0], 32, 0)},"{B_KEY}":{B2}}}',
        GOOD,
        "end before they begin",
        True,
    ),
    "shape product overflowing u64": (
        f'{{"{A_KEY}":{entry([2**31, 2**31, 2**31], 0, 32)},"{B_KEY}":{B2}}}',
        GOOD,
        "overflows",
        True,
    ),
    "zero-byte tensor of shape [2^40, 0]": (
        f'{{"z":{entry([2**40, 0], 0, 0)},"{A_KEY}":{A2},"{B_KEY}":{B2}}}',
        GOOD,
        f"tensor 'z'.*extent {2**40} above the limit",
        False,
    ),
}


@pytest.mark.parametrize("name", list(HEADERS))
def test_bad_header_is_refused_naming_file_and_what(tmp_path: Path, name: str) -> None:
    header, data, match, ref = HEADERS[name]
    folder = write_text_header(tmp_path / "a", header, data)
    before = tree_digest(tmp_path)
    expect_error(load(folder), "AdapterFormatError", rf"{WEIGHTS}.*{match}")
    assert tree_digest(tmp_path) == before
    # Never looser than the reference reader; where it accepts, rankwise is knowingly stricter.
    assert reference_rejects(folder / WEIGHTS) == ref


def test_edge_files_both_readers_accept(tmp_path: Path) -> None:
    """Zero-size tensors placed consistently and extra entry fields: valid for both readers."""
    header = f'{{"{A_KEY}":{A2},"{B_KEY}":{B2},"z":{entry([0, 3], 64, 64)}}}'
    folder = write_text_header(tmp_path / "a", header, GOOD)
    assert not reference_rejects(folder / WEIGHTS)
    code = (
        f"from rankwise import _core\nf = _core.MappedFiles.open([{str(folder / WEIGHTS)!r}])\n"
        "assert f.tensors(0)['z'] == ('F32', [0, 3])\nassert f.read(0, 'z').shape == (0, 3)\n"
    )
    expect_ok(code)


def test_huge_header_length_field(tmp_path: Path) -> None:
    folder = write_text_header(tmp_path / "a", "{}", b"")
    w = folder / WEIGHTS
    w.write_bytes(struct.pack("<Q", 2**62) + w.read_bytes()[8:])
    expect_error(load(folder), "AdapterFormatError", rf"{WEIGHTS}.*header length field says {2**62} bytes.*corrupt")


def test_header_length_past_the_end(tmp_path: Path) -> None:
    folder = write_text_header(tmp_path / "a", "{}", b"")
    w = folder / WEIGHTS
    w.write_bytes(struct.pack("<Q", 4096) + w.read_bytes()[8:])
    expect_error(load(folder), "AdapterFormatError", rf"{WEIGHTS}.*4096 bytes but the file has only 2.*truncated")


def test_sparse_64gib_tensor_is_refused_before_allocating(tmp_path: Path) -> None:
    shape = [1 << 24, 1024]  # float32: 64 GiB
    n = 4 * shape[0] * shape[1]
    header = f'{{"{A_KEY}":{entry([2, 4], 0, 32)},"{B_KEY}":{entry([4, 2], 32, 64)},"big":{entry(shape, 64, 64 + n)}}}'
    folder = write_text_header(tmp_path / "a", header, GOOD)
    with open(folder / WEIGHTS, "r+b") as f:
        f.truncate(os.path.getsize(folder / WEIGHTS) + n)  # sparse: no disk used
    expect_error(load(folder), "AdapterFormatError", rf"tensor 'big'.*{n} bytes, above the limit of {1 << 34}")


def test_rank_2_pow_20_of_empty_factors_is_refused_not_allocated(tmp_path: Path) -> None:
    r = 1 << 20
    header = {
        A_KEY: {"dtype": "F32", "shape": [r, 0], "data_offsets": [0, 0]},
        B_KEY: {"dtype": "F32", "shape": [0, r], "data_offsets": [0, 0]},
    }
    folder = write_raw(tmp_path / "a", header, b"", {**CONFIG, "r": r, "lora_alpha": r})
    code = load(folder).replace("rw.AdapterPool.load", "p = rw.AdapterPool.load") + "rw.merge(p, 'linear')\n"
    expect_error(code, "AdapterFormatError", rf"{WEIGHTS}: module .*(zero dimension|{r}.*limit)")


@pytest.mark.parametrize("method", ["linear", "cat", "svd", "lego"])
@pytest.mark.parametrize("empty", ["in_features", "out_features"])
def test_empty_module_is_refused_naming_it(tmp_path: Path, method: str, empty: str) -> None:
    a, b = ([2, 0], [4, 2]) if empty == "in_features" else ([2, 4], [0, 2])
    na, nb = 4 * a[0] * a[1], 4 * b[0] * b[1]
    header = {
        A_KEY: {"dtype": "F32", "shape": a, "data_offsets": [0, na]},
        B_KEY: {"dtype": "F32", "shape": b, "data_offsets": [na, na + nb]},
    }
    folder = write_raw(tmp_path / "a", header, np.ones((na + nb) // 4, np.float32).tobytes())
    code = f"import rankwise as rw\np = rw.AdapterPool.load([{str(folder)!r}] * 2)\nrw.merge(p, {method!r})\n"
    expect_error(code, "AdapterFormatError", rf"{WEIGHTS}: module '.*q_proj': lora_A .*zero dimension")


def _values_file(tmp_path: Path, a: np.ndarray, b: np.ndarray, dtype: str = "F32") -> Path:
    np_dtype = {"F32": np.float32, "F16": np.float16, "F64": np.float64}[dtype]
    ab = a.astype(np_dtype).tobytes()
    bb = b.astype(np_dtype).tobytes()
    header = {
        A_KEY: {"dtype": dtype, "shape": list(a.shape), "data_offsets": [0, len(ab)]},
        B_KEY: {"dtype": dtype, "shape": list(b.shape), "data_offsets": [len(ab), len(ab) + len(bb)]},
    }
    return write_raw(tmp_path / "a", header, ab + bb)


@pytest.mark.parametrize(
    ("dtype", "value", "word"),
    [("F32", np.nan, "NaN"), ("F32", -np.inf, "-inf"), ("F16", np.inf, "inf"), ("F64", np.nan, "NaN")],
)
def test_nonfinite_value_named_with_key_and_index(tmp_path: Path, dtype: str, value: float, word: str) -> None:
    a = np.ones((2, 4))
    a.flat[5] = value
    folder = _values_file(tmp_path, a, np.ones((4, 2)), dtype)
    expect_error(
        load(folder), "AdapterFormatError", rf"{WEIGHTS}: tensor '{A_KEY}': contains {word} \(first at flat index 5\)"
    )


def test_f64_value_beyond_float32_range(tmp_path: Path) -> None:
    b = np.ones((4, 2))
    b.flat[3] = 1e300
    folder = _values_file(tmp_path, np.ones((2, 4)), b, "F64")
    expect_error(
        load(folder), "AdapterFormatError", rf"tensor '{B_KEY}': value 1e300 at flat index 3 is outside float32's range"
    )


@pytest.mark.parametrize("method", ["linear", "cat", "lego", "svd"])
def test_subnormal_factors_are_finite(tmp_path: Path, method: str) -> None:
    """Subnormals are finite: loaded and merged, with finite output (LEGO divides by their tiny
    norms, which exceeded float32 before)."""
    a = np.full((2, 4), 1e-42, np.float32)
    a[1] = 1.0
    folder = _values_file(tmp_path, a, np.full((4, 2), 1e-40, np.float32))
    shutil.copytree(folder, tmp_path / "b")
    code = (
        "import numpy as np, rankwise as rw\n"
        f"m = rw.merge([{str(folder)!r}, {str(tmp_path / 'b')!r}], {method!r})\n"
        "for name in m.modules:\n"
        "    A, B = m.factors(name)\n"
        "    assert np.isfinite(A).all() and np.isfinite(B).all(), (A, B)\n"
    )
    expect_ok(code)


@pytest.mark.parametrize(("method", "dtype"), [("lego", "float32"), ("svd", "float16")])
def test_fold_overflow_names_file_module_and_stage(tmp_path: Path, method: str, dtype: str) -> None:
    """The folds the core computes in float32 (the unit matrix; svd's stacked factors for a
    half-precision output): finite B entries times a huge weight overflow and are refused, not
    merged as inf. (svd's float64 path folds without overflow; the output cast is checked on
    write, in Python.)"""
    folder = _values_file(tmp_path, np.ones((2, 16)), np.full((16, 2), 1e10))
    shutil.copytree(folder, tmp_path / "b")
    code = (
        "import rankwise as rw\n"
        f"rw.merge([{str(folder)!r}, {str(tmp_path / 'b')!r}], {method!r}, weights=[1e30, 1.0], dtype={dtype!r})\n"
    )
    expect_error(code, "RankwiseError", rf"{WEIGHTS}: tensor '{B_KEY}': fold: .*overflows float32")


def _pool(tmp_path: Path, n: int = 3) -> list[Path]:
    from raw_adapter import write_pool

    return write_pool(tmp_path / "pool", n, modules=2, d=16, rank=2)


CHANGE = {
    "truncated": "os.truncate(w, os.path.getsize(w) // 2)",
    "truncated to 0": "os.truncate(w, 0)",
    "rewritten shorter": "data = open(w, 'rb').read()\nopen(w, 'wb').write(data[: len(data) - 64])",
    "rewritten in place, same size": (
        "time.sleep(0.05)\ndata = bytearray(open(w, 'rb').read())\ndata[-8:] = bytes(8)\n"
        "open(w, 'wb').write(bytes(data))"
    ),
}
USE = {
    "merge linear": "rw.merge(p, 'linear')",
    "merge svd": "rw.merge(p, 'svd')",
    "merge lego": "rw.merge(p, 'lego')",
    "factors (inspect, prune)": "[p[1].factors(m) for m in p.modules]",
}


@pytest.mark.parametrize("change", list(CHANGE))
@pytest.mark.parametrize("use", list(USE))
def test_file_changed_after_load_is_an_error_not_sigbus(tmp_path: Path, change: str, use: str) -> None:
    folders = _pool(tmp_path)
    w = folders[1] / WEIGHTS
    code = (
        "import os, time, rankwise as rw\n"
        f"p = rw.AdapterPool.load({[str(f) for f in folders]!r})\n"
        f"w = {str(w)!r}\n{CHANGE[change]}\n{USE[use]}\n"
    )
    expect_error(code, "AdapterFormatError", rf"{w}: invalid safetensors file: the file changed after it was opened")


def test_file_replaced_by_rename_after_load_reads_the_old_file_consistently(tmp_path: Path) -> None:
    folders = _pool(tmp_path)
    other = _pool(tmp_path / "other", 2)[1] / WEIGHTS  # a different valid file of the same shape
    w = folders[1] / WEIGHTS
    code = (
        "import os, numpy as np, rankwise as rw\n"
        f"paths = {[str(f) for f in folders]!r}\n"
        "want = rw.merge(rw.AdapterPool.load(paths), 'linear')\n"
        "p = rw.AdapterPool.load(paths)\n"
        f"os.replace({str(other)!r}, {str(w)!r})\n"
        "got = rw.merge(p, 'linear')\n"
        "for m in want.modules:\n"
        "    assert np.array_equal(want.delta(m), got.delta(m)), m\n"
    )
    expect_ok(code)


def test_truncation_between_load_and_merge_leaves_other_inputs_intact(tmp_path: Path) -> None:
    folders = _pool(tmp_path)
    keep = {f.name: tree_digest(f) for f in folders if f != folders[1]}
    w = folders[1] / WEIGHTS
    code = (
        "import os, rankwise as rw\n"
        f"p = rw.AdapterPool.load({[str(f) for f in folders]!r})\n"
        f"os.truncate({str(w)!r}, 100)\n"
        f"rw.merge(p, 'linear').save({str(tmp_path / 'out')!r})\n"
    )
    expect_error(code, "AdapterFormatError", "changed after it was opened")
    assert {f.name: tree_digest(f) for f in folders if f != folders[1]} == keep
    assert not (tmp_path / "out").exists()
