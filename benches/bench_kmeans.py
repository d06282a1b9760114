#!/usr/bin/env python
"""bench_kmeans: rankwise's k-means against faiss and scikit-learn, per Lloyd iteration.

    python benches/bench_kmeans.py [--shapes 2000x1024x16,8000x2048x16,8000x8192x64]
                                   [--max-iter 20] [--repeat 3] [--threads 2] [--no-tti] [--write]

Data: Gaussian blobs, float32, seed 0: k centres uniform in [-a, a]^d with a = (4.24/√d)^½ and
unit-variance noise, so that the centres' separation is about the size of the noise in the
distances at every d: the blobs overlap and Lloyd keeps moving for 7-13 iterations (well-separated
blobs converge in 2-3, where setup costs would swamp the per-iteration numbers). All three start
from the same initial centres (k distinct rows of x drawn with seed 0), with the same k,
``max_iter`` and ``n_init=1``, ``tol=0`` (stop only on unchanged labels or ``max_iter``), and the
same number of threads: ``rankwise.set_num_threads``, ``faiss.omp_set_num_threads`` and
threadpoolctl's limit (OpenMP and BLAS) around everything. faiss is set up to use all points
(``max_points_per_centroid = n``) and always runs ``max_iter`` iterations; scikit-learn
(``algorithm="lloyd"``) and rankwise stop when the labels stop changing, and from the same
initial centres they follow the same trajectory (same ``n_iter``).

Columns: median wall seconds of ``--repeat`` runs (one warm-up first); the process CPU seconds
of that run divided by the threads (OpenMP spin-waiting counts for faiss and scikit-learn);
iterations run; GFLOP/s per iteration = 2·n·k·d·iterations / seconds (the assignment GEMM's
flops; everything else in the run counts as time); the inertia of the returned centres
(Σ squared distance to the nearest centre, evaluated here in float64 for all three, relative
to the lowest of the three); rankwise's per-iteration throughput divided by this method's.
"Time to equal inertia": the target is the highest final inertia of the three (+1e-6 relative);
for each method, the wall time of the shortest run (fewest ``max_iter``, found by bisection)
whose result reaches it, setup included.

Above the tables: the machine's float32 GEMM peak measured in the same run (numpy ``a @ b``,
4096², same threads) and, per shape, numpy's ``x @ c.T`` for the same (n, d, k).

``--write`` replaces the bench_kmeans section of benches/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

DEFAULT_SHAPES = "2000x1024x16,8000x2048x16,8000x8192x64"


# ------------------------------------------------------------------------------------- data
def make_data(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian blobs (float32) and the initial centres: k distinct rows of x."""
    rng = np.random.default_rng(seed)
    a = np.sqrt(4.24 / np.sqrt(d))  # squared separation ≈ std of the noise's squared norms
    centres = rng.uniform(-a, a, size=(k, d)).astype(np.float32)
    truth = rng.integers(0, k, size=n)
    x = centres[truth] + rng.standard_normal((n, d), dtype=np.float32)
    init = x[np.sort(rng.choice(n, size=k, replace=False))].copy()
    return np.ascontiguousarray(x, dtype=np.float32), init


def inertia_of(x: np.ndarray, c: np.ndarray, chunk: int = 2048) -> float:
    """Σ_i min_j ‖x_i − c_j‖², the nearest centre found in float32, the distance in float64."""
    cn = (c.astype(np.float64) ** 2).sum(1)
    total = 0.0
    for s in range(0, x.shape[0], chunk):
        xb = x[s : s + chunk]
        lab = np.argmin(cn[None, :] - 2.0 * (xb @ c.T).astype(np.float64), axis=1)
        diff = xb.astype(np.float64) - c[lab].astype(np.float64)
        total += float((diff * diff).sum())
    return total


# ---------------------------------------------------------------------------------- methods
def run_rankwise(x: np.ndarray, init: np.ndarray, max_iter: int) -> tuple[np.ndarray, int]:
    import rankwise as rw

    r = rw.kmeans(x, init.shape[0], n_init=1, max_iter=max_iter, tol=0.0, seed=0, init=init)
    return r.centroids, int(r.n_iter)


def run_sklearn(x: np.ndarray, init: np.ndarray, max_iter: int) -> tuple[np.ndarray, int]:
    from sklearn.cluster import KMeans

    km = KMeans(init.shape[0], init=init, n_init=1, max_iter=max_iter, tol=0.0, algorithm="lloyd", random_state=0)
    km.fit(x)
    return km.cluster_centers_.astype(np.float32), int(km.n_iter_)


def run_faiss(x: np.ndarray, init: np.ndarray, max_iter: int) -> tuple[np.ndarray, int]:
    import faiss

    n, d = x.shape
    km = faiss.Kmeans(d, init.shape[0], niter=max_iter, seed=0, max_points_per_centroid=n, verbose=False)
    km.train(x, init_centroids=init)
    return km.centroids.copy(), max_iter


METHODS = {"rankwise": run_rankwise, "faiss": run_faiss, "scikit-learn": run_sklearn}


def timed(fn, x, init, max_iter) -> tuple[float, float, np.ndarray, int]:
    c0, t0 = time.process_time(), time.perf_counter()
    centres, iters = fn(x, init, max_iter)
    return time.perf_counter() - t0, time.process_time() - c0, centres, iters


