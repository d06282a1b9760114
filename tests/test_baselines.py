"""The PEFT baselines against PEFT itself: the same adapters merged by ``rw.merge`` and by
``PeftModel.add_weighted_adapter``, compared module by module.

Factor methods (and cat): our folded factors vs PEFT's merged lora_A / scaling·lora_B, rtol 1e-5.
SVD methods: the merged delta B @ A, rtol 1e-4 (singular vectors have sign freedom).
DARE against PEFT at density 1 (deterministic); the random masks are tested on their own.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

import rankwise as rw
from peft_factory import lora_layers, make_adapter, peft_model, tiny_llama
from rankwise.errors import OptionError
from rankwise.methods import baselines as bl

W1 = [0.7, 1.3, 0.5]
W_NEG = [0.7, -1.3, 0.5]
_names = itertools.count()


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def base3(tmp_path_factory):
    """Three rank-4 adapters with different scalings (alpha 8, 4, 16)."""
    root = tmp_path_factory.mktemp("base3")
    return [make_adapter(root / f"a{i}", seed=10 + i, r=4, lora_alpha=al) for i, al in enumerate((8, 4, 16))]


@pytest.fixture(scope="module")
def hetero(tmp_path_factory):
    """Ranks 4, 8, 6: Σ r = 18 is ≥ min(d) of k/v_proj (16 × 32), below it elsewhere."""
    root = tmp_path_factory.mktemp("hetero")
    return [make_adapter(root / f"h{i}", seed=20 + i, r=r, lora_alpha=8) for i, r in enumerate((4, 8, 6))]


@pytest.fixture(scope="module")
def pm3(base3):
    return peft_model(base3)


@pytest.fixture(scope="module")
def pool3(base3):
    return rw.AdapterPool.load(base3)


def peft_merge(pm, n, weights, method, **kw):
    """PEFT's merged module factors as (A, scaling·B), float32 numpy."""
    name = f"m{next(_names)}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns that density 1 prunes nothing
        pm.add_weighted_adapter([f"a{i}" for i in range(n)], list(weights), name, combination_type=method, **kw)
    out = {}
    for mod, layer in lora_layers(pm).items():
        a = layer.lora_A[name].weight.detach().float().numpy()
        b = layer.lora_B[name].weight.detach().float().numpy() * layer.scaling[name]
        out[mod] = (a, b)
    return out


def ours(pool, method, weights, **kw):
    """Our merge given PEFT's weights (``peft_weights``: PEFT's numerics, methods/weighting.py)."""
    merged = rw.merge(pool, method, peft_weights=weights, **kw)
    return {m: merged.factors(m) for m in merged.modules}


def assert_factors_close(got, want):
    assert set(got) == set(want)
    for m in want:
        for g, w, what in zip(got[m], want[m], "AB"):
            assert g.shape == w.shape, (m, what)
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * np.abs(w).max(), err_msg=f"{m} {what}")


def assert_deltas_close(got, want, rtol=1e-4):
    assert set(got) == set(want)
    for m in want:
        dg, dw = got[m][1] @ got[m][0], want[m][1] @ want[m][0]
        np.testing.assert_allclose(dg, dw, rtol=rtol, atol=rtol * np.abs(dw).max(), err_msg=m)


# ----------------------------------------------------------------------------- vs PEFT
FACTOR_CASES = [
    ("linear", {}, W1),
    ("linear", {}, W_NEG),
    ("cat", {}, W1),
    ("cat", {}, W_NEG),
    ("ties", {"density": 0.5}, W1),
    ("ties", {"density": 0.5, "majority_sign_method": "frequency"}, W_NEG),
    ("ties", {"density": 0.3, "majority_sign_method": "total"}, W_NEG),
    ("magnitude_prune", {"density": 0.5}, W1),
    ("magnitude_prune", {"density": 0.3}, W_NEG),
    ("dare_linear", {"density": 1.0}, W1),
    ("dare_ties", {"density": 1.0}, W1),
    ("dare_ties", {"density": 1.0, "majority_sign_method": "frequency"}, W_NEG),
]


@pytest.mark.parametrize(("method", "kw", "weights"), FACTOR_CASES)
def test_factor_methods_match_peft(pool3, pm3, method, kw, weights):
    assert_factors_close(ours(pool3, method, weights, **kw), peft_merge(pm3, 3, weights, method, **kw))


