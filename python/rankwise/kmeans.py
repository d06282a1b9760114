"""The core's k-means (``rust/core/src/kmeans``): ``kmeans`` and its ``KMeansResult``."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _core
from .errors import OptionError


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
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise OptionError(f"x must be 2-D (n × d), got shape {x.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise OptionError(f"k must be an int, got {k!r}")
    if init is not None:
        init = np.ascontiguousarray(init, dtype=np.float32)
    c, labels, inertia, n_iter, signs = _core.kmeans(
        x, int(k), n_init, max_iter, float(tol), int(seed), init, bool(sign_invariant)
    )
    return KMeansResult(c, labels, float(inertia), int(n_iter), signs)


class GramKMeansResult(NamedTuple):
    labels: np.ndarray  # (n,) int64
    inertia: float
    n_iter: int
    signs: np.ndarray  # (n,) float32 ±1


def kmeans_gram(
    g: np.ndarray,
    k: int,
    *,
    d: int,
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    sign_invariant: bool = False,
) -> GramKMeansResult:
    """:func:`kmeans` of n points of width ``d`` given only their Gram matrix ``g`` (n × n,
    symmetric): the same k-means++ seeding (exact distances, all points) and Lloyd loop, the
    centres kept as combinations of points, so each iteration costs n² instead of n·k·d
    (rust/core/src/kmeans/gram.rs). Equal to ``kmeans`` without its seeding projection up to
    float rounding; no centroids (form them from the labels)."""
    g = np.ascontiguousarray(g, dtype=np.float32)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise OptionError(f"g must be a square n × n matrix, got shape {g.shape}")
    labels, inertia, n_iter, signs = _core.kmeans_gram(
        g, int(d), int(k), n_init, max_iter, float(tol), int(seed), bool(sign_invariant)
    )
    return GramKMeansResult(labels, float(inertia), int(n_iter), signs)


def sign_invariant_kmeans(
    x: np.ndarray,
    k: int,
    *,
    n_init: int = 3,
    max_iter: int = 100,
    tol: float = 0.0,
    seed: int = 0,
    init: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k-means where a point joins a cluster with either sign: distance ‖x‖² + ‖c‖² − 2|x·c|,
    each centroid the mean of its members flipped to its orientation. k-means++ seeding with
    the same distance (on a subsample of at most 256·k points), ``n_init`` restarts (one when
    ``init`` is given), the lowest inertia kept; Lloyd runs until labels and signs stop changing,
    the centre shift is within ``tol`` (relative, as scikit-learn's), or ``max_iter``. Runs in
    Rust (:func:`kmeans` with ``sign_invariant=True``). Returns (labels, signs ±1)."""
    r = kmeans(x, k, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed, init=init, sign_invariant=True)
    assert r.signs is not None
    return r.labels, r.signs
