"""Unit alignment: the Hungarian core, ``rw.align``, the ``aligned`` merge and LEGO's aligned init."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from precision import U64, assert_within, chain_error, delta64
from rankwise import _core
from rankwise.adapter import Adapter
from rankwise.methods import ModuleContext
from rankwise.methods.aligned import align, aligned_init, medoid_index

D_OUT, D_IN = 12, 9


def _random_adapter(seed: int, *, rank: int = 4, modules: int = 3, scaling: float = 1.0) -> Adapter:
    rng = np.random.default_rng(seed)
    factors = {
        f"model.layers.{i}.self_attn.q_proj": (
            rng.standard_normal((rank, D_IN)).astype(np.float32),
            rng.standard_normal((D_OUT, rank)).astype(np.float32) * np.float32(scaling),
        )
        for i in range(modules)
    }
    return Adapter.from_factors(factors, base_config={"target_modules": ["q_proj"]})


def _scrambled(adapter: Adapter, seed: int, *, rescale: bool = True) -> Adapter:
    """A copy of ``adapter`` with every module's units permuted, sign-flipped and (optionally)
    rescaled (c·b, a/c): the same deltas, different factors."""
    rng = np.random.default_rng(seed)
    factors = {}
    for name, info in adapter.modules.items():
        a, b = adapter.factors(name)
        perm = rng.permutation(info.rank)
        s = rng.choice([-1.0, 1.0], size=info.rank)
        c = rng.uniform(0.2, 5.0, size=info.rank) if rescale else np.ones(info.rank)
        factors[name] = ((a[perm] * (s / c)[:, None]).astype(np.float32), (b[:, perm] * (s * c)).astype(np.float32))
    return Adapter(adapter.config, adapter.modules, factors=factors)


def _saved_pool(tmp_path: Path, adapters: list[Adapter]) -> rw.AdapterPool:
    return rw.AdapterPool.load([a.save(tmp_path / f"a{j}") for j, a in enumerate(adapters)])


def _delta64(x: Adapter, m: str) -> np.ndarray:
    """The module's delta in float64 (no float32 sums, whose order differs between hosts)."""
    a, b = x.factors(m)
    return delta64(a, b, x.modules[m].scaling)


def _assert_same_deltas(x: Adapter, y: Adapter, tol: float = 1e-5, scale: float = 1.0) -> None:
    """x's deltas are ``scale`` × y's."""
    assert list(x.modules) == list(y.modules)
    for m in x.modules:
        dx, dy = _delta64(x, m), scale * _delta64(y, m)
        err = np.abs(dx - dy).max() / np.abs(dy).max()
        assert err < tol, f"{m}: relative error {err}"


def _rel_err(x: Adapter, y: Adapter, scale: float = 1.0) -> float:
    return max(
        float(np.abs(x.delta(m) - scale * y.delta(m)).max() / np.abs(scale * y.delta(m)).max()) for m in x.modules
    )


# ------------------------------------------------------------------------------- Hungarian
def _brute_force(cost: np.ndarray) -> float:
    n = cost.shape[0]
    return min(sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n)))


@pytest.mark.parametrize("n", range(1, 8))
def test_hungarian_is_optimal_against_brute_force(n: int) -> None:
    rng = np.random.default_rng(n)
    for trial in range(10):
        cost = rng.integers(0, 3, (n, n)).astype(np.float64) if trial % 2 else rng.standard_normal((n, n))
        assign = _core.hungarian(cost)
        assert assign.dtype == np.int64 and sorted(assign.tolist()) == list(range(n))
        assert cost[np.arange(n), assign].sum() == pytest.approx(_brute_force(cost), abs=1e-9)


