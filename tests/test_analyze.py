"""rw.analyze: the report's numbers agree with the modules it is built from and with dense numpy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from insight_pools import MODULES, dense, saved_pool
from rankwise.analyze import analyze


def test_report_agrees_with_dense_and_round_trips_json(tmp_path: Path) -> None:
    pool = rw.AdapterPool.load(saved_pool(tmp_path, 3))
    rep = analyze(pool, clusters=2)
    d = json.loads(rep.to_json())
    assert d["adapters"] == [str(a.path) for a in pool]
    for m in MODULES:
        total = sum(dense(a, m) for a in pool)
        s = np.linalg.svd(total, compute_uv=False)
        got = d["modules"][m]["singular_values"]
        np.testing.assert_allclose(got, s[: len(got)], rtol=1e-5)
        e = np.cumsum(s**2) / np.sum(s**2)
        assert d["modules"][m]["energy_ranks"]["90%"] == int(np.argmax(e >= 0.9) + 1)
        assert d["modules"][m]["suggested_rank"] == d["modules"][m]["energy_ranks"]["90%"]
        np.testing.assert_allclose(d["modules"][m]["norms"], [np.linalg.norm(dense(a, m)) for a in pool], rtol=1e-5)
        comp = np.array(d["modules"][m]["clusters"])
        # Every unit lands in one cluster: the columns add up to each adapter's rank.
        assert comp.shape == (2, 3) and comp.sum(axis=0).tolist() == pool.ranks(m)
    assert "3 adapters, 2 modules" in rep.summary()


def test_clusters_separate_two_distinct_groups(tmp_path: Path) -> None:
    """Adapters 0, 1 share their units' directions (up to noise and sign), adapter 2 differs:
    k-means with k = 2 units' worth puts adapters 0 and 1 together and 2 apart."""
    rng = np.random.default_rng(3)
    m = MODULES[0]
    b0, a0 = rng.standard_normal((12, 1)), rng.standard_normal((1, 10))
    b2, a2 = rng.standard_normal((12, 1)), rng.standard_normal((1, 10))
    paths = []
    for j, (b, a) in enumerate([(b0, a0), (-b0 * 1.1, -a0), (b2, a2)]):
        f = {m: ((a + 0.01 * rng.standard_normal(a.shape)).astype(np.float32), b.astype(np.float32))}
        paths.append(rw.Adapter.from_factors(f).save(tmp_path / f"g{j}"))
    comp = analyze(rw.AdapterPool.load(paths), clusters=2).clusters[m]
    together = comp[:, 0] > 0
    assert np.array_equal(comp[:, 1] > 0, together) and not np.any(comp[together, 2])


def _structured_pool(root: Path, n: int = 12, r: int = 4, seed: int = 5) -> list[Path]:
    """Half the adapters share one strong rank-1 direction (cosines ~0.5-0.9), half are random."""
    rng = np.random.default_rng(seed)
    m = MODULES[0]
    d_out, d_in = 96, 80
    u, v = rng.standard_normal((d_out, 1)), rng.standard_normal((1, d_in))
    paths = []
    for j in range(n):
        a = rng.standard_normal((r, d_in)) * 0.3
        b = rng.standard_normal((d_out, r)) * 0.3
        if j % 2 == 0:
            a[0], b[:, 0] = v[0] * 2, u[:, 0] * (1 + j / n)
        f = {m: (a.astype(np.float32), b.astype(np.float32))}
        paths.append(rw.Adapter.from_factors(f).save(root / f"s{j}"))
    return paths