SVD_CASES = [
    ("svd", {}, W1),
    ("svd", {"svd_rank": 2}, W_NEG),
    ("ties_svd", {"density": 0.5}, W1),
    ("ties_svd", {"density": 0.5, "majority_sign_method": "frequency", "svd_rank": 3}, W_NEG),
    ("magnitude_prune_svd", {"density": 0.5}, W1),
    ("magnitude_prune_svd", {"density": 0.7, "svd_rank": 2}, W_NEG),
    ("dare_linear_svd", {"density": 1.0}, W1),
    ("dare_ties_svd", {"density": 1.0}, W1),
    ("dare_ties_svd", {"density": 1.0, "majority_sign_method": "frequency", "svd_rank": 2}, W_NEG),
]


@pytest.mark.parametrize(("method", "kw", "weights"), SVD_CASES)
def test_svd_methods_match_peft(pool3, pm3, method, kw, weights):
    got = ours(pool3, method, weights, **kw)
    want = peft_merge(pm3, 3, weights, method, **kw)
    k = kw.get("svd_rank", 4)
    assert all(a.shape[0] == k for a, _ in got.values())
    assert_deltas_close(got, want)


def test_heterogeneous_ranks_cat_and_svd(hetero):
    pool, pm = rw.AdapterPool.load(hetero), peft_model(hetero)
    assert pool.ranks(pool.modules[0]) == [4, 8, 6]
    got = ours(pool, "cat", W1)
    assert all(a.shape[0] == 18 for a, _ in got.values())
    assert_factors_close(got, peft_merge(pm, 3, W1, "cat"))
    # k/v_proj (16 × 32) take the dense path (Σ r = 18 ≥ 16), the others the factored one.
    for kw in ({}, {"svd_rank": 5}):
        got = ours(pool, "svd", W_NEG, **kw)
        assert all(a.shape[0] == kw.get("svd_rank", 8) for a, _ in got.values())
        assert_deltas_close(got, peft_merge(pm, 3, W_NEG, "svd", **kw))
    # svd with the full rank is the exact weighted sum, like cat.
    full = ours(pool, "svd", W1, svd_rank=64)
    for m, (a, b) in full.items():
        want = sum(w * pool[j].delta(m) for j, w in enumerate(W1))
        np.testing.assert_allclose(b @ a, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_svd_duplicate_adapters(base3):
    """The same adapter twice makes the stacked A singular: the factored path (Householder QR,
    no inverse) is still exact, and equals PEFT's."""
    folders = [base3[0], base3[0], base3[1]]
    pool, pm = rw.AdapterPool.load(folders), peft_model(folders)
    assert_deltas_close(ours(pool, "svd", W1), peft_merge(pm, 3, W1, "svd"))


def test_factored_svd_equals_dense_svd():
    rng = np.random.default_rng(0)
    b, a = rng.standard_normal((50, 12)), rng.standard_normal((12, 140))
    a[6:9] = a[:3]  # rank-deficient stack
    a[9] = 0.0  # a zero row: a Householder reflector with tau = 0
    d = b @ a
    u, s, vh = np.linalg.svd(d)
    for k in (1, 5, 9):
        us, v = bl._factored_top_k(b, a, k)
        np.testing.assert_allclose(us @ v, (u[:, :k] * s[:k]) @ vh[:k], atol=1e-10)
        np.testing.assert_allclose(v @ v.T, np.eye(k), atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(us, axis=0), s[:k], rtol=1e-12, atol=1e-10)
        for x in (d, d.T):  # d_out < d_in and d_out > d_in
            us2, v2 = bl._dense_top_k(x, k)
            proj = vh[:k].T @ vh[:k] if x is d else u[:, :k] @ u[:, :k].T
            np.testing.assert_allclose(us2 @ v2, x @ proj, atol=1e-10)
    # More reflectors than one block of the compact-WY application.
    x = rng.standard_normal((300, 150))
    h, tau = np.linalg.qr(x, mode="raw")
    w = rng.standard_normal((150, 7))
    np.testing.assert_allclose(bl._apply_q(h, tau, w), np.linalg.qr(x)[0] @ w, atol=1e-12)


def _truncated(d, k):
    """The rank-k truncation of d by a float64 dense SVD (the reference)."""
    u, s, vh = np.linalg.svd(d)
    return (u[:, :k] * s[:k]) @ vh[:k]


def _product(b, a):
    """``(Bᵀ, A)`` as _product_top_k takes them (float64, C-contiguous)."""
    return np.ascontiguousarray(b.T, dtype=np.float64), np.ascontiguousarray(a, dtype=np.float64)


def _refuse(*args):
    raise AssertionError("the Gram path declined: the QR fallback ran")


@pytest.mark.parametrize("with_scipy", [True, False])
def test_gram_svd_equals_dense_svd(monkeypatch, with_scipy):
    """The Gram path (Cholesky of A·Aᵀ, top-k eigenpairs of Lᵀ·BᵀB·L, Vh = S⁻²·(U·S)ᵀ·B·A)
    against a float64 SVD of the dense product: square, wide and tall, k from 1 to R, and
    spectra whose gaps are 1e-6 of σ_1 (flat, or a cluster straddling k) with non-orthogonal
    factors. There the truncation itself moves by ~1e-16·(‖B‖‖A‖/σ_1)²/1e-6 under rounding
    errors (the float64 SVD of the product is off the exact one by ~5e-10 here), so the Gram
    path is held to 1e-8 and to within 4× of the Householder QR path's error."""
    if not with_scipy:
        monkeypatch.setattr(bl, "_SCIPY", False)
    _factored_top_k = bl._factored_top_k
    monkeypatch.setattr(bl, "_factored_top_k", _refuse)  # none of these may fall back
    rng = np.random.default_rng(1)
    cases = []
    for d_out, d_in, r in ((60, 60, 24), (40, 90, 30), (90, 40, 30)):
        b, a = rng.standard_normal((d_out, r)), rng.standard_normal((r, d_in))
        cases.append((b, a, b @ a, (1, 7, r), 1e-11))
    for spectrum in ("flat", "cluster"):
        d_out, d_in, r = 70, 80, 40
        if spectrum == "flat":
            s = 1.0 - 1e-6 * np.arange(r)
        else:  # σ_8 … σ_13 within 1e-6 of each other, k = 10 cuts through them
            s = np.concatenate([np.linspace(3, 2, 8), 1.0 - 1e-6 * np.arange(6), np.linspace(0.5, 0.01, r - 14)])
        u = np.linalg.qr(rng.standard_normal((d_out, r)))[0]
        v = np.linalg.qr(rng.standard_normal((d_in, r)))[0]
        t = rng.standard_normal((r, r)) + 3 * np.eye(r)  # factors B·A = (U·S·T)(T⁻¹·Vᵀ), not orthogonal
        cases.append(((u * s) @ t, np.linalg.solve(t, v.T), (u * s) @ v.T, (10, 16), 1e-8))
    for b, a, exact, ks, tol in cases:
        sv = np.linalg.svd(exact, compute_uv=False)
        for k in ks:
            us, vh = bl._product_top_k(*_product(b, a), k)
            want = _truncated(exact, k)
            scale = np.abs(want).max()
            err = np.abs(us @ vh - want).max() / scale
            qr_us, qr_vh = _factored_top_k(b, a, k)
            assert err < max(tol, 4 * np.abs(qr_us @ qr_vh - want).max() / scale), (k, err)
            np.testing.assert_allclose(np.linalg.norm(us, axis=0), sv[:k], rtol=1e-10)
            np.testing.assert_allclose(vh @ vh.T, np.eye(k), atol=1e-10)


@pytest.mark.parametrize("with_scipy", [True, False])
def test_svd_rank_deficient_stacks(monkeypatch, with_scipy):
    """Stacks whose A·Aᵀ is singular or nearly so: an adapter twice (with different weights),
    a zero row, rows equal up to 1e-7 (cond(A·Aᵀ) ~ 1e15), and k above the rank of the product.
    Each result equals the float64 SVD. The Cholesky of an exactly singular A·Aᵀ fails and the
    Householder QR path takes over; the nearly singular one goes through, and the Gram path is
    as exact; where σ_k is ~0 the QR path runs, and Vh stays orthonormal."""
    if not with_scipy:
        monkeypatch.setattr(bl, "_SCIPY", False)
    paths = []
    gram = bl._gram_top_k
    monkeypatch.setattr(bl, "_gram_top_k", lambda *x: paths.append(gram(*x)) or paths[-1])
    rng = np.random.default_rng(2)
    b, a = rng.standard_normal((80, 20)), rng.standard_normal((20, 100))
    dup_b, dup_a = b.copy(), a.copy()
    dup_a[10:15], dup_b[:, 10:15] = a[:5], 0.5 * b[:, :5]  # adapter 0 again, weight 0.5: rank 15
    zero_b, zero_a = b.copy(), a.copy()
    zero_a[19] = 0.0  # rank 19; Cholesky of A·Aᵀ meets an exact 0
    near_b, near_a = b.copy(), a.copy()
    near_a[10:15] = a[:5] + 1e-7 * rng.standard_normal((5, 100))  # cond(A) ~ 3e7
    near_b[:, 10:15] = -0.7 * b[:, :5]  # σ_16…σ_20 ~ 1e-16·σ_1
    cases = [(dup_b, dup_a, "QR"), (zero_b, zero_a, "QR"), (near_b, near_a, "Gram for k ≤ 15")]
    for bb, aa, path in cases:
        d = bb @ aa
        for k in (3, 15, 19, 20):
            paths.clear()
            us, vh = bl._product_top_k(*_product(bb, aa), k)
            assert (paths[0] is not None) == (path != "QR" and k <= 15), (path, k)
            want = _truncated(d, k)
            np.testing.assert_allclose(us @ vh, want, atol=1e-12 * np.abs(want).max(), err_msg=f"{path}, k {k}")
            np.testing.assert_allclose(vh @ vh.T, np.eye(k), atol=1e-12, err_msg=f"{path}, k {k}")


def test_svd_pool_equals_float64_svd(base3, tmp_path):
    """rw.merge's svd against a float64 SVD of Σ w_j·s_j·B_j·A_j (raw factors, folded in
    float64): distinct adapters, an adapter twice (A·Aᵀ singular), an adapter minus itself
    (ΔW = 0: zero B, orthonormal A), and svd_rank = R."""
    cases = [
        (base3, W_NEG, {}),
        (base3, W1, {"svd_rank": 12}),  # k = R = 3·4
        ([base3[0], base3[0], base3[1]], W1, {}),
        ([base3[0], base3[0]], [1.0, -1.0], {}),
    ]
    for folders, weights, kw in cases:
        pool = rw.AdapterPool.load(folders)
        got = ours(pool, "svd", weights, **kw)
        k = kw.get("svd_rank", 4)
        for m in pool.modules:
            parts = []
            for j, w in enumerate(weights):
                a, b = pool[j].factors(m)  # raw (unfolded) factors
                parts.append((w * pool[j].module(m).scaling) * (b.astype(np.float64) @ a.astype(np.float64)))
            want = _truncated(sum(parts), k)
            ga, gb = got[m]
            assert ga.shape[0] == k
            # Relative to the sum, or for a sum that cancels to 0, to 1e-6 of its largest term.
            scale = max(np.abs(want).max(), 1e-6 * max(np.abs(x).max() for x in parts))
            np.testing.assert_allclose(gb.astype(np.float64) @ ga, want, atol=1e-6 * scale, err_msg=m)
            np.testing.assert_allclose(ga.astype(np.float64) @ ga.T, np.eye(k), atol=1e-5, err_msg=m)


def test_svd_in_memory_pool_same_bytes(pool3):
    """Adapters held in memory (no mapped files: factors read one by one, not in one core call)
    merge to the same bytes as the file-backed pool."""
    copies = [rw.Adapter(a.config, a.modules, factors={m: a.factors(m) for m in a.modules}) for a in pool3]
    got, want = ours(rw.AdapterPool(copies), "svd", W_NEG), ours(pool3, "svd", W_NEG)
    for m in want:
        np.testing.assert_array_equal(got[m][0], want[m][0])
        np.testing.assert_array_equal(got[m][1], want[m][1])


def test_svd_half_precision_output_computes_in_float32(pool3, monkeypatch):
    """Merging to float16 lets the core work in float32 where it proves the result close (its
    error, ~1e-6 here, is far below float16's 5e-4 rounding); float32 output keeps float64."""
    m = pool3.modules[0]
    d_out, _ = pool3.shape(m)
    units, ranks = pool3.unit_matrix(m, [1.0 / a.module(m).scaling for a in pool3])
    fold = np.repeat([w * a.module(m).scaling for w, a in zip(W_NEG, pool3)], ranks)
    single = rw._core.gram_top_k(units, d_out, fold, 4, allow_single=True)
    double = rw._core.gram_top_k(units, d_out, fold, 4)
    d_single, d_double = single[0] @ single[1], double[0] @ double[1]
    err = np.abs(d_single - d_double).max() / np.abs(d_double).max()
    assert 0 < err < 1e-5, err  # float32 ran (not the same bits), and is close
    calls, gram = [], bl._module_top_k
    monkeypatch.setattr(bl, "_module_top_k", lambda *a, **kw: calls.append(kw["single"]) or gram(*a, **kw))
    f16, f32 = ours(pool3, "svd", W_NEG, dtype="F16"), ours(pool3, "svd", W_NEG)
    n = len(pool3.modules)
    assert calls == [True] * n + [False] * n
    for name in f32:
        want = f32[name][1].astype(np.float64) @ f32[name][0]
        got = f16[name][1].astype(np.float64) @ f16[name][0]
        np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max(), err_msg=name)


