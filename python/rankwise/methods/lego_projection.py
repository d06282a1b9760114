"""LEGO's ``assembly="projection"`` / ``"projection-norm"``: the target projected onto the
subspaces the cluster centroids span (docs/ALGORITHMS.md §1.4).

The raw units ``[w_j·s_j·b_i ; a_i]`` sum to the target T = Σ_j w_j·ΔW_j = X_bᵀ X_a (X_b the
n × d_out b parts, X_a the n × d_in a parts). With U an orthonormal basis of the centroids' b
parts and V one of their a parts, the best update of the form U C Vᵀ is C = Uᵀ T V =
(X_b U)ᵀ (X_a V): k × k, computed without ever forming a d_out × d_in matrix. A projection is
shorter than its target, so ``projection-norm`` rescales it to ‖T‖_F (the scale comes from the
target, not from a reweighting rule).
"""

from __future__ import annotations

import numpy as np

from .. import _core

#: Gram work n²·(d_out + d_in) up to which ‖T‖ comes exactly from the n × n unit Grams;
#: above it, from ‖T V‖ (exact) plus a seeded Hutchinson estimate of ‖T (I − V Vᵀ)‖.
EXACT_NORM_WORK = 2**34
NORMS = ("auto", "exact", "estimate")


def grams_are_cheap(n: int, width: int) -> bool:
    """Whether ``auto`` takes ‖T‖ from the n × n unit Grams (their work is within EXACT_NORM_WORK);
    LEGO then clusters from the same Grams (kmeans_gram)."""
    return n * n * width <= EXACT_NORM_WORK


def orth_rows(rows: np.ndarray) -> np.ndarray:
    """An orthonormal basis (columns, float64) of the span of ``rows`` (k × d): the right
    singular vectors whose singular value is above k·ε·σ_max (rank-deficient directions dropped)."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.size == 0 or not np.any(rows):
        return np.zeros((rows.shape[1], 0))
    _, s, vt = np.linalg.svd(rows, full_matrices=False)
    keep = s > max(rows.shape) * np.finfo(np.float64).eps * s[0]
    return np.ascontiguousarray(vt[keep].T)


def project(
    x: np.ndarray,
    norms: np.ndarray | None,
    cent: np.ndarray,
    k: int,
    d_out: int,
    *,
    restore_norm: bool,
    norm: str = "auto",
    probes: int = 64,
    seed: int = 0,
    grams: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Merged factors ``(A[k, d_in], B[d_out, k])`` (float32) of U C Vᵀ, optionally rescaled to ‖T‖.

    ``x``: the unit rows (raw, or part-normalized with ``norms`` = [‖b‖, ‖a‖] per row, as
    AdapterPool.unit_features gives them); ``cent``: the k centroid rows [b ; a]. The core is
    split by its SVD, C = P S Qᵀ, into B = U P √S and A = √S Qᵀ Vᵀ (balanced factors); columns
    beyond the rank of the bases are zero. ``grams``: the unit Grams (G_b, G_a) of ``x`` when
    the caller has them (``_core.unit_grams``), for the exact norm.
    """
    d_in = x.shape[1] - d_out
    u = orth_rows(cent[:, :d_out])
    v = orth_rows(cent[:, d_out:])
    xb, xa = x[:, :d_out], x[:, d_out:]
    pb = rows_times(xb, u, None if norms is None else norms[:, 0])  # X_b U, n × k_b
    pa = rows_times(xa, v, None if norms is None else norms[:, 1])  # X_a V, n × k_a
    core = pb.T @ pa  # Uᵀ T V
    p, s, qt = core_svd(core)
    if restore_norm:
        s = s * _norm_factor(x, norms, d_out, v, pa, float(np.sum(s**2)), norm, probes, seed, grams)
    return balanced_factors(p, s, qt, u, v, k, d_out, d_in)


