"""How the rank units of one module cluster as k grows: mean k-means inertia per unit at a few
k (on a seeded subsample of the units, so the curve costs a fraction of a LEGO merge), and the
curve's knee, a suggested k."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .kmeans import kmeans

#: Units clustered per k at most (a seeded subsample beyond).
MAX_UNITS = 1024


def default_ks(k: int, units: int) -> list[int]:
    """1, k/4, k/2, k, 2k, 4k, within [1, units]."""
    return sorted({max(1, min(units, v)) for v in (1, k // 4, k // 2, k, 2 * k, 4 * k)})


def inertia_curve(
    x: np.ndarray,
    ks: Sequence[int],
    *,
    seed: int = 0,
    max_units: int = MAX_UNITS,
    sign_invariant: bool = True,
    inits: Mapping[int, np.ndarray] | None = None,
) -> list[tuple[int, float]]:
    """``(k, inertia / units)`` per k of ``ks`` (k > units skipped): k-means (one start, Lloyd to
    convergence) of the rows of ``x``, of at most ``max_units`` of them drawn with ``seed``.
    ``inits``: k -> initial centres (k × d) instead of k-means++."""
    if x.shape[0] > max_units:
        x = x[np.sort(np.random.default_rng(seed).choice(x.shape[0], max_units, replace=False))]
    out = []
    for k in ks:
        if 1 <= k <= x.shape[0]:
            init = None if inits is None else inits.get(k)
            r = kmeans(x, k, n_init=1, max_iter=100, tol=0.0, seed=seed, init=init, sign_invariant=sign_invariant)
            out.append((int(k), r.inertia / x.shape[0]))
    return out


#: How far below the chord (in the unit square) the knee must lie to count as one.
KNEE_MIN = 0.05


def knee(curve: Sequence[tuple[int, float]]) -> int | None:
    """The k farthest below the chord from the first to the last point, with log k on the x
    axis and both axes scaled to [0, 1] (the "kneedle" rule); None when no point lies
    ``KNEE_MIN`` below it (a flat, straight or concave curve: the units show no cluster count)."""
    if len(curve) < 3:
        return None
    k = np.log(np.array([c[0] for c in curve], dtype=np.float64))
    y = np.array([c[1] for c in curve], dtype=np.float64)
    if y[0] - y[-1] <= 1e-12 * max(abs(y[0]), 1e-300):
        return None
    xs, ys = (k - k[0]) / (k[-1] - k[0]), (y - y[-1]) / (y[0] - y[-1])
    gap = (1.0 - xs) - ys
    i = int(np.argmax(gap))
    return curve[i][0] if gap[i] >= KNEE_MIN else None
