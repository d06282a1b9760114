"""k-means|| seeding (Bahmani et al. 2012, "Scalable k-means++") for rows that come in blocks:
k-means++-quality centres from a few streamed passes, holding ~1 + rounds·2k candidate rows
instead of the SEED_POINTS_PER_CENTRE·k-row sample a memory limit may not hold
(docs/ALGORITHMS.md §1.5).

Round 0 takes one row chosen by the seed; each round then keeps every row i independently with
probability min(1, ℓ·D²(i)/Σ D²) (ℓ = 2k, D² the distance to the nearest candidate so far, the
same sign-invariant distance as the k-means). The draw for row i in round r is a hash of
(seed, r, i), so the candidates depend on the seed and the data only: not on the blocks, nor on
the thread count. Each candidate is then weighted by the rows nearest to it, and the weighted
candidates (small: in memory, float64 numpy) are clustered into k by weighted greedy k-means++
(scikit-learn's n_local_trials = 2 + ⌊ln k⌋) and weighted Lloyd iterations: one centre set per
restart seed.
"""

from __future__ import annotations

import math

import numpy as np

from . import _core

#: Oversampling rounds after the first candidate (the paper found 5 rounds of ℓ = 2k enough).
ROUNDS = 5

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def row_uniforms(seed: int, round_: int, idx: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1) for rows ``idx``, one per (seed, round, row): splitmix64's finalizer of
    a key mixed from the seed and round plus the row index times the golden-ratio increment."""
    key = np.random.SeedSequence([seed, round_, 0xC0FFEE]).generate_state(1, np.uint64)[0]
    with np.errstate(over="ignore"):
        z = key + idx.astype(np.uint64) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


class Oversampler:
    """The candidate rounds' state: D² and the nearest candidate of every row (n floats and ints),
    the candidates so far. The caller streams a pass per round (``update`` per block), then asks
    for the rows to add (``draw``) and gathers them (``add``)."""

    def __init__(self, n: int, k: int, seed: int, sign_invariant: bool) -> None:
        self.n, self.k, self.seed, self.si = n, k, seed, sign_invariant
        self.dist = np.full(n, np.inf)
        self.nearest = np.zeros(n, dtype=np.int64)
        self.rows: list[np.ndarray] = []  # candidate rows, in order of addition
        self.new: np.ndarray | None = None  # the candidates the next pass measures against
        self.base = 0  # index of the first of them among all candidates
        self.round = 0

    def first(self) -> np.ndarray:
        """The first candidate's row index (from the seed)."""
        return np.array([int(row_uniforms(self.seed, 0, np.zeros(1, np.int64))[0] * self.n)])

    def add(self, rows: np.ndarray) -> None:
        self.base = sum(len(r) for r in self.rows)
        self.new = np.ascontiguousarray(rows, dtype=np.float32)
        self.rows.append(self.new)

    def update(self, lo: int, hi: int, x: np.ndarray) -> None:
        """One block of the pass against the newest candidates: D² and nearest, strictly closer wins
        (ties keep the earlier candidate)."""
        assert self.new is not None
        lab, _, _, _, dd = _core.kmeans_assign(x, self.new, self.si)
        closer = dd < self.dist[lo:hi]
        self.dist[lo:hi] = np.where(closer, dd, self.dist[lo:hi])
        self.nearest[lo:hi] = np.where(closer, self.base + lab, self.nearest[lo:hi])

    def draw(self) -> np.ndarray:
        """The rows the next round adds (sorted; empty when every row is a candidate's twin)."""
        self.round += 1
        phi = float(self.dist.sum())
        if not phi > 0:
            return np.zeros(0, dtype=np.int64)
        p = np.minimum(1.0, 2 * self.k * self.dist / phi)
        return np.flatnonzero(row_uniforms(self.seed, self.round, np.arange(self.n)) < p)

    def candidates(self) -> tuple[np.ndarray, np.ndarray]:
        """All candidates (float64) and their weights (rows nearest to each)."""
        c = np.concatenate(self.rows).astype(np.float64)
        return c, np.bincount(self.nearest, minlength=len(c)).astype(np.float64)


def _dist(x: np.ndarray, sq: np.ndarray, c: np.ndarray, si: bool) -> np.ndarray:
    """Squared distances (rows of x × rows of c), sign-invariant: ‖x‖² + ‖c‖² − 2|x·c|."""
    dots = x @ c.T
    return np.maximum(sq[:, None] + np.einsum("ij,ij->i", c, c)[None, :] - 2 * (np.abs(dots) if si else dots), 0.0)


def weighted_kmeans(
    c: np.ndarray, w: np.ndarray, k: int, *, seed: int, si: bool, max_iter: int, tol_abs: float
) -> np.ndarray:
    """k centres (float32) of the weighted points ``c``: greedy k-means++ by weighted D², then
    weighted Lloyd until the labels stop changing, the shift is within ``tol_abs`` or max_iter
    (an empty cluster keeps its centre). Fewer than k points: the centres repeat them (the
    streamed Lloyd relocates the empty clusters)."""
    m = len(c)
    if m <= k:
        return np.ascontiguousarray(c[np.arange(k) % m], dtype=np.float32)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6B6D7C]))
    sq = np.einsum("ij,ij->i", c, c)
    chosen = [int(rng.choice(m, p=w / w.sum()))]
    closest = _dist(c, sq, c[chosen], si)[:, 0]
    trials = 2 + int(math.log(k))
    for _ in range(1, k):
        cum = np.cumsum(w * closest)
        if not cum[-1] > 0:  # every point on a centre: take the heaviest not chosen
            rest = np.setdiff1d(np.arange(m), chosen)
            pick = int(rest[np.argmax(w[rest])])
        else:
            ids = np.minimum(np.searchsorted(cum, rng.random(trials) * cum[-1], side="right"), m - 1)
            trial = np.minimum(closest[:, None], _dist(c, sq, c[ids], si))
            best = int(np.argmin(w @ trial))
            pick = int(ids[best])
        chosen.append(pick)
        closest = np.minimum(closest, _dist(c, sq, c[[pick]], si)[:, 0])
    centres = c[chosen].copy()
    labels = np.full(m, -1)
    for _ in range(max_iter):
        dots = c @ centres.T
        d = np.maximum(
            sq[:, None] + np.einsum("ij,ij->i", centres, centres)[None, :] - 2 * (np.abs(dots) if si else dots), 0
        )
        new_labels = np.argmin(d, axis=1)
        signs = np.where(dots[np.arange(m), new_labels] < 0, -1.0, 1.0) if si else np.ones(m)
        mass = np.bincount(new_labels, weights=w, minlength=k)
        sums = (np.eye(k)[new_labels] * (w * signs)[:, None]).T @ c
        new = np.where(mass[:, None] > 0, sums / np.where(mass > 0, mass, 1.0)[:, None], centres)
        shift = float(np.sum((new - centres) ** 2))
        centres = new
        if np.array_equal(new_labels, labels) or shift <= tol_abs:
            break
        labels = new_labels
    return np.ascontiguousarray(centres, dtype=np.float32)
