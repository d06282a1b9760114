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
from rankwise.errors import MergeConfigError
from rankwise.merge import baselines as bl

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
    merged = rw.merge(pool, method, weights=weights, **kw)
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


def test_numpy_only_eigh_gives_the_same(pool3, hetero, monkeypatch):
    """Without scipy (numpy's full eigh instead of syevr's top-k) the results are the same."""
    pool = rw.AdapterPool.load(hetero)
    cases = [(pool, "svd", {}), (pool3, "svd", {"svd_clamp": 0.95}), (pool3, "ties_svd", {"density": 0.5})]
    with_scipy = [ours(p, m, W_NEG, **kw) for p, m, kw in cases]
    monkeypatch.setattr(bl, "_SCIPY_EIGH", False)
    for (p, m, kw), want in zip(cases, with_scipy):
        got = ours(p, m, W_NEG, **kw)
        for name in want:
            np.testing.assert_allclose(got[name][0], want[name][0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got[name][1], want[name][1], rtol=1e-5, atol=1e-6)


def test_svd_clamp_matches_peft_given_the_same_signs(pool3, pm3):
    """PEFT's clamp depends on the signs its LAPACK gives the singular vectors; ours are fixed.
    Given PEFT's signs, our clamp reproduces PEFT's clamped factors; with our signs, PEFT's
    clamp rule (torch.quantile) gives our result."""
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
        assert max(np.abs(gb).max(), np.abs(ga).max()) <= hi.item() * (1 + 1e-5)


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

    merged = rw.merge(pool3, "ties", weights=W1, density=0.5)
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
        with pytest.raises(MergeConfigError, match=r"same rank per module.*'model\.layers\.0\..*\[4, 8, 6\]"):
            rw.merge(pool, method, **kw)


@pytest.mark.parametrize("density", [0, 0.0, 1.5, -0.1, float("nan"), "half", True])
def test_density_out_of_range(pool3, density):
    with pytest.raises(MergeConfigError, match=r"density must be in \(0, 1\]"):
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
    with pytest.raises(MergeConfigError, match=pattern):
        rw.merge(pool3, method, **kw)


def test_bad_weights(pool3):
    with pytest.raises(MergeConfigError, match="got 2 weights for 3 adapters"):
        rw.merge(pool3, "linear", weights=[1.0, 2.0])


def test_all_eleven_registered():
    methods = rw.merge_methods()
    for m in ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
              "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"):  # fmt: skip
        assert m in methods and "PEFT" in methods[m]
