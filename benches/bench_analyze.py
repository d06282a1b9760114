"""What ``rw.analyze`` and the merge's retention cost next to the LEGO merge they describe (issue 18).

    python benches/bench_analyze.py                       # 100 x small (8 layers, q/v 1024²), rank 16
    python benches/bench_analyze.py --exact                           # + exact analyze, sketch errors
    python benches/bench_analyze.py --shape llama-7b-qv --n 500

On one pool from ``make_pool`` (cached under RANKWISE_POOLS): wall time of ``rw.merge(pool,
"lego", rank=16, retention=False)``, of ``retention(pool, merged)`` (what ``retention=True``
adds to it), of ``analyze(pool)`` (exact Grams up to ``EXACT_UNITS`` units per module, random
projections beyond), with ``--exact`` also of ``analyze(pool, sketch=0)`` and the sketch's
largest errors against it, with ``--clusters k`` of ``analyze(pool, clusters=k)``; each the
median of ``--repeat`` runs after a warm-up read of every file. Prints a Markdown row for
benches/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np

import _common as C
import rankwise as rw
from rankwise.analyze import Analysis, analyze
from rankwise.retention import retention


def errors(est: Analysis, ref: Analysis) -> str:
    """Largest |cosine error|, relative energy error and relative error of the top singular value."""
    cos = max(float(np.abs(est.similarity.cosine(m) - ref.similarity.cosine(m)).max()) for m in ref.modules)
    en = max(abs(est.energy[m] / ref.energy[m] - 1) for m in ref.modules)
    top = max(abs(est.spectra[m][0] / ref.spectra[m][0] - 1) for m in ref.modules)
    return f"{cos:.3f} / {en:.3f} / {top:.3f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="small")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--exact", action="store_true", help="also time analyze(sketch=0) and report the sketch's errors")
    p.add_argument("--clusters", type=int, default=None, help="also time analyze(clusters=k)")
    args = p.parse_args(argv)
    paths = C.ensure_pool(args.shape, args.n, rank=args.rank)
    pool = rw.AdapterPool.load(paths)
    merged = rw.merge(pool, "lego", rank=args.rank, retention=False)  # warm-up: every page read once
    t_lego, _ = C.timeit(lambda: rw.merge(pool, "lego", rank=args.rank, retention=False), repeat=args.repeat)
    t_ret, _ = C.timeit(lambda: retention(pool, merged), repeat=args.repeat)
    t_an, _ = C.timeit(lambda: analyze(pool), repeat=args.repeat)
    rep = analyze(pool)
    how = ", ".join(sorted(set(rep.methods.values())))
    cells = [f"{t_ret:.2f} ({t_ret / t_lego:.2f})", f"{t_an:.2f} ({t_an / t_lego:.2f})"]
    head = ["retention s (÷ merge)", f"analyze s (÷ merge) [{how}]"]
    if args.clusters:
        t_cl, _ = C.timeit(lambda: analyze(pool, clusters=args.clusters), repeat=args.repeat)
        head.append(f"analyze clusters={args.clusters} s (÷ merge)")
        cells.append(f"{t_cl:.2f} ({t_cl / t_lego:.2f})")
    if args.exact:
        t_ex, _ = C.timeit(lambda: analyze(pool, sketch=0), repeat=args.repeat)
        head += ["exact analyze s (÷ merge)", "sketch err: cos / energy / top s.v."]
        cells += [f"{t_ex:.2f} ({t_ex / t_lego:.2f})", errors(rep, analyze(pool, sketch=0))]
    print("| pool | threads | LEGO merge s | " + " | ".join(head) + " |")
    print("|---" * (3 + len(head)) + "|")
    print(
        f"| {args.n} × `{args.shape}` r{args.rank} | {rw.get_num_threads()} | {t_lego:.2f} | "
        + " | ".join(cells)
        + " |"
    )


if __name__ == "__main__":
    main()
