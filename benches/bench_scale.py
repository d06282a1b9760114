"""LEGO at scale: where the time and the memory of a big merge go (issue 7, Scale).

    python benches/bench_scale.py --write            # 500 x llama-7b-qv and 2000 x small
    python benches/bench_scale.py --quick            # 50 adapters of each (smoke test)
    python benches/bench_scale.py --stream-only --write   # the streamed rows (memory_limit) alone

Streaming rows (``--stream``, each ``shape:n:rank:limit``): whole merges forced onto LEGO's
streamed path by ``memory_limit``, measured by ``_stream_rows.py`` (one child a row; their own
section, ``bench_scale_stream``, so the two can be rerun apart).

Each configuration (pool, k, canonicalize, warm/cold cache) runs in a fresh process, so that
each has its own peak RSS. The child splits the wall time into load (``AdapterPool.load``,
finite check included), the merge phases of ``merge_info["timings"]`` (units / kmeans /
assemble, summed over modules; "other" is the rest of the merge loop), and write
(``Adapter.save``). Memory: VmRSS, RssAnon and RssFile of /proc/self/status, polled every 5 ms
per phase (mapped adapter pages count in VmRSS as RssFile; they are page cache, reclaimable),
and ru_maxrss. After the merge (outside the timed and polled part) it measures the numpy float32
GEMM peak (2048^3, best of 5) with the same thread count, and the achieved k-means rate on
module 0's unit matrix: one n_init=1 call, 2*n*k*d flops per Lloyd iteration (the assignment
GEMM) times the iterations it ran (``KMeansResult.n_iter`` for the Rust k-means; for the numpy
sign-invariant k-means the Lloyd steps are counted with a shim around ``np.argmin``).

Cold cache (``--cold``): before loading, the child evicts the pool's files from the page cache
with ``posix_fadvise(POSIX_FADV_DONTNEED)`` (no root needed, only these files, other tenants'
cache untouched) and checks with util-linux ``fincore`` how many of their bytes stayed resident
(the table says it). Warm runs read every file once first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import _stream_rows

PHASES = ("load", "units", "kmeans", "assemble", "other", "write")


# ------------------------------------------------------------------------------------- child
class _Poller:
    """Peak VmRSS / RssAnon / RssFile (kB) per phase, sampled in a thread."""

    FIELDS = ("VmRSS", "RssAnon", "RssFile")

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.phase = interval, "start"
        self.peaks: dict[str, dict[str, int]] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        vals = {}
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in self.FIELDS:
                    vals[key] = int(line.split()[1])
        ph = self.peaks.setdefault(self.phase, dict.fromkeys(self.FIELDS, 0))
        for k, v in vals.items():
            ph[k] = max(ph[k], v)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> _Poller:
        self.sample()
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.sample()

    def peak(self, field: str) -> float:
        return max(p[field] for p in self.peaks.values()) / 1024


def _resident_bytes(files: list[Path]) -> int:
    """Bytes of ``files`` in the page cache (util-linux fincore); -1 when it cannot tell."""
    try:
        total = 0
        for i in range(0, len(files), 200):
            out = subprocess.run(
                ["fincore", "--bytes", "--noheadings", "--output", "RES", *map(str, files[i : i + 200])],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            total += sum(int(x) for x in out.split())
        return total
    except (OSError, subprocess.CalledProcessError, ValueError):
        return -1


def _evict(files: list[Path]) -> None:
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _gemm_peak_gflops(repeat: int = 5, n: int = 2048) -> float:
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(_time(lambda: a @ b) for _ in range(repeat))
    return 2 * n**3 / best / 1e9


def _time(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _kmeans_rate(pool: Any, k: int, canon: bool) -> dict[str, Any]:
    """One n_init=1 k-means on module 0's features as LEGO clusters them (normalized, modulo sign
    when canonical): seconds, Lloyd iterations, and the effective rate 2·n·k·d·iters / seconds
    (seeding and setup included; the distance cache skips part of those flops)."""
    import rankwise as rw

    x, _ = pool.unit_features(pool.modules[0], canonical=canon)
    n, d = x.shape
    box: dict[str, Any] = {}
    t = _time(lambda: box.setdefault("r", rw.kmeans(x, k, n_init=1, max_iter=100, seed=0, sign_invariant=canon)))
    iters = box["r"].n_iter
    return {"n": n, "d": d, "iters": iters, "seconds": t, "gflops": 2 * n * k * d * iters / t / 1e9}


def _child(args: argparse.Namespace) -> dict[str, Any]:
    import rankwise as rw

    C.set_threads(args.threads)
    paths = sorted(args.pool_dir.glob("adapter_*"))[: args.n]
    if len(paths) < args.n:
        raise SystemExit(f"{args.pool_dir} has {len(paths)} adapters, wanted {args.n}")
    files = [p / "adapter_model.safetensors" for p in paths]
    disk = sum(f.stat().st_size for f in files)
    if args.cold:
        _evict(files)
    else:
        C.warm_page_cache(files)
    resident = _resident_bytes(files)
    out = Path(tempfile.mkdtemp(prefix="rw-scale-", dir=C.POOLS)) / "merged"
    with _Poller() as mem:
        mem.phase = "load"
        t0 = time.perf_counter()
        pool = rw.AdapterPool.load(paths)
        t1 = time.perf_counter()
        mem.phase = "merge"
        merged = rw.merge(pool, method="lego", rank=args.k, canonicalize=bool(args.canon), seed=0)
        t2 = time.perf_counter()
        mem.phase = "write"
        merged.save(out)
        t3 = time.perf_counter()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    ru_maxrss, cpu = ru.ru_maxrss / 1024, ru.ru_utime + ru.ru_stime
    shutil.rmtree(out.parent)
    info = merged.merge_info or {}
    tm = dict(info.get("timings", {}))
    tm["other"] = info.get("seconds", t2 - t1) - sum(tm.get(p, 0.0) for p in ("units", "kmeans", "assemble"))
    res = {
        "adapters": args.n, "gb_on_disk": disk / 1e9, "resident_before_gb": resident / 1e9,
        "modules": info.get("modules"), "load": t1 - t0, "merge_loop": t2 - t1, "write": t3 - t2,
        "total": t3 - t0, "cpu_s": cpu, **{p: tm.get(p, 0.0) for p in ("units", "kmeans", "assemble", "other")},
        "ru_maxrss_mb": ru_maxrss, "peak_rss_mb": mem.peak("VmRSS"), "peak_anon_mb": mem.peak("RssAnon"),
        "peak_file_mb": mem.peak("RssFile"),
        "phases_mb": {ph: {f: v / 1024 for f, v in p.items()} for ph, p in mem.peaks.items()},
    }  # fmt: skip
    res["gemm_peak_gflops"] = _gemm_peak_gflops()
    res["kmeans_probe"] = _kmeans_rate(pool, args.k, bool(args.canon))
    return res


# ------------------------------------------------------------------------------------ parent
def _pool_paths(shape: str, n: int) -> Path:
    return C.ensure_pool(shape, n, rank=16, dtype="f16")[0].parent


def _row(label: str, cfg: dict[str, Any], r: dict[str, Any]) -> list[Any]:
    kp = r["kmeans_probe"]
    share = r["kmeans"] / r["total"]
    cache = "cold" if cfg["cold"] else "warm"
    if cfg["cold"]:
        cache += f" ({r['resident_before_gb']:.2f} GB resident)"
    return [
        label, cfg["k"], cfg["canon"], cache, r["load"], r["units"], r["kmeans"], r["assemble"], r["other"],
        r["write"], r["total"], r["cpu_s"],
        f"{r['ru_maxrss_mb']:.0f} ({r['peak_anon_mb']:.0f} / {r['peak_file_mb']:.0f})",
        f"{100 * share:.0f}%",
        f"{kp['gflops']:.1f} / {r['gemm_peak_gflops']:.0f} ({100 * kp['gflops'] / r['gemm_peak_gflops']:.0f}%)",
    ]  # fmt: skip


HEADERS = ["pool", "k", "canonicalize", "page cache", "load s", "units s", "kmeans s", "assemble s", "other s",
           "write s", "total s", "CPU s", "peak RSS MB (anon / file)", "k-means share",
           "k-means GFLOP/s / GEMM peak"]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--big-n", type=int, default=500, help="adapters of llama-7b-qv (0: skip)")
    p.add_argument("--small-n", type=int, default=2000, help="adapters of small (0: skip)")
    p.add_argument("--ks", default="16,64", help="merged ranks k")
    p.add_argument("--canon", default="1,0", help="canonicalize values to run (0/1; LEGO's default is 1)")
    p.add_argument("--big-configs", default="", help="k:canon list for the big pool only (default: ks x canon)")
    p.add_argument("--cold", default="big,small", help="pools to add a cold-cache run to (first k, first canon)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="50 adapters of each pool, k=16 only")
    p.add_argument("--stream", default="llama-7b-qv:500:16:64MB,small:10000:4:64MB",
                   help="streamed rows, shape:n:rank:memory_limit (comma-separated; empty: none)")  # fmt: skip
    p.add_argument("--stream-only", action="store_true", help="run the streamed rows alone")
    p.add_argument("--write", action="store_true", help="replace the bench_scale section of RESULTS.md")
    p.add_argument("--from-json", type=Path, nargs="+", help="render (--write) results runs saved, no measuring")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pool-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, help=argparse.SUPPRESS)
    p.add_argument("--cold-child", dest="cold_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.canon, args.cold = int(args.canon), args.cold_child
        print(json.dumps(_child(args)))
        return
    if args.from_json:
        saves = [json.loads(f.read_text()) for f in args.from_json]
        saved = {**saves[0], "results": [r for sv in saves for r in sv["results"]]}
        saved["stream"] = [r for sv in saves for r in sv.get("stream", [])]
        saved["command"] = " && ".join(sv["command"] for sv in saves)
        saved["seconds"] = sum(sv["seconds"] for sv in saves)
        note = f"; this section rendered from the results they saved by `{C.command_line()}`"
        render(saved, args.write, note)
        return
    if args.quick:
        args.big_n, args.small_n, args.ks = min(args.big_n, 50), min(args.small_n, 50), "16"
    if args.stream_only:
        args.big_n = args.small_n = 0
    saved = measure(args)
    (C.POOLS / "bench_scale_last.json").write_text(json.dumps(saved))
    print(f"results saved to {C.POOLS / 'bench_scale_last.json'} (re-render: --from-json)", file=sys.stderr)
    render(saved, args.write)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    ks = [int(x) for x in args.ks.split(",") if x]
    canons = [int(x) for x in args.canon.split(",") if x]
    machine = C.machine_info()
    t_start = time.perf_counter()
    threads_env = {v: str(args.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    results = []
    for shape, n in (("llama-7b-qv", args.big_n), ("small", args.small_n)):
        if not n:
            continue
        pool_dir = _pool_paths(shape, n)
        if shape == "llama-7b-qv" and args.big_configs:
            pairs = [c.split(":") for c in args.big_configs.split(",")]
            cfgs = [{"k": int(a), "canon": int(b), "cold": False} for a, b in pairs]
        else:
            cfgs = [{"k": k, "canon": c, "cold": False} for k in ks for c in canons]
        if ("big" if shape == "llama-7b-qv" else "small") in args.cold.split(","):
            cfgs.append({"k": ks[0], "canon": canons[0], "cold": True})
        for cfg in cfgs:
            argv = [__file__, "--child", "--pool-dir", str(pool_dir), "--n", str(n), "--k", str(cfg["k"]),
                    "--canon", str(cfg["canon"]), "--threads", str(args.threads)]  # fmt: skip
            argv += ["--cold-child"] if cfg["cold"] else []
            # rankwise uses no BLAS; without the OpenBLAS pins the GEMM peak is the machine's own.
            unset = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
            r = C.run_child(argv, env=threads_env, timeout=3600, echo_stderr=True, unset=unset)
            label = f"{n} × `{shape}` ({r['gb_on_disk']:.2f} GB)"
            print(f"{label} {cfg}: {json.dumps(r)}", file=sys.stderr, flush=True)
            results.append((label, cfg, r))
    stream = []
    for spec in filter(None, args.stream.split(",")):
        shape, n, rank, limit = spec.split(":")
        r = _stream_rows.run_row(shape, int(n), int(rank), limit, args.threads)
        print(f"streamed {spec}: {json.dumps(r)}", file=sys.stderr, flush=True)
        stream.append(r)
    return {"command": C.command_line(), "machine": machine, "seconds": time.perf_counter() - t_start,
            "threads": args.threads, "pools": str(C.POOLS), "results": results, "stream": stream}  # fmt: skip


def render(saved: dict[str, Any], write: bool, rendered: str = "") -> None:
    if saved.get("stream"):
        render_stream(saved, write, rendered)
    results = saved["results"]
    if not results:
        return
    table = C.md_table(HEADERS, [_row(lbl, c, r) for lbl, c, r in results])
    print(table)
    if not write:
        return
    raw = "\n".join(f"- {lbl} k={c['k']} canon={c['canon']} cold={c['cold']}: `{json.dumps(r)}`"
                    for lbl, c, r in results)  # fmt: skip
    pools = saved.get("pools", "$RANKWISE_POOLS")
    section = (
        "## bench_scale: LEGO at scale, time split and peak memory\n\n"
        f"Command: `{saved['command']}` ({saved['seconds']:.0f} s in all; pools under `{pools}`, "
        f"made by `make_pool.py` through `_common.ensure_pool`){rendered}\n\n"
        f"{saved['machine']}\n\n"
        "LEGO defaults (normalized features, mass scale with parameter reweighting, k-means++ init, "
        "n_init=3, max_iter=100, tol 1e-4, seed 0) at the k and canonicalize of the row, rank-16 fp16 "
        f"adapters from `benches/make_pool.py` (seed 0, unclustered), {saved['threads']} threads (rayon "
        "and BLAS). Each row is a fresh process. load = `AdapterPool.load` (finite check included); "
        "units / kmeans / assemble = `merge_info['timings']` summed over modules; other = the rest of "
        "the merge loop; write = `Adapter.save`; CPU s = the child's user + system time up to the end "
        "of the write (the machine is shared: wall time / CPU time shows how much of the wall time was "
        "spent waiting for a core). Peak RSS = ru_maxrss, with the polled peaks (5 ms) of RssAnon (the "
        "process's own memory) and RssFile (mapped adapter pages, page cache, reclaimable). "
        "k-means share = kmeans / total. GFLOP/s: one n_init=1 k-means on module 0's features as LEGO "
        "clusters them, 2·n·k·d flops per Lloyd iteration times its iterations over its wall time (seeding "
        "included; an effective rate, since the distance cache skips the columns of unmoved centres), "
        "over the numpy float32 2048³ GEMM peak measured in the same process right after it (children run "
        "without OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE, so OpenBLAS uses its kernels for this CPU). "
        "Cold rows: the pool's files evicted with "
        "posix_fadvise(DONTNEED) just before the load (only these files; no global "
        "`echo 3 > /proc/sys/vm/drop_caches`, which would cool the caches of the other jobs on this shared "
        "machine); the bytes still "
        "resident (util-linux fincore) are shown.\n\n"
        f"{table}\n\n{analysis(results)}\n\n"
        f"<details><summary>raw child results (JSON)</summary>\n\n{raw}\n\n</details>\n"
    )
    C.write_section("bench_scale", section)
    print(f"wrote the bench_scale section of {C.RESULTS}", file=sys.stderr)


def render_stream(saved: dict[str, Any], write: bool, rendered: str = "") -> None:
    rows = saved["stream"]
    table = _stream_rows.table(rows)
    print(table)
    if not write:
        return
    raw = "\n".join(f"- `{json.dumps(r)}`" for r in rows)
    section = (
        "### bench_scale: the streamed path (memory_limit)\n\n"
        f"Command: `{saved['command']}` ({saved['seconds']:.0f} s in all; pools under "
        f"`{saved.get('pools', '$RANKWISE_POOLS')}`){rendered}\n\n{saved['machine']}\n\n"
        f"LEGO defaults (seed 0), the whole pool merged with every module over the limit, {saved['threads']} "
        "threads; each row a fresh process (`benches/_stream_rows.py`).\n\n"
        f"{table}\n\n{_stream_rows.BOUND}\n\n"
        f"<details><summary>raw child results (JSON)</summary>\n\n{raw}\n\n</details>\n"
    )
    C.write_section("bench_scale_stream", section)
    print(f"wrote the bench_scale_stream section of {C.RESULTS}", file=sys.stderr)


def analysis(results: list[Any]) -> str:
    """What the profile shows, computed from the rows (the mechanism is named from the code)."""
    out = []
    for label, cfg, r in results:
        if cfg["cold"]:
            continue
        rest = {p: r[p] for p in PHASES if p != "kmeans"}
        worst = max(rest, key=lambda p: rest[p])
        ph = r["phases_mb"]
        kp = r["kmeans_probe"]
        out.append(
            f"- {label}, k={cfg['k']}, canonicalize={cfg['canon']}: k-means {100 * r['kmeans'] / r['total']:.0f}% "
            f"of {r['total']:.0f} s (wall; {r['cpu_s']:.0f} CPU-s); biggest other phase: {worst} "
            f"{rest[worst]:.1f} s ({100 * rest[worst] / r['total']:.0f}%), then "
            + ", ".join(f"{p} {v:.1f} s" for p, v in sorted(rest.items(), key=lambda kv: -kv[1])[1:])
            + f". Peak RSS by phase (VmRSS / RssAnon / RssFile MB): load {ph['load']['VmRSS']:.0f} / "
            f"{ph['load']['RssAnon']:.0f} / {ph['load']['RssFile']:.0f}, merge {ph['merge']['VmRSS']:.0f} / "
            f"{ph['merge']['RssAnon']:.0f} / {ph['merge']['RssFile']:.0f}. k-means probe: n={kp['n']}, "
            f"d={kp['d']}, {kp['iters']} Lloyd iterations in {kp['seconds']:.2f} s."
        )
    big_load = max((r["phases_mb"]["load"]["VmRSS"] for _, c, r in results if not c["cold"]), default=0.0)
    return (
        "**What the profile shows.**\n\n"
        + "\n".join(out)
        + "\n\n"
        + (RSS_FIX if big_load > 1536 else RSS_OK)
        + "\n"
        + ANALYSIS
    )


RSS_FIX = """\
1. **Peak RSS misses the 1.5 GB target.** See the per-phase peaks above: the load phase's RssFile
   is the pool's mapped pages (the finite check should release each file as soon as it is scanned),
   the merge phase's RssAnon one module's unit matrix and the k-means state."""

RSS_OK = """\
1. **Peak RSS meets the 1.5 GB target.** The finite check releases each file's pages as soon as
   it is scanned, so the load holds a few files; the merge holds one module's unit matrix
   (n × (d_out + d_in) float32: normalized features and raw units in one array, see
   `AdapterPool.unit_features`), the k-means state (distance cache n × k, cluster sums) and the
   factors of the merged adapter."""

ANALYSIS = """\
2. **Where the time goes.** Per module: `units` builds the f16 → f32 unit matrix from the mapped
   pages (canonical form and normalization fused, in Rust); `kmeans` is n_init = 3 restarts of
   k-means++ seeding (dot products in a 128-dimensional random projection for these widths) and
   Lloyd iterations (distance cache: late iterations recompute only moved centres); `assemble` is
   one Rust pass for the cluster means and member norms. `other` is the rest of the Python loop
   (validation, the merged factors' copies)."""


if __name__ == "__main__":
    main()
