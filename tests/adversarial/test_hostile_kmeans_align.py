"""Hostile arguments to the core's k-means, alignment, cluster means and thread pool: every one
an OptionError naming the argument, never an OverflowError, crash or hang; k-means on data at
extreme scales clusters as the data at scale 1 does. Each case runs in a child (``harness``)."""

from __future__ import annotations

import pytest
from harness import expect_error, expect_ok

PRELUDE = (
    "import numpy as np, rankwise as rw\nfrom rankwise import _core\n"
    "x = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)\n"
)

KMEANS = {
    "k=-1": ("rw.kmeans(x, -1)", "k must be an integer in 1\\.\\.2\\*\\*64, got -1"),
    "k=0": ("rw.kmeans(x, 0)", "k must be an integer in 1\\.\\.2\\*\\*64, got 0"),
    "k > n": ("rw.kmeans(x, 41)", "k=41 is larger than the n=40 points"),
    "k=2**70": ("rw.kmeans(x, 2**70)", r"k must be an integer in 1\.\.2\*\*64, got 1180591620717411303424"),
    "NaN in x": ("x[7, 2] = np.nan\nrw.kmeans(x, 3)", r"non-finite value \(NaN\) at row 7, column 2"),
    "inf in x": ("x[3, 0] = -np.inf\nrw.kmeans(x, 3)", r"non-finite value \(-inf\) at row 3, column 0"),
    "n=0": ("rw.kmeans(np.zeros((0, 3), np.float32), 1)", "k=1 is larger than the n=0 points"),
    "d=0": ("rw.kmeans(np.zeros((5, 0), np.float32), 1)", r"at least one feature \(d=0\)"),
    "seed=-1": ("rw.kmeans(x, 3, seed=-1)", r"seed must be an integer in 0\.\.2\*\*64, got -1"),
    "seed=2**70": (
        "rw.kmeans(x, 3, seed=2**70)",
        r"seed must be an integer in 0\.\.2\*\*64, got 1180591620717411303424",
    ),
    "n_init=0": ("rw.kmeans(x, 3, n_init=0)", "n_init must be an integer in 1\\.\\.2\\*\\*64, got 0"),
    "max_iter=-5": ("rw.kmeans(x, 3, max_iter=-5)", "max_iter must be an integer in 1\\.\\.2\\*\\*64, got -5"),
    "tol=NaN": ("rw.kmeans(x, 3, tol=float('nan'))", "tol must be a finite number >= 0"),
    "tol<0": ("rw.kmeans(x, 3, tol=-1.0)", "tol must be a finite number >= 0"),
    "init NaN": (
        "c = x[:3].copy(); c[1, 1] = np.nan\nrw.kmeans(x, 3, init=c)",
        r"init has a non-finite value \(NaN\) at row 1, column 1",
    ),
    "init wrong shape": ("rw.kmeans(x, 3, init=x[:2])", r"init has shape \[2, 3\], expected \(k, d\) = \(3, 3\)"),
    "x 1-D": ("rw.kmeans(x[0], 2)", "x must be 2-D"),
    "core k=-1": ("_core.kmeans(x, -1)", "k must be an integer in 1\\.\\.2\\*\\*64, got -1"),
    "core seed=-1": ("_core.kmeans(x, 2, seed=-1)", "seed must be an integer in 0..2"),
}


@pytest.mark.parametrize("name", list(KMEANS))
def test_kmeans_bad_argument_is_an_option_error(name: str) -> None:
    code, match = KMEANS[name]
    expect_error(PRELUDE + code, "OptionError", match)


SCALE = """
import numpy as np, rankwise as rw
rng = np.random.default_rng(1)
centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], np.float32)
x = np.concatenate([c + rng.standard_normal((25, 3)).astype(np.float32) for c in centres])
rng.shuffle(x)
ref = rw.kmeans(x, 4, n_init=3, seed=5)

def same_partition(a, b):
    # The same clusters, whatever their numbers: one label maps to one label both ways.
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))

assert len(set(ref.labels.tolist())) == 4
"""


@pytest.mark.parametrize("scale", ["1e-25", "1e30", "-1e30", "2.0**-100", "2.0**100", "3e-38"])
def test_kmeans_is_scale_equivariant_at_extreme_scales(scale: str) -> None:
    """x·s clusters as x does (one cluster per blob, not everything in one), with centres s·c
    and inertia s²·I; a power-of-two scale gives the same labels bit for bit."""
    code = SCALE + (
        f"s = {scale}\n"
        "xs = (x.astype(np.float64) * s).astype(np.float32)\n"
        "assert np.isfinite(xs).all()\n"
        "r = rw.kmeans(xs, 4, n_init=3, seed=5)\n"
        "assert same_partition(ref.labels, r.labels), np.bincount(r.labels)\n"
        "assert np.isfinite(r.centroids).all() and np.isfinite(r.inertia)\n"
        "np.testing.assert_allclose(r.centroids.astype(np.float64) / s, ref.centroids, rtol=1e-4, atol=1e-4)\n"
        "np.testing.assert_allclose(r.inertia / (s * s), ref.inertia, rtol=1e-4)\n"
        "if np.log2(abs(s)) == int(np.log2(abs(s))) and s > 0:\n"
        "    assert np.array_equal(r.labels, ref.labels)\n"
    )
    expect_ok(code)


