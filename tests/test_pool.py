"""AdapterPool (pool.py): validation of adapters against each other, and the unit matrices it
reads from the mapped files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from peft_factory import make_adapter
from precision import assert_within, delta64, gamma
from raw_adapter import A_KEY, B_KEY, good_header, write_raw


def test_pool_with_mismatched_module_sets(tmp_path: Path) -> None:
    a = make_adapter(tmp_path / "a", r=2, target_modules=["q_proj", "v_proj"])
    b = make_adapter(tmp_path / "b", r=2, target_modules=["q_proj"])
    with pytest.raises(
        rw.IncompatibleAdaptersError, match=r"/b: lacks 2 module\(s\) of .*/a, e.g. 'model.layers.0.self_attn.v_proj'"
    ):
        rw.AdapterPool.load([a, b])


def test_pool_with_mismatched_dims(tmp_path: Path) -> None:
    header, data = good_header()
    a = write_raw(tmp_path / "a", header, data)
    header2 = {
        A_KEY: {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]},
        B_KEY: {"dtype": "F32", "shape": [6, 2], "data_offsets": [32, 80]},
    }
    b = write_raw(tmp_path / "b", header2, np.ones(20, dtype=np.float32).tobytes())
    with pytest.raises(
        rw.IncompatibleAdaptersError, match=r"/b: module 'model.layers.0.self_attn.q_proj' is 6×4 .* it is 4×4"
    ):
        rw.AdapterPool.load([a, b])


def test_pool_glob_matching_nothing_and_empty_pool(tmp_path: Path) -> None:
    with pytest.raises(rw.RankwiseError, match="matches no adapter folder"):
        rw.AdapterPool.load(str(tmp_path / "zz*"))
    with pytest.raises(rw.OptionError, match="no adapter folders"):
        rw.AdapterPool.load([])


def test_pool_loads_mixed_ranks_and_reads_units(tmp_path: Path) -> None:
    dirs = [
        make_adapter(tmp_path / f"a{i}", seed=i, r=r, target_modules=["q_proj", "v_proj"])
        for i, r in enumerate((2, 4, 3))
    ]
    pool = rw.AdapterPool.load(str(tmp_path / "a*"))
    assert [a.path for a in pool] == dirs
    name = pool.modules[0]
    assert pool.ranks(name) == [2, 4, 3]
    w = [0.5, 1.0, 2.0]
    units, ranks = pool.unit_matrix(name, w)
    d_out, d_in = pool.shape(name)
    assert units.shape == (9, d_out + d_in) and ranks == [2, 4, 3]
    # Concatenation-summation: Σ rows b aᵀ = Σ_j w_j ΔW_j, in float64 from the float32 data. The
    # core rounds each b entry twice (the fold w_j·s_j to float32, then the product by it); a
    # third γ covers the float64 sums.
    ub, ua = units[:, :d_out], units[:, d_out:]
    got = delta64(ua, ub.T)
    want = sum(wj * delta64(*a.factors(name), a.modules[name].scaling) for wj, a in zip(w, pool))
    assert_within(got, want, gamma(3) * (np.abs(ub.T.astype(np.float64)) @ np.abs(ua.astype(np.float64))), name)


@pytest.mark.parametrize("canonical", [False, True])
def test_unit_features_are_normalized_units_and_fill_a_given_buffer(
    mixed_pool: rw.AdapterPool, canonical: bool
) -> None:
    # Reference: the unit matrix (raw or canonical), normalized part by part in numpy.
    w = [0.5, 2.0, -1.0]
    for m in mixed_pool.modules:
        d_out = mixed_pool.shape(m)[0]
        units = mixed_pool.unit_matrix(m, w, canonical=canonical)[0].astype(np.float64)
        x, norms = mixed_pool.unit_features(m, w, canonical=canonical)
        want_norms = np.stack([np.linalg.norm(units[:, :d_out], axis=1), np.linalg.norm(units[:, d_out:], axis=1)], 1)
        np.testing.assert_allclose(norms, want_norms, rtol=1e-5)
        np.testing.assert_allclose(x[:, :d_out] * norms[:, :1], units[:, :d_out], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(x[:, d_out:] * norms[:, 1:], units[:, d_out:], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.linalg.norm(x[:, :d_out], axis=1), 1.0, rtol=1e-5)
        # The same bytes written into a dirty caller buffer, which is what comes back: from one
        # set of mapped files, and from adapters loaded one by one (one core call each).
        separate = rw.AdapterPool([rw.load_adapter(a.path) for a in mixed_pool])
        for pool in (mixed_pool, separate):
            buf = np.full(x.shape, np.nan, dtype=np.float32)
            got, got_norms = pool.unit_features(m, w, canonical=canonical, out=buf)
            assert got is buf
            assert got.tobytes() == x.tobytes() and got_norms.tobytes() == norms.tobytes()
            buf = np.full(units.shape, np.nan, dtype=np.float32)
            got_units = pool.unit_matrix(m, w, canonical=canonical, out=buf)[0]
            assert got_units is buf and got_units.tobytes() == units.astype(np.float32).tobytes()
        with pytest.raises(rw.OptionError, match=r"out has shape \(\d+, \d+\), expected"):
            mixed_pool.unit_features(m, w, canonical=canonical, out=np.empty((x.shape[0] + 1, x.shape[1]), np.float32))


def test_a_pool_needs_an_adapter() -> None:
    with pytest.raises(rw.OptionError, match="needs at least one adapter"):
        rw.AdapterPool([])
