"""How many directions a pool spans: the singular values of one module's summed update
Σ_j w_j ΔW_j, from the Grams of the stacked factors (``lowrank.thin_svd``), and the rank a merge needs
to keep a share of its energy (Σ s²)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .lowrank import stacked, thin_svd
from .pool import AdapterPool

ENERGIES = (0.9, 0.99)


def singular_values(pool: AdapterPool, module: str, weights: Sequence[float] | None = None) -> np.ndarray:
    """The nonzero singular values of Σ_j w_j ΔW_j of ``module``, largest first."""
    (a, b), ranks = stacked(pool, module)
    w = np.repeat(pool.check_weights(weights), ranks)
    return thin_svd((a, b * w), vectors=False)[1]


def energy_rank(s: np.ndarray, share: float, total: float | None = None) -> int | None:
    """The fewest leading singular values holding ``share`` of the energy ``total`` (default
    Σ s²; 0 for a zero update); None when ``s`` holds only the top values of a spectrum whose
    ``total`` they do not reach."""
    e = np.cumsum(np.asarray(s, dtype=np.float64) ** 2)
    t = float(e[-1]) if total is None and e.size else (total or 0.0)
    if e.size == 0 or t <= 0:
        return 0
    i = int(np.searchsorted(e / t, share - 1e-12))
    return i + 1 if i < e.size else None


def spectra(pool: AdapterPool, weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """:func:`singular_values` of every module."""
    out = {}
    for m in pool.modules:
        out[m] = singular_values(pool, m, weights)
        if pool.streams:
            pool.release()
    return out
