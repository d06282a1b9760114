"""Atomic output folders (_atomic.py): a refused, failed or killed write leaves the target as it
was and no debris."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import rankwise as rw
from raw_adapter import good_header, write_pool, write_raw


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
    old = write_pool(tmp_path / "old", 1, modules=1, d=8, rank=2)[0]
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
    small = rw.load_adapter(write_pool(tmp_path / "new", 1, modules=2, d=8, rank=2)[0])
    small.save(target, overwrite=True)
    assert len(rw.load_adapter(target).modules) == 2
    assert not any(".rankwise-tmp-" in p.name for p in tmp_path.iterdir())
