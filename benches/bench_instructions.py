#!/usr/bin/env python
"""bench_instructions: a fixed k-means and LEGO merge, for instruction-count A/B runs of two builds.

    POOLDIR=DIR valgrind --tool=callgrind python benches/bench_instructions.py REPS kmeans|lego

Wall time on a shared 2-core host moves by tens of percent with the neighbours' load;
callgrind's instruction count does not (the same binary, input and environment give the same
count). Run each build with REPS = 1 and REPS = 3 under callgrind, one thread
(RANKWISE_NUM_THREADS=1 OMP_NUM_THREADS=1): the difference of the two counts is the cost of two
repetitions without the interpreter's start-up and imports. The k-means is (4000 × 1024, k = 32,
10 Lloyd iterations, n_init = 1); the merge is LEGO at rank 16 (n_init = 1) of the pool in POOLDIR
(tests/raw_adapter.write_pool(DIR, 8, modules=4, d=512, rank=8, seed=0)).
"""

from __future__ import annotations

import os
import sys

import numpy as np

import rankwise as rw


def main() -> None:
    reps, what = int(sys.argv[1]), sys.argv[2]
    rw.set_num_threads(1)
    if what == "kmeans":
        x = np.random.default_rng(0).standard_normal((4000, 1024), dtype=np.float32)
        for _ in range(reps):
            rw.kmeans(x, 32, n_init=1, max_iter=10, tol=0.0, seed=0)
    else:
        d = os.environ["POOLDIR"]
        pool = rw.AdapterPool.load(sorted(os.path.join(d, p) for p in os.listdir(d)))
        for _ in range(reps):
            rw.merge(pool, "lego", rank=16, seed=0, n_init=1)


if __name__ == "__main__":
    main()
