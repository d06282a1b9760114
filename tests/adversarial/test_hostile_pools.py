"""Hostile folders and files given to a pool: names that look like globs, names that are not
UTF-8 or not local, files holding one module twice, inputs changed after the load."""

from __future__ import annotations

from pathlib import Path

import pytest
from cases import case
from harness import expect_error, expect_ok


@pytest.mark.parametrize("name", ["a[0]", "a*", "a?", "[ab]"])
def test_existing_path_taken_literally(name: str, tmp_path: Path) -> None:
    # Siblings the glob would match: only the named folder may load.
    code = case(f"""
for n in ['a0', 'ab', 'a', 'b', {name!r}]:
    adapter(n)
pool = rw.AdapterPool.load(str(tmp / {name!r}))
assert [a.path.name for a in pool] == [{name!r}], [a.path for a in pool]
""")
    expect_ok(code, cwd=tmp_path)


def test_glob_still_expands_when_nothing_has_that_name(tmp_path: Path) -> None:
    code = case("""
for n in ['a0', 'a1']:
    adapter(n)
assert [a.path.name for a in rw.AdapterPool.load(str(tmp / 'a*'))] == ['a0', 'a1']
""")
    expect_ok(code, cwd=tmp_path)


def test_glob_matching_nothing(tmp_path: Path) -> None:
    expect_error(
        case("rw.AdapterPool.load(str(tmp / 'zz*'))"),
        "RankwiseError",
        r"zz\*: the pattern matches no adapter",
        cwd=tmp_path,
    )


def test_folder_name_not_utf8(tmp_path: Path) -> None:
    code = case("""
raw = os.fsencode(tmp) + b'/bad\\xff'
os.mkdir(raw)
h, d = good_header()
write_raw(Path(os.fsdecode(raw)), h, d)
rw.AdapterPool.load([Path(os.fsdecode(raw))])
""")
    expect_error(
        code, "AdapterFormatError", r"bad\\xff/adapter_model\.safetensors'?: the path is not valid UTF-8", cwd=tmp_path
    )


@pytest.mark.parametrize("name", ["meta-llama/Llama-2-7b", "user/repo"])
def test_hub_id_is_not_a_path(name: str, tmp_path: Path) -> None:
    expect_error(
        case(f"rw.AdapterPool.load([{name!r}])"), "AdapterNotFoundError", r"reads local files only", cwd=tmp_path
    )


@pytest.mark.parametrize("factor", ["A", "B"])
def test_module_prefixed_and_bare(factor: str, tmp_path: Path) -> None:
    # PEFT loads the prefixed key; rankwise must not pick either silently.
    code = case(f"""
h, d = good_header()
key = {factor}_KEY
n = len(d)  # the bare copy gets its own bytes (the header check refuses overlaps)
lo, hi = h[key]['data_offsets']
h[key.removeprefix('base_model.model.')] = dict(h[key], data_offsets=[n, n + hi - lo])
write_raw(tmp / 'a', h, d + d[lo:hi])
rw.Adapter.load(tmp / 'a')
""")
    bare = "model.layers.0.self_attn.q_proj.lora_" + factor
    expect_error(
        code,
        "AdapterFormatError",
        rf"tensors '(base_model\.model\.)?{bare}\.weight' and '.*{bare}\.weight' are the same factor.*ambiguous",
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("dims", "match"),
    [
        ([[2, 0], [4, 2]], r"lora_A \[2, 0\]"),
        ([[2, 4], [0, 2]], r"lora_B \[0, 2\]"),
        ([[0, 4], [4, 0]], r"lora_A \[0, 4\]"),
    ],
    ids=["in0", "out0", "rank0"],
)
def test_zero_size_module(dims: list, match: str, tmp_path: Path) -> None:
    code = case(f"""
(sa, sb) = {dims!r}
na, nb = 4 * sa[0] * sa[1], 4 * sb[0] * sb[1]
h = {{A_KEY: {{'dtype': 'F32', 'shape': sa, 'data_offsets': [0, na]}},
      B_KEY: {{'dtype': 'F32', 'shape': sb, 'data_offsets': [na, na + nb]}}}}
write_raw(tmp / 'a', h, b'\\0' * (na + nb), {{**CONFIG, 'r': max(sa[0], 1)}})
rw.merge([tmp / 'a'], 'svd')
""")
    expect_error(
        code, "AdapterFormatError", rf"a/adapter_model\.safetensors: module .*{match}.*zero dimension", cwd=tmp_path
    )


@pytest.mark.parametrize("method", ["linear", "cat", "lego", "svd", "aligned"])
def test_nan_written_after_load(method: str, tmp_path: Path) -> None:
    # The load checked the values; then the file changes under the mapping.
    code = case(f"""
paths = write_pool(tmp, 2, modules=2, d=4, rank=2)
pool = rw.AdapterPool.load(paths)
with open(paths[1] / 'adapter_model.safetensors', 'r+b') as f:
    f.seek(-2, 2)
    f.write(np.array([np.nan], np.float16).tobytes())
rw.merge(pool, {method!r})
""")
    expect_error(
        code,
        "RankwiseError",
        # The core's own check (names the tensor) or the merge loop's (names the stage).
        r"(the read stage .* from .*a01 \(its factors hold NaN"
        r"|a01/adapter_model\.safetensors: tensor '.*': contains NaN"
        # or the reader's re-check of the mapped file (size and mtime), before any value is read.
        r"|a01/adapter_model\.safetensors: invalid safetensors file: the file changed after it was opened)",
        cwd=tmp_path,
    )


def test_file_instead_of_folder(tmp_path: Path) -> None:
    code = case("(tmp / 'f').write_text('x')\nrw.AdapterPool.load([tmp / 'f'])")
    expect_error(code, "AdapterFormatError", r"/f: is not a folder", cwd=tmp_path)


def test_symlink_loop(tmp_path: Path) -> None:
    code = case("os.symlink(tmp / 'loop', tmp / 'loop')\nrw.AdapterPool.load([tmp / 'loop'])")
    expect_error(code, "AdapterNotFoundError", r"loop: adapter folder does not exist", cwd=tmp_path)


def test_empty_list(tmp_path: Path) -> None:
    expect_error(case("rw.AdapterPool.load([])"), "OptionError", r"no adapter folders given", cwd=tmp_path)