def test_hungarian_matches_scipy_and_rejects_bad_input() -> None:
    scipy_opt = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(0)
    cost = rng.standard_normal((40, 40))
    _, cols = scipy_opt.linear_sum_assignment(cost)
    ours = _core.hungarian(np.asfortranarray(cost))  # any layout
    assert cost[np.arange(40), ours].sum() == pytest.approx(cost[np.arange(40), cols].sum())
    assert _core.hungarian(np.ones((4, 4))).tolist() == [0, 1, 2, 3]  # ties: deterministic
    with pytest.raises(rw.OptionError, match="square"):
        _core.hungarian(np.ones((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        _core.hungarian(np.array([[0.0, np.nan], [1.0, 1.0]]))


def test_core_alignment_and_delta_gram_bindings() -> None:
    ref = _random_adapter(0, rank=6, modules=1)
    m = next(iter(ref.modules))
    a, b = ref.factors(m)
    rng = np.random.default_rng(1)
    perm, s = rng.permutation(6), rng.choice([-1.0, 1.0], 6).astype(np.float32)
    a2, b2 = a[perm] * s[:, None] * 3, b[:, perm] * s / 3
    ((p, signs, score),) = _core.align_factors([(a, b, a2, b2)])
    ((p_f, signs_f, _),) = _core.align_factors([(a, b, np.asfortranarray(a2), b2.T.copy().T)])
    assert np.array_equal(p_f, p) and np.array_equal(signs_f, signs)  # any memory layout
    assert np.array_equal(perm[p], np.arange(6)) and np.array_equal(signs, s[p]) and score == pytest.approx(1.0)
    # Unit-matrix layout, several others at once, non-contiguous views accepted.
    u_ref = np.concatenate([b.T, a], axis=1)
    u_oth = np.concatenate([b2.T, a2], axis=1)
    perms, signs2, scores = _core.align_units(u_ref, np.stack([u_oth, u_ref]), D_OUT, "units")
    assert perms.shape == (2, 6) and np.array_equal(perms[0], p) and np.array_equal(perms[1], np.arange(6))
    assert np.array_equal(signs2[0], signs) and np.allclose(scores, 1.0)
    with pytest.raises(rw.IncompatibleAdaptersError, match="equal ranks"):
        _core.align_units(u_ref, u_oth[None, :4], D_OUT)
    with pytest.raises(rw.OptionError, match="similarity"):
        _core.align_factors([(a, b, a2, b2)], "cosine")
    with pytest.raises(rw.OptionError, match="pair 0, other"):
        _core.align_factors([(a, b, a2, b2[:, :5])])
    # ⟨ΔW_i, ΔW_j⟩ from Gram matrices, ranks may differ.
    c, d = rng.standard_normal((3, D_IN), dtype=np.float32), rng.standard_normal((D_OUT, 3), dtype=np.float32)
    g = _core.delta_gram([(a, b), (c, d), (a2, b2)])
    deltas = [b @ a, d @ c, b2 @ a2]
    want = np.array([[np.sum(x * y) for y in deltas] for x in deltas])
    np.testing.assert_allclose(g, want, rtol=1e-4)


# ------------------------------------------------------------------------------- rw.align
def test_align_keeps_delta_and_config_and_undoes_permutation(tmp_path: Path) -> None:
    from peft_factory import make_adapter

    ref = rw.load_adapter(make_adapter(tmp_path / "ref", seed=0, r=4, target_modules=["q_proj", "v_proj"]))
    other = rw.load_adapter(make_adapter(tmp_path / "other", seed=1, r=4, target_modules=["q_proj", "v_proj"]))
    out = rw.align(ref, other)
    assert out.config == other.config and out.modules == other.modules
    assert out.merge_info is not None and set(out.merge_info["scores"]) == set(other.modules)
    for m in other.modules:
        # The same rank-one terms, added in another order: float64 rounding only.
        a, b = other.factors(m)
        bound = 2 * chain_error([b * other.modules[m].scaling, a], u=U64)
        assert_within(_delta64(out, m), _delta64(other, m), bound, m)
        a, _ = out.factors(m)
        a0, _ = other.factors(m)
        # Only reordered and sign-flipped: the same rows up to sign.
        assert sorted(np.abs(a).sum(1).round(5).tolist()) == sorted(np.abs(a0).sum(1).round(5).tolist())
    # The saved folder is other's adapter (same config), loadable, same deltas.
    back = rw.load_adapter(out.save(tmp_path / "aligned"))
    assert back.config == other.config
    _assert_same_deltas(back, other, 1e-6)
    # A scrambled copy (permuted, flipped, no rescale) aligns back onto the reference's factors.
    copy = _scrambled(ref, 3, rescale=False)
    back = rw.align(ref, copy)
    for m in ref.modules:
        for x, y in zip(back.factors(m), ref.factors(m)):
            np.testing.assert_array_equal(x, y)
    assert back.merge_info["score"] == pytest.approx(1.0)


def test_align_errors() -> None:
    ref = _random_adapter(0, rank=4)
    with pytest.raises(rw.IncompatibleAdaptersError, match=r"rank 8 .* rank 4.*equal ranks"):
        rw.align(ref, _random_adapter(1, rank=8))
    with pytest.raises(rw.IncompatibleAdaptersError, match="module sets differ"):
        rw.align(ref, _random_adapter(1, rank=4, modules=2))
    with pytest.raises(rw.OptionError, match="similarity"):
        align(ref, ref, similarity="l2")
    with pytest.raises(TypeError, match="rw.Adapter"):
        rw.align(ref, 3)


# ------------------------------------------------------------------------------- aligned merge
def _linear_delta_error(pool: rw.AdapterPool, ref: Adapter, weights: list[float]) -> float:
    """Relative delta error of the ``linear`` baseline against Σw·ref (the weights rule), or
    (while it is missing) of the plain weighted average of the factors it stands for."""
    if "linear" in rw.merge_methods():
        return _rel_err(rw.merge(pool, "linear", weights=weights), ref, float(np.sum(weights)))
    w = np.asarray(weights) / np.sum(weights)
    errs = []
    for m in ref.modules:
        fs = [a.factors(m, folded=True) for a in pool]
        a_avg = sum(wj * a for wj, (a, _) in zip(w, fs))
        b_avg = sum(wj * b for wj, (_, b) in zip(w, fs))
        errs.append(np.abs(b_avg @ a_avg - ref.delta(m)).max() / np.abs(ref.delta(m)).max())
    return float(max(errs))


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5, 3.0]])
def test_aligned_merge_of_scrambled_copies_is_exact_and_linear_is_not(tmp_path: Path, weights) -> None:
    ref = _random_adapter(0, rank=6, scaling=0.5)
    pool = _saved_pool(tmp_path, [ref] + [_scrambled(ref, s) for s in (1, 2, 3)])
    merged = rw.merge(pool, "aligned", weights=weights)
    assert merged.merge_info["options"]["reference"] in range(4)
    total = sum(weights) if weights else 1.0  # the weights rule: Σ w_j·ΔW_j, default w_j = 1/N
    _assert_same_deltas(merged, ref, 1e-5, total)
    assert all(m.rank == 6 for m in merged.modules.values())
    # Any reference gives the same merge.
    _assert_same_deltas(rw.merge(pool, "aligned", weights=weights, reference=2, similarity="units"), ref, 1e-5, total)
    assert _linear_delta_error(pool, ref, weights or [0.25] * 4) > 0.1


