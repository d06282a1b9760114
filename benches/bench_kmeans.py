#!/usr/bin/env python
"""bench_kmeans: rankwise's k-means against faiss and scikit-learn, per Lloyd iteration.

    python benches/bench_kmeans.py [--shapes 2000x1024x16,8000x2048x16,8000x8192x64]
                                   [--max-iter 20] [--repeat 3] [--threads 2] [--no-tti] [--write]
                                   [--to-faiss 8000x8192x64,8000x2048x16] [--faiss-iters 25]

Data: Gaussian blobs, float32, seed 0: k centres uniform in [-a, a]^d with a = (4.24/√d)^½ and
unit-variance noise, so that the centres' separation is about the size of the noise in the
distances at every d: the blobs overlap and Lloyd keeps moving for 7-20 iterations (well-separated
blobs converge in 2-3, where setup costs would swamp the per-iteration numbers). All start
from the same initial centres (k distinct rows of x drawn with seed 0), with the same k,
``max_iter`` and ``n_init=1``, ``tol=0`` (stop only on unchanged labels or ``max_iter``), and the
same number of threads: ``rankwise.set_num_threads``, ``faiss.omp_set_num_threads`` and
threadpoolctl's limit (OpenMP and BLAS) around everything. faiss is set up to use all points
(``max_points_per_centroid = n``) and always runs ``max_iter`` iterations; scikit-learn
(``algorithm="lloyd"``) and rankwise stop when the labels stop changing, and from the same
initial centres they follow the same trajectory (same ``n_iter``).

Two rankwise rows: the default, which keeps the n × k dot products across iterations and
recomputes only the columns of the centres that moved (same bytes as recomputing all; see
rust/core/src/kmeans/), and ``distance_cache=False``, which recomputes every distance every
iteration: that row is the cost of a full Lloyd iteration (GEMM-bound), the one to hold against
the GEMM peak.

OpenBLAS kernels: faiss, scikit-learn (through scipy) and numpy's peak all run on OpenBLAS, whose
kernel choice this machine may pin with ``OPENBLAS_CORETYPE`` (and ``OPENBLAS_L2_SIZE``). When it
is set, the peers and the peak run twice, in child processes: once as set, once with both
variables removed (OpenBLAS picks its kernels for the CPU; threadpoolctl names them in the
table). Each peer is shown under both, so rankwise is held against each peer's faster run.
rankwise does not use BLAS.

Columns: median wall seconds of ``--repeat`` runs (one warm-up first); the process CPU seconds
of that run divided by the threads (OpenMP spin-waiting counts for faiss and scikit-learn);
iterations run; GFLOP/s per iteration = 2·n·k·d·iterations / seconds (the flops of the assignment
GEMM of a full iteration; everything else in the run counts as time; for rankwise's default the
distance cache skips part of those flops, so its figure is an effective rate and may exceed the
GEMM peak); the inertia of the returned centres (Σ squared distance to the nearest centre,
evaluated here in float64 for all, relative to the lowest); rankwise's (default) per-iteration
throughput divided by the row's. "Time to equal inertia": the target is the highest final inertia
of all rows (+1e-6 relative); for each method, the wall time of the shortest run (fewest
``max_iter``, found by bisection) whose result reaches it, setup included.

Above the tables: the machine's float32 GEMM peak measured in the same run (numpy ``a @ b``,
4096², same threads) and, per shape, numpy's ``x @ c.T`` for the same (n, d, k).

Seeding table (skip with ``--no-seeding``): for wide data (d ≥ 1024, k ≥ 16) rankwise takes the
dot products of k-means++ seeding in a 128-dimensional random projection (256 before issue 17). The table holds it
against exact seeding (``seed_projection=False``, scikit-learn's greedy k-means++) with everything
else as LEGO runs it (``n_init=3``, ``max_iter=100``, ``tol=1e-4``), seeds 0, 1, 2: the final
inertia (the k-means objective after Lloyd) and the wall time, on the blobs above and on LoRA
unit matrices as LEGO clusters them (normalized, canonical, modulo sign): module 0 of 500
unclustered ``llama-7b-qv`` adapters (n = 8000, d = 8192) and of 200 clustered ones (make_pool
``--clustered 16``: every adapter holds perturbed copies of 16 shared units), made by make_pool
under ``RANKWISE_POOLS`` when missing (8.4 GB and 3.4 GB).

"To faiss's 25 iterations" table (issue 17; ``--to-faiss ""`` skips it): faiss-cpu with its own
defaults (random init, 25 iterations) against rankwise as a user calls it (its k-means++ seeding
plus the fewest Lloyd iterations whose inertia is at most faiss's), wall time of each.

Every child runs the methods in one order (faiss, scikit-learn, rankwise, rankwise without the
cache), whatever the host. ``--write`` replaces this host kind's bench_kmeans section of
benches/RESULTS.md (``_common.host_kind``: one table per host kind, e.g. AMD EPYC AVX-512 and
Intel Xeon AVX-512).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

DEFAULT_SHAPES = "2000x1024x16,8000x2048x16,8000x8192x64"


# ------------------------------------------------------------------------------------- data
def make_data(n: int, d: int, k: int, seed: int = 0, a: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs (float32), centres uniform in [-a, a]^d, unit noise, and the initial
    centres: k distinct rows of x. Default a: overlapping blobs (see the module docstring)."""
    rng = np.random.default_rng(seed)
    if a is None:
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


