"""Error bounds of floating-point arithmetic, for tolerances that hold on every host.

A host changes how a library adds numbers up (BLAS kernels chosen per CPU, SIMD width, FMA),
not the precision it works in. The bounds here hold for any order of summation, with or
without FMA (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3.1, Lemma 3.1
and Eq. 3.13): a tolerance built from them holds on every CPU, where one read off a single
host's result need not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

U32 = 2.0**-24  # unit roundoff of float32 (round to nearest)
U64 = 2.0**-53


def gamma(n: int, u: float = U32) -> float:
    """γ_n = n·u / (1 − n·u): the relative error of n roundings in a row."""
    return n * u / (1 - n * u)


def chain_error(factors: Sequence[np.ndarray], *, roundings: int = 0, u: float = U32) -> np.ndarray:
    """Elementwise bound on the error of a product ``f_1 @ f_2 @ ... @ f_m`` of exactly stored
    matrices computed in precision ``u`` in any order of summation: γ_N·(|f_1| @ ... @ |f_m|),
    N the sum of the inner dimensions plus ``roundings`` (scalings, additions on the way).
    The bound of |X − Y| for two such computations of one product is twice this."""
    inner = sum(f.shape[0] for f in factors[1:])
    out = np.abs(np.asarray(factors[0], dtype=np.float64))
    for f in factors[1:]:
        out = out @ np.abs(np.asarray(f, dtype=np.float64))
    return gamma(inner + roundings, u) * out


def mean_error(members: np.ndarray, u: float = U32) -> np.ndarray:
    """Bound on the error of the mean of the rows of ``members`` computed in precision ``u``
    in any order: γ_n·mean(|x|) (n − 1 additions and one division)."""
    n = members.shape[0]
    return gamma(n, u) * np.abs(np.asarray(members, dtype=np.float64)).mean(axis=0)


def delta64(a: np.ndarray, b: np.ndarray, scaling: float = 1.0) -> np.ndarray:
    """``scaling · b @ a`` in float64 from float32 factors: each product of two float32 numbers is
    exact in float64, so what is left of the host (summation order) is ~1e-16 of the terms."""
    return (np.asarray(b, dtype=np.float64) * scaling) @ np.asarray(a, dtype=np.float64)


def assert_within(actual: np.ndarray, desired: np.ndarray, bound: np.ndarray | float, what: str = "") -> None:
    """|actual − desired| ≤ bound elementwise (in float64), with the worst entry in the message."""
    diff = np.abs(np.asarray(actual, dtype=np.float64) - np.asarray(desired, dtype=np.float64))
    excess = diff - bound
    i = np.unravel_index(int(np.argmax(excess)), diff.shape) if diff.ndim else ()
    assert np.all(excess <= 0), (
        f"{what}: |difference| {diff[i]:.3g} above its bound {np.broadcast_to(bound, diff.shape)[i]:.3g} at {i}"
    )


def assert_centroids_match(ours: np.ndarray, theirs: np.ndarray, x: np.ndarray, labels: np.ndarray) -> None:
    """k-means centroids against a float32 reference (scikit-learn), given the same labels: the
    reference's mean of each cluster is within γ_n·mean(|x|) of the exact mean (it adds up in
    float32, in an order that depends on its threads), ours within u·max|x[:, j]| + 2u of it
    (the core rounds each value once to fixed point at float32 precision of its column's largest
    magnitude, sums exactly, then divides and rounds)."""
    col_max = np.abs(np.asarray(x, dtype=np.float64)).max(axis=0)
    for c in range(ours.shape[0]):
        members = x[labels == c]
        bound = mean_error(members) + U32 * col_max + gamma(2) * np.abs(ours[c].astype(np.float64))
        assert_within(ours[c], theirs[c], bound, f"centroid {c} ({members.shape[0]} members)")
