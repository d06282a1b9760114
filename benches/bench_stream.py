"""LEGO's streamed path on one module of a cached pool, against the in-memory path: wall time,
peak RSS (sampled, mapped pages included), k-means share and the k-means inertia ratio.

    python benches/bench_stream.py --shape llama-7b-qv --n 500 --limit 64MB

Each path runs in a fresh child process (``--child``) so the peaks do not mix.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

import _common as C


def child(args: argparse.Namespace) -> None:
    import rankwise as rw
    from rankwise.memory import memory_limit
    from rankwise.methods.contract import ModuleContext
    from rankwise.methods.lego import lego

    C.set_threads(args.threads)
    paths = C.ensure_pool(args.shape, args.n)
    pool = rw.AdapterPool.load(paths)
    pool.release()
    module = pool.modules[0]
    limit = memory_limit(args.limit) if args.mode == "stream" else None
    w = np.full(len(pool), 1.0 / len(pool))
    ctx = ModuleContext(pool, module, 0, w, memory_limit=limit)
    k = 4 * pool.ranks(module)[0]
    with C.RssPoller() as poll:
        base = C._status_kbs("VmRSS")[0] / 1024
        t0 = time.perf_counter()
        a, b = lego(ctx, rank={module: k}, seed=0)
        wall = time.perf_counter() - t0
    out = {"mode": args.mode, "wall_s": wall, "timings": ctx.timings, "rss_before_mb": base,
           "peak_rss_mb": poll.peak_rss_kb / 1024, "peak_anon_mb": poll.peak_anon_kb / 1024,
           "streamed": ctx.streamed, "n_units": sum(pool.ranks(module)), "width": sum(pool.shape(module)), "k": k,
           "limit": limit, "finite": bool(np.isfinite(a).all() and np.isfinite(b).all())}  # fmt: skip
    np.save(f"/tmp/stream-bench-{args.mode}.npy", (b.astype(np.float64) @ a))
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="llama-7b-qv")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--limit", default="64MB")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true")
    p.add_argument("--mode", default="stream")
    args = p.parse_args()
    if args.child:
        return child(args)
    res = {}
    for mode in ("memory", "stream"):
        argv = [sys.executable, __file__, "--child", "--mode", mode, "--shape", args.shape, "--n", str(args.n),
                "--limit", args.limit, "--threads", str(args.threads)]  # fmt: skip
        res[mode] = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    dm, ds = np.load("/tmp/stream-bench-memory.npy"), np.load("/tmp/stream-bench-stream.npy")
    res["rel_delta_diff"] = float(np.linalg.norm(ds - dm) / np.linalg.norm(dm))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