def core_svd(core: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The SVD of the k_b × k_a core (empty factors for an empty core)."""
    if core.size:
        p, s, qt = np.linalg.svd(core, full_matrices=False)
        return p, s, qt
    # a zero b or a part (a freshly initialized LoRA): the projection is 0
    return np.zeros((core.shape[0], 0)), np.zeros(0), np.zeros((0, core.shape[1]))


def balanced_factors(
    p: np.ndarray, s: np.ndarray, qt: np.ndarray, u: np.ndarray, v: np.ndarray, k: int, d_out: int, d_in: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(A, B)`` float32 of U P S Qᵀ Vᵀ: B = U P √S, A = √S Qᵀ Vᵀ, zero columns past the rank."""
    root = np.sqrt(s)
    a = np.zeros((k, d_in))
    b = np.zeros((d_out, k))
    r = s.size
    a[:r] = (root[:, None] * qt) @ v.T
    b[:, :r] = (u @ p) * root[None, :]
    return a.astype(np.float32), np.ascontiguousarray(b, dtype=np.float32)


def target_sq_norm(
    x: np.ndarray,
    norms: np.ndarray | None,
    d_out: int,
    v: np.ndarray,
    pa: np.ndarray,
    *,
    norm: str = "auto",
    probes: int = 64,
    seed: int = 0,
    grams: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """‖T‖_F² for T = X_bᵀ X_a: exactly as pᵀ (G_b ∘ G_a) p from the unit Grams (``exact``, or
    ``auto`` when the Gram work is at most EXACT_NORM_WORK; ``grams`` when given), else ‖T V‖² (exact, V the
    orthonormal a basis, ``pa`` = X_a V) plus the mean of ‖T (I − V Vᵀ) g‖² over ``probes``
    Gaussian g drawn from ``seed`` (unbiased; deterministic by seed)."""
    n, width = x.shape
    xb, xa = x[:, :d_out], x[:, d_out:]
    if norm == "exact" or (norm == "auto" and grams_are_cheap(n, width)):
        # pᵀ (G_b ∘ G_a) p in the core: both Grams at once on its thread pool, GIL released.
        p = np.ones(n) if norms is None else norms[:, 0].astype(np.float64) * norms[:, 1]
        if grams is not None:
            return _core.grams_sq_norm(grams[0], grams[1], p)
        return _core.units_sq_norm(np.ascontiguousarray(x, dtype=np.float32), d_out, p)
    nb = None if norms is None else norms[:, 0].astype(np.float64)
    tv = cols_times(xb, pa, nb)  # T V = X_bᵀ (X_a V), d_out × k_a
    g = complement_probes(v, x.shape[1] - d_out, probes, seed)
    xg = rows_times(xa, g, None if norms is None else norms[:, 1])  # X_a g
    rest = cols_times(xb, xg, nb)  # T g
    return float(np.sum(tv**2) + np.sum(rest**2) / probes)


def _norm_factor(
    x: np.ndarray,
    norms: np.ndarray | None,
    d_out: int,
    v: np.ndarray,
    pa: np.ndarray,
    core_sq: float,
    norm: str,
    probes: int,
    seed: int,
    grams: tuple[np.ndarray, np.ndarray] | None,
) -> float:
    """‖T‖ / ‖C‖, at least 1 (a projection is never longer than its target); 1 when C is 0."""
    if not core_sq > 0:
        return 1.0
    t_sq = target_sq_norm(x, norms, d_out, v, pa, norm=norm, probes=probes, seed=seed, grams=grams)
    return norm_ratio(t_sq, core_sq)


def norm_ratio(t_sq: float, core_sq: float) -> float:
    """‖T‖ / ‖C‖ from their squares, at least 1; 1 when C is 0 or the ratio is not finite."""
    if not core_sq > 0:
        return 1.0
    factor = float(np.sqrt(max(t_sq, core_sq) / core_sq))
    return factor if np.isfinite(factor) else 1.0


def complement_probes(v: np.ndarray, d_in: int, probes: int, seed: int) -> np.ndarray:
    """``probes`` Gaussian vectors (d_in × probes, from ``seed``) projected off span V."""
    g = np.random.default_rng(seed).standard_normal((d_in, probes))
    g -= v @ (v.T @ g)  # probes of the complement of span V
    return g


def rows_times(part: np.ndarray, basis: np.ndarray, row_scale: np.ndarray | None) -> np.ndarray:
    """``diag(row_scale) · part · basis`` in float64 (part is float32 and may be hundreds of MB:
    the product runs in float32 BLAS, the row scaling after it)."""
    out = (part @ basis.astype(np.float32)).astype(np.float64)
    return out if row_scale is None else out * row_scale[:, None]


def cols_times(part: np.ndarray, rows: np.ndarray, row_scale: np.ndarray | None) -> np.ndarray:
    """``partᵀ · diag(row_scale) · rows`` in float64 (see :func:`rows_times`)."""
    scaled = rows if row_scale is None else rows * row_scale[:, None]
    return (part.T @ scaled.astype(np.float32)).astype(np.float64)
