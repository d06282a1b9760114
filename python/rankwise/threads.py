"""The thread count of rankwise's Rust core (one rayon pool for every core call)."""

from __future__ import annotations

from . import _core
from .errors import OptionError


def set_num_threads(n: int) -> None:
    """Threads used by rankwise's Rust core (0: ``RANKWISE_NUM_THREADS`` or all cores)."""
    if not isinstance(n, int) or n < 0:
        raise OptionError(f"number of threads must be a non-negative int, got {n!r}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    return int(_core.get_num_threads())
