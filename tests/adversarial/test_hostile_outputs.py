"""Hostile outputs: an output that is, holds or lies in an input (directly or by a symlink),
values that do not survive the cast to the output dtype, a full disk, two writers at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from cases import case
from harness import expect_error, expect_ok, tree_digest

POOL = "paths = write_pool(tmp / 'runs', 2, modules=2, d=4, rank=2)\n"

# (where the output goes, relative to the case folder, and the relation the message names)
OVERLAPS = [
    ("runs", "contains"),
    ("runs/a00", "is"),
    ("runs/a01/merged", "is inside"),
    ("link", "contains"),  # a symlink to runs
    ("runs/../runs/a00", "is"),
]


@pytest.mark.parametrize(("out", "rel"), OVERLAPS, ids=[o for o, _ in OVERLAPS])
@pytest.mark.parametrize("method", ["lego", "linear"])
def test_merge_output_overlapping_an_input(out: str, rel: str, method: str, tmp_path: Path) -> None:
    # `rankwise merge runs/a* -o runs --overwrite` used to delete the inputs.
    setup = case(POOL + "os.symlink(tmp / 'runs', tmp / 'link')\n(tmp / 'runs' / 'notes.txt').write_text('keep')")
    expect_ok(setup, cwd=tmp_path)
    before = tree_digest(tmp_path / "runs")
    code = case(f"m = rw.merge(str(tmp / 'runs' / 'a*'), {method!r})\nm.save(tmp / {out!r}, overwrite=True)")
    expect_error(
        code,
        "OutputExistsError",
        rf"{out}: the output folder {rel} the input .*a0[01]; writing it would destroy",
        cwd=tmp_path,
    )
    assert tree_digest(tmp_path / "runs") == before
    assert not [p for p in (tmp_path / "runs").iterdir() if "rankwise-tmp" in p.name]


def test_loaded_adapter_saved_over_itself(tmp_path: Path) -> None:
    code = case(POOL + "rw.Adapter.load(paths[0]).save(paths[0], overwrite=True, dtype='float32')")
    expect_error(code, "OutputExistsError", r"a00: the output folder is the input .*a00", cwd=tmp_path)


def test_prune_output_is_its_input(tmp_path: Path) -> None:
    code = case(POOL + "rw.prune(paths[0], 2).save(paths[0], overwrite=True)")
    expect_error(code, "OutputExistsError", r"a00: the output folder is the input", cwd=tmp_path)


CASTS = [
    ("float16", 70000.0, r"value 70000 .* not finite after the cast to float16"),
    ("float16", 65520.0, r"value 65520 .* not finite after the cast to float16"),
    ("bfloat16", 3.4e38, r"value 3.4e\+38 .* not finite after the cast to bfloat16"),
    ("float32", float("nan"), r"value nan .* not finite before any cast"),
    ("float16", float("inf"), r"value inf .* not finite before any cast"),
]


@pytest.mark.parametrize(("dtype", "value", "match"), CASTS, ids=[f"{d}-{v:g}" for d, v, _ in CASTS])
def test_value_not_finite_after_the_cast(dtype: str, value: float, match: str, tmp_path: Path) -> None:
    code = case(f"""
b = np.ones((4, 2), np.float32); b[1, 1] = {value!r}
rw.Adapter.from_factors({{'m.q': (np.ones((2, 4), np.float32), b)}}).save(tmp / 'out', dtype={dtype!r})
""")
    expect_error(code, "NonFiniteError", rf"out: module 'm\.q': tensor '.*lora_B\.weight': {match}", cwd=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no target, no temp folder


def test_largest_float16_is_written(tmp_path: Path) -> None:
    # The bound is the cast's, not a guess: 65504 (and what rounds to it) stays finite.
    code = case("""
b = np.full((4, 2), 65519.0, np.float32)
rw.Adapter.from_factors({'m.q': (np.ones((2, 4), np.float32), b)}).save(tmp / 'out', dtype='float16')
assert np.all(rw.Adapter.load(tmp / 'out').factors('m.q')[1] == 65504.0)
""")
    expect_ok(code, cwd=tmp_path)


def test_bfloat16_bound_is_torchs_cast(tmp_path: Path) -> None:
    # torch's cast (round to nearest even) is the oracle: the largest float32 it keeps finite
    # is written, the next one is refused.
    code = case("""
