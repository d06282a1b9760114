"""Low-rank updates ΔW = B @ A seen only through their factors: Frobenius inner products from
the factors' small Gram matrices, ⟨B_iA_i, B_jA_j⟩_F = tr((B_iᵀB_j)(A_jA_iᵀ)), and the thin SVD
of B @ A from the Grams' eigendecompositions. Nothing here forms a d_out × d_in matrix; all in float64."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .pool import AdapterPool

#: ``(A [r × d_in], B [d_out × r])``: one module of one adapter, scaling folded into B.
Pair = tuple[np.ndarray, np.ndarray]


def module_pairs(pool: AdapterPool, module: str) -> list[Pair]:
    """Every adapter's ``(A, B)`` of ``module`` in float64, scaling folded, weights not applied."""
    out = []
    for a in pool:
        fa, fb = a.factors(module, folded=True)
        out.append((fa.astype(np.float64), fb.astype(np.float64)))
    return out


def stacked(pool: AdapterPool, module: str) -> tuple[Pair, list[int]]:
    """Every adapter's factors of ``module`` stacked (A's by rows, B's by columns; float64,
    scaling folded, weights not applied) and each adapter's rank: from the core's unit matrix
    in one pass when the pool is read from files (several times faster than one read per
    adapter), else from :func:`module_pairs`."""
    if pool.file_sources(module) is not None:
        d_out = pool.shape(module)[0]
        units, ranks = pool.unit_matrix(module)
        return (units[:, d_out:].astype(np.float64), units[:, :d_out].T.astype(np.float64)), ranks
    pairs = module_pairs(pool, module)
    return stack(pairs), [p[0].shape[0] for p in pairs]


def split(st: Pair, ranks: Sequence[int]) -> list[Pair]:
    """The per-adapter pairs of a stack (views)."""
    edges = np.cumsum([0, *ranks])
    return [(st[0][lo:hi], st[1][:, lo:hi]) for lo, hi in zip(edges[:-1], edges[1:])]


def inner(x: Pair, y: Pair) -> float:
    """⟨B_x A_x, B_y A_y⟩_F = Σ (B_xᵀB_y) ∘ (A_xA_yᵀ)."""
    return float(np.sum((x[1].T @ y[1]) * (x[0] @ y[0].T)))


def gram(pairs: Sequence[Pair]) -> np.ndarray:
    """The n × n matrix of ⟨ΔW_i, ΔW_j⟩_F: block sums of (BᵀB) ∘ (AAᵀ) over the stacked factors."""
    a = np.concatenate([p[0] for p in pairs], axis=0)
    b = np.concatenate([p[1] for p in pairs], axis=1)
    return block_sums((b.T @ b) * (a @ a.T), [p[0].shape[0] for p in pairs])


def block_sums(h: np.ndarray, ranks: Sequence[int]) -> np.ndarray:
    """The n × n sums of the (r_i × r_j) blocks of ``h`` (R × R, R = Σ ranks)."""
    n = len(ranks)
    edges = np.cumsum([0, *ranks])
    # Sum the blocks: reduce rows by adapter, then columns.
    rows = np.add.reduceat(h, edges[:-1], axis=0) if h.size else np.zeros((n, 0))
    g = np.add.reduceat(rows, edges[:-1], axis=1) if rows.size else np.zeros((n, n))
    # reduceat of an empty block (rank 0) repeats the next row: zero those.
    empty = np.diff(edges) == 0
    g[empty, :] = 0.0
    g[:, empty] = 0.0
    return g


