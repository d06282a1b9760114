"""Whole LEGO merges forced onto the streamed path (``memory_limit``), one fresh child process a
row: wall time, k-means share and peak RSS against the bound. bench_scale's streaming rows.

    python benches/_stream_rows.py --shape small --n 10000 --rank 4 --limit 64MB   # one row (JSON)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

HEADERS = ["pool", "memory_limit", "modules streamed", "modules at once", "load s", "merge s",
           "k-means share (block builds incl.)", "RSS after load MB", "peak RSS MB (anon)", "merged factors MB",
           "overhead MB"]  # fmt: skip

BOUND = (
    "Streamed rows: the merge phase alone (RSS after load = before the merge; peak = the polled peak of "
    "VmRSS, which counts mapped file pages, during the merge). memory_limit is per module (the bytes do "
    "not depend on how many modules run at once), so the bound is: peak ≤ RSS after load + modules at "
    "once × memory_limit + the merged factors the merge keeps (k·(d_out + d_in)·4 bytes a module) + a fixed "
    "overhead (each in-flight block's mapped source pages until released, the core's per-block GEMM scratch "
    "and k × width f64 sums, allocator slack, Python temporaries). The overhead column is what is left: "
    "peak − after load − modules at once × limit − merged factors. k-means share: kmeans over units + "
    "kmeans + assemble of `merge_info['timings']` (thread-seconds when modules run at once; the streamed "
    "k-means builds its blocks inside its timer)."
)


def merge_row(shape: str, n: int, rank: int, limit: str, threads: int) -> dict[str, Any]:
    """The whole pool merged with LEGO (defaults, seed 0) at ``limit``, measured in this process."""
    import rankwise as rw
    from rankwise.memory import memory_limit

    C.set_threads(threads)
    paths = C.ensure_pool(shape, n, rank=rank)
    with C.RssPoller() as poll:
        t0 = time.perf_counter()
        poll.phase = "load"
        pool = rw.AdapterPool.load(paths)
        load = time.perf_counter() - t0
        after_load = C._status_kbs("VmRSS")[0] / 1024
        poll.phase = "merge"
        t1 = time.perf_counter()
        merged = rw.merge(pool, "lego", seed=0, memory_limit=limit)
        wall = time.perf_counter() - t1
    info = merged.merge_info or {}
    factors_mb = sum(a.nbytes + b.nbytes for m in merged.modules for a, b in [merged.factors(m)]) / 2**20
    at_once = 1 if pool.streams else min(threads, len(pool.modules))
    return {"shape": shape, "n": n, "rank": rank, "threads": threads, "limit": memory_limit(limit),
            "gb_on_disk": sum(f.stat().st_size for p in paths for f in Path(p).iterdir()) / 1e9,
            "load_s": load, "merge_s": wall, "timings": info.get("timings"), "streamed": len(info.get("streamed", [])),
            "modules": len(pool.modules), "at_once": at_once, "rss_after_load_mb": after_load,
            "phases": poll.phases, "merged_factors_mb": factors_mb}  # fmt: skip


def run_row(shape: str, n: int, rank: int, limit: str, threads: int) -> dict[str, Any]:
    """merge_row in a fresh child process (its own peak RSS)."""
    argv = [__file__, "--shape", shape, "--n", str(n), "--rank", str(rank), "--limit", limit, "--threads", str(threads)]
    return C.run_child(argv, timeout=3600, echo_stderr=True)


def row(r: dict[str, Any]) -> list[Any]:
    t = r["timings"] or {}
    share = t.get("kmeans", 0.0) / max(sum(t.get(p, 0.0) for p in ("units", "kmeans", "assemble")), 1e-12)
    peak, anon = r["phases"]["merge"]["rss_mb"], r["phases"]["merge"]["anon_mb"]
    limits_mb = r["at_once"] * r["limit"] / 2**20
    overhead = peak - r["rss_after_load_mb"] - limits_mb - r["merged_factors_mb"]
    return [f"{r['n']} × `{r['shape']}` r{r['rank']} ({r['gb_on_disk']:.2f} GB)", f"{r['limit'] / 1e6:.0f} MB",
            f"{r['streamed']}/{r['modules']}", r["at_once"], f"{r['load_s']:.1f}", f"{r['merge_s']:.1f}",
            f"{share:.0%}", f"{r['rss_after_load_mb']:.0f}", f"{peak:.0f} ({anon:.0f})",
            f"{r['merged_factors_mb']:.0f}", f"{overhead:.0f}"]  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    return C.md_table(HEADERS, [row(r) for r in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="small")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--limit", default="64MB")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    print(json.dumps(merge_row(a.shape, a.n, a.rank, a.limit, a.threads)))


if __name__ == "__main__":
    main()