import torch
top = np.float32(3.3e38)
while np.isfinite(torch.tensor([float(np.nextafter(top, np.float32(np.inf)))]).bfloat16().float().item()):
    top = np.nextafter(top, np.float32(np.inf))
one = lambda v: rw.Adapter.from_factors({'m.q': (np.ones((2, 4), np.float32), np.full((4, 2), v, np.float32))})
one(top).save(tmp / 'ok', dtype='bfloat16')
assert np.isfinite(rw.Adapter.load(tmp / 'ok').factors('m.q')[1]).all()
one(np.nextafter(top, np.float32(np.inf))).save(tmp / 'out', dtype='bfloat16')
""")
    expect_error(code, "NonFiniteError", r"out: .* not finite after the cast to bfloat16", cwd=tmp_path)
    assert not (tmp_path / "out").exists()


def test_merge_cast_to_float16_names_the_merge(tmp_path: Path) -> None:
    code = case("""
a = rw.Adapter.from_factors({'m.q': (np.ones((1, 4), np.float32), np.full((4, 1), 6e4, np.float32))})
a.save(tmp / 'a0'); a.save(tmp / 'a1')
rw.merge([tmp / 'a0', tmp / 'a1'], 'linear', weights=[2, 2], dtype='float16').save(tmp / 'out')
""")
    expect_error(
        code,
        "NonFiniteError",
        r"out: module 'm\.q'.*\(merged by linear from 2 adapters\).*cast to float16",
        cwd=tmp_path,
    )
    assert not (tmp_path / "out").exists()


def test_disk_full(tmp_path: Path) -> None:
    # A file size limit makes the write fail as a full disk would (EFBIG instead of ENOSPC).
    code = case("""
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
big = rw.Adapter.from_factors({'m.q': (np.ones((64, 1024), np.float32), np.ones((1024, 64), np.float32))})
resource.setrlimit(resource.RLIMIT_FSIZE, (100000, resource.RLIM_INFINITY))
try:
    big.save(tmp / 'out')
except OSError as e:
    assert isinstance(e, rw.RankwiseError)
    raise
""")
    expect_error(code, "OutputWriteError", r"out: writing the output failed: .*nothing was written", cwd=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_live_writer_temp_kept_dead_writer_temp_cleared(tmp_path: Path) -> None:
    # Two writers to one target: neither may delete the other's in-flight temp folder; a dead
    # writer's debris goes.
    code = case("""
import subprocess
live = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
dead = subprocess.Popen([sys.executable, '-c', 'pass']); dead.wait()
try:
    (tmp / f'.out.rankwise-tmp-{live.pid}-inflight').mkdir()
    (tmp / f'.out.rankwise-tmp-{dead.pid}-stale').mkdir()
    rw.Adapter.from_factors({'m.q': (np.ones((2, 4), np.float32), np.ones((4, 2), np.float32))}).save(tmp / 'out')
    left = sorted(p.name for p in tmp.iterdir())
    assert left == [f'.out.rankwise-tmp-{live.pid}-inflight', 'out'], left
finally:
    live.kill(); live.wait()
""")
    expect_ok(code, cwd=tmp_path)


@pytest.mark.parametrize(
    ("prep", "exc", "match"),
    [
        ("(tmp / 'out').write_text('x')", "OutputExistsError", r"out: exists and is not a folder"),
        (
            "(tmp / 'out').mkdir(); (tmp / 'out' / 'f').write_text('x')",
            "OutputExistsError",
            r"out: folder is not empty",
        ),
        ("(tmp / 'plain').write_text('x')", "RankwiseError", r"cannot create the output folder: .*plain is a file"),
    ],
    ids=["file", "not-empty", "parent-is-file"],
)
def test_output_refused(prep: str, exc: str, match: str, tmp_path: Path) -> None:
    target = "'plain' / 'out'" if "plain" in prep else "'out'"
    code = case(
        f"{prep}\nf = np.ones((2, 4), np.float32)\none = rw.Adapter.from_factors({{'m.q': (f, f.T.copy())}})\n"
        f"one.save(tmp / {target})"
    )
    expect_error(code, exc, match, cwd=tmp_path)
