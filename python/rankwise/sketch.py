"""One module of a large pool seen through random projections, for ``analyze`` where the exact
R × R Grams of the stacked factors (R = Σ ranks) cost more than a merge: O(R·d·s) instead of
O(R²·d), from one read of the float32 units.

- Similarity: ΔW_j sketched on both sides, S_j = Ψ B_j A_j Ω (s × s; Ψ, Ω Gaussian with
  E[ΨᵀΨ] = I, E[ΩΩᵀ] = I), so ⟨S_i, S_j⟩ estimates ⟨ΔW_i, ΔW_j⟩_F without bias. The norms
  ‖ΔW_j‖_F are exact (each adapter's own r × r Grams, O(R·r·d)); the inner products are the
  sketch's cosines times those norms.
- Spectrum: the top singular values of Σ_j w_j ΔW_j by a randomized range finder (Halko et al.
  2011, one power iteration), Y = ΔW (ΔWᵀ ΔW Ω) through the factors, Q = qr(Y), and the singular
  values of Qᵀ ΔW (s × d_in); its total energy ‖Σ_j w_j ΔW_j‖² as ‖Qᵀ ΔW‖² (exact) plus the
  residual ‖(I − QQᵀ) ΔW‖² estimated through Ψ (unbiased: Ψ is independent of Q)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class ModuleSketch:
    inner: np.ndarray  # n × n estimated ⟨ΔW_i, ΔW_j⟩_F, exact on the diagonal
    singular_values: np.ndarray  # the top ones of the weighted sum, largest first
    energy: float  # estimated ‖Σ_j w_j ΔW_j‖_F²


def sketch_module(
    units: np.ndarray, ranks: Sequence[int], d_out: int, weights: np.ndarray, size: int, seed: int
) -> ModuleSketch:
    """``units``: the pool's unit matrix of the module (R × (d_out + d_in), rows [b ; a], scaling
    folded, weights not applied); ``size``: the sketch's s (and the range finder's width)."""
    n, total = len(ranks), int(np.sum(ranks))
    b_rows, a = units[:, :d_out], units[:, d_out:]  # Bᵀ (R × d_out) and A (R × d_in)
    d_in = a.shape[1]
    s = int(min(size, total, d_out, d_in)) if total else 0
    if s == 0:
        return ModuleSketch(np.zeros((n, n)), np.zeros(0), 0.0)
    rng = np.random.default_rng(seed)
    psi = (rng.standard_normal((d_out, size)) / np.sqrt(size)).astype(np.float32)
    omega = (rng.standard_normal((d_in, size)) / np.sqrt(size)).astype(np.float32)
    bp, ao = b_rows @ psi, a @ omega  # (ΨB)ᵀ and AΩ, R × size
    edges = np.cumsum([0, *ranks])
    sk = np.zeros((n, size * size))
    own = np.zeros(n)
    for j, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        if hi > lo:
            sk[j] = (bp[lo:hi].T.astype(np.float64) @ ao[lo:hi].astype(np.float64)).ravel()
            bj, aj = b_rows[lo:hi].astype(np.float64), a[lo:hi].astype(np.float64)
            own[j] = float(np.sum((bj @ bj.T) * (aj @ aj.T)))
    g = sk @ sk.T
    with np.errstate(divide="ignore", invalid="ignore"):
        dn = np.sqrt(np.maximum(np.diag(g), 0.0))
        cos = np.where(np.outer(dn, dn) > 0, g / np.where(np.outer(dn, dn) > 0, np.outer(dn, dn), 1.0), 0.0)
    norms = np.sqrt(np.maximum(own, 0.0))
    inner = np.clip(cos, -1.0, 1.0) * np.outer(norms, norms)
    np.fill_diagonal(inner, own)
    w = np.repeat(weights, ranks).astype(np.float32)[:, None]
    # Range finder on X = Bᵀᵀ diag(w) A: Y = X Ω, one power iteration Y = X Xᵀ Y.
    y = b_rows.T @ (w * ao[:, :s])
    q = np.linalg.qr(y)[0]
    y = b_rows.T @ (w * (a @ (a.T @ (w * (b_rows @ q)))))
    q = np.linalg.qr(y)[0]
    m = ((b_rows @ q) * w).T @ a  # Qᵀ X, s × d_in
    ev = np.linalg.eigvalsh(m.astype(np.float64) @ m.T.astype(np.float64))[::-1]
    sv = np.sqrt(np.maximum(ev, 0.0))
    sv = sv[sv > (sv[0] * 1e-6 if sv.size and sv[0] > 0 else np.inf)]
    # ‖X‖² = ‖QᵀX‖² + ‖(I − QQᵀ)X‖², the second estimated through Ψ (independent of Q).
    resid = (bp * w).T @ a - (psi.T @ q) @ m
    energy = float(np.sum(m.astype(np.float64) ** 2) + np.sum(resid.astype(np.float64) ** 2))
    return ModuleSketch(inner, sv, energy)
