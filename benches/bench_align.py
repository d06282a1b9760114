#!/usr/bin/env python
"""bench_align: how fast is unit alignment, and does aligned seeding help LEGO's k-means?

    python benches/bench_align.py [--ranks 16,64] [--repeat 5] [--quality] [--write]

Part 1, throughput: adapters aligned per second on the ``llama-7b-qv`` shape (32 layers × q/v,
4096 × 4096 modules, 64 modules), at each rank, 2 threads. The pool comes from
``make_pool --clustered r`` (cached under ``RANKWISE_POOLS``): every adapter holds the same r
prototype units per module, permuted, sign-flipped, rescaled and perturbed, so alignment has a
true answer (the "matched" column: mean similarity of the matched units, 1 = exact). Rows:

- core: ``_core.align_factors`` over the 64 module pairs (factors already float32 in memory):
  two r × r Gram GEMMs and one Hungarian per module, parallel across modules;
- align, in memory: ``rw.align(reference, other)`` on in-memory float32 adapters (adds numpy's
  permutation of the factors into the new adapter);
- align, from files: the same on adapters loaded from fp16 safetensors (warm page cache; adds
  reading and fp16 -> fp32 conversion).

Then the wall time of ``rw.merge(pool, "aligned")`` on ``--merge-n`` such adapters from files
(medoid reference search included, and with ``reference=0``).

Part 2 (``--quality``; scikit-learn stands in for the Rust k-means if its binding is missing):
LEGO with ``init="aligned"`` (k = rank, one Lloyd run from the aligned average) against the
default k-means++ seeding (``n_init=3``), on 8 rank-16 adapters of the ``small`` shape
(1024 × 1024, 16 modules): a clustered pool (shared prototype units, as above) and an
unclustered one (independent random adapters). Reported: the k-means objective (inertia, summed
over modules) and the merged delta's relative error against the pool's average delta, with raw
and canonical units, both LEGO scales; the ``aligned`` and ``linear`` merges beside them.

``--write`` replaces the bench_align section of benches/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SHAPE = "llama-7b-qv"


def _in_memory(adapter):
    from rankwise.adapter import Adapter

    factors = {m: tuple(np.ascontiguousarray(f, dtype=np.float32) for f in adapter.factors(m)) for m in adapter.modules}
    return Adapter(adapter.config, adapter.modules, factors=factors)


def throughput(rank: int, repeat: int, threads: int, n_others: int = 3) -> list[list]:
    import rankwise as rw
    from rankwise import _core

    C.set_threads(threads)
    paths = C.ensure_pool(SHAPE, n_others + 1, rank=rank, dtype="f16", clustered=rank)
    C.warm_page_cache([p / "adapter_model.safetensors" for p in paths])
    loaded = [rw.load_adapter(p) for p in paths]
    mem = [_in_memory(a) for a in loaded]
    ref, others = mem[0], mem[1:]
    modules = list(ref.modules)
    pairs = [[(*ref.factors(m), *o.factors(m)) for m in modules] for o in others]

    state = {"i": 0}

    def rotate(fn):
        def run():
            fn(state["i"] % n_others)
            state["i"] += 1

        return run

    scores = [float(np.mean([s for _, _, s in _core.align_factors(p)])) for p in pairs]
    rows = []
    cases = [
        ("core (`_core.align_factors`, 64 modules)", lambda j: _core.align_factors(pairs[j])),
        ("`rw.align`, in-memory f32 adapters", lambda j: rw.align(ref, others[j])),
        ("`rw.align`, adapters loaded from f16 files", lambda j: rw.align(loaded[0], loaded[1 + j])),
    ]
    for label, fn in cases:
        med, times = C.timeit(rotate(fn), repeat=repeat, warmup=1)
        rows.append(
            [rank, label, threads, f"{med * 1e3:.0f}", f"{1 / med:.1f}", f"{1 / min(times):.1f}", f"{min(scores):.3f}"]
        )
        print(
            f"r={rank} {label}: median {med * 1e3:.1f} ms ({', '.join(f'{t * 1e3:.0f}' for t in times)})",
            file=sys.stderr,
        )
    return rows


def merge_time(rank: int, n: int, threads: int) -> list:
    """Wall time of ``rw.merge(pool, "aligned")`` (medoid search included) on n file adapters."""
    import rankwise as rw

    C.set_threads(threads)
    paths = C.ensure_pool(SHAPE, n, rank=rank, dtype="f16", clustered=rank)
    C.warm_page_cache([p / "adapter_model.safetensors" for p in paths])
    pool = rw.AdapterPool.load(paths)
    med, _ = C.timeit(lambda: rw.merge(pool, "aligned"), repeat=3)
    t0 = time.perf_counter()
    ref = rw.merge(pool, "aligned", reference=0)
    fixed = time.perf_counter() - t0
    assert ref.modules
    return [rank, n, threads, f"{med:.2f}", f"{fixed:.2f}"]


# ------------------------------------------------------------------------------------ quality
def _delta_error(merged, pool, weights=None) -> float:
    """‖ΔW_merged − ΔW_avg‖_F / ‖ΔW_avg‖_F over all modules, ΔW_avg the pool's average delta."""
    num = den = 0.0
    for m in pool.modules:
        target = np.mean([a.delta(m).astype(np.float64) for a in pool], axis=0)
        num += float(np.sum((merged.delta(m) - target) ** 2))
        den += float(np.sum(target**2))
        pool.release()
    return (num / den) ** 0.5


