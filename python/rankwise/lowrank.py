"""Low-rank updates ΔW = B @ A seen only through their factors: Frobenius inner products from
the factors' small Gram matrices, ⟨B_iA_i, B_jA_j⟩_F = tr((B_iᵀB_j)(A_jA_iᵀ)), and the thin SVD
of B @ A from QRs of B and Aᵀ. Nothing here forms a d_out × d_in matrix; all in float64."""

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


def inner(x: Pair, y: Pair) -> float:
    """⟨B_x A_x, B_y A_y⟩_F = Σ (B_xᵀB_y) ∘ (A_xA_yᵀ)."""
    return float(np.sum((x[1].T @ y[1]) * (x[0] @ y[0].T)))


def gram(pairs: Sequence[Pair]) -> np.ndarray:
    """The n × n matrix of ⟨ΔW_i, ΔW_j⟩_F: block sums of (BᵀB) ∘ (AAᵀ) over the stacked factors."""
    a = np.concatenate([p[0] for p in pairs], axis=0)
    b = np.concatenate([p[1] for p in pairs], axis=1)
    h = (b.T @ b) * (a @ a.T)
    edges = np.cumsum([0] + [p[0].shape[0] for p in pairs])
    # Sum the blocks: reduce rows by adapter, then columns.
    rows = np.add.reduceat(h, edges[:-1], axis=0) if h.size else np.zeros((len(pairs), 0))
    g = np.add.reduceat(rows, edges[:-1], axis=1) if rows.size else np.zeros((len(pairs), len(pairs)))
    # reduceat of an empty block (rank 0) repeats the next row: zero those.
    empty = np.diff(edges) == 0
    g[empty, :] = 0.0
    g[:, empty] = 0.0
    return g


def thin_svd(pair: Pair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(U [d_out × k], s [k], Vt [k × d_in])`` of B @ A with its numerically zero singular
    values dropped: B = Q_b R_b, Aᵀ = Q_a R_a, B A = Q_b (R_b R_aᵀ) Q_aᵀ, SVD of the small core."""
    a, b = pair
    if a.shape[0] == 0:
        return np.zeros((b.shape[0], 0)), np.zeros(0), np.zeros((0, a.shape[1]))
    qb, rb = np.linalg.qr(b)
    qa, ra = np.linalg.qr(a.T)
    u, s, vt = np.linalg.svd(rb @ ra.T, full_matrices=False)
    tol = s[0] * max(b.shape[0], a.shape[1]) * np.finfo(np.float64).eps if s.size and s[0] > 0 else np.inf
    keep = s > tol
    return qb @ u[:, keep], s[keep], vt[keep] @ qa.T


def stack(pairs: Sequence[Pair], weights: Sequence[float] | None = None) -> Pair:
    """The factors of Σ w_j B_j A_j: A's stacked by rows, w_j·B_j's by columns."""
    w = np.ones(len(pairs)) if weights is None else np.asarray(weights, dtype=np.float64)
    a = np.concatenate([p[0] for p in pairs], axis=0)
    b = np.concatenate([wj * p[1] for p, wj in zip(pairs, w)], axis=1)
    return a, b
