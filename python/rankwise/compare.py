"""``compare(pool, methods, rank)``: one pool merged with several methods, and how much of each
source every merge kept (``rankwise.retention``), side by side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .merging import get_method, merge
from .pool import AdapterPool


def rank_options(method: str, rank: int | None) -> dict[str, Any]:
    """The option that sets a method's merged rank: ``rank`` (lego) or ``svd_rank`` (svd, *_svd);
    none for methods whose rank is the sources' (linear, ties, ...)."""
    params = get_method(method).params
    if rank is None:
        return {}
    for name in ("rank", "svd_rank"):
        if name in params:
            return {name: rank}
    return {}


def compare(
    pool: AdapterPool,
    methods: Sequence[str],
    *,
    rank: int | None = None,
    weights: Sequence[float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per method: ``{"retention": merge_info["retention"], "seconds": ..., "rank": [...]}``."""
    out = {}
    for name in methods:
        merged = merge(pool, name, weights=weights, retention=True, **rank_options(name, rank))
        info = merged.merge_info or {}
        out[name] = {
            "retention": info["retention"],
            "seconds": info["seconds"],
            "ranks": sorted({m.rank for m in merged.modules.values()}),
        }
    return out


def table(result: dict[str, dict[str, Any]]) -> str:
    """Per adapter (worst kept by the first method first), ``kept / cos`` of each method."""
    methods = list(result)
    first = result[methods[0]]["retention"]["adapters"]
    order = sorted(range(len(first)), key=lambda j: first[j]["kept"])
    head = ["adapter"] + [f"{m} kept/cos" for m in methods]
    rows = [
        [first[j]["path"]]
        + [
            f"{result[m]['retention']['adapters'][j]['kept']:.3f}/{result[m]['retention']['adapters'][j]['cos']:.2f}"
            for m in methods
        ]
        for j in order
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [head, *rows]
    ]
    return "\n".join(lines)
