"""Loading a pool: rankwise (mmap, header validation, finite check, f32 reads) vs safetensors.

    python benches/bench_load.py [--cases small:64,llama-7b-qv:100] [--repeat 3] [--write]

Each method runs in its own child process (clean peak RSS), on a warm page cache (every file
is read once before the timings), with 2 threads for rankwise (safetensors' numpy loader is
single-threaded). Every method streams: it holds one file (safetensors) or one module
(rankwise) at a time, so the peak RSS shows what each needs to walk the whole pool.

Methods:
- ``rw open``: ``rw.AdapterPool.load(paths)``: configs, mmap + header validation of every
  file, finite check of every value (bit patterns, no conversion). Nothing is copied.
- ``rw open (no finite check)``: the same with ``check_finite=False``.
- ``rw open + factors``: then ``Adapter.factors(module)`` (A and B as f32 arrays) for every
  module of every adapter, one call per tensor.
- ``rw open + unit matrices``: then ``pool.unit_matrix(module)`` for every module: one Rust call
  per module builds the f32 ``[Σr, d_out + d_in]`` matrix from all adapters in parallel.
- ``safetensors load_file``: ``safetensors.numpy.load_file`` per file (f16 arrays as stored).
- ``safetensors load_file + f32``: then ``.astype(np.float32)`` of every array, the f32 that
  rankwise hands out (the fair comparison for ``rw open + factors``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

METHODS = {
    "rw_open": "rw open",
    "rw_open_nocheck": "rw open (no finite check)",
    "rw_factors": "rw open + factors",
    "rw_units": "rw open + unit matrices",
    "st_load": "safetensors load_file",
    "st_load_f32": "safetensors load_file + f32",
}
BASELINE = "st_load_f32"


def _child(method: str, pool_dir: Path, n: int, repeat: int, threads: int) -> dict:
    """Runs one method ``repeat`` times in this (fresh) process; prints JSON."""
    import rankwise as rw

    C.set_threads(threads)
    paths = sorted(pool_dir.glob("adapter_*"))[:n]
    files = [p / "adapter_model.safetensors" for p in paths]
    nbytes = C.warm_page_cache(files)
    base_rss = C._status_kb("VmRSS") / 1024

    def rw_open(check: bool = True) -> rw.AdapterPool:
        return rw.AdapterPool.load(paths, check_finite=check)

    def rw_factors() -> None:
        pool = rw_open()
        for m in pool.modules:
            for a in pool:
                a.factors(m)
            pool.release()

    def rw_units() -> None:
        pool = rw_open()
        for m in pool.modules:
            pool.unit_matrix(m)
            pool.release()

    def st_load(f32: bool = False) -> None:
        from safetensors.numpy import load_file

        for f in files:
            d = load_file(f)
            if f32:
                d = {k: v.astype(np.float32) for k, v in d.items()}
            del d

    fn = {
        "rw_open": rw_open,
        "rw_open_nocheck": lambda: rw_open(False),
        "rw_factors": rw_factors,
        "rw_units": rw_units,
        "st_load": st_load,
        "st_load_f32": lambda: st_load(True),
    }[method]
    with C.peak_memory() as mem:
        med, times = C.timeit(fn, repeat=repeat, warmup=1)
    return {
        "method": method,
        "median_s": med,
        "times": times,
        "bytes": nbytes,
        "base_rss_mb": base_rss,
        "peak_rss_mb": mem.peak_rss_kb / 1024,
        "peak_anon_mb": mem.peak_anon_kb / 1024,
        "ru_maxrss_mb": C.peak_rss_mb(),
    }


def run_case(shape: str, n: int, args: argparse.Namespace) -> tuple[str, list[list]]:
    paths = C.ensure_pool(shape, n, rank=args.rank, dtype=args.dtype)
    pool_dir = paths[0].parent
    results = {}
    for method in args.methods:
        r = C.run_child(
            [__file__, "--child", method, "--pool-dir", str(pool_dir), "--n", str(n),
             "--repeat", str(args.repeat), "--threads", str(args.threads)]
        )  # fmt: skip
        results[method] = r
        print(f"  {shape} ×{n} {METHODS[method]:32s} {r['median_s']:.3f} s  peak RSS {r['peak_rss_mb']:.0f} MB",
              file=sys.stderr)  # fmt: skip
    gb = next(iter(results.values()))["bytes"] / 1e9
    title = f"{n} × `{shape}` rank {args.rank} {args.dtype} ({gb:.2f} GB on disk)"
    base = results.get(BASELINE)
    rows = []
    for method, r in results.items():
        ratio = f"{base['median_s'] / r['median_s']:.2f}×" if base else "–"
        rows.append([
            METHODS[method], r["median_s"], gb / r["median_s"], r["peak_rss_mb"], r["peak_anon_mb"],
            r["base_rss_mb"], ratio,
        ])  # fmt: skip
    return title, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="small:64,llama-7b-qv:100", help="shape:n,... ")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--dtype", default="f16")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--quick", action="store_true", help="small:16,llama-7b-qv:10, 1 repeat")
    p.add_argument("--write", action="store_true", help="replace the bench_load section of RESULTS.md")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--pool-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.pool_dir, args.n, args.repeat, args.threads)))
        return
    if args.quick:
        args.cases, args.repeat = "small:16,llama-7b-qv:10", 1
    args.methods = [m for m in args.methods.split(",") if m]
    machine = C.machine_info()
    t0 = time.perf_counter()
    parts = []
    headers = ["method", "median s", "GB/s", "peak RSS MB", "peak anon MB", "RSS after imports MB",
               "speed vs safetensors + f32"]  # fmt: skip
    for case in args.cases.split(","):
        shape, n = case.split(":")
        title, rows = run_case(shape, int(n), args)
        parts.append(f"**{title}**\n\n{C.md_table(headers, rows)}")
    body = "\n\n".join(parts)
    print(body)
    if args.write:
        section = (
            "## bench_load: loading a pool, rankwise vs safetensors\n\n"
            f"Command: `{C.command_line()}` ({time.perf_counter() - t0:.0f} s in all)\n\n"
            f"{machine} Load avg at end: {os.getloadavg()[0]:.1f} (shared host: timings of one run vary).\n\n"
            f"Warm page cache (each file read once first); rankwise with {args.threads} threads, "
            "safetensors' numpy `load_file` single-threaded; median of "
            f"{args.repeat} runs after 1 warm-up, each method in a fresh process. Both sides "
            "stream (one file / one module at a time). Peak RSS counts mapped file pages "
            "(page cache) the process touched; peak anon is its own memory. GB/s: bytes on disk "
            "per second. Last column: safetensors load_file + f32 time / this time (> 1: faster).\n\n"
            f"{body}\n"
        )
        C.write_section("bench_load", section)
        print(f"wrote the bench_load section of {C.RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
