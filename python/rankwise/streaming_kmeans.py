"""k-means of rows that do not fit in memory: they come in blocks from a ``RowBlocks`` source,
are seeded from a seeded uniform subsample clustered in memory with the core's k-means, then
refined by full-data Lloyd passes that stream the blocks (docs/ALGORITHMS.md §1.5).

Each pass assigns a block in the core (``_core.kmeans_assign``: labels, signs, per-cluster f64
sums and counts, per-point distances) and adds the blocks' sums in block order, so the result
depends on the seed, the data and the block bounds only, never on the thread count. Semantics
follow the in-memory Lloyd loop (``rust/core/src/kmeans``): scikit-learn's relative ``tol``,
empty clusters re-seeded with the farthest points, strict convergence on unchanged labels and
signs, and a last assignment pass when not strictly converged, so labels match the centres.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from . import _core
from .errors import OptionError
from .kmeans import KMeansResult, kmeans

#: The core's k-means++ subsample per centre (rust/core/src/kmeans/seeding.rs): the seeding
#: sample is at least this many rows per centre when the memory budget allows.
SEED_POINTS_PER_CENTRE: int = _core.SEED_POINTS_PER_CENTRE


class RowBlocks(Protocol):
    """``n`` rows of width ``d`` in blocks: ``bounds[b] = (start, stop)`` row ranges in order."""

    n: int
    d: int
    bounds: list[tuple[int, int]]

    def rows(self, b: int) -> np.ndarray:
        """Block b's rows, float32 C-contiguous (stop − start) × d."""
        ...


def streaming_kmeans(
    blocks: RowBlocks,
    k: int,
    *,
    sample_rows: int,
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    sign_invariant: bool = False,
    init: np.ndarray | None = None,
) -> KMeansResult:
    """k-means of the rows of ``blocks`` holding one block, a sample of ``sample_rows`` rows (at
    least k) and O(n) per-point state at a time. Same options as :func:`rankwise.kmeans.kmeans`;
    ``init`` (k × d): the Lloyd passes start there (no sample is drawn or clustered)."""
    n, d = blocks.n, blocks.d
    if not 1 <= k <= n:
        raise OptionError(f"k must be in [1, n = {n}], got {k}")
    m = 0 if init is not None else min(n, max(int(sample_rows), k))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A3B1E]))
    take = np.sort(rng.choice(n, size=m, replace=False))
    sample = np.empty((m, d), dtype=np.float32)
    col_sum = np.zeros(d)
    col_sq = np.zeros(d)
    for b, (lo, hi) in enumerate(blocks.bounds):
        x = blocks.rows(b)
        i0, i1 = np.searchsorted(take, [lo, hi])
        sample[i0:i1] = x[take[i0:i1] - lo]
        col_sum += x.sum(axis=0, dtype=np.float64)
        col_sq += np.einsum("ij,ij->j", x, x, dtype=np.float64)
        del x  # one block alive at a time: the next is built before this name would be rebound
    mean = col_sum / n
    tol_abs = tol * float(np.mean(np.maximum(col_sq / n - mean**2, 0.0)))
    if init is not None:
        centres = np.ascontiguousarray(init, dtype=np.float32)
        if centres.shape != (k, d):
            raise OptionError(f"init has shape {centres.shape}, expected (k, d) = ({k}, {d})")
    else:
        seeded = kmeans(sample, k, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed, sign_invariant=sign_invariant)
        centres = seeded.centroids
    del sample
    labels = np.full(n, -1, dtype=np.int64)
    signs = np.ones(n, dtype=np.float32)
    dist = np.zeros(n)
    strict, n_iter = False, 0
    for it in range(max_iter):
        n_iter = it + 1
        sums, counts, changed = _assign_all(blocks, centres, labels, signs, dist, sign_invariant)
        _relocate_empty(blocks, sums, counts, labels, signs, dist)
        new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], mean[None, :]).astype(np.float32)
        shift = float(np.sum((new.astype(np.float64) - centres) ** 2))
        centres = new
        if changed == 0:
            strict = True
            break
        if shift <= tol_abs:
            break
    if not strict:
        _assign_all(blocks, centres, labels, signs, dist, sign_invariant)
    return KMeansResult(centres, labels, float(dist.sum()), n_iter, signs)


def _assign_all(
    blocks: RowBlocks,
    centres: np.ndarray,
    labels: np.ndarray,
    signs: np.ndarray,
    dist: np.ndarray,
    si: bool,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One streamed assignment pass: updates labels, signs, dist in place; returns the clusters'
    sums (added in block order), counts and the number of points whose label or sign changed."""
    k, d = centres.shape
    sums = np.zeros((k, d))
    counts = np.zeros(k, dtype=np.int64)
    changed = 0
    for b, (lo, hi) in enumerate(blocks.bounds):
        lab, sg, s, c, dd = _core.kmeans_assign(blocks.rows(b), centres, si)
        changed += int(np.count_nonzero((lab != labels[lo:hi]) | (sg != signs[lo:hi])))
        labels[lo:hi], signs[lo:hi], dist[lo:hi] = lab, sg, dd
        sums += s
        counts += c
    return sums, counts, changed


def _relocate_empty(
    blocks: RowBlocks,
    sums: np.ndarray,
    counts: np.ndarray,
    labels: np.ndarray,
    signs: np.ndarray,
    dist: np.ndarray,
) -> None:
    """scikit-learn's relocation: each empty cluster (in increasing order) takes one of the
    points farthest from their centre (farthest first, lowest index on ties); the point moves
    out of its old cluster's sum but keeps its label."""
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return
    far = np.lexsort((np.arange(dist.size), -dist))[: empty.size]
    for j, p in zip(empty, far):
        row = _row(blocks, int(p)).astype(np.float64)
        old = labels[p]
        sums[old] -= signs[p] * row
        counts[old] -= 1
        sums[j] = row
        counts[j] = 1


def _row(blocks: RowBlocks, i: int) -> np.ndarray:
    for b, (lo, hi) in enumerate(blocks.bounds):
        if lo <= i < hi:
            return blocks.rows(b)[i - lo].copy()
    raise IndexError(i)
