"""rankwise compare: one pool, several methods, retention side by side (API and CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from insight_pools import saved_pool
from rankwise.cli import main
from rankwise.compare import compare, rank_options
from rankwise.retention import retention


def test_each_method_is_its_own_merge_and_retention(tmp_path: Path) -> None:
    pool = rw.AdapterPool.load(saved_pool(tmp_path, 3))
    res = compare(pool, ["lego", "svd", "cat"], rank=2)
    assert list(res) == ["lego", "svd", "cat"]
    assert res["lego"]["ranks"] == [2] and res["svd"]["ranks"] == [2] and res["cat"]["ranks"] == [6]
    # Each entry is the retention of that method's own merge.
    ref = retention(pool, rw.merge(pool, "svd", svd_rank=2, retention=False))
    assert res["svd"]["retention"]["adapters"] == ref["adapters"]
    # cat is the exact sum: it keeps every source; a rank-2 truncated SVD cannot (6 > 2 directions).
    assert np.allclose([r["kept"] for r in res["cat"]["retention"]["adapters"]], 1.0, atol=1e-6)
    assert min(r["kept"] for r in res["svd"]["retention"]["adapters"]) < 0.99


def test_rank_option_names() -> None:
    assert rank_options("lego", 8) == {"rank": 8}
    assert rank_options("svd", 8) == {"svd_rank": 8}
    assert rank_options("ties", 8) == {}
    assert rank_options("lego", None) == {}


def test_cli_prints_one_row_per_adapter_worst_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(p) for p in saved_pool(tmp_path, 3)]
    assert main(["--threads", "1", "compare", *paths, "--methods", "lego,svd", "--rank", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "lego kept/cos" in lines[0] and "svd kept/cos" in lines[0] and len(lines) == 4
    kept = [float(line.split()[1].split("/")[0]) for line in lines[1:]]
    assert kept == sorted(kept)
    assert main(["--threads", "1", "analyze", *paths, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["adapters"] == paths
    assert main(["--threads", "1", "analyze", *paths, "--json", "--sketch", "4"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {v["method"] for v in d["modules"].values()} == {"sketch 4"}