def time_to_target(fn, x, init, max_iter: int, target: float) -> tuple[float, int]:
    """Wall time of the run with the fewest max_iter whose inertia reaches ``target``."""

    def reaches(m: int) -> tuple[bool, float]:
        wall, _, c, _ = timed(fn, x, init, m)
        return inertia_of(x, c) <= target, wall

    lo, hi = 0, max_iter  # reaches(hi) holds: target is at least every final inertia
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ok, _ = reaches(mid)
        lo, hi = (lo, mid) if ok else (mid, hi)
    walls = [reaches(hi)[1] for _ in range(2)]
    return min(walls), hi


# ------------------------------------------------------------------------------------ peaks
def gemm_peak(threads: int, size: int = 4096, repeat: int = 3) -> float:
    a = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    b = np.random.default_rng(2).standard_normal((size, size), dtype=np.float32)
    a @ b
    best = min(_wall(lambda: a @ b) for _ in range(repeat))
    return 2.0 * size**3 / best / 1e9


def skinny_gemm(x: np.ndarray, init: np.ndarray, repeat: int = 5) -> float:
    x @ init.T
    best = min(_wall(lambda: x @ init.T) for _ in range(repeat))
    n, d = x.shape
    return 2.0 * n * d * init.shape[0] / best / 1e9


def _wall(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------- main
def bench_shape(n: int, d: int, k: int, args) -> tuple[str, list[list]]:
    x, init = make_data(n, d, k)
    flop = 2.0 * n * d * k
    numpy_skinny = skinny_gemm(x, init)
    results = {}
    for name, fn in METHODS.items():
        timed(fn, x, init, args.max_iter)  # warm-up (imports, page faults, thread pools)
        runs = sorted((timed(fn, x, init, args.max_iter) for _ in range(args.repeat)), key=lambda r: r[0])
        wall, cpu, centres, iters = runs[len(runs) // 2]  # the median run (the upper one if even)
        results[name] = dict(wall=wall, cpu=cpu / args.threads, iters=iters, inertia=inertia_of(x, centres))
        print(f"  {name}: {wall:.3f} s, {iters} iters", file=sys.stderr)
    best_inertia = min(r["inertia"] for r in results.values())
    target = max(r["inertia"] for r in results.values()) * (1 + 1e-6)
    rw_tp = flop * results["rankwise"]["iters"] / results["rankwise"]["wall"]
    rows = []
    for name, r in results.items():
        tp = flop * r["iters"] / r["wall"]
        row = [
            name,
            r["wall"],
            r["cpu"],
            r["iters"],
            tp / 1e9,
            f"{r['inertia']:.6g} ({r['inertia'] / best_inertia - 1:+.1e})",
            f"{rw_tp / tp:.2f}×",
        ]
        if not args.no_tti:
            t, m = time_to_target(METHODS[name], x, init, args.max_iter, target)
            row.append(f"{t:.3g} s ({m} it)")
        rows.append(row)
    head = (
        f"**(n, d, k) = ({n}, {d}, {k})**: {flop / 1e9:.3g} GFLOP per iteration; "
        f"numpy `x @ c.T` alone: {numpy_skinny:.0f} GFLOP/s"
    )
    return head, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated NxDxK")
    ap.add_argument("--max-iter", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-tti", action="store_true", help="skip the time-to-equal-inertia column")
    ap.add_argument("--write", action="store_true", help="replace the section in benches/RESULTS.md")
    args = ap.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import faiss
    from threadpoolctl import threadpool_limits

    import rankwise as rw

    t_start = time.perf_counter()
    rw.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    machine = C.machine_info()
    headers = ["method", "wall s", "CPU s / thread", "iters", "GFLOP/s per iter", "inertia (vs best)", "rankwise ×"]
    if not args.no_tti:
        headers.append("time to equal inertia")
    sections = []
    with threadpool_limits(limits=args.threads):
        peak = gemm_peak(args.threads)
        print(f"numpy f32 GEMM peak: {peak:.0f} GFLOP/s", file=sys.stderr)
        for spec in args.shapes.split(","):
            n, d, k = (int(v) for v in spec.lower().split("x"))
            print(f"({n}, {d}, {k})", file=sys.stderr)
            head, rows = bench_shape(n, d, k, args)
            sections.append(head + "\n\n" + C.md_table(headers, rows))
    total = time.perf_counter() - t_start

    import sklearn

    body = "\n\n".join(
        [
            "## bench_kmeans: k-means per Lloyd iteration, rankwise vs faiss vs scikit-learn",
            f"Command: `{C.command_line()}` ({total:.0f} s in all)",
            machine,
            f"faiss {faiss.__version__}, scikit-learn {sklearn.__version__}; {args.threads} threads for all; "
            f"numpy float32 GEMM peak measured in this run (4096², {args.threads} threads): **{peak:.0f} GFLOP/s**.",
            "Same data (overlapping Gaussian blobs, float32, seed 0; see the script's docstring), "
            "same initial centres (k rows of x), "
            f"`max_iter={args.max_iter}`, `n_init=1`, `tol=0`. GFLOP/s per iteration = 2·n·k·d·iters / wall "
            "seconds (setup counted in the time). faiss always runs max_iter iterations; rankwise and "
            "scikit-learn stop on unchanged labels. 'rankwise ×': rankwise's per-iteration throughput "
            "over the row's. Median of "
            f"{args.repeat} runs after a warm-up. On a shared machine the wall times include waiting for a "
            "core; 'CPU s / thread' is the process CPU time / threads (OpenMP spin-waits count).",
            *sections,
        ]
    )
    print(body)
    if args.write:
        C.write_section("bench_kmeans", body)
        print(f"wrote {C.RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
