"""Threads: the count of rankwise's Rust core (one rayon pool for every core call), and numpy's
BLAS held to one thread while a merge runs numpy between core calls."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import _core
from .errors import OptionError


def set_num_threads(n: int) -> None:
    """Threads used by rankwise's Rust core (0: ``RANKWISE_NUM_THREADS`` or all cores)."""
    if not isinstance(n, int) or n < 0:
        raise OptionError(f"number of threads must be a non-negative int, got {n!r}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    return int(_core.get_num_threads())


# threadpoolctl's ThreadpoolController (it scans the loaded libraries, ~1 ms) and len(sys.modules)
# when it was made: an import since then may have loaded another BLAS, so it is made again.
_controller: list[Any] = []


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """numpy's BLAS on one thread for the block, when threadpoolctl is importable (a dependency;
    tolerated missing); else nothing. OpenBLAS's idle workers busy-wait for a while after each call: after the
    small BLAS calls of LEGO's assembly they took the cores from the next module's k-means in
    rankwise's pool (benches/RESULTS.md, bench_merge). Without threadpoolctl, set
    ``OPENBLAS_NUM_THREADS=1`` for the same effect."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        yield
        return
    if not _controller or _controller[1] != len(sys.modules):
        _controller[:] = [ThreadpoolController(), len(sys.modules)]
    with _controller[0].limit(limits=1, user_api="blas"):
        yield
