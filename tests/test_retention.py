"""Retention of each source by a merge, from Grams, against dense numpy projections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from insight_pools import MODULES, dense, random_adapters, saved_pool
from rankwise.cli import main
from rankwise.retention import retention


def _dense_retention(merged: np.ndarray, src: np.ndarray) -> tuple[float, float]:
    u, s, vt = np.linalg.svd(merged, full_matrices=False)
    k = int(np.sum(s > s[0] * 1e-10))
    p = u[:, :k] @ u[:, :k].T @ src @ vt[:k].T @ vt[:k]
    cos = float(np.sum(merged * src) / (np.linalg.norm(merged) * np.linalg.norm(src)))
    return cos, float(np.linalg.norm(p) / np.linalg.norm(src))


def test_matches_dense_reference_and_overall_sums() -> None:
    pool = rw.AdapterPool(random_adapters(3))
    merged = rw.merge(pool, "svd", svd_rank=2, retention=False)
    ret = retention(pool, merged)
    for m in MODULES:
        dm = dense(merged, m)
        for j, a in enumerate(pool):
            cos, kept = _dense_retention(dm, dense(a, m))
            assert abs(ret["modules"][m]["cos"][j] - cos) < 1e-5
            assert abs(ret["modules"][m]["kept"][j] - kept) < 1e-5
    # Overall: the cosine of the updates concatenated over modules.
    whole_m = np.concatenate([dense(merged, m).ravel() for m in MODULES])
    for j, a in enumerate(pool):
        whole = np.concatenate([dense(a, m).ravel() for m in MODULES])
        cos = whole_m @ whole / (np.linalg.norm(whole_m) * np.linalg.norm(whole))
        assert abs(ret["adapters"][j]["cos"] - cos) < 1e-5


def test_cat_at_full_rank_keeps_every_source_fully() -> None:
    pool = rw.AdapterPool(random_adapters(3))
    ret = rw.merge(pool, "cat", retention=True).merge_info["retention"]
    for m in MODULES:
        np.testing.assert_allclose(ret["modules"][m]["kept"], 1.0, atol=1e-6)
    np.testing.assert_allclose([r["kept"] for r in ret["adapters"]], 1.0, atol=1e-6)


def test_invariant_to_rank_permutation_and_rescaling() -> None:
    pool = rw.AdapterPool(random_adapters(3))
    merged = rw.merge(pool, "svd", svd_rank=3, retention=False)
    rng = np.random.default_rng(7)
    twisted = []
    for a in pool:
        f = {}
        for m in MODULES:
            fa, fb = a.factors(m, folded=True)
            perm, c = rng.permutation(fa.shape[0]), rng.uniform(0.2, 5.0, fa.shape[0]).astype(np.float32)
            f[m] = (fa[perm] * c[:, None], fb[:, perm] / c[None, :])
        twisted.append(rw.Adapter.from_factors(f))
    mf = {}
    for m in MODULES:
        fa, fb = merged.factors(m, folded=True)
        perm, c = rng.permutation(fa.shape[0]), rng.uniform(0.2, 5.0, fa.shape[0]).astype(np.float32)
        mf[m] = (fa[perm] * c[:, None], fb[:, perm] / c[None, :])
    r1 = retention(pool, merged)
    r2 = retention(rw.AdapterPool(twisted), rw.Adapter.from_factors(mf))
    for m in MODULES:
        np.testing.assert_allclose(r1["modules"][m]["cos"], r2["modules"][m]["cos"], atol=1e-5)
        np.testing.assert_allclose(r1["modules"][m]["kept"], r2["modules"][m]["kept"], atol=1e-5)


def test_merge_info_retention_can_be_turned_off() -> None:
    pool = rw.AdapterPool(random_adapters(2))
    assert "retention" not in (rw.merge(pool, "cat", retention=False).merge_info or {})


def test_cli_merge_prints_worst_kept_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(p) for p in saved_pool(tmp_path, 3)]
    assert main(["--threads", "1", "merge", *paths, "--rank", "2", "-o", str(tmp_path / "m"), "-q"]) == 0
    out = capsys.readouterr().out
    rows = out.split("retention, worst kept first (3 of 3 adapters):\n", 1)[1].strip().splitlines()[1:]
    kept = [float(r.split()[0]) for r in rows]
    assert kept == sorted(kept) and sorted(r.split()[2] for r in rows) == sorted(paths)
    assert (tmp_path / "m" / "README.md").is_file()
    assert main(["--threads", "1", "merge", *paths, "-o", str(tmp_path / "n"), "-q", "--no-retention"]) == 0
    assert "retention" not in capsys.readouterr().out
