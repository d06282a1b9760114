"""How much of each source adapter a merged adapter kept, per module: cos(ΔW_merged, ΔW_j) and
‖P ΔW_j‖_F / ‖ΔW_j‖_F with P ΔW = U Uᵀ ΔW V Vᵀ, U and V orthonormal bases of the merged update's
column and row spaces (``lowrank.thin_svd``). Both are products of r-sized matrices, never a
d_out × d_in one; both ignore the weights and are invariant to how each adapter's rank units are
ordered or scaled (b·c, a/c). Overall: inner products and squared norms summed over modules."""

from __future__ import annotations

from typing import Any

import numpy as np

from .adapter import Adapter
from .lowrank import Pair, inner, split, stacked, thin_svd
from .pool import AdapterPool


def module_retention(merged: Pair, st: Pair, ranks: list[int]) -> dict[str, list[float]]:
    """Per source: ``inner`` ⟨ΔW_m, ΔW_j⟩, ``norm2`` ‖ΔW_j‖², ``proj2`` ‖P ΔW_j‖², and ``cos``
    and ``kept`` from them; ``merged_norm2`` ‖ΔW_m‖² is the same for all. The products with the
    merged factors run once on the stacked sources (a few wide GEMMs), then split per source."""
    am, bm = merged
    u, _, vt = thin_svd(merged)
    mm = inner(merged, merged)
    a_st, b_st = st
    # ⟨B_m A_m, B_j A_j⟩ = Σ_{p ∈ j} (B_mᵀ b_p) · (A_m a_p): one column of each product per unit.
    per_unit = np.sum((bm.T @ b_st).T * (a_st @ am.T), axis=1)
    pu, pv = u.T @ b_st, a_st @ vt.T  # Uᵀ B_j and A_j V of every source side by side
    rows: dict[str, list[float]] = {k: [] for k in ("inner", "norm2", "proj2", "cos", "kept")}
    lo = 0
    for a, b in split(st, ranks):
        hi = lo + a.shape[0]
        ip = float(per_unit[lo:hi].sum())
        n2 = float(np.sum((b.T @ b) * (a @ a.T)))
        p2 = float(np.sum((pu[:, lo:hi] @ pv[lo:hi]) ** 2))
        lo = hi
        rows["inner"].append(ip)
        rows["norm2"].append(n2)
        rows["proj2"].append(p2)
        rows["cos"].append(_cos(ip, mm, n2))
        rows["kept"].append(_ratio(p2, n2))
    rows["merged_norm2"] = [mm]
    return rows


def retention(pool: AdapterPool, merged: Adapter) -> dict[str, Any]:
    """``{"modules": {module: {"cos": [...], "kept": [...]}}, "adapters": [{"path", "cos", "kept"}]}``
    with one entry per source adapter, worst ``kept`` not sorted (pool order)."""
    per_module: dict[str, dict[str, list[float]]] = {}
    n = len(pool)
    ip, n2, p2, mm = np.zeros(n), np.zeros(n), np.zeros(n), 0.0
    for m in pool.modules:
        fa, fb = merged.factors(m, folded=True)
        r = module_retention((fa.astype(np.float64), fb.astype(np.float64)), *stacked(pool, m))
        if pool.streams:
            pool.release()
        per_module[m] = {"cos": r["cos"], "kept": r["kept"]}
        ip += r["inner"]
        n2 += r["norm2"]
        p2 += r["proj2"]
        mm += r["merged_norm2"][0]
    adapters = [
        {
            "path": str(a.path) if a.path is not None else f"adapter {j}",
            "cos": _cos(ip[j], mm, n2[j]),
            "kept": _ratio(p2[j], n2[j]),
        }
        for j, a in enumerate(pool)
    ]
    return {"modules": per_module, "adapters": adapters}


def summary(ret: dict[str, Any], limit: int = 10) -> str:
    """A few lines: the worst-kept adapters first (``kept`` then ``cos``)."""
    rows = sorted(ret["adapters"], key=lambda r: (r["kept"], r["cos"]))
    lines = [
        f"retention, worst kept first ({min(limit, len(rows))} of {len(rows)} adapters):",
        "   kept    cos  adapter",
    ]
    lines += [f"  {r['kept']:5.3f}  {r['cos']:5.2f}  {r['path']}" for r in rows[:limit]]
    return "\n".join(lines)


def _cos(ip: float, mm: float, n2: float) -> float:
    d = np.sqrt(max(mm, 0.0) * max(n2, 0.0))
    return float(np.clip(ip / d, -1.0, 1.0)) if d > 0 else 0.0


def _ratio(p2: float, n2: float) -> float:
    return float(min(np.sqrt(max(p2, 0.0) / n2), 1.0)) if n2 > 0 else 0.0
