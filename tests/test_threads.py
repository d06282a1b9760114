"""threads.py: numpy's BLAS held to one thread during LEGO's assembly (single_threaded_blas)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from rankwise.methods import lego as lego_module
from rankwise.threads import single_threaded_blas
from raw_adapter import write_pool

threadpoolctl = pytest.importorskip("threadpoolctl")


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def test_limits_blas_to_one_thread_and_restores_it() -> None:
    np.ones((4, 4)) @ np.ones((4, 4))  # numpy's BLAS loaded
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        assert before and all(n == 2 for n in before)
        with single_threaded_blas():
            assert _blas_threads() == [1] * len(before)
        assert _blas_threads() == before


def test_without_threadpoolctl_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        with single_threaded_blas():
            assert all(n == 2 for n in _blas_threads())


def test_lego_assembles_on_one_blas_thread_with_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = rw.AdapterPool.load(write_pool(tmp_path, 4, modules=2, d=32, rank=4))
    ref = rw.merge(pool, method="lego", rank=4, seed=0)
    seen: list[list[int]] = []
    project = lego_module.project

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(_blas_threads())
        return project(*args, **kwargs)

    monkeypatch.setattr(lego_module, "project", spy)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        got = rw.merge(pool, method="lego", rank=4, seed=0)
        assert all(n == 2 for n in _blas_threads())
    assert len(seen) == 2 and all(s and all(n == 1 for n in s) for s in seen)
    for name in ref.modules:
        for r, g in zip(ref.factors(name), got.factors(name)):
            np.testing.assert_array_equal(r, g)


def test_a_blas_loaded_after_the_first_use_is_limited_too() -> None:
    """A fresh process: numpy's BLAS is seen on the first use, scipy's own OpenBLAS is loaded by an
    import after it, and the next use limits both (a stale scan of the libraries missed it)."""
    pytest.importorskip("scipy")
    code = """
import numpy as np, threadpoolctl
from rankwise.threads import single_threaded_blas
def blas():
    return sorted((i["filepath"], i["num_threads"]) for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")
np.ones((4, 4)) @ np.ones((4, 4))
with single_threaded_blas():
    pass
import scipy.linalg
with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
    before = blas()
    with single_threaded_blas():
        inside = blas()
print(len(before), all(n == 2 for _, n in before), all(n == 1 for _, n in inside), len(inside))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    n, two, one, m = out.stdout.split()
    assert (two, one) == ("True", "True") and n == m
