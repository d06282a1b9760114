"""Singular values of the summed update from QRs of the factors, against dense numpy SVD."""

from __future__ import annotations

import numpy as np

import rankwise as rw
from insight_pools import MODULES, dense, random_adapters
from rankwise.lowrank import thin_svd
from rankwise.spectrum import energy_rank, singular_values, spectra


def test_singular_values_match_dense_svd() -> None:
    pool = rw.AdapterPool(random_adapters(3))
    w = [1.0, -0.5, 2.0]
    for m in MODULES:
        ref = np.linalg.svd(sum(wj * dense(a, m) for a, wj in zip(pool, w)), compute_uv=False)
        s = singular_values(pool, m, w)
        np.testing.assert_allclose(s, ref[: s.size], rtol=1e-5)
        assert np.all(ref[s.size :] < 1e-4 * ref[0])  # what was dropped is numerically zero
    # Σ ranks = 6 < 10 = min(d_out, d_in) for q_proj: the sum has rank 6 generically.
    assert spectra(pool)[MODULES[0]].size == 6


def test_energy_rank() -> None:
    s = np.array([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert energy_rank(s, 0.5) == 1
    assert energy_rank(s, 0.9) == 2  # 13/14 = 0.93
    assert energy_rank(s, 0.99) == 3
    assert energy_rank(s, 1.0) == 3
    assert energy_rank(np.zeros(3), 0.9) == 0


def test_thin_svd_when_the_rank_exceeds_a_side() -> None:
    """r = 9 units on a 4 × 7 module: both Grams are rank deficient."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((9, 7)), rng.standard_normal((4, 9))
    u, s, vt = thin_svd((a, b))
    np.testing.assert_allclose(s, np.linalg.svd(b @ a, compute_uv=False), rtol=1e-10)
    np.testing.assert_allclose(u @ np.diag(s) @ vt, b @ a, atol=1e-10)


def test_values_only_agree_with_the_full_route() -> None:
    rng = np.random.default_rng(4)
    for r, d_out, d_in in [(5, 12, 10), (9, 4, 7), (3, 20, 2)]:
        pair = (rng.standard_normal((r, d_in)), rng.standard_normal((d_out, r)))
        np.testing.assert_allclose(thin_svd(pair, vectors=False)[1], thin_svd(pair)[1], rtol=1e-8)
