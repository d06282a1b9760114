"""rw.analyze: the report's numbers agree with the modules it is built from and with dense numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

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