def run_rankwise_no_cache(x: np.ndarray, init: np.ndarray, max_iter: int) -> tuple[np.ndarray, int]:
    from rankwise import _core

    c, _, _, n_iter, _ = _core.kmeans(x, init.shape[0], 1, max_iter, 0.0, 0, init, False, distance_cache=False)
    return c, int(n_iter)


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


def run_rankwise_streamed(x: np.ndarray, init: np.ndarray, max_iter: int) -> tuple[np.ndarray, int]:
    """The streaming k-means (LEGO's path over memory_limit) from the same init, the rows in 8
    blocks: its inertia against the in-memory row's is the streamed path's quality."""
    from rankwise.streaming_kmeans import streaming_kmeans

    class Blocks:
        def __init__(self) -> None:
            self.n, self.d = x.shape
            size = -(-self.n // 8)
            self.bounds = [(i, min(i + size, self.n)) for i in range(0, self.n, size)]

        def rows(self, b: int) -> np.ndarray:
            lo, hi = self.bounds[b]
            return x[lo:hi]

    r = streaming_kmeans(Blocks(), init.shape[0], sample_rows=0, max_iter=max_iter, tol=0.0, init=init)
    return r.centroids, int(r.n_iter)


RANKWISE = {
    "rankwise": run_rankwise,
    "rankwise, no distance cache": run_rankwise_no_cache,
    "rankwise, streamed (8 blocks)": run_rankwise_streamed,
}
PEERS = {"faiss": run_faiss, "scikit-learn": run_sklearn}
# One process order for every run and host: the peers first, then rankwise.
METHODS = {**PEERS, **RANKWISE}
ORDER = list(METHODS)


def timed(fn, x, init, max_iter) -> tuple[float, float, np.ndarray, int]:
    c0, t0 = time.process_time(), time.perf_counter()
    centres, iters = fn(x, init, max_iter)
    return time.perf_counter() - t0, time.process_time() - c0, centres, iters


def time_to_target(fn, x, init, max_iter: int, target: float) -> tuple[float, int]:
    """Wall time of the run with the fewest max_iter whose inertia reaches ``target``."""

    def reaches(m: int) -> tuple[bool, float]:
        wall, _, c, _ = timed(fn, x, init, m)
        return inertia_of(x, c) <= target, wall

    lo, hi = 0, max_iter
    if not reaches(hi)[0]:
        return float("nan"), hi
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


# ------------------------------------------------------------------------------ to faiss
# Clustered data of that measure: blobs with centres uniform in [-1, 1]^d (squared separation
# ~2d/3, far above the noise's spread ~√(8d)); most Lloyd iterations rankwise may run there.
SEPARATED = 1.0
MAX_TO_FAISS = 50


def to_faiss_rows(shapes: str, faiss_iters: int, repeat: int) -> list[list]:
    """Issue 17's measure: faiss-cpu with its own defaults (random init, ``faiss_iters``
    iterations, its 256-points-per-centroid subsample) against rankwise as a user runs it
    (k-means++ seeding + Lloyd, ``n_init=1``, ``tol=0``, seed 0) with the fewest ``max_iter``
    whose inertia is at most faiss's; wall time of each, best of ``repeat`` after a warm-up,
    faiss first. Inertia evaluated here, in float64 over all points, for both."""
    rows = []
    for spec in shapes.split(","):
        n, d, k = (int(v) for v in spec.lower().split("x"))
        x, _ = make_data(n, d, k, a=SEPARATED)
        t_f, target, iters, t_r, got = to_faiss_row(x, k, faiss_iters, repeat)
        speed = f"**{t_f / t_r:.2f}×**" if got <= target else f"not reached in {MAX_TO_FAISS} iterations"
        rows.append([f"({n}, {d}, {k})", t_f, f"{target:.6g}", iters, t_r, f"{got / target - 1:+.2%}", speed])
        print(f"[to-faiss] ({n}, {d}, {k}): faiss {t_f:.3f} s, rankwise {t_r:.3f} s ({iters} it)", file=sys.stderr)
        del x
    return rows


def to_faiss_row(x: np.ndarray, k: int, faiss_iters: int, repeat: int) -> tuple[float, float, int, float, float]:
    """(faiss s, faiss inertia, rankwise iterations, rankwise s, rankwise inertia) on x."""
    import faiss

    import rankwise as rw

    def run_faiss_default() -> np.ndarray:
        km = faiss.Kmeans(x.shape[1], k, niter=faiss_iters, verbose=False)
        km.train(x)
        return km.centroids.copy()

    def run_rw(iters: int) -> np.ndarray:
        return rw.kmeans(x, k, n_init=1, max_iter=iters, tol=0.0, seed=0).centroids

    t_f, c_f = best_of(run_faiss_default, repeat)
    target = inertia_of(x, c_f)
    iters = next((m for m in range(1, MAX_TO_FAISS + 1) if inertia_of(x, run_rw(m)) <= target), MAX_TO_FAISS)
    t_r, c_r = best_of(lambda: run_rw(iters), repeat)
    return t_f, target, iters, t_r, inertia_of(x, c_r)


def best_of(fn: Callable[[], np.ndarray], repeat: int) -> tuple[float, np.ndarray]:
    """The shortest wall time of ``repeat`` runs after a warm-up, and the last result."""
    c = fn()
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        c = fn()
        walls.append(time.perf_counter() - t0)
    return min(walls), c


def to_faiss_section(results: list[tuple[str, dict]], args) -> list[str]:
    rows = next((res["to_faiss"] for _, res in results if "to_faiss" in res), None)
    if not rows:
        return []
    head = (
        f"### Issue 17's measure: wall time to faiss-cpu's {args.faiss_iters} iterations\n\n"
        f"faiss-cpu with its defaults (random init, `niter={args.faiss_iters}`, its subsample of 256 points "
        "per centroid for training); rankwise as a user calls it, `rw.kmeans(x, k, n_init=1, max_iter=m, "
        "tol=0, seed=0)` (k-means++ seeding included), with the fewest m whose inertia is at most faiss's. "
        f"Both with {args.threads} threads, on clustered data (blobs as above but with centres uniform in "
        f"[-{SEPARATED:g}, {SEPARATED:g}]^d: separated clusters); best of {args.repeat} after a warm-up, "
        "faiss first; inertia evaluated by the bench (float64, all points). Target: ≥ 2×."
    )
    headers = ["(n, d, k)", "faiss s", "faiss inertia", "rankwise iterations", "rankwise s"]
    headers += ["rankwise inertia vs faiss", "speed-up"]
    return [head, C.md_table(headers, rows)]


# --------------------------------------------------------------------------------- seeding
def seeding_rows() -> list[list]:
    """Projected vs exact k-means++ seeding: final inertia and time, per data set and k."""
    import rankwise as rw
    from rankwise import _core

    def unit_features(pool_paths: list[Path]) -> np.ndarray:
        pool = rw.AdapterPool.load(pool_paths)
        return pool.unit_features(pool.modules[0], canonical=True)[0]

    data = [
        ("blobs", lambda: make_data(8000, 8192, 64)[0], False),
        ("blobs", lambda: make_data(8000, 2048, 16)[0], False),
        ("500 × llama-7b-qv, module 0 units", lambda: unit_features(C.ensure_pool("llama-7b-qv", 500)), True),
        (
            "200 × llama-7b-qv clustered-16, module 0 units",
            lambda: unit_features(C.ensure_pool("llama-7b-qv", 200, clustered=16)),
            True,
        ),
    ]
    rows = []
    for name, make, si in data:
        x = make()
        for k in (16, 64):
            res = {}
            for proj in (False, True):
                runs = []
                for seed in (0, 1, 2):
                    t0 = time.perf_counter()
                    r = _core.kmeans(x, k, 3, 100, 1e-4, seed, None, si, seed_projection=proj)
                    runs.append((r[2], time.perf_counter() - t0))
                res[proj] = runs
            ratio = [p[0] / e[0] for p, e in zip(res[True], res[False])]
            t_exact = float(np.mean([e[1] for e in res[False]]))
            t_proj = float(np.mean([p[1] for p in res[True]]))
            inertia = float(np.mean([e[0] for e in res[False]]))
            spread = f"{np.mean(ratio):.5f} ({min(ratio):.5f}–{max(ratio):.5f})"
            label = f"{name} ({x.shape[0]} × {x.shape[1]})"
            speed = f"{t_exact / t_proj:.1f}×"
            rows.append([label, k, "yes" if si else "no", f"{inertia:.6g}", spread, t_exact, t_proj, speed])
            print(f"[seeding] {name} k={k}: {rows[-1]}", file=sys.stderr)
        del x
    return rows


# ------------------------------------------------------------------------------------- main
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def blas_kernels() -> str:
    from threadpoolctl import threadpool_info

    names = sorted({f"{i['internal_api']} {i.get('architecture') or '?'}" for i in threadpool_info()})
    return ", ".join(names) or "none"


def child(args) -> dict:
    """One BLAS setting: the peak, numpy's skinny GEMM and every method asked for, per shape."""
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import faiss
    from threadpoolctl import threadpool_limits

    import rankwise as rw

    rw.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    asked = set(args.methods.split(";"))
    methods = {m: METHODS[m] for m in ORDER if m in asked}
    out: dict = {"shapes": {}}
    with threadpool_limits(limits=args.threads):
        out["kernels"] = blas_kernels()
        out["peak"] = gemm_peak(args.threads)
        print(f"[{args.child}] numpy f32 GEMM peak: {out['peak']:.0f} GFLOP/s ({out['kernels']})", file=sys.stderr)
        for spec in args.shapes.split(","):
            n, d, k = (int(v) for v in spec.lower().split("x"))
            x, init = make_data(n, d, k)
            res: dict = {"numpy_skinny": skinny_gemm(x, init), "methods": {}}
            for name, fn in methods.items():
                timed(fn, x, init, args.max_iter)  # warm-up (imports, page faults, thread pools)
                runs = sorted((timed(fn, x, init, args.max_iter) for _ in range(args.repeat)), key=lambda r: r[0])
                wall, cpu, centres, iters = runs[len(runs) // 2]  # the median run (the upper one if even)
                res["methods"][name] = dict(
                    wall=wall, cpu=cpu / args.threads, iters=iters, inertia=inertia_of(x, centres)
                )
                print(f"[{args.child}] ({n}, {d}, {k}) {name}: {wall:.3f} s, {iters} iters", file=sys.stderr)
            if not args.no_tti:
                target = float(args.targets[spec]) if args.targets else None
                for name, fn in methods.items():
                    if target is not None:
                        res["methods"][name]["tti"] = time_to_target(fn, x, init, args.max_iter, target)
            out["shapes"][spec] = res
    if args.to_faiss and "rankwise" in methods and "faiss" in methods:
        with threadpool_limits(limits=args.threads):
            out["to_faiss"] = to_faiss_rows(args.to_faiss, args.faiss_iters, args.repeat)
    if args.seeding and "rankwise" in methods:
        out["seeding"] = seeding_rows()
    import sklearn

    out["versions"] = f"faiss {faiss.__version__}, scikit-learn {sklearn.__version__}"
    return out


def run_children(args, targets: dict | None) -> list[tuple[str, dict]]:
    import json

    base = [str(Path(__file__).resolve()), "--shapes", args.shapes, "--max-iter", str(args.max_iter)]
    base += ["--repeat", str(args.repeat), "--threads", str(args.threads)]
    if args.no_tti or targets is None:
        base.append("--no-tti")
    else:
        base += ["--targets", json.dumps(targets)]
    if targets is None and not args.no_seeding:
        base.append("--seeding")
    base += ["--to-faiss", args.to_faiss if targets is None else "", "--faiss-iters", str(args.faiss_iters)]
    # (label, variables removed, methods); rankwise runs once, it uses no BLAS.
    variants: list[tuple[str, tuple[str, ...], str]] = [("as set", (), ";".join(ORDER))]
    if any(v in os.environ for v in BLAS_VARS):
        variants = [("as set", (), ";".join(PEERS)), ("auto", BLAS_VARS, ";".join(ORDER))]
    out = []
    for label, unset, methods in variants:
        res = C.run_child([*base, "--child", label, "--methods", methods], unset=unset, echo_stderr=True)
        out.append((label, res))
    return out


def render(args, results: list[tuple[str, dict]], total: float, machine: str) -> str:
    headers = ["method", "OpenBLAS kernels", "wall s", "CPU s / thread", "iters", "GFLOP/s per iter"]
    headers += ["inertia (vs best)", "rankwise ×"]
    if not args.no_tti:
        headers.append("time to equal inertia")
    sections = []
    for spec in args.shapes.split(","):
        n, d, k = (int(v) for v in spec.lower().split("x"))
        flop = 2.0 * n * d * k
        rows_in = []
        for label, res in results:
            for name, r in res["shapes"][spec]["methods"].items():
                kernels = "–" if name in RANKWISE else f"{label}: {res['kernels']}"
                rows_in.append((name, kernels, r))
        best = min(r["inertia"] for _, _, r in rows_in)
        rw_tp = next(flop * r["iters"] / r["wall"] for name, _, r in rows_in if name == "rankwise")
        rows = []
        for name, kernels, r in rows_in:
            tp = flop * r["iters"] / r["wall"]
            row = [name, kernels, r["wall"], r["cpu"], r["iters"], tp / 1e9]
            row += [f"{r['inertia']:.6g} ({r['inertia'] / best - 1:+.1e})", f"{rw_tp / tp:.2f}×"]
            if not args.no_tti:
                t, m = r.get("tti", (float("nan"), 0))
                row.append(f"{t:.3g} s ({m} it)")
            rows.append(row)
        skinny = ", ".join(f"{res['shapes'][spec]['numpy_skinny']:.0f} ({label})" for label, res in results)
        head = (
            f"**(n, d, k) = ({n}, {d}, {k})**: {flop / 1e9:.3g} GFLOP per iteration; "
            f"numpy `x @ c.T` alone: {skinny} GFLOP/s"
        )
        sections.append(head + "\n\n" + C.md_table(headers, rows))
    peaks = "; ".join(f"{res['peak']:.0f} GFLOP/s with {label} kernels ({res['kernels']})" for label, res in results)
    return "\n\n".join(
        [
            f"## bench_kmeans ({C.host_kind()[1]}): k-means per Lloyd iteration, rankwise vs faiss vs scikit-learn",
            f"Command: `{C.command_line()}` ({total:.0f} s in all)",
            machine,
            f"{results[0][1]['versions']}; {args.threads} threads for all; numpy float32 GEMM peak measured in "
            f"this run (4096², {args.threads} threads): {peaks}.",
            "Same data (overlapping Gaussian blobs, float32, seed 0; see the script's docstring), "
            "same initial centres (k rows of x), "
            f"`max_iter={args.max_iter}`, `n_init=1`, `tol=0`. GFLOP/s per iteration = 2·n·k·d·iters / wall "
            "seconds (setup counted in the time); for `rankwise` (its distance cache on) that is an effective "
            "rate: the cache skips the dot products of centres that did not move, so it can exceed the GEMM "
            "peak; `rankwise, no distance cache` computes every distance every iteration. faiss always runs "
            "max_iter iterations; rankwise and scikit-learn stop on unchanged labels. 'rankwise ×': rankwise's "
            "per-iteration throughput over the row's. OpenBLAS kernels: 'as set' is this machine's "
            "OPENBLAS_CORETYPE, 'auto' OpenBLAS's own choice for the CPU (the variables removed). Median of "
            f"{args.repeat} runs after a warm-up; 'CPU s / thread' is the process CPU time / threads "
            "(OpenMP spin-waits count).",
            *sections,
            *to_faiss_section(results, args),
            *seeding_section(results),
        ]
    )


def seeding_section(results: list[tuple[str, dict]]) -> list[str]:
    rows = next((res["seeding"] for _, res in results if "seeding" in res), None)
    if not rows:
        return []
    head = (
        "### k-means++ seeding: random projection vs exact distances\n\n"
        "rankwise's seeding takes its dot products in a 128-dimensional random projection for d ≥ 1024 "
        "and k ≥ 16; `seed_projection=False` seeds with exact distances (scikit-learn's greedy k-means++). "
        "Everything else as LEGO runs it: `n_init=3`, `max_iter=100`, `tol=1e-4`, seeds 0, 1, 2 (mean "
        "over seeds; the ratio's range in brackets). Inertia: the k-means objective after Lloyd (modulo "
        "sign for LoRA units). Time: the whole k-means call."
    )
    headers = ["data (n × d)", "k", "modulo sign", "inertia, exact seeding", "projected / exact inertia"]
    headers += ["s, exact", "s, projected", "speed-up"]
    return [head, C.md_table(headers, rows)]


def main() -> None:
    import json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated NxDxK")
    ap.add_argument("--max-iter", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-tti", action="store_true", help="skip the time-to-equal-inertia column")
    ap.add_argument("--write", action="store_true", help="replace the section in benches/RESULTS.md")
    ap.add_argument("--no-seeding", action="store_true", help="skip the projected-vs-exact seeding table")
    ap.add_argument("--seeding", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--to-faiss",
        default="8000x8192x64,8000x2048x16",
        help="shapes of issue 17's measure (seeding + Lloyd to faiss's inertia; empty: skip)",
    )
    ap.add_argument("--faiss-iters", type=int, default=25, help="faiss iterations of that measure")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--methods", default=";".join(METHODS), help=argparse.SUPPRESS)
    ap.add_argument("--targets", type=json.loads, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    t_start = time.perf_counter()
    machine = C.machine_info()
    results = run_children(args, None)
    if not args.no_tti:
        # Targets: the highest final inertia of every row, then each row's time to reach it.
        targets = {}
        for spec in args.shapes.split(","):
            worst = max(r["inertia"] for _, res in results for r in res["shapes"][spec]["methods"].values())
            targets[spec] = worst * (1 + 1e-6)
        tti = run_children(args, targets)
        for (_, res), (_, res_t) in zip(results, tti):
            for spec, sh in res["shapes"].items():
                for name, r in sh["methods"].items():
                    r["tti"] = res_t["shapes"][spec]["methods"][name]["tti"]
    body = render(args, results, time.perf_counter() - t_start, machine)
    print(body)
    if args.write:
        C.write_section(f"bench_kmeans@{C.host_kind()[0]}", body)
        print(f"wrote {C.RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