def test_sketch_estimates_the_exact_analysis(tmp_path: Path) -> None:
    """Random projections (size 32 on 96 × 80 modules): norms exact, cosines, energy and the top
    singular values close to the exact Gram route's, which agrees with dense numpy."""
    pool = rw.AdapterPool.load(_structured_pool(tmp_path))
    m = MODULES[0]
    ex, sk = analyze(pool, sketch=0), analyze(pool, sketch=32, seed=1)
    assert ex.methods[m] == "exact" and sk.methods[m] == "sketch 32"
    dense_w = [dense(a, m) for a in pool]
    ref = np.array([[np.sum(x * y) for y in dense_w] for x in dense_w])
    np.testing.assert_allclose(ex.similarity.inner[m], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sk.similarity.norms(m), np.sqrt(np.diag(ref)), rtol=1e-5)
    c_ref = ref / np.sqrt(np.outer(np.diag(ref), np.diag(ref)))
    c_sk = sk.similarity.cosine(m)
    np.testing.assert_allclose(np.diag(c_sk), 1.0, atol=1e-6)
    assert np.abs(c_sk - c_ref).max() < 0.15 and c_ref[0, 2] > 0.4 and c_sk[0, 2] > 0.4
    s_ref = np.linalg.svd(sum(dense_w), compute_uv=False)
    assert abs(sk.energy[m] / np.sum(s_ref**2) - 1) < 0.15
    np.testing.assert_allclose(sk.spectra[m][:2], s_ref[:2], rtol=0.05)


def test_auto_picks_exact_for_small_modules_and_sketch_beyond(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    an = sys.modules["rankwise.analyze"]  # rankwise.analyze is also the function's name
    pool = rw.AdapterPool.load(saved_pool(tmp_path, 3))
    assert set(analyze(pool).methods.values()) == {"exact"}
    monkeypatch.setattr(an, "EXACT_UNITS", 0)
    monkeypatch.setattr(an, "SKETCH_SIZE", 4)
    rep = analyze(pool)
    assert set(rep.methods.values()) == {"sketch 4"}
    d = json.loads(rep.to_json())
    for m in MODULES:
        # Top values only: the 90% rank is known (an int) or beyond them (None), never wrong-typed.
        r90 = d["modules"][m]["energy_ranks"]["90%"]
        assert r90 is None or 1 <= r90 <= len(d["modules"][m]["singular_values"])
    assert "estimated from random projections" in rep.summary()


def test_every_module_has_a_composition_and_an_inertia_curve(tmp_path: Path) -> None:
    pool = rw.AdapterPool.load(saved_pool(tmp_path, 3))
    d = json.loads(analyze(pool, clusters=2).to_json())
    for m in MODULES:
        curve = d["modules"][m]["inertia_curve"]
        ks = [p["k"] for p in curve]
        assert ks == sorted(ks) and ks[0] == 1 and 2 in ks and ks[-1] <= sum(pool.ranks(m))
        assert d["modules"][m]["suggested_k"] in [*ks, None]
        assert np.array(d["modules"][m]["clusters"]).sum(axis=0).tolist() == pool.ranks(m)


def test_suggested_k_is_the_number_of_shared_directions(tmp_path: Path) -> None:
    """8 adapters whose rank-4 units are the same 4 directions (permuted, sign-flipped, rescaled,
    plus noise): the inertia-vs-k curve of the units has its knee at k = 4."""
    rng = np.random.default_rng(7)
    m = MODULES[0]
    bs, as_ = rng.standard_normal((4, 24)), rng.standard_normal((4, 20))
    paths = []
    for j in range(8):
        p, s, c = rng.permutation(4), rng.choice([-1.0, 1.0], 4), rng.uniform(0.5, 2.0, 4)
        b = (bs[p] * (s * c)[:, None]).T + 0.02 * rng.standard_normal((24, 4))
        a = as_[p] * (s / c)[:, None] + 0.02 * rng.standard_normal((4, 20))
        paths.append(
            rw.Adapter.from_factors({m: (a.astype(np.float32), b.astype(np.float32))}).save(tmp_path / f"k{j}")
        )
    rep = analyze(rw.AdapterPool.load(paths), clusters=4)
    assert rep.suggested_k(m) == 4
    # Each cluster is one shared direction: it holds one unit of every adapter.
    assert rep.clusters[m].tolist() == [[1] * 8] * 4


def test_bad_options_are_option_errors(tmp_path: Path) -> None:
    pool = rw.AdapterPool.load(saved_pool(tmp_path, 2))
    for kw in ({"sketch": -1}, {"sketch": 2.5}, {"clusters": 0}, {"clusters": True}):
        with pytest.raises(rw.errors.OptionError, match=next(iter(kw))):
            analyze(pool, **kw)  # type: ignore[arg-type]