def thin_svd(
    pair: Pair, *, vectors: bool = True, grams: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(U [d_out × k], s [k], Vt [k × d_in])`` of B @ A, its numerically zero singular values
    dropped, from the r × r Grams: BᵀB = L_bᵀL_b and AAᵀ = L_aᵀL_a (eigendecompositions) give
    B = Q_b L_b and A = L_aᵀ Q_aᵀ with orthonormal Q's, so B A = Q_b (L_b L_aᵀ) Q_aᵀ and the SVD
    of the small core is that of B A. (LAPACK's QR of the tall factors is several times slower
    than the Gram GEMMs here; squaring only blurs singular values below ~1e-7 of the largest.)
    ``vectors=False``: U and Vt empty, the Q's never formed. ``grams``: (AAᵀ, BᵀB) when the
    caller has them (values only)."""
    a, b = pair
    empty = (np.zeros((b.shape[0], 0)), np.zeros(0), np.zeros((0, a.shape[1])))
    if a.shape[0] == 0:
        return empty
    if not vectors:
        return empty[0], singular_values(pair, grams), empty[2]
    la, va, wa = _root(a @ a.T)
    lb, vb, wb = _root(b.T @ b)
    if lb.shape[0] == 0 or la.shape[0] == 0:
        return empty
    u, s, vt = np.linalg.svd(lb @ la.T, full_matrices=False)
    keep = s > s[0] * SV_RTOL if s[0] > 0 else np.zeros(s.shape, dtype=bool)
    qb = (b @ vb) / np.sqrt(wb)  # d_out × k_b, orthonormal columns
    qa = (a.T @ va) / np.sqrt(wa)  # d_in × k_a
    return qb @ u[:, keep], s[keep], vt[keep] @ qa.T


def singular_values(pair: Pair, grams: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The nonzero singular values of B @ A, largest first, as square roots of the eigenvalues
    of one symmetric matrix of the smallest side: L_a (BᵀB) L_aᵀ (r × r) while r ≤ d, else
    B (AAᵀ) Bᵀ (d_out²) or Aᵀ (BᵀB) A (d_in²), never d_out × d_in. ``grams``: (AAᵀ, BᵀB), reused."""
    a, b = pair
    ga, gb = grams if grams is not None else (None, None)
    r, d_out, d_in = a.shape[0], b.shape[0], a.shape[1]
    if r == 0:
        return np.zeros(0)
    if r <= min(d_out, d_in):
        la = _root(a @ a.T if ga is None else ga)[0]
        m = la @ (b.T @ b if gb is None else gb) @ la.T
    elif d_out <= d_in:
        m = b @ (a @ a.T if ga is None else ga) @ b.T
    else:
        m = a.T @ (b.T @ b if gb is None else gb) @ a
    w = np.linalg.eigvalsh(m)[::-1]
    if not w.size or w[0] <= 0:
        return np.zeros(0)
    # Eigenvalues within m's rounding (~ size · eps · largest) are the zero singular values.
    return np.sqrt(w[w > max(w[0] * m.shape[0] * 1e3 * np.finfo(np.float64).eps, w[0] * SV_RTOL**2)])


#: Singular values of B @ A below this share of the largest count as zero (the Gram route's floor).
SV_RTOL = 1e-7


def _root(g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L (k × r) with LᵀL = g (symmetric PSD), from the eigenpairs above the noise of g's
    rounding, and those eigenvectors (r × k) and eigenvalues (k)."""
    w, v = np.linalg.eigh(g)
    keep = w > (w[-1] * g.shape[0] * 1e3 * np.finfo(np.float64).eps if w.size and w[-1] > 0 else np.inf)
    w, v = w[keep], v[:, keep]
    return np.sqrt(w)[:, None] * v.T, v, w


def stack(pairs: Sequence[Pair], weights: Sequence[float] | np.ndarray | None = None) -> Pair:
    """The factors of Σ w_j B_j A_j: A's stacked by rows, w_j·B_j's by columns."""
    w = np.ones(len(pairs)) if weights is None else np.asarray(weights, dtype=np.float64)
    a = np.concatenate([p[0] for p in pairs], axis=0)
    b = np.concatenate([wj * p[1] for p, wj in zip(pairs, w)], axis=1)
    return a, b
