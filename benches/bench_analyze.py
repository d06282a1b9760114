"""What ``rw.analyze`` and the merge's retention cost next to the LEGO merge they describe (issue 18).

    python benches/bench_analyze.py                       # 100 x small (8 layers, q/v 1024²), rank 16
    python benches/bench_analyze.py --shape llama-7b-qv --n 500

On one pool from ``make_pool`` (cached under RANKWISE_POOLS): wall time of ``rw.merge(pool,
"lego", rank=16, retention=False)``, of ``retention(pool, merged)`` (what ``retention=True``
adds to it), of ``analyze(pool)`` (similarity and spectra from Grams) and of its two parts;
each the median of ``--repeat`` runs after a warm-up read of every file. Prints a Markdown row
for benches/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import rankwise as rw
from rankwise.analyze import analyze
from rankwise.retention import retention
from rankwise.similarity import similarity
from rankwise.spectrum import spectra


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="small")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    paths = C.ensure_pool(args.shape, args.n, rank=args.rank)
    pool = rw.AdapterPool.load(paths)
    merged = rw.merge(pool, "lego", rank=args.rank, retention=False)  # warm-up: every page read once
    t_lego, _ = C.timeit(lambda: rw.merge(pool, "lego", rank=args.rank, retention=False), repeat=args.repeat)
    t_ret, _ = C.timeit(lambda: retention(pool, merged), repeat=args.repeat)
    t_an, _ = C.timeit(lambda: analyze(pool), repeat=args.repeat)
    t_sim, _ = C.timeit(lambda: similarity(pool), repeat=args.repeat)
    t_spec, _ = C.timeit(lambda: spectra(pool), repeat=args.repeat)
    head = "| pool | threads | LEGO merge s | retention s (÷ merge) | analyze s (÷ merge) | similarity s | spectra s |"
    print(head)
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.n} × `{args.shape}` r{args.rank} | {rw.get_num_threads()} | {t_lego:.2f} | "
        f"{t_ret:.2f} ({t_ret / t_lego:.2f}) | {t_an:.2f} ({t_an / t_lego:.2f}) | {t_sim:.2f} | {t_spec:.2f} |"
    )


if __name__ == "__main__":
    main()