def test_kmeans_huge_values_with_init_scale_too() -> None:
    code = SCALE + (
        "init = ref.centroids * np.float32(1e30)\n"
        "r = rw.kmeans(x * np.float32(1e30), 4, init=init)\n"
        "assert same_partition(ref.labels, r.labels)\n"
        "np.testing.assert_allclose(r.centroids / np.float32(1e30), ref.centroids, rtol=1e-4, atol=1e-4)\n"
    )
    expect_ok(code)


def test_sign_invariant_kmeans_at_scale_1e30() -> None:
    code = SCALE + (
        "from rankwise.kmeans import sign_invariant_kmeans\nlab1, s1 = sign_invariant_kmeans(x, 4, seed=2)\n"
        "lab2, s2 = sign_invariant_kmeans(x * np.float32(1e30), 4, seed=2)\n"
        "assert same_partition(lab1, lab2)\n"
    )
    expect_ok(code)


THREADS = {
    "10000": (
        "rw.set_num_threads(10000)",
        r"number of threads 10000 is above the limit of \d+ \(4 × the \d+ available cores\)",
    ),
    "-1": ("rw.set_num_threads(-1)", "non-negative int"),
    "core -1": ("_core.set_num_threads(-1)", "number of threads must be an integer in 0..2"),
    "core 2**70": (
        "_core.set_num_threads(2**70)",
        r"number of threads must be an integer in 0\.\.2\*\*64, got 1180591620717411303424",
    ),
}


@pytest.mark.parametrize("name", list(THREADS))
def test_thread_count_out_of_range_returns_promptly(name: str) -> None:
    code, match = THREADS[name]
    expect_error(PRELUDE + code, "OptionError", match, timeout=20)


def test_thread_count_at_the_cap_works_and_restores() -> None:
    code = PRELUDE + (
        "import os\n"
        "cap = 4 * len(os.sched_getaffinity(0))\n"
        "rw.set_num_threads(cap)\n"
        "assert rw.get_num_threads() == cap\n"
        "rw.kmeans(x, 3)\n"
        "rw.set_num_threads(0)\n"
    )
    expect_ok(code, timeout=30)


def test_thread_env_variable_is_capped() -> None:
    code = (
        "import os\nos.environ['RANKWISE_NUM_THREADS'] = '100000'\nimport rankwise as rw\n"
        "assert rw.get_num_threads() == 4 * len(os.sched_getaffinity(0))\n"
    )
    expect_ok(code, timeout=30)


ALIGN = {
    "hungarian NaN": ("c = np.ones((3, 3)); c[1, 2] = np.nan\n_core.hungarian(c)", "OptionError", "finite|NaN"),
    "hungarian inf": ("c = np.ones((3, 3)); c[0, 0] = np.inf\n_core.hungarian(c)", "OptionError", "finite|inf"),
    "hungarian not square": ("_core.hungarian(np.ones((2, 3)))", "OptionError", "square|2.*3"),
    "align_factors shape mismatch": (
        "a = np.ones((2, 4), np.float32); b = np.ones((4, 2), np.float32)\n"
        "_core.align_factors([(a, b, np.ones((3, 4), np.float32), np.ones((4, 3), np.float32))])",
        "RankwiseError",
        "rank|shape",
    ),
    "align_factors NaN": (
        "a = np.ones((2, 4), np.float32); b = np.ones((4, 2), np.float32); a2 = a.copy(); a2[0, 0] = np.nan\n"
        "_core.align_factors([(a, b, a2, b)])",
        "OptionError",
        "finite|NaN",
    ),
    "align_factors unknown similarity": (
        "a = np.ones((2, 4), np.float32); b = np.ones((4, 2), np.float32)\n"
        "_core.align_factors([(a, b, a, b)], 'bogus')",
        "OptionError",
        "bogus",
    ),
    "align_units d_out too big": (
        "_core.align_units(np.ones((2, 5), np.float32), np.ones((1, 2, 5), np.float32), 9)",
        "OptionError",
        "d_out",
    ),
    "cluster_means label out of range": (
        "_core.cluster_means(np.ones((3, 4), np.float32), np.array([0, 5, 1]), np.ones(3, np.float32), 2, 2)",
        "OptionError",
        r"label 5 of row 1 is not in 0\.\.2",
    ),
    "cluster_means negative label": (
        "_core.cluster_means(np.ones((3, 4), np.float32), np.array([0, -1, 1]), np.ones(3, np.float32), 2, 2)",
        "OptionError",
        r"label -1 of row 1",
    ),
    "gram_top_k d_out too big": (
        "_core.gram_top_k(np.ones((2, 5), np.float32), 9, np.ones(2), 1)",
        "OptionError",
        "d_out = 9 exceeds",
    ),
    "gram_top_k NaN fold": (
        "_core.gram_top_k(np.ones((2, 10), np.float32), 5, np.array([1.0, np.nan]), 1)",
        "OptionError",
        r"fold\[1\] is not finite",
    ),
}


@pytest.mark.parametrize("name", list(ALIGN))
def test_align_and_assembly_bad_arguments(name: str) -> None:
    code, exc, match = ALIGN[name]
    expect_error(PRELUDE + code, exc, match)