def test_aligned_merge_works_on_in_memory_pools_and_weights_the_average() -> None:
    x, y = _random_adapter(0), _random_adapter(1)
    pool = rw.AdapterPool([x, _scrambled(y, 5), y])
    merged = rw.merge(pool, "aligned", weights=[1.0, 0.0, 0.0], reference=2)
    _assert_same_deltas(merged, x, 1e-5)  # only x counts; matched to y's units, then averaged
    merged = rw.merge(pool, "aligned", weights=[0.0, 1.0, 1.0], reference=0)
    _assert_same_deltas(merged, y, 1e-5, 2.0)  # Σ w_j·ΔW_j of two copies of y


def test_medoid_reference_is_the_numpy_medoid(tmp_path: Path) -> None:
    base = _random_adapter(0)
    rng = np.random.default_rng(7)
    adapters = []
    for j, noise in enumerate([0.9, 0.05, 0.5, 1.5]):
        fs = {
            m: tuple((f + noise * rng.standard_normal(f.shape)).astype(np.float32) for f in base.factors(m))
            for m in base.modules
        }
        adapters.append(Adapter(base.config, base.modules, factors=fs) if j else Adapter.from_factors(fs))
    pool = rw.AdapterPool(adapters)
    dist = np.zeros((4, 4))
    for m in base.modules:
        ds = [a.delta(m).astype(np.float64) for a in adapters]
        dist += np.array([[np.sum((p - q) ** 2) for q in ds] for p in ds])
    assert medoid_index(pool) == int(np.argmin(dist.sum(1))) == 1
    assert rw.merge(pool, "aligned").merge_info["options"]["reference"] == 1


def test_aligned_merge_errors(tmp_path: Path) -> None:
    r4, r8 = _random_adapter(0, rank=4), _random_adapter(1, rank=8)
    with pytest.raises(rw.IncompatibleAdaptersError, match=r"needs equal ranks.*: 4.*: 8"):
        rw.merge(_saved_pool(tmp_path, [r4, r8]), "aligned")
    pool = rw.AdapterPool([r4, _scrambled(r4, 1), _scrambled(r4, 2)])
    for bad in (3, -1, True, "0", 1.0):
        with pytest.raises(rw.OptionError, match=r"reference must be None .* in \[0, 3\)"):
            rw.merge(pool, "aligned", reference=bad)
    with pytest.raises(rw.OptionError, match="similarity"):
        rw.merge(pool, "aligned", similarity="cos")
    with pytest.raises(rw.OptionError, match="positive sum"):
        rw.merge(pool, "aligned", weights=[1.0, -1.0, 0.0])


# ------------------------------------------------------------------------------- LEGO init
def test_aligned_init_centroids(tmp_path: Path) -> None:
    ref = _random_adapter(0, rank=5)
    pool = _saved_pool(tmp_path, [ref] + [_scrambled(ref, s) for s in (1, 2)])
    m = pool.modules[0]
    ctx = ModuleContext(pool, m, 0, np.ones(3))
    units = ctx.units(canonical=True)
    init = aligned_init(ctx, 5, units, canonical=True)
    assert init is not None and init.shape == (5, D_OUT + D_IN) and init.dtype == np.float32
    # Canonical units of scrambled copies coincide, so each centroid is one of ref's units.
    np.testing.assert_allclose(np.sort(init, axis=0), np.sort(units[:5], axis=0), rtol=1e-5, atol=1e-6)
    assert aligned_init(ctx, 4, units, canonical=True) is None  # k is not the common rank


def test_lego_with_aligned_init_recovers_scrambled_copies(tmp_path: Path) -> None:
    if not hasattr(_core, "kmeans"):
        pytest.skip("the k-means binding is not built yet")
    ref = _random_adapter(0, rank=6)
    pool = _saved_pool(tmp_path, [ref] + [_scrambled(ref, s) for s in (1, 2, 3)])
    merged = rw.merge(pool, "lego", init="aligned", canonicalize=True, scale="mass")
    _assert_same_deltas(merged, ref, 1e-4)
    merged = rw.merge(pool, "lego", rank=3, init="aligned", canonicalize=True)  # falls back to k-means++
    assert all(m.rank == 3 for m in merged.modules.values())
