"""k-means of rows that do not fit in memory: they come in blocks from a ``RowBlocks`` source,
are seeded from a seeded uniform subsample clustered in memory with the core's k-means, or by
streamed k-means|| when the memory cannot hold a big enough sample (``kmeans_parallel``), then
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
from .kmeans_parallel import ROUNDS, Oversampler, weighted_kmeans
from .threads import single_threaded_blas

#: The core's k-means++ subsample per centre (rust/core/src/kmeans/seeding.rs): the seeding
#: sample is at least this many rows per centre when the memory budget allows.
SEED_POINTS_PER_CENTRE: int = _core.SEED_POINTS_PER_CENTRE
#: Fewest sample rows per centre that the uniform-sample seeding takes (faiss's
#: ``min_points_per_centroid``, below which it warns); with fewer, k-means|| seeds instead.
MIN_SAMPLE_PER_CENTRE = 39


class RowBlocks(Protocol):
    """``n`` rows of width ``d`` in blocks: ``bounds[b] = (start, stop)`` row ranges in order."""

    n: int
    d: int
    bounds: list[tuple[int, int]]

    def rows(self, b: int) -> np.ndarray:
        """Block b's rows, float32 C-contiguous (stop − start) × d."""
        ...


SEEDINGS = ("auto", "sample", "parallel")


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
    seeding: str = "auto",
) -> KMeansResult:
    """k-means of the rows of ``blocks`` holding one block, the seeding's rows and O(n) per-point
    state at a time. Same options as :func:`rankwise.kmeans.kmeans`; ``init`` (k × d): the Lloyd
    passes start there (no seeding).

    ``seeding``: ``"sample"`` clusters a seeded uniform sample of ``sample_rows`` rows (at least
    k) in memory with the core's k-means; ``"parallel"`` is k-means|| (``kmeans_parallel``);
    ``"auto"``: the sample when it holds min(n, MIN_SAMPLE_PER_CENTRE·k) rows, else k-means||.
    Restarts: each of the ``n_init`` seeds gives a centre set, all scored in one streamed pass on
    the full data, the lowest inertia kept (lowest restart on ties); a sample of all n rows is
    the core's k-means itself (its restarts are scored on all rows already)."""
    n, d = blocks.n, blocks.d
    if not 1 <= k <= n:
        raise OptionError(f"k must be in [1, n = {n}], got {k}")
    if seeding not in SEEDINGS:
        raise OptionError(f"seeding must be one of {SEEDINGS}, got {seeding!r}")
    m = min(n, max(int(sample_rows), k))
    if seeding == "auto":
        seeding = "sample" if m >= min(n, MIN_SAMPLE_PER_CENTRE * k) else "parallel"
    if init is not None:
        seeding, m = "init", 0
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A3B1E]))
    take = np.sort(rng.choice(n, size=m, replace=False)) if seeding == "sample" else np.zeros(0, np.int64)
    over = Oversampler(n, k, seed, sign_invariant) if seeding == "parallel" else None
    if over is not None:
        over.add(_gather(blocks, over.first()))
    sample = np.empty((m, d), dtype=np.float32)
    col_sum = np.zeros(d)
    col_sq = np.zeros(d)
    for b, (lo, hi) in enumerate(blocks.bounds):  # column statistics, the sample or round 0
        x = blocks.rows(b)
        i0, i1 = np.searchsorted(take, [lo, hi])
        sample[i0:i1] = x[take[i0:i1] - lo]
        col_sum += x.sum(axis=0, dtype=np.float64)
        col_sq += np.einsum("ij,ij->j", x, x, dtype=np.float64)
        if over is not None:
            over.update(lo, hi, x)
        del x  # one block alive at a time: the next is built before this name would be rebound
    mean = col_sum / n
    tol_abs = tol * float(np.mean(np.maximum(col_sq / n - mean**2, 0.0)))
    restart_seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence([seed, 0x2E57A7]).spawn(n_init)]
    if init is not None:
        centres = np.ascontiguousarray(init, dtype=np.float32)
        if centres.shape != (k, d):
            raise OptionError(f"init has shape {centres.shape}, expected (k, d) = ({k}, {d})")
    elif seeding == "sample" and m == n:
        km = kmeans(sample, k, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed, sign_invariant=sign_invariant)
        centres = km.centroids
    elif seeding == "sample":
        sets = [
            kmeans(sample, k, max_iter=max_iter, tol=tol, seed=s, sign_invariant=sign_invariant).centroids
            for s in restart_seeds
        ]
        centres = sets[0] if len(sets) == 1 else _best(blocks, sets, sign_invariant)
    else:
        assert over is not None
        for _ in range(ROUNDS):
            chosen = over.draw()
            if chosen.size == 0:
                break
            over.add(_gather(blocks, chosen))
            for b, (lo, hi) in enumerate(blocks.bounds):
                over.update(lo, hi, blocks.rows(b))
        c, w = over.candidates()
        del over
        with single_threaded_blas():
            sets = [
                weighted_kmeans(c, w, k, seed=s, si=sign_invariant, max_iter=max_iter, tol_abs=tol_abs)
                for s in restart_seeds
            ]
        del c
        centres = sets[0] if len(sets) == 1 else _best(blocks, sets, sign_invariant)
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


def _best(blocks: RowBlocks, sets: list[np.ndarray], si: bool) -> np.ndarray:
    """The centre set of lowest inertia on all rows (one streamed pass; the first on ties)."""
    inertia = np.zeros(len(sets))
    for b in range(len(blocks.bounds)):
        x = blocks.rows(b)
        for t, c in enumerate(sets):
            inertia[t] += _core.kmeans_assign(x, c, si)[4].sum()
        del x
    return sets[int(np.argmin(inertia))]


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
    return _gather(blocks, np.array([i]))[0]


def _gather(blocks: RowBlocks, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (sorted) of the blocks, building only the blocks that hold them."""
    out = np.empty((idx.size, blocks.d), dtype=np.float32)
    for b, (lo, hi) in enumerate(blocks.bounds):
        i0, i1 = np.searchsorted(idx, [lo, hi])
        if i1 > i0:
            out[i0:i1] = blocks.rows(b)[idx[i0:i1] - lo]
    return out
