"""The merge loop (merging.py): option checks common to every method, the output dtype, prune,
and a long merge stopped by Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from peft_factory import make_adapter
from raw_adapter import write_pool

QV = ["q_proj", "v_proj"]


def test_bad_merge_options(mixed_pool: rw.AdapterPool) -> None:
    with pytest.raises(rw.OptionError, match="got 2 weights for 3 adapters"):
        rw.merge(mixed_pool, "lego", weights=[1, 2])
    with pytest.raises(rw.OptionError, match="weights must be finite"):
        rw.merge(mixed_pool, "lego", weights=[1, float("nan"), 1])
    with pytest.raises(rw.OptionError, match="unknown merge method 'legoo'"):
        rw.merge(mixed_pool, "legoo")
    with pytest.raises(rw.OptionError, match="has no option.* densty"):
        rw.merge(mixed_pool, "lego", densty=0.5)


def test_output_dtype_follows_inputs_or_request(tmp_path: Path) -> None:
    dirs = [make_adapter(tmp_path / f"h{i}", seed=i, r=2, target_modules=["q_proj"], dtype="BF16") for i in range(2)]
    pool = rw.AdapterPool.load(dirs)
    assert rw.merge(pool, "lego", rank=2).dtype == "BF16"
    assert rw.merge(pool, "lego", rank=2, dtype="float16").dtype == "F16"
    with pytest.raises(rw.OptionError, match="unknown dtype 'int8'"):
        rw.merge(pool, "lego", rank=2, dtype="int8")


def test_prune_one_adapter(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "a", r=6, target_modules=QV)
    pruned = rw.prune(rw.load_adapter(folder), rank=2, assembly="legacy", reweight=False)
    assert {m.rank for m in pruned.modules.values()} == {2}
    full = rw.prune(folder, rank=6)  # k = r: the adapter itself (projection onto its own spans)
    src = rw.load_adapter(folder)
    for name in src.modules:
        np.testing.assert_allclose(full.delta(name), src.delta(name), rtol=1e-4, atol=1e-5)


def test_ctrl_c_stops_a_long_merge_promptly(tmp_path: Path) -> None:
    paths = write_pool(tmp_path / "pool", 16, modules=40, d=256, rank=8)
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