def _inertia(x: np.ndarray, labels: np.ndarray, signs: np.ndarray, k: int) -> float:
    """Σ‖s_i·x_i − c_{l_i}‖², c the mean of each cluster's (sign-flipped) members."""
    xs = x.astype(np.float64) * signs[:, None]
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, xs)
    cent = sums / np.maximum(np.bincount(labels, minlength=k), 1)[:, None]
    return float(((xs - cent[labels]) ** 2).sum())


def _sklearn_kmeans(x, k, *, n_init=1, max_iter=300, tol=1e-4, seed=0, init=None):
    """scikit-learn's Lloyd k-means in rw.kmeans' signature: the stand-in while the Rust k-means
    binding is not built."""
    from sklearn.cluster import KMeans

    from rankwise.kmeans import KMeansResult

    km = KMeans(
        k,
        init="k-means++" if init is None else np.asarray(init, np.float64),
        n_init=n_init,
        max_iter=max_iter,
        tol=tol,
        random_state=seed,
        algorithm="lloyd",
    ).fit(np.asarray(x, np.float64))
    return KMeansResult(km.cluster_centers_.astype(np.float32), km.labels_, float(km.inertia_), int(km.n_iter_))


def quality(threads: int) -> tuple[list[list], str]:
    import rankwise as rw
    import rankwise.methods.lego as lego
    from rankwise import _core
    from rankwise.kmeans import sign_invariant_kmeans
    from rankwise.methods import ModuleContext
    from rankwise.methods.aligned import aligned_init

    if hasattr(_core, "kmeans"):
        kmeans, backend = rw.kmeans, "rankwise's Rust k-means"
    else:
        kmeans, backend = (
            _sklearn_kmeans,
            "scikit-learn's Lloyd k-means (stand-in: the Rust k-means binding was not built)",
        )
        lego.kmeans = kmeans
    C.set_threads(threads)
    rows = []
    notes = [f"k-means backend: {backend}."]
    seedings = (("k-means++, n_init=3", None), ("aligned, 1 run", "aligned"))
    for label, clustered in (("clustered", 16), ("independent", None)):
        pool = rw.AdapterPool.load(C.ensure_pool("small", 8, rank=16, dtype="f16", clustered=clustered))
        n = len(pool)
        w = np.ones(n)
        flipped = total = 0
        for canonical in (False, True):
            inertia = {name: 0.0 for name, _ in seedings}
            secs = {name: 0.0 for name, _ in seedings}
            for i, m in enumerate(pool.modules):
                ctx = ModuleContext(pool, m, i, w)
                units = ctx.units(canonical=canonical)
                for name, init_opt in seedings:
                    t0 = time.perf_counter()
                    init = aligned_init(ctx, 16, units, canonical=canonical) if init_opt else None
                    n_init = 1 if init is not None else 3
                    if canonical:  # what LEGO runs on canonical units: k-means modulo sign
                        labels, signs = sign_invariant_kmeans(units, 16, n_init=n_init, max_iter=100, init=init)
                    else:
                        labels = kmeans(units, 16, n_init=n_init, max_iter=100, seed=0, init=init).labels
                        signs = np.ones(len(labels), np.float32)
                    secs[name] += time.perf_counter() - t0
                    inertia[name] += _inertia(units, labels, signs, 16)
                if canonical:
                    blocks = units.reshape(n, 16, -1)
                    _, signs, _ = _core.align_units(blocks[0], blocks[1:], ctx.shape[0])
                    flipped += int((signs < 0).sum())
                    total += signs.size
                pool.release()
            for scale in ("union", "mass"):
                for name, init_opt in seedings:
                    merged = rw.merge(pool, "lego", canonicalize=canonical, scale=scale, init=init_opt, seed=0)
                    rows.append(
                        [label, f"lego, {'canonical' if canonical else 'raw'} units, scale={scale}", name,
                         f"{inertia[name]:.4g}", f"{secs[name]:.2f}", f"{_delta_error(merged, pool):.4g}"]
                    )  # fmt: skip
        t0 = time.perf_counter()
        merged = rw.merge(pool, "aligned")
        el = time.perf_counter() - t0
        rows.append([label, "aligned (medoid reference)", "-", "-", f"{el:.2f}", f"{_delta_error(merged, pool):.4g}"])
        merged = rw.merge(pool, "linear", weights=[1.0 / n] * n)
        rows.append([label, "linear, weights 1/n", "-", "-", "-", f"{_delta_error(merged, pool):.4g}"])
        notes.append(
            f"{label} pool: {flipped} of {total} units matched by alignment have the opposite canonical sign "
            "to their reference unit: the canonical sign rule (largest |a| entry positive) is not stable "
            "under small noise, which is why LEGO clusters canonical units modulo sign."
        )
    return rows, " ".join(notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", default="16,64")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--merge-n", type=int, default=8, help="adapters in the aligned-merge timing")
    ap.add_argument("--quality", action="store_true", help="also run part 2 (LEGO aligned init)")
    ap.add_argument("--write", action="store_true", help="replace the bench_align section of RESULTS.md")
    args = ap.parse_args()
    info = C.machine_info()
    rows = []
    for r in (int(x) for x in args.ranks.split(",")):
        rows += throughput(r, args.repeat, args.threads)
    body = [
        "## Unit alignment (bench_align.py)",
        "",
        f"Command: `{C.command_line()}`",
        "",
        info,
        "",
        f"Adapters aligned per second, `{SHAPE}` shape (64 modules of 4096 × 4096), median of "
        f"{args.repeat} runs after one warm-up; each adapter is aligned onto a reference of the same pool "
        "(`make_pool --clustered r`: permuted, sign-flipped, rescaled, perturbed copies of shared units).",
        "",
        C.md_table(
            [
                "rank",
                "what is timed",
                "threads",
                "ms / adapter",
                "adapters / s",
                "best run, adapters / s",
                "matched (min)",
            ],
            rows,
        ),
    ]
    mrows = [merge_time(r, args.merge_n, args.threads) for r in (int(x) for x in args.ranks.split(","))]
    body += [
        "",
        f'`rw.merge(pool, "aligned")` of {args.merge_n} fp16 adapters loaded from files (same shape; median of 3), '
        "with the medoid reference searched (one delta Gram matrix per module) and with `reference=0`:",
        "",
        C.md_table(["rank", "adapters", "threads", "merge s (medoid)", "merge s (reference=0)"], mrows),
    ]
    if args.quality:
        qrows, note = quality(args.threads)
        body += [
            "",
            '### LEGO seeded by the aligned average (`init="aligned"`)',
            "",
            "8 rank-16 fp16 adapters of the `small` shape (16 modules of 1024 × 1024), k = 16: a `clustered` "
            "pool (`make_pool --clustered 16`: every adapter holds the same 16 units, permuted, sign-flipped, "
            "rescaled and perturbed) and an `independent` one (random adapters). Inertia: the k-means "
            "objective summed over modules (lower is better; modulo sign for canonical units, as LEGO "
            "clusters them), and the clustering time (seconds, all modules, aligned seeding included); "
            "error: the merged delta against the pool's average delta, relative Frobenius norm.",
            "",
            C.md_table(["pool", "merge", "seeding", "inertia", "k-means s", "delta error"], qrows),
            "",
            note,
        ]
    text = "\n".join(body)
    print(text)
    if args.write:
        C.write_section("bench_align", text)


if __name__ == "__main__":
    main()
