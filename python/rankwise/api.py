"""Small top-level functions: loading one adapter, threads, and the k-means of the core."""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from . import _core
from .adapter import Adapter


def load_adapter(path: str | os.PathLike[str], *, check_finite: bool = True) -> Adapter:
    """Loads a PEFT LoRA adapter folder. Factors stay in the mapped file until asked for."""
    return Adapter.load(path, check_finite=check_finite)


def set_num_threads(n: int) -> None:
    """Threads used by rankwise's Rust core (0: ``RANKWISE_NUM_THREADS`` or all cores)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"number of threads must be a non-negative int, got {n!r}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    return int(_core.get_num_threads())


class KMeansResult(NamedTuple):
    centroids: np.ndarray  # (k, d) float32
    labels: np.ndarray  # (n,) int64
    inertia: float  # Σ squared distance to the assigned centroid
    n_iter: int  # Lloyd iterations run (of the best restart)
    signs: np.ndarray | None = None  # (n,) float32 ±1: orientation of each point (all 1 unless sign_invariant)


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    init: np.ndarray | None = None,
    sign_invariant: bool = False,
) -> KMeansResult:
    """k-means (k-means++ seeding, Lloyd iterations) of the rows of ``x`` in Rust, GIL released.

    Semantics follow scikit-learn's ``KMeans(algorithm="lloyd")``: ``tol`` is relative to the
    mean per-feature variance, iterations stop early when assignments stop changing, and an
    explicit ``init`` (k × d) forces a single run. Same seed, same bytes, at any thread count.

    ``sign_invariant=True`` clusters modulo sign: distance ‖x‖² + ‖c‖² − 2|x·c|, a point joins
    its cluster as ``signs[i]·x[i]`` (``signs[i] = -1`` when x·c < 0), centroids are the means of
    the oriented members; seeding, relocation of empty clusters and inertia use the same distance.
    """
    from .errors import MergeConfigError

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise MergeConfigError(f"x must be 2-D (n × d), got shape {x.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise MergeConfigError(f"k must be an int, got {k!r}")
    if init is not None:
        init = np.ascontiguousarray(init, dtype=np.float32)
    c, labels, inertia, n_iter, signs = _core.kmeans(
        x, int(k), n_init, max_iter, float(tol), int(seed), init, bool(sign_invariant)
    )
    return KMeansResult(c, labels, float(inertia), int(n_iter), signs)
