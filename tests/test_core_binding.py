"""The binding's array policy (rust/py/src/arrays.rs), function by function: an input in
Fortran order or with strides gives the result of the C-contiguous one, which matches a numpy
reference; an ``out=`` that is not a writeable C-contiguous array of the result's dtype and
shape raises a ValueError (``MergeConfigError``) and is left untouched."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import rankwise as rw
from rankwise import _core

RNG = np.random.default_rng(20261207)


def strided(a: np.ndarray) -> np.ndarray:
    """`a`'s values in a view with every stride doubled (not contiguous in any order)."""
    big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
    view = big[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    return view


def layouts(a: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """`a` as a Fortran-ordered array and as a strided view (2-D and up: Fortran order is a
    different memory order; 1-D: only the strided view differs)."""
    assert a.flags.c_contiguous
    if a.ndim >= 2:
        f = np.asfortranarray(a)
        assert not f.flags.c_contiguous
        yield "fortran", f
    s = strided(a)
    assert not s.flags.c_contiguous and not s.flags.f_contiguous
    yield "strided", s


def test_layout_helpers_make_what_they_say() -> None:
    a = RNG.standard_normal((3, 4)).astype(np.float32)
    for _, v in layouts(a):
        np.testing.assert_array_equal(v, a)


# ---- alignment ------------------------------------------------------------------------------


def test_hungarian_any_layout() -> None:
    cost = RNG.standard_normal((6, 6))
    want = _core.hungarian(cost)
    best = min(itertools.permutations(range(6)), key=lambda p: sum(cost[i, j] for i, j in enumerate(p)))
    assert want.tolist() == list(best)
    for name, c in layouts(cost):
        assert _core.hungarian(c).tolist() == want.tolist(), name


def factors(r: int, d_out: int, d_in: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    a = RNG.standard_normal((r, d_in)).astype(np.float32)
    b = RNG.standard_normal((d_out, r)).astype(np.float32)
    return a, b


def test_align_factors_any_layout() -> None:
    a, b = factors(5, 7, 9)
    perm = np.array([3, 0, 4, 1, 2])
    signs = np.array([1, -1, 1, 1, -1], dtype=np.float32)
    # The other adapter holds the reference's units permuted, flipped and rescaled.
    a2 = np.ascontiguousarray(a[perm] * signs[:, None] * 2.0, dtype=np.float32)
    b2 = np.ascontiguousarray(b[:, perm] * signs[None, :] * 0.5, dtype=np.float32)
    ((p, s, score),) = _core.align_factors([(a, b, a2, b2)])
    inv = np.argsort(perm)
    assert p.tolist() == inv.tolist()
    np.testing.assert_array_equal(s, signs[inv])
    assert score == pytest.approx(1.0, abs=1e-6)
    for i in range(4):
        args = [a, b, a2, b2]
        for name, v in layouts(args[i]):
            args[i] = v
            ((p2, s2, score2),) = _core.align_factors([tuple(args)])
            assert p2.tolist() == p.tolist() and s2.tolist() == s.tolist() and score2 == score, (i, name)


def test_align_units_any_layout() -> None:
    d_out, d_in, r = 6, 8, 4
    ref = RNG.standard_normal((r, d_out + d_in)).astype(np.float32)
    others = np.ascontiguousarray(np.stack([ref[::-1] * -1.0, ref]), dtype=np.float32)
    perms, signs, scores = _core.align_units(ref, others, d_out)
    assert perms.tolist() == [[3, 2, 1, 0], [0, 1, 2, 3]]
    assert signs.tolist() == [[-1.0] * r, [1.0] * r]
    np.testing.assert_allclose(scores, 1.0, atol=1e-6)
    for name, v in layouts(ref):
        got = _core.align_units(v, others, d_out)
        assert all(np.array_equal(x, y) for x, y in zip(got, (perms, signs, scores))), name
    for name, v in layouts(others):
        got = _core.align_units(ref, v, d_out)
        assert all(np.array_equal(x, y) for x, y in zip(got, (perms, signs, scores))), name


def test_delta_gram_any_layout() -> None:
    fs = [factors(r, 7, 9) for r in (2, 3, 4)]
    deltas = [b.astype(np.float64) @ a.astype(np.float64) for a, b in fs]
    want = np.array([[np.sum(x * y) for y in deltas] for x in deltas])
    g = _core.delta_gram(fs)
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    for i in range(2):
        for name, v in layouts(fs[1][i]):
            pair = (v, fs[1][1]) if i == 0 else (fs[1][0], v)
            np.testing.assert_array_equal(_core.delta_gram([fs[0], pair, fs[2]]), g, err_msg=name)


# ---- k-means and LEGO's means ---------------------------------------------------------------


def test_kmeans_any_layout() -> None:
    centres = RNG.standard_normal((3, 5)) * 10
    x = (centres[np.arange(60) % 3] + RNG.standard_normal((60, 5))).astype(np.float32)
    init = x[:3].copy()
    c, labels, inertia, n_iter, signs = _core.kmeans(x, 3, 1, 100, 1e-4, 0, init)
    # The labels are the nearest of the returned centres (numpy, float64).
    d2 = ((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(-1)
    assert labels.tolist() == d2.argmin(1).tolist()
    assert inertia == pytest.approx(d2.min(1).sum(), rel=1e-5)
    for name, v in layouts(x):
        got = _core.kmeans(v, 3, 1, 100, 1e-4, 0, init)
        assert np.array_equal(got[0], c) and np.array_equal(got[1], labels) and got[2:4] == (inertia, n_iter), name
    for name, v in layouts(init):
        got = _core.kmeans(x, 3, 1, 100, 1e-4, 0, v)
        assert np.array_equal(got[0], c) and np.array_equal(got[1], labels), name
    # Seeded without init: layout-independent too.
    seeded = _core.kmeans(x, 3, 2, 100, 1e-4, 7, None)
    for name, v in layouts(x):
        assert np.array_equal(_core.kmeans(v, 3, 2, 100, 1e-4, 7, None)[0], seeded[0]), name
    assert signs.tolist() == [1.0] * 60


def test_cluster_means_any_layout() -> None:
    n, d_out, d_in, k = 12, 3, 4, 3
    x = RNG.standard_normal((n, d_out + d_in)).astype(np.float32)
    labels = np.arange(n, dtype=np.int64) % k
    signs = np.where(np.arange(n) % 4 == 1, -1.0, 1.0).astype(np.float32)
    norms = (RNG.random((n, 2)) + 0.5).astype(np.float32)
    raw = x.astype(np.float64) * np.repeat(norms.astype(np.float64), [d_out, d_in], axis=1)
    signed = raw * signs[:, None]
    want = np.stack([signed[labels == j].mean(0) for j in range(k)])
    means, counts, norm_b, norm_a = _core.cluster_means(x, labels, signs, k, d_out, norms)
    np.testing.assert_allclose(means, want, rtol=1e-12, atol=1e-12)
    assert counts.tolist() == [4, 4, 4]
    np.testing.assert_allclose(norm_b, [norms[labels == j, 0].mean() for j in range(k)], rtol=1e-6)
    np.testing.assert_allclose(norm_a, [norms[labels == j, 1].mean() for j in range(k)], rtol=1e-6)
    ref = (means, counts, norm_b, norm_a)
    args = [x, labels, signs, norms]
    for i in range(4):
        for name, v in layouts(args[i]):
            call = list(args)
            call[i] = v
            got = _core.cluster_means(call[0], call[1], call[2], k, d_out, call[3])
            assert all(np.array_equal(g, r) for g, r in zip(got, ref)), (i, name)


# ---- the svd baseline -----------------------------------------------------------------------


def truncated(units: np.ndarray, d_out: int, fold: np.ndarray, k: int) -> np.ndarray:
    """numpy's rank-k truncation of Σ_i fold_i·b_i·a_iᵀ (float64)."""
    u = units.astype(np.float64)
    delta = (u[:, :d_out] * fold[:, None]).T @ u[:, d_out:]
    uu, s, vh = np.linalg.svd(delta)
    return (uu[:, :k] * s[:k]) @ vh[:k]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gram_top_k_any_layout(dtype: type) -> None:
    d_out, d_in, r, k = 20, 24, 6, 3
    units = RNG.standard_normal((r, d_out + d_in)).astype(dtype)
    fold = np.array([0.5, -1.0, 2.0, 1.0, 0.7, -0.3])
    res = _core.gram_top_k(units, d_out, fold, k)
    assert res is not None
    us, vh = res
    want = truncated(units, d_out, fold, k)
    np.testing.assert_allclose(us @ vh, want, atol=1e-9 * np.abs(want).max())
    for name, v in layouts(units):
        got = _core.gram_top_k(v, d_out, fold, k)
        assert got is not None and np.array_equal(got[0], us) and np.array_equal(got[1], vh), name
    for name, f in layouts(fold):
        got = _core.gram_top_k(units, d_out, f, k)
        assert got is not None and np.array_equal(got[0], us) and np.array_equal(got[1], vh), name


# ---- files ----------------------------------------------------------------------------------

D_OUT, D_IN = 9, 8


def write_adapter(path: Path, r: int, how: str = "C") -> tuple[np.ndarray, np.ndarray]:
    """A safetensors file with one module's factors, the arrays passed in layout `how`."""
    a, b = factors(r, D_OUT, D_IN)
    pa, pb = a, b
    if how != "C":
        pa, pb = (dict(layouts(m))[how] for m in (a, b))
    _core.write_safetensors(str(path), [("m.lora_A.weight", "F32", pa), ("m.lora_B.weight", "F32", pb)])
    return a, b


@pytest.mark.parametrize("how", ["fortran", "strided"])
def test_write_safetensors_writes_any_layout_in_c_order(tmp_path: Path, how: str) -> None:
    a, b = write_adapter(tmp_path / "x.safetensors", 3, how)
    files = _core.MappedFiles.open([str(tmp_path / "x.safetensors")])
    np.testing.assert_array_equal(files.read(0, "m.lora_A.weight"), a)
    np.testing.assert_array_equal(files.read(0, "m.lora_B.weight"), b)


@pytest.fixture
def pool(tmp_path: Path) -> tuple[_core.MappedFiles, list[tuple[np.ndarray, np.ndarray]]]:
    facs = [write_adapter(tmp_path / f"{i}.safetensors", r) for i, r in enumerate((2, 3))]
    files = _core.MappedFiles.open([str(tmp_path / f"{i}.safetensors") for i in range(2)])
    return files, facs


SOURCES = [(0, "m.lora_A.weight", "m.lora_B.weight", 0.5), (1, "m.lora_A.weight", "m.lora_B.weight", 2.0)]


def test_unit_matrix_rows_and_out(pool: tuple[_core.MappedFiles, list[tuple[np.ndarray, np.ndarray]]]) -> None:
    files, facs = pool
    want = np.concatenate([np.concatenate([s * b.T, a], axis=1) for (a, b), s in zip(facs, (0.5, 2.0))])
    units, ranks, norms = files.unit_matrix(SOURCES)
    assert ranks == [2, 3] and norms is None
    np.testing.assert_allclose(units, want, rtol=1e-6)
    out = np.full((5, D_OUT + D_IN), np.nan, dtype=np.float32)
    got, _, _ = files.unit_matrix(SOURCES, out=out)
    assert got is out
    np.testing.assert_array_equal(out, units)


def bad_outs() -> Iterator[tuple[str, object, str]]:
    shape = (5, D_OUT + D_IN)
    yield "fortran", np.asfortranarray(np.zeros(shape, np.float32)), "C-contiguous"
    yield "strided", strided(np.zeros(shape, np.float32)), "C-contiguous"
    yield "float64", np.zeros(shape, np.float64), "dtype"
    yield "shape", np.zeros((5, D_OUT + D_IN + 1), np.float32), "shape"
    yield "1-d", np.zeros(5 * (D_OUT + D_IN), np.float32), "shape"
    ro = np.zeros(shape, np.float32)
    ro.flags.writeable = False
    yield "read-only", ro, "read-only"
    yield "list", [[0.0] * (D_OUT + D_IN)] * 5, "numpy array"


@pytest.mark.parametrize(("name", "out", "what"), list(bad_outs()), ids=[b[0] for b in bad_outs()])
def test_unit_matrix_rejects_a_bad_out(
    pool: tuple[_core.MappedFiles, list[tuple[np.ndarray, np.ndarray]]], name: str, out: object, what: str
) -> None:
    files, _ = pool
    before = np.array(out, copy=True)
    with pytest.raises(rw.MergeConfigError, match=what) as e:
        files.unit_matrix(SOURCES, out=out)
    assert isinstance(e.value, ValueError)
    np.testing.assert_array_equal(np.asarray(out), before)


def test_svd_top_k_any_layout(pool: tuple[_core.MappedFiles, list[tuple[np.ndarray, np.ndarray]]]) -> None:
    files, facs = pool
    sources = [s[:3] for s in SOURCES]
    fold = np.array([0.5, 0.5, 2.0, 2.0, 2.0])
    units = np.concatenate([np.concatenate([b.T, a], axis=1) for a, b in facs])
    res = files.svd_top_k(sources, fold, 2)
    assert res is not None
    us, vh = res
    want = truncated(units, D_OUT, fold, 2)
    np.testing.assert_allclose(us @ vh, want, atol=1e-9 * np.abs(want).max())
    for name, f in layouts(fold):
        got = files.svd_top_k(sources, f, 2)
        assert got is not None and np.array_equal(got[0], us) and np.array_equal(got[1], vh), name