@pytest.mark.parametrize("dtype", ["F32", "F16"])
def test_svd_modules_in_parallel_same_bytes(pool3, hetero, dtype):
    """svd runs modules on all threads at once (each module on one): the same bytes as one
    thread, modules reported in order, phase timings summed."""
    pools = [pool3, rw.AdapterPool.load(hetero)]
    try:
        rw.set_num_threads(1)
        want = [ours(p, "svd", W_NEG, dtype=dtype) for p in pools]
        rw.set_num_threads(2)
        seen = []
        got = [ours(p, "svd", W_NEG, dtype=dtype, progress=lambda i, n, name: seen.append((i, name))) for p in pools]
    finally:
        rw.set_num_threads(0)
    assert seen == [(i + 1, name) for p in pools for i, name in enumerate(p.modules)]
    for g, w in zip(got, want):
        assert list(g) == list(w)
        for name in w:
            np.testing.assert_array_equal(g[name][0], w[name][0])
            np.testing.assert_array_equal(g[name][1], w[name][1])


def test_parallel_merge_raises_the_failing_modules_error(pool3, monkeypatch):
    """An error in one module of a parallel merge reaches the caller (nothing hangs)."""
    folds = bl._folds

    def fail_third(ctx):
        if ctx.index == 2:
            raise rw.errors.IncompatibleAdaptersError(f"{ctx.module}: deliberate")
        return folds(ctx)

    monkeypatch.setattr(bl, "_folds", fail_third)
    try:
        rw.set_num_threads(2)
        with pytest.raises(rw.errors.IncompatibleAdaptersError, match=f"{pool3.modules[2]}: deliberate"):
            rw.merge(pool3, "svd", weights=W1)
    finally:
        rw.set_num_threads(0)


