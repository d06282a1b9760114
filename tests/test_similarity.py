"""Adapter × adapter similarity from Grams against dense numpy deltas."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import rankwise as rw
from insight_pools import MODULES, dense, random_adapters, saved_pool
from rankwise.lowrank import gram, module_pairs, stack, stacked
from rankwise.similarity import similarity


def test_gram_matches_dense_inner_products() -> None:
    pool = rw.AdapterPool(random_adapters(4, ranks=(2, 3, 1, 4)))
    for m in MODULES:
        d = [dense(a, m).ravel() for a in pool]
        ref = np.array([[x @ y for y in d] for x in d])
        np.testing.assert_allclose(gram(module_pairs(pool, m)), ref, rtol=1e-5, atol=1e-8)


def test_cosine_norms_and_overall_match_dense() -> None:
    pool = rw.AdapterPool(random_adapters(3))
    sim = similarity(pool)
    for m in MODULES:
        d = np.stack([dense(a, m).ravel() for a in pool])
        n = np.linalg.norm(d, axis=1)
        np.testing.assert_allclose(sim.norms(m), n, rtol=1e-5)
        np.testing.assert_allclose(sim.cosine(m), (d @ d.T) / np.outer(n, n), rtol=1e-5, atol=1e-7)
    whole = np.stack([np.concatenate([dense(a, m).ravel() for m in MODULES]) for a in pool])
    nw = np.linalg.norm(whole, axis=1)
    np.testing.assert_allclose(sim.cosine(), (whole @ whole.T) / np.outer(nw, nw), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.diag(sim.cosine()), 1.0, rtol=1e-12)


def test_self_similarity_is_one_and_rescaling_invariant() -> None:
    """An adapter with itself, and with a copy whose units are permuted and rescaled (c·b, a/c)."""
    a = random_adapters(1, ranks=(3,))[0]
    rng = np.random.default_rng(5)
    twisted = {}
    for m in MODULES:
        fa, fb = a.factors(m, folded=True)
        perm, c = rng.permutation(fa.shape[0]), rng.uniform(0.2, 5.0, fa.shape[0]).astype(np.float32)
        twisted[m] = (fa[perm] / c[:, None], fb[:, perm] * c[None, :])
    neg = {m: (fa, -fb) for m, (fa, fb) in twisted.items()}
    pool = rw.AdapterPool([a, rw.Adapter.from_factors(twisted), rw.Adapter.from_factors(neg)])
    c = similarity(pool).cosine()
    np.testing.assert_allclose(c, [[1, 1, -1], [1, 1, -1], [-1, -1, 1]], atol=1e-6)


def test_a_zero_adapter_has_cosine_zero_not_nan() -> None:
    a = random_adapters(1)[0]
    zero = rw.Adapter.from_factors(
        {m: (np.zeros_like(x), np.zeros_like(y)) for m in MODULES for x, y in [a.factors(m)]}
    )
    c = similarity(rw.AdapterPool([a, zero])).cosine()
    assert np.all(np.isfinite(c)) and c[0, 1] == 0.0 and c[1, 1] == 0.0


def test_stacked_from_files_equals_the_per_adapter_reads(tmp_path: Path) -> None:
    """The core's unit-matrix path and the per-adapter path give the same stacked factors."""
    files = rw.AdapterPool.load(saved_pool(tmp_path, 3))
    memory = rw.AdapterPool(random_adapters(3))
    for m in MODULES:
        (a1, b1), r1 = stacked(files, m)
        a2, b2 = stack(module_pairs(memory, m))
        assert r1 == memory.ranks(m)
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(b1, b2)
