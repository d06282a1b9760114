"""LEGO's streamed path on one module of a cached pool, against the in-memory path: wall time,
peak RSS (sampled, mapped pages included), k-means share and the k-means inertia ratio.

    python benches/bench_stream.py --shape llama-7b-qv --n 500 --limit 64MB --save big.json
    python benches/bench_stream.py --render big.json small.json --write   # the RESULTS.md section

Each path runs in a fresh child process (``--child``) so the peaks do not mix. Whole merges at a
limit are bench_scale.py's streamed rows (``_stream_rows.py``); ``render`` still shows the
"merge" rows of results saved before they moved there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import _common as C


def inertia_child(args: argparse.Namespace) -> None:
    """k-means inertia of one module's features: in memory vs streamed, at the sample size the
    limit gives and at SEED_POINTS_PER_CENTRE·k."""
    import rankwise as rw
    from rankwise.kmeans import kmeans
    from rankwise.memory import memory_limit
    from rankwise.methods.lego_streamed import budget
    from rankwise.streaming_kmeans import SEED_POINTS_PER_CENTRE, streaming_kmeans

    C.set_threads(args.threads)
    pool = rw.AdapterPool.load(C.ensure_pool(args.shape, args.n, rank=args.rank))
    m = pool.modules[0]
    x, _ = pool.unit_features(m, canonical=True)
    k = 4 * pool.ranks(m)[0]
    limit, width = memory_limit(args.limit), x.shape[1]
    per_block, at_limit = budget(limit, width, k)

    class Blocks:
        def __init__(self) -> None:
            self.n, self.d = x.shape
            self.bounds = [(i, min(i + per_block, self.n)) for i in range(0, self.n, per_block)]

        def rows(self, b: int) -> np.ndarray:
            lo, hi = self.bounds[b]
            return x[lo:hi]

    t0 = time.perf_counter()
    mem = kmeans(x, k, n_init=3, max_iter=100, seed=0, sign_invariant=True)
    out = {"mode": "inertia", "k": k, "n": x.shape[0], "memory_s": time.perf_counter() - t0, "ratio": {}}
    for sample in (at_limit, SEED_POINTS_PER_CENTRE * k):
        t0 = time.perf_counter()
        st = streaming_kmeans(Blocks(), k, sample_rows=sample, n_init=3, max_iter=100, seed=0, sign_invariant=True)
        out["ratio"][str(sample)] = {"inertia_ratio": st.inertia / mem.inertia, "s": time.perf_counter() - t0,
                                     "n_iter": st.n_iter}  # fmt: skip
    print(json.dumps(out))


def child(args: argparse.Namespace) -> None:
    import rankwise as rw
    from rankwise.memory import memory_limit
    from rankwise.methods.contract import ModuleContext
    from rankwise.methods.lego import lego

    C.set_threads(args.threads)
    paths = C.ensure_pool(args.shape, args.n, rank=args.rank)
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
    p.add_argument("--rank", type=int, default=16, help="rank of the pool's adapters")
    p.add_argument(
        "--modes",
        default="memory,stream,inertia",
        help="what to run (comma-separated; whole merges at a limit: bench_scale.py's streamed rows)",
    )
    p.add_argument("--save", type=Path, default=None, help="write the results (JSON) here")
    p.add_argument("--render", type=Path, nargs="*", default=None, help="saved results to render")
    p.add_argument("--write", action="store_true", help="with --render: replace the RESULTS.md section")
    p.add_argument("--quality", nargs="*", type=Path, default=[], help="with --render: bench_quality --json "
                   "files, in memory then streamed (RANKWISE_QUALITY_STREAM=LIMIT), as LABEL=FILE")  # fmt: skip
    args = p.parse_args()
    if args.render is not None:
        return render([json.loads(f.read_text()) for f in args.render], args.write, args.quality)
    if args.child:
        return {"inertia": inertia_child}.get(args.mode, child)(args)
    res: dict[str, Any] = {"command": C.command_line(),
                           "shape": args.shape, "n": args.n, "rank": args.rank, "threads": args.threads}  # fmt: skip
    t_all = time.perf_counter()
    for mode in args.modes.split(","):
        argv = [sys.executable, __file__, "--child", "--mode", mode, "--shape", args.shape, "--n", str(args.n),
                "--limit", args.limit, "--threads", str(args.threads), "--rank", str(args.rank)]  # fmt: skip
        res[mode] = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print(mode, json.dumps(res[mode]), file=sys.stderr, flush=True)
    if {"memory", "stream"} <= set(res):
        dm, ds = np.load("/tmp/stream-bench-memory.npy"), np.load("/tmp/stream-bench-stream.npy")
        res["rel_delta_diff"] = float(np.linalg.norm(ds - dm) / np.linalg.norm(dm))
    res["seconds"] = time.perf_counter() - t_all
    if args.save is not None:
        args.save.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


def paper_estimate(big: dict[str, Any]) -> str:
    """A 10,000 × 7B all-linear LEGO merge, scaled from the measured one-module costs."""
    from rankwise.methods.lego_streamed import in_memory_bytes

    mem, st = big["memory"], big["stream"]
    n0, w0, k = mem["n_units"], mem["width"], mem["k"]
    n = 10_000 * 16
    widths = [4096 + 4096] * 4 + [4096 + 11008] * 3  # q, k, v, o; gate, up, down
    factor = 32 * sum(n * w / (n0 * w0) for w in widths)  # k-means and unit builds: ∝ n·width at equal k, passes
    cores0 = big["threads"]
    t_mem, t_st = factor * mem["wall_s"] / (64 / cores0), factor * st["wall_s"] / (64 / cores0)
    gb = n * 2 * 32 * sum(widths) / 1e9  # fp16 factors read
    mlp_gb = in_memory_bytes(n, widths[-1], k) / 1e9
    return (
        "On paper, 10,000 rank-16 adapters of a 7B model on all linear layers (q, k, v, o: 8,192 wide; gate, "
        f"up, down: 15,104; 32 layers; 224 modules of 160,000 units; k = 64; {gb:.0f} GB of fp16 factors). "
        f"Model: a module's k-means and unit builds cost ∝ n·width·k·passes, so each module costs its width "
        f"times n / {n0} of the measured {n0} × {w0} module ({factor:.0f} measured modules in all, at the same "
        f"pass count); time ∝ 1 / cores (GEMM blocks spread on rayon; the measured {cores0} cores scaled to 64, "
        "an optimistic bound where memory bandwidth caps it); loading ∝ bytes (the factors read once from disk, "
        "the streamed passes from the page cache, which holds one module's 2.6-4.8 GB of fp16 factors). "
        f"64-core host: in memory (the default limit, half the RAM, holds the largest module's "
        f"{mlp_gb:.1f} GB) ≈ {t_mem / 3600:.1f} h, peak ≈ {mlp_gb:.0f} GB + that module's mapped factors "
        f"(≈ 5 GB); streamed at 64 MB ≈ {t_st / 3600:.1f} h with peak RSS ≈ the limit + the fixed overhead "
        "measured above, plus the pool's metadata (grows with the number of adapters × modules); reading "
        f"{gb:.0f} GB once at 2 GB/s adds ≈ {gb / 2 / 60:.0f} min. 16-node Ray cluster (64 cores each; "
        f"modules are tasks, 14 a node): ≈ {t_mem / 16 / 60:.0f} min in memory or ≈ {t_st / 16 / 60:.0f} min "
        f"streamed, if the shared filesystem delivers the {gb:.0f} GB at ≥ 16 × 2 GB/s; each worker needs only its "
        "own module's memory. Not measured: iteration counts at n = 160,000 (taken equal), scaling past 2 cores."
    )


def quality_table(files: list[Path]) -> str:
    """LEGO's projection assemblies in memory (the first file) and streamed (the others,
    ``LABEL=FILE``), from bench_quality's --json: per pool and configuration the in-memory mean
    score over the merge seeds and the streamed − in-memory difference paired by seed (mean ±
    its standard deviation over seeds), and per pool the mean difference over its configurations."""
    named = [(str(f).split("=", 1) if "=" in str(f) else (f.name, str(f))) for f in files]
    runs = [(label, json.loads(Path(path).read_text())) for label, path in named]
    key = lambda r: (r["pool"], r["label"], r["seed"])  # noqa: E731
    base = [
        r
        for r in runs[0][1]
        if r["method"] == "lego" and r["options"].get("assembly") in ("projection", "projection-norm")
    ]
    others = [(label, {key(r): r for r in rs}) for label, rs in runs[1:]]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in base:
        groups.setdefault((r["pool"], r["label"]), []).append(r)
    seeds = max(len(g) for g in groups.values())
    rows, per_pool = [], {}
    for (pool, label), rs in groups.items():
        cells = []
        for i, (_, o) in enumerate(others):
            d = np.array([o[key(r)]["score"] - r["score"] for r in rs])
            per_pool.setdefault((pool, i), []).append(d.mean())
            cells.append(f"{d.mean():+.4f} ± {d.std(ddof=1) if d.size > 1 else 0.0:.4f}")
        rows.append([pool, label, f"{np.mean([r['score'] for r in rs]):.3f}", *cells])
    pools = list(dict.fromkeys(p for p, _ in groups))
    for pool in pools:
        rows.append([pool, "**mean over configurations**", "",
                     *(f"**{np.mean(per_pool[(pool, i)]):+.4f}**" for i in range(len(others)))])  # fmt: skip
    worst = [max(abs(v) for (p, j), vs in per_pool.items() if j == i for v in vs) for i in range(len(others))]
    return (
        f"bench_quality (`--quick --no-lm --threads 1 --seeds {seeds}`) with LEGO's streamed path forced by "
        f"`RANKWISE_QUALITY_STREAM` ({', '.join(label for label, _ in others)}): in-memory score (mean over "
        f"{seeds} merge seeds; norm auto, exact at these sizes, and now in the streamed path too) and the "
        "streamed − in-memory difference paired by seed, mean ± standard deviation over the seeds; the "
        "largest |mean difference| of a configuration "
        + ", ".join(f"{w:.4f}" for w in worst)
        + ".\n\n"
        + C.md_table(["pool", "configuration", f"in memory ({runs[0][0]})", *(label for label, _ in others)], rows)
    )


def render(runs: list[dict[str, Any]], write: bool, quality: list[Path] | None = None) -> None:
    rows = []
    for r in runs:
        pool = f"{r['n']} × {r['shape']} r{r['rank']}"
        for mode in ("memory", "stream", "merge"):
            if mode not in r:
                continue
            x = r[mode]
            t = x.get("timings") or {}
            what = {
                "memory": "one module, in memory",
                "stream": "one module, streamed",
                "merge": f"whole merge ({x.get('streamed')}/{x.get('modules')} modules streamed)",
            }[mode]
            limit = x.get("limit")
            if mode == "merge" and "phases" in x:  # the merge phase alone, from the loaded pool on
                x = dict(x, rss_before_mb=x["rss_after_load_mb"], peak_rss_mb=x["phases"]["merge"]["rss_mb"],
                         peak_anon_mb=x["phases"]["merge"]["anon_mb"])  # fmt: skip
                what += f"; load {x['load_s']:.0f} s, its peak RSS {x['phases']['load']['rss_mb']:.0f} MB"
            rows.append([pool, what, "-" if mode == "memory" else f"{limit / 1e6:.0f} MB",
                         f"{x['wall_s']:.1f}", f"{t.get('kmeans', 0) / x['wall_s']:.0%}",
                         f"{x['rss_before_mb']:.0f}", f"{x['peak_rss_mb']:.0f}",
                         f"{x['peak_rss_mb'] - x['rss_before_mb']:.0f}", f"{x['peak_anon_mb']:.0f}"])  # fmt: skip
    table = C.md_table(["pool", "what", "memory_limit", "wall s", "k-means share (block builds incl.)", "RSS before MB",
                        "peak RSS MB", "peak − before MB", "peak anon MB"], rows)  # fmt: skip
    ratios = []
    for r in runs:
        if "inertia" in r:
            inr = r["inertia"]
            for sample, v in inr["ratio"].items():
                ratios.append(
                    f"{r['n']} × {r['shape']} (n = {inr['n']} units, k = {inr['k']}), sample {sample} rows: "
                    f"streamed / in-memory inertia = {v['inertia_ratio']:.4f} ({v['n_iter']} streamed passes, "
                    f"{v['s']:.1f} s; in memory {inr['memory_s']:.1f} s)"
                )
    body = (
        "## bench_stream: LEGO's streamed path (memory_limit)\n\n"
        + "Commands: "
        + "; ".join(f"`{r['command']}` ({r['seconds']:.0f} s)" for r in runs)
        + "\n\n"
        + C.machine_info()
        + "\n\n"
        + table
        + "\n\nRSS counts mapped file pages. Whole-merge rows: the merge phase alone (before = RSS once the pool "
        "is loaded; the load's own peak, which includes the finite check's mapped pages, is in the row). The "
        "streamed path's bound: peak − before ≤ memory_limit + the merged factors the merge keeps (k·(d_out + "
        "d_in)·4 bytes a module: 134 MB for the 64 modules of llama-7b-qv at k = 64) + a fixed overhead (the "
        "block's mapped source pages until released, the core's per-block GEMM scratch and k × width f64 sums, "
        "allocator slack, Python temporaries): peak − before − limit − merged factors is the overhead measured.\n\n"
        "k-means inertia, streamed (blocks and seeding sample as the limit sizes them) against the "
        "core's in-memory k-means on the same canonical features (n_init 3, max_iter 100, seed 0):\n\n"
        + "\n".join(f"- {x}" for x in ratios)
        + "\n"
    )
    if quality:
        body += "\n" + quality_table(quality) + "\n"
    big = next((r for r in runs if r["shape"] == "llama-7b-qv" and {"memory", "stream"} <= set(r)), None)
    if big is not None:
        body += "\n" + paper_estimate(big) + "\n"
    print(body)
    if write:
        C.write_section("bench_stream", body)


if __name__ == "__main__":
    main()