@pytest.mark.parametrize(
    "args, kw, pattern",
    [
        ((np.zeros((4, 10), np.float32), 12, np.ones(4), 2), {}, "d_out = 12 exceeds the units' width 10"),
        ((np.zeros((4, 30), np.float32), 10, np.ones(4), 5), {}, "k = 5, R = 4"),
        ((np.zeros((4, 30), np.float32), 10, np.ones(3), 2), {}, "expected 3 rows of 30"),
        ((np.zeros((4, 30), np.int32), 10, np.ones(4), 2), {}, "float32 or float64"),
        ((np.zeros((4, 30), np.float32), 10, np.array([1.0, np.inf, 1.0, 1.0]), 2), {}, "fold\\[1\\] is not finite"),
    ],
)
def test_gram_top_k_bad_input(args, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        rw._core.gram_top_k(*args, **kw)


def test_svd_top_k_bad_input(pool3):
    """MappedFiles.svd_top_k (the svd merge's reader) on a bad file index, a fold of the wrong
    length, and k above the stacked rank."""
    m = pool3.modules[0]
    files, sources = pool3.file_sources(m)
    r = sum(pool3.ranks(m))
    with pytest.raises(ValueError, match=r"file index 99 out of range \(3 files\)"):
        files.svd_top_k([(99, *sources[0][1:])], np.ones(4), 2)
    with pytest.raises(ValueError, match=rf"{r - 1} folds for {r} units"):
        files.svd_top_k(sources, np.ones(r - 1), 2)
    with pytest.raises(ValueError, match=rf"got k = {r + 1}, R = {r}"):
        files.svd_top_k(sources, np.ones(r), r + 1)


@pytest.mark.parametrize("method", ["svd", "linear"])
def test_merge_is_the_same_whether_the_pool_streams(base3, method, monkeypatch):
    """A pool larger than RESIDENT_BYTES drops each module's mapped pages once read
    (``pool.streams``: in the core for the parallel svd, between modules for the others); the
    merged factors are the same bytes either way."""
    import rankwise.adapter

    pool = rw.AdapterPool.load(base3)
    assert 0 < pool.mapped_bytes <= rankwise.adapter.RESIDENT_BYTES and not pool.streams
    kept = rw.merge(pool, method=method, svd_rank=3) if method == "svd" else rw.merge(pool, method=method)
    monkeypatch.setattr(rankwise.adapter, "RESIDENT_BYTES", pool.mapped_bytes - 1)
    assert pool.streams
    dropped = rw.merge(pool, method=method, svd_rank=3) if method == "svd" else rw.merge(pool, method=method)
    for name in kept.modules:
        for x, y in zip(kept.factors(name), dropped.factors(name)):
            np.testing.assert_array_equal(x, y)


def test_numpy_only_eigh_gives_the_same(pool3, hetero, monkeypatch):
    """Without scipy (numpy's full eigh instead of syevr's top-k) the results are the same."""
    pool = rw.AdapterPool.load(hetero)
    cases = [(pool, "svd", {}), (pool3, "svd", {"svd_clamp": 0.95}), (pool3, "ties_svd", {"density": 0.5})]
    with_scipy = [ours(p, m, W_NEG, **kw) for p, m, kw in cases]
    monkeypatch.setattr(bl, "_SCIPY", False)
    for (p, m, kw), want in zip(cases, with_scipy):
        got = ours(p, m, W_NEG, **kw)
        for name in want:
            np.testing.assert_allclose(got[name][0], want[name][0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got[name][1], want[name][1], rtol=1e-5, atol=1e-6)


def test_svd_clamp_matches_peft_given_the_same_signs(pool3, pm3):
    """PEFT's clamp depends on the signs its LAPACK gives the singular vectors; ours are fixed.
    Given PEFT's signs, our clamp reproduces PEFT's clamped factors; with our signs, PEFT's
    clamp rule (torch.quantile) gives our result, and our clip level is that rule's."""
    q = 0.9
    raw = ours(pool3, "svd", W1)
    got = ours(pool3, "svd", W1, svd_clamp=q)
    p_raw = peft_merge(pm3, 3, W1, "svd")
    p_clamped = peft_merge(pm3, 3, W1, "svd", svd_clamp=q)
    for m, (a, b) in raw.items():
        pa, pb = p_raw[m]
        dots = np.sum(a * pa, axis=1)
        assert np.all(np.abs(np.abs(dots) - 1) < 1e-4), (m, dots)
        sign = np.sign(dots).astype(np.float32)
        # Our clamp on PEFT's signs == PEFT's clamped output.
        ca, cb = bl._clamp(b * sign[None, :], a * sign[:, None], q)[::-1]
        np.testing.assert_allclose(cb @ ca, p_clamped[m][1] @ p_clamped[m][0], rtol=1e-4, atol=1e-4 * np.abs(cb).max())
        # PEFT's rule on our signs == our clamped merge.
        us, vh = torch.from_numpy(pb * sign[None, :]), torch.from_numpy(pa * sign[:, None])
        hi = torch.quantile(torch.cat([us.flatten(), vh.flatten()]), q)
        want = us.clamp(-hi, hi) @ vh.clamp(-hi, hi)
        ga, gb = got[m]
        np.testing.assert_allclose(gb @ ga, want.numpy(), rtol=1e-4, atol=1e-4 * np.abs(want.numpy()).max())
        # The clamped merge is the unclamped one clipped at h, the q-quantile (linear
        # interpolation) of all entries of U·S and Vh: exactly, whatever the host.
        h = np.float32(np.quantile(np.concatenate([b.ravel(), a.ravel()]), q))
        assert np.array_equal(gb, np.clip(b, -h, h)) and np.array_equal(ga, np.clip(a, -h, h))
        assert max(np.abs(gb).max(), np.abs(ga).max()) == h
        # h against PEFT's level on PEFT's factors. A quantile moves by at most the largest
        # change of an entry (order statistics are 1-Lipschitz in the max norm), so the levels
        # differ by at most the largest difference δ between our factors and PEFT's float32 SVD
        # (which depends on the host's LAPACK), plus each side's rounding of the interpolation
        # (a subtraction, a product and a sum in float32, and our cast: 4 ulps each).
        delta = max(np.abs(b - pb * sign[None, :]).max(), np.abs(a - pa * sign[:, None]).max())
        assert delta < 1e-4 * max(np.abs(b).max(), np.abs(a).max()), delta  # a float32 SVD's error
        ulp = np.spacing(np.float32(max(abs(h), abs(hi.item()))))
        assert abs(float(h) - hi.item()) <= delta + 8 * ulp, (h, hi.item(), delta)


def test_sign_convention(pool3):
    for _, b in ours(pool3, "svd", W_NEG).values():
        idx = np.argmax(np.abs(b), axis=0)
        assert np.all(b[idx, np.arange(b.shape[1])] > 0)


def test_magnitude_prune_ties_keep_lowest_index():
    x = np.array([[3.0, -1.0, 1.0, 2.0, -1.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(bl._magnitude_prune(x, 0.5), [[3.0, -1.0, 0, 2.0, 0, 0]])
    np.testing.assert_array_equal(bl._magnitude_prune(x, 0.1), np.zeros_like(x))  # int(0.6) = 0
    assert bl._magnitude_prune(x, 1.0) is x


# ----------------------------------------------------------------------------- DARE masks
def test_dare_masks_distribution_and_seeding(base3):
    pool = rw.AdapterPool.load(base3[:1])
    s = pool[0].module(pool.modules[0]).scaling
    density = 0.3
    got = ours(pool, "dare_linear", [1.0], density=density, seed=7)
    kept = total = 0
    for i, m in enumerate(pool.modules):
        a, b = pool[0].factors(m)
        for side, (x, y) in enumerate(zip((a, b), got[m])):
            ratio = y / (x * np.float32(np.sqrt(s)))
            on = ratio != 0
            np.testing.assert_allclose(ratio[on], 1 / density, rtol=1e-5)  # kept entries rescaled
            # The documented stream: default_rng([seed, module index, adapter, 0 for A / 1 for B]).
            want = np.random.default_rng([7, i, 0, side]).random(x.shape) < density
            np.testing.assert_array_equal(on, want)
            kept += on.sum()
            total += on.size
    sd = np.sqrt(density * (1 - density) / total)
    assert abs(kept / total - density) < 4 * sd, (kept / total, total)
    again = ours(pool, "dare_linear", [1.0], density=density, seed=7)
    other = ours(pool, "dare_linear", [1.0], density=density, seed=8)
    m = pool.modules[0]
    np.testing.assert_array_equal(again[m][0], got[m][0])
    assert not np.array_equal(other[m][0], got[m][0])
    # Different adapters get different masks (the same adapter twice in a pool).
    twice = rw.AdapterPool.load([base3[0], base3[0]])
    a = pool[0].factors(m)[0]
    masks = [np.random.default_rng([7, 0, j, 0]).random(a.shape) < density for j in range(2)]
    assert not np.array_equal(masks[0], masks[1])
    want = sum(np.where(mk, a, 0) / np.float32(density) for mk in masks) * np.float32(np.sqrt(s))
    np.testing.assert_allclose(ours(twice, "dare_linear", [1.0, 1.0], density=density, seed=7)[m][0], want, rtol=1e-6)


def test_dare_svd_masks_on_the_deltas(base3):
    """dare_linear_svd at full rank is Σ w_j·mask_j·ΔW_j/density with the documented stream
    (tag 2); dare_ties_svd's result is a TIES merge of such masked deltas."""
    pool = rw.AdapterPool.load(base3[:2])
    density, w = 0.4, [0.7, 1.3]
    got = ours(pool, "dare_linear_svd", w, density=density, seed=3, svd_rank=64)
    kept = total = 0
    for i, m in enumerate(pool.modules):
        want = 0
        for j in range(2):
            d = pool[j].delta(m)
            mask = np.random.default_rng([3, i, j, 2]).random(d.shape) < density
            kept, total = kept + mask.sum(), total + mask.size
            want = want + w[j] * np.where(mask, d, 0) / density
        a, b = got[m]
        np.testing.assert_allclose(b @ a, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert abs(kept / total - density) < 4 * np.sqrt(density * (1 - density) / total)
    t = ours(pool, "dare_ties_svd", w, density=density, seed=3, svd_rank=64)
    m = pool.modules[0]
    ps = [np.where(np.random.default_rng([3, 0, j, 2]).random(pool[j].delta(m).shape) < density,
                   pool[j].delta(m), 0) / density for j in range(2)]  # fmt: skip
    want = torch_ties(ps, w)
    np.testing.assert_allclose(t[m][1] @ t[m][0], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def torch_ties(tensors, weights, method="total"):
    from peft.utils.merge_utils import calculate_majority_sign_mask, disjoint_merge

    x = torch.stack([torch.from_numpy(np.asarray(t, dtype=np.float32)) for t in tensors])
    mask = calculate_majority_sign_mask(x, method=method)
    return disjoint_merge(x * torch.tensor(weights, dtype=torch.float32)[:, None, None], mask).numpy()


# ----------------------------------------------------------------------------- save / load
def test_saved_merge_loads_in_peft(pool3, pm3, tmp_path):
    from peft import PeftModel

    from peft_factory import logits

    merged = rw.merge(pool3, "ties", peft_weights=W1, density=0.5)
    out = merged.save(tmp_path / "ties")
    loaded = PeftModel.from_pretrained(tiny_llama(0), str(out)).eval()
    for m, layer in lora_layers(loaded).items():
        got = layer.get_delta_weight("default").detach().numpy()
        np.testing.assert_allclose(got, merged.delta(m), rtol=1e-5, atol=1e-7)
    # ... and computes what PEFT's own ties merge computes.
    name = f"m{next(_names)}"
    pm3.add_weighted_adapter(["a0", "a1", "a2"], W1, name, combination_type="ties", density=0.5)
    pm3.set_adapter(name)
    try:
        torch.testing.assert_close(logits(loaded), logits(pm3), rtol=1e-4, atol=1e-5)
    finally:
        pm3.set_adapter("a0")


# ----------------------------------------------------------------------------- bad input
def test_linear_family_needs_equal_ranks(hetero):
    pool = rw.AdapterPool.load(hetero)
    for method in ("linear", "ties", "magnitude_prune"):
        kw = {} if method == "linear" else {"density": 0.5}
        with pytest.raises(OptionError, match=r"same rank per module.*'model\.layers\.0\..*\[4, 8, 6\]"):
            rw.merge(pool, method, **kw)


@pytest.mark.parametrize("density", [0, 0.0, 1.5, -0.1, float("nan"), "half", True])
def test_density_out_of_range(pool3, density):
    with pytest.raises(OptionError, match=r"density must be in \(0, 1\]"):
        rw.merge(pool3, "ties", density=density)


@pytest.mark.parametrize(
    ("method", "kw", "pattern"),
    [
        ("ties", {}, r"method 'ties' needs density="),
        ("dare_linear_svd", {}, r"needs density="),
        ("ties", {"density": 0.5, "majority_sign_method": "median"}, r"majority_sign_method must be 'total'.*'median'"),
        ("svd", {"density": 0.5}, r"method 'svd' has no option\(s\) density; it takes: svd_rank, svd_clamp"),
        ("linear", {"svd_rank": 2}, r"method 'linear' has no option\(s\) svd_rank"),
        ("svd", {"svd_rank": 0}, r"svd_rank must be a positive int.*0"),
        ("svd", {"svd_rank": 2.5}, r"svd_rank must be a positive int"),
        ("svd", {"svd_clamp": 1.0}, r"svd_clamp must be None or a quantile in \(0, 1\)"),
        ("dare_ties", {"density": 0.5, "seed": -1}, r"seed must be a non-negative int"),
    ],
)
def test_bad_options(pool3, method, kw, pattern):
    with pytest.raises(OptionError, match=pattern):
        rw.merge(pool3, method, **kw)


def test_bad_weights(pool3):
    with pytest.raises(OptionError, match="got 2 weights for 3 adapters"):
        rw.merge(pool3, "linear", weights=[1.0, 2.0])


def test_all_eleven_registered():
    methods = rw.merge_methods()
    for m in ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
              "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"):  # fmt: skip
        assert m in methods and "PEFT" in methods[m]
