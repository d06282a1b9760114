"""Failure modes users meet on real hosts: panics, kills mid-write, Ctrl-C, thread counts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from rankwise import _core
from rankwise.adapter import Adapter


def test_a_rust_panic_becomes_internal_error() -> None:
    with pytest.raises(rw.InternalError, match="internal error in _panic_in_worker: deliberate test panic"):
        _core._panic_in_worker()
    with pytest.raises(RuntimeError):  # the builtin it also subclasses
        _core._panic_in_worker()
    assert rw.get_num_threads() >= 1  # the pool survives


def _write_pool(folder: Path, n: int, *, modules: int, d: int, rank: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    names = [f"model.layers.{i}.self_attn.q_proj" for i in range(modules)]
    out = []
    for j in range(n):
        factors = {
            m: (rng.standard_normal((rank, d), dtype=np.float32), rng.standard_normal((d, rank), dtype=np.float32))
            for m in names
        }
        out.append(
            Adapter.from_factors(factors, base_config={"target_modules": ["q_proj"]}, dtype="F16").save(
                folder / f"a{j:02d}"
            )
        )
    return out


def test_sigkill_mid_write_leaves_target_untouched_and_rerun_succeeds(tmp_path: Path) -> None:
    """A writer killed while its temp folder exists: the target is absent (or the old one),
    and the next write to the same target succeeds and leaves no debris."""
    script = textwrap.dedent(
        """
        import sys, numpy as np
        from rankwise.adapter import Adapter
        rng = np.random.default_rng(0)
        big = {f"model.layers.{i}.mlp.up_proj": (rng.standard_normal((64, 8192), dtype=np.float32),
                                                 rng.standard_normal((8192, 64), dtype=np.float32)) for i in range(24)}
        a = Adapter.from_factors(big, base_config={"target_modules": ["up_proj"]})
        print("ready", flush=True)
        for _ in range(100):
            a.save(sys.argv[1], overwrite=True)
        """
    )
    target = tmp_path / "out"
    old = _write_pool(tmp_path / "old", 1, modules=1, d=8, rank=2)[0]
    os.rename(old, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    deadline = time.time() + 60
    while time.time() < deadline and not any(".rankwise-tmp-" in p.name for p in tmp_path.iterdir()):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(".rankwise-tmp-" in p.name for p in tmp_path.iterdir()), "killed outside the write window"
    # Either the old adapter (killed before the swap) or a complete new one (after it).
    files = {p.name for p in target.iterdir()}
    assert files == {"adapter_config.json", "adapter_model.safetensors"}
    if {p.name: p.read_bytes() for p in target.iterdir()} != before:
        assert len(rw.load_adapter(target).modules) == 24
    # The rerun is not tripped by the debris and removes it.
    small = rw.load_adapter(_write_pool(tmp_path / "new", 1, modules=2, d=8, rank=2)[0])
    small.save(target, overwrite=True)
    assert len(rw.load_adapter(target).modules) == 2
    assert not any(".rankwise-tmp-" in p.name for p in tmp_path.iterdir())


def test_same_command_at_one_and_two_threads_gives_identical_folders(tmp_path: Path) -> None:
    paths = _write_pool(tmp_path / "pool", 6, modules=3, d=48, rank=4)
    outs = []
    for threads in (1, 2, 2):
        out = tmp_path / f"m{len(outs)}"
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "rankwise",
                "--threads",
                str(threads),
                "merge",
                *map(str, paths),
                "-o",
                str(out),
                "--rank",
                "6",
                "--seed",
                "3",
                "-q",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr
        outs.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert outs[0] == outs[1] == outs[2]


def test_ctrl_c_stops_a_long_merge_promptly(tmp_path: Path) -> None:
    paths = _write_pool(tmp_path / "pool", 16, modules=40, d=256, rank=8)
    code = textwrap.dedent(
        """
        import sys, rankwise as rw
        pool = rw.AdapterPool.load(sys.argv[1:])
        def tick(i, n, m):
            if i == 1:
                print("started", flush=True)
        rw.merge(pool, "lego", rank=64, n_init=20, max_iter=300, tol=0.0, progress=tick)
        print("finished", flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, paths)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 5, "did not stop promptly"
    assert "KeyboardInterrupt" in err
    assert proc.returncode != 0
