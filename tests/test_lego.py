"""LoRA-LEGO merging: identities, the formulas of docs/ALGORITHMS.md §1 against independent numpy code, PEFT
loading of the result, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from peft_factory import lora_layers, make_adapter, peft_model
from precision import assert_centroids_match, assert_within, gamma
from rankwise import _core
from rankwise.adapter import Adapter

QV = ["q_proj", "v_proj"]


def weighted_sum(pool: rw.AdapterPool, name: str, w: list[float]) -> np.ndarray:
    return sum(wj * a.delta(name) for wj, a in zip(w, pool))


@pytest.mark.parametrize("canonicalize", [False, True])
@pytest.mark.parametrize("features", ["raw", "normalized"])
def test_k_equal_units_without_reweighting_is_the_concatenation(
    mixed_pool: rw.AdapterPool, canonicalize: bool, features: str
) -> None:
    """Concatenation-summation equivalence: every cluster is one unit, so Σ centroids = Σ_j w_j ΔW_j."""
    w = [0.5, 1.0, 2.0]
    k = {m: sum(mixed_pool.ranks(m)) for m in mixed_pool.modules}
    merged = rw.merge(
        mixed_pool,
        "lego",
        rank=k,
        weights=w,
        assembly="legacy",
        reweight=False,
        scale="union",
        features=features,
        canonicalize=canonicalize,
    )
    for name in mixed_pool.modules:
        assert merged.modules[name].rank == k[name]
        np.testing.assert_allclose(merged.delta(name), weighted_sum(mixed_pool, name, w), rtol=1e-4, atol=1e-5)


def test_mass_scale_with_k_equal_units_is_the_weighted_sum(mixed_pool: rw.AdapterPool) -> None:
    """The weights rule (methods/weighting.py): Σ_j w_j ΔW_j, the mean for the default 1/N."""
    k = {m: sum(mixed_pool.ranks(m)) for m in mixed_pool.modules}
    for w in ([0.5, 1.0, 2.0], None):
        merged = rw.merge(mixed_pool, "lego", rank=k, weights=w, assembly="legacy", reweight=False, scale="mass")
        coef = w or [1 / 3] * 3
        for name in mixed_pool.modules:
            want = weighted_sum(mixed_pool, name, coef)
            np.testing.assert_allclose(merged.delta(name), want, rtol=1e-4, atol=1e-5)


def reference_lego(
    units: np.ndarray,
    labels: np.ndarray,
    k: int,
    d_out: int,
    *,
    param: bool,
    output: bool,
    mass: bool,
    r_bar: float,
) -> np.ndarray:
    """docs/ALGORITHMS.md §1.2-1.4 written out plainly with loops: returns the merged delta."""
    delta = np.zeros((d_out, units.shape[1] - d_out))
    for c in range(k):
        members = units[labels == c].astype(np.float64)
        cent = members.mean(axis=0)
        b, a = cent[:d_out], cent[d_out:]
        if param:
            b = b * np.mean([np.linalg.norm(u[:d_out]) for u in members]) / np.linalg.norm(b)
            a = a * np.mean([np.linalg.norm(u[d_out:]) for u in members]) / np.linalg.norm(a)
        weight = len(members) if mass else 1.0
        delta += weight * np.outer(b, a)
    if output and not mass:
        delta *= np.sqrt(r_bar / k)
    return delta


H = 32  # d_out = d_in of the prototype pools


def prototype_pool(
    tmp_path: Path, *, permute: bool = False, rescale: bool = False
) -> tuple[rw.AdapterPool, dict[str, np.ndarray]]:
    """4 rank-2 adapters of q_proj built from 3 well-separated prototype units per module (so the
    clusters are known by construction), and the true cluster of each unit. ``permute`` reverses
    each adapter's unit order, ``rescale`` replaces each unit (b, a) by (c·b, a/c): the same
    adapters as rank-one updates (same rng draws either way)."""
    rng = np.random.default_rng(0)
    ref = make_adapter(tmp_path / "shape", r=2, target_modules=["q_proj"])
    names = list(rw.load_adapter(ref).modules)
    protos = {m: rng.standard_normal((3, 2 * H)) for m in names}
    truth: dict[str, list[int]] = {m: [] for m in names}
    dirs = []
    for j in range(4):
        factors = {}
        for m in names:
            pick = rng.choice(3, size=2, replace=False)
            u = protos[m][pick] * rng.uniform(0.7, 1.3, size=(2, 1)) + 0.05 * rng.standard_normal((2, 2 * H))
            c = rng.uniform(0.3, 3.0, size=(2, 1))
            if rescale:
                u = np.hstack([u[:, :H] * c, u[:, H:] / c])
            if permute:
                u, pick = u[::-1], pick[::-1]
            truth[m] += list(pick)
            factors[m] = (u[:, H:].astype(np.float32), np.ascontiguousarray(u[:, :H].T, dtype=np.float32))
        cfg = rw.load_adapter(ref).config
        suffix = f"{int(permute)}{int(rescale)}"
        dirs.append(Adapter.from_factors(factors, base_config=cfg).save(tmp_path / f"p{j}-{suffix}"))
    return rw.AdapterPool.load(dirs), {m: np.array(t) for m, t in truth.items()}


@pytest.mark.parametrize(
    ("reweight", "scale"),
    [(True, "union"), ("param", "union"), ("output", "union"), (False, "union"), (True, "mass"), (False, "mass")],
)
def test_legacy_delta_follows_the_old_formulas_and_loads_in_peft(
    tmp_path: Path, reweight: bool | str, scale: str
) -> None:
    """assembly="legacy" reproduces the earlier default's formulas (reference_lego) at k=3 on a
    pool whose clusters are known; the delta PEFT sees equals the numpy reference."""
    pool, truth = prototype_pool(tmp_path)
    merged = rw.merge(
        pool,
        "lego",
        rank=3,
        assembly="legacy",
        reweight=reweight,
        scale=scale,
        seed=1,
        features="raw",
        canonicalize=False,
    )
    out = merged.save(tmp_path / "merged")
    layers = lora_layers(peft_model(out))
    param = reweight in (True, "param")
    output = reweight in (True, "output")
    for m in pool.modules:
        units = pool.unit_matrix(m, [1 / len(pool)] * len(pool))[0]  # the default weights, 1/N
        want = reference_lego(units, truth[m], 3, H, param=param, output=output, mass=scale == "mass", r_bar=2.0)
        got = layers[m].get_delta_weight("a0").detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_legacy_defaults_are_the_old_default(tmp_path: Path) -> None:
    """assembly="legacy" alone is the earlier default: rank 2r, normalized canonical features,
    parameter reweighting, mass scale (the same bytes as spelling those out)."""
    pool, _ = prototype_pool(tmp_path)
    short = rw.merge(pool, "lego", assembly="legacy", seed=3)
    spelled = rw.merge(
        pool,
        "lego",
        assembly="legacy",
        rank=4,
        features="normalized",
        canonicalize=True,
        reweight=True,
        scale="mass",
        seed=3,
    )
    for m in pool.modules:
        assert short.modules[m].rank == 4
        np.testing.assert_array_equal(short.delta(m), spelled.delta(m))


def reference_paper(units: np.ndarray, labels: np.ndarray, k: int, d_out: int, r_bar: float) -> np.ndarray:
    """assembly="paper" written out: centroid = mean unit, rescaled to its members' mean L∞ norm
    (of the whole unit [b ; a]), and the delta × √(r̄/k)."""
    delta = np.zeros((d_out, units.shape[1] - d_out))
    for c in range(k):
        members = units[labels == c].astype(np.float64)
        cent = members.mean(axis=0)
        cent *= np.mean([np.max(np.abs(u)) for u in members]) / np.max(np.abs(cent))
        delta += np.outer(cent[:d_out], cent[d_out:])
    return delta * np.sqrt(r_bar / k)


def test_paper_assembly_against_numpy(tmp_path: Path) -> None:
    pool, truth = prototype_pool(tmp_path)
    merged = rw.merge(pool, "lego", rank=3, assembly="paper", seed=1, features="raw", canonicalize=False)
    for m in pool.modules:
        want = reference_paper(pool.unit_matrix(m, [0.25] * 4)[0], truth[m], 3, H, r_bar=2.0)
        np.testing.assert_allclose(merged.delta(m), want, rtol=1e-4, atol=1e-5)


def orth(rows: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the span of rows, by numpy's QR (columns)."""
    q, _ = np.linalg.qr(rows.T)
    return q


def reference_projection(units: np.ndarray, labels: np.ndarray, k: int, d_out: int, *, norm: bool) -> np.ndarray:
    """Dense: T = Σ units, U/V = orth(centroid b/a parts), U (UᵀTV) Vᵀ, rescaled to ‖T‖_F if norm."""
    units = units.astype(np.float64)
    t = units[:, :d_out].T @ units[:, d_out:]
    cent = np.stack([units[labels == c].mean(axis=0) for c in range(k)])
    u, v = orth(cent[:, :d_out]), orth(cent[:, d_out:])
    proj = u @ (u.T @ t @ v) @ v.T
    return proj * np.linalg.norm(t) / np.linalg.norm(proj) if norm else proj


@pytest.mark.parametrize("assembly", ["projection", "projection-norm"])
@pytest.mark.parametrize("features", ["raw", "normalized"])
def test_projection_equals_the_dense_projection(tmp_path: Path, assembly: str, features: str) -> None:
    """The core (X_b U)ᵀ (X_a V) gives the dense U UᵀTV Vᵀ; projection-norm has ‖T‖_F exactly
    (Gram path) and loads in PEFT with that delta."""
    pool, truth = prototype_pool(tmp_path)
    merged = rw.merge(pool, "lego", rank=3, assembly=assembly, seed=1, features=features, canonicalize=False)
    layers = lora_layers(peft_model(merged.save(tmp_path / "merged")))
    for m in pool.modules:
        units = pool.unit_matrix(m, [0.25] * 4)[0]
        want = reference_projection(units, truth[m], 3, H, norm=assembly == "projection-norm")
        got = layers[m].get_delta_weight("a0").detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        t = np.linalg.norm(weighted_sum(pool, m, [0.25] * 4))
        ratio = np.linalg.norm(merged.delta(m)) / t
        if assembly == "projection-norm":
            assert abs(ratio - 1) < 1e-5
        else:
            assert ratio <= 1 + 1e-5  # a projection is never longer than its target


def test_estimated_norm_is_close_and_deterministic(tmp_path: Path) -> None:
    """norm="estimate" (the path for large modules): same direction as the exact path, ‖merged‖
    within 5% of ‖T‖ at 64 probes here (the in-subspace part is exact, only the remainder
    ‖T (I − VVᵀ)‖ is estimated), and the same bytes for the same seed."""
    pool, _ = prototype_pool(tmp_path)
    exact = rw.merge(pool, "lego", rank=2, seed=1, norm="exact")
    est = rw.merge(pool, "lego", rank=2, seed=1, norm="estimate")
    again = rw.merge(pool, "lego", rank=2, seed=1, norm="estimate")
    for m in pool.modules:
        t = np.linalg.norm(weighted_sum(pool, m, [0.25] * 4))
        d_exact, d_est = exact.delta(m), est.delta(m)
        proj = np.linalg.norm(rw.merge(pool, "lego", rank=2, seed=1, assembly="projection").delta(m))
        assert proj < 0.97 * t  # rank 2 of 3 clusters: a remainder worth estimating
        assert abs(np.linalg.norm(d_exact) / t - 1) < 1e-5
        assert abs(np.linalg.norm(d_est) / t - 1) < 0.05
        np.testing.assert_allclose(d_est / np.linalg.norm(d_est), d_exact / np.linalg.norm(d_exact), atol=1e-5)
        np.testing.assert_array_equal(d_est, again.delta(m))


def test_projection_is_invariant_to_unit_order_and_rescaling(tmp_path: Path) -> None:
    """Reordering each adapter's units, or (b, a) -> (c·b, a/c), is the same pool of updates:
    the default merge gives the same delta (up to float32 rounding)."""
    base, _ = prototype_pool(tmp_path)
    ref = rw.merge(base, "lego", rank=3, seed=2)
    for kw in ({"permute": True}, {"rescale": True}, {"permute": True, "rescale": True}):
        pool, _ = prototype_pool(tmp_path, **kw)
        got = rw.merge(pool, "lego", rank=3, seed=2)
        for m in base.modules:
            np.testing.assert_allclose(got.delta(m), ref.delta(m), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("assembly", ["projection", "projection-norm"])
def test_projection_with_k_equal_units_is_the_target(mixed_pool: rw.AdapterPool, assembly: str) -> None:
    """At k = all units the centroids are the units, their spans contain T, so U UᵀTV Vᵀ = T
    (with or without the rescale), within float32 product bounds."""
    w = [0.5, 1.0, 2.0]
    k = {m: sum(mixed_pool.ranks(m)) for m in mixed_pool.modules}
    merged = rw.merge(mixed_pool, "lego", rank=k, weights=w, assembly=assembly)
    for m in mixed_pool.modules:
        units = mixed_pool.unit_matrix(m, w)[0].astype(np.float64)
        xb, xa = units[:, : mixed_pool.shape(m)[0]], units[:, mixed_pool.shape(m)[0] :]
        # float32 products of n·d terms through two bases: a few γ_(n+d) of |X_b|ᵀ|X_a|.
        bound = 8 * gamma(units.shape[0] + units.shape[1]) * (np.abs(xb).T @ np.abs(xa)).max()
        assert_within(merged.delta(m), xb.T @ xa, bound, m)


def test_rank_mapping_and_default_rank(mixed_pool: rw.AdapterPool) -> None:
    merged = rw.merge(mixed_pool, "lego", rank={"q_proj": 3, "v_proj": 2})
    assert {n: m.rank for n, m in merged.modules.items()} == {n: 3 if "q_proj" in n else 2 for n in mixed_pool.modules}
    # Default: 4 × the most common source rank (ties: the larger), capped at the units available
    # (legacy: 2 ×). q_proj: ranks 2, 4, 3 -> 16 capped at 9 units, legacy 8; v_proj: ranks
    # 2, 4, 1 -> 16 and 8 capped at 7 units.
    default = rw.merge(mixed_pool, "lego")
    assert {n: m.rank for n, m in default.modules.items()} == {n: 9 if "q_proj" in n else 7 for n in mixed_pool.modules}
    legacy = rw.merge(mixed_pool, "lego", assembly="legacy")
    assert {n: m.rank for n, m in legacy.modules.items()} == {n: 8 if "q_proj" in n else 7 for n in mixed_pool.modules}
    with pytest.raises(rw.OptionError, match="gives no rank for module"):
        rw.merge(mixed_pool, "lego", rank={"q_proj": 3})


@pytest.mark.parametrize("assembly", ["projection-norm", "projection", "paper", "legacy"])
def test_zero_b_parts_merge_to_zero(tmp_path: Path, assembly: str) -> None:
    """Freshly initialized LoRAs (B = 0) merge to a zero update of rank k, finite, no error."""
    ref = make_adapter(tmp_path / "shape", r=2, target_modules=["q_proj"])
    cfg = rw.load_adapter(ref).config
    rng = np.random.default_rng(0)
    names = list(rw.load_adapter(ref).modules)
    dirs = [
        Adapter.from_factors(
            {m: (rng.standard_normal((2, H)).astype(np.float32), np.zeros((H, 2), np.float32)) for m in names},
            base_config=cfg,
        ).save(tmp_path / f"z{j}")
        for j in range(3)
    ]
    merged = rw.merge(rw.AdapterPool.load(dirs), "lego", rank=3, assembly=assembly)
    for m in names:
        assert merged.modules[m].rank == 3
        np.testing.assert_array_equal(merged.delta(m), 0.0)


def test_same_seed_same_bytes_and_progress(mixed_pool: rw.AdapterPool, tmp_path: Path) -> None:
    seen: list[tuple[int, int, str]] = []
    a = rw.merge(mixed_pool, "lego", rank=3, seed=7, progress=lambda i, n, m: seen.append((i, n, m)))
    b = rw.merge(mixed_pool, "lego", rank=3, seed=7)
    assert [s[0] for s in seen] == list(range(1, len(mixed_pool.modules) + 1))
    pa, pb = a.save(tmp_path / "a"), b.save(tmp_path / "b")
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        assert (pa / f).read_bytes() == (pb / f).read_bytes()
    assert a.merge_info is not None and a.merge_info["method"] == "lego"


def test_bad_merge_input(mixed_pool: rw.AdapterPool) -> None:
    with pytest.raises(rw.OptionError, match=r"rank k=99 is larger than the \d+ rank units the pool has"):
        rw.merge(mixed_pool, "lego", rank=99)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(rw.OptionError, match="rank k must be a positive int"):
            rw.merge(mixed_pool, "lego", rank=bad)
    with pytest.raises(rw.OptionError, match="scale must be one of"):
        rw.merge(mixed_pool, "lego", assembly="legacy", scale="big")
    with pytest.raises(rw.OptionError, match="assembly must be one of"):
        rw.merge(mixed_pool, "lego", assembly="centroids")
    with pytest.raises(rw.OptionError, match=r"scale and reweight apply to assembly='legacy' only"):
        rw.merge(mixed_pool, "lego", scale="mass", reweight=False)
    with pytest.raises(rw.OptionError, match="norm must be one of"):
        rw.merge(mixed_pool, "lego", norm="approx")
    with pytest.raises(rw.OptionError, match="norm_probes must be a positive int"):
        rw.merge(mixed_pool, "lego", norm_probes=0)


def test_kmeans_on_real_units_matches_sklearn(mixed_pool: rw.AdapterPool) -> None:
    from sklearn.cluster import KMeans

    units = mixed_pool.unit_matrix(mixed_pool.modules[0])[0]
    init = units[:3].copy()
    sk = KMeans(3, init=init, n_init=1, algorithm="lloyd").fit(units)
    ours = rw.kmeans(units, 3, init=init)
    np.testing.assert_array_equal(ours.labels, sk.labels_)
    assert_centroids_match(ours.centroids, sk.cluster_centers_, units, ours.labels)


def test_merge_reports_phase_timings(mixed_pool: rw.AdapterPool) -> None:
    """One module at a time (one thread) the phases fit in the wall time; with modules run at once
    (two threads on a resident pool) they are thread-seconds, within two times the wall time."""
    try:
        for threads in (1, 2):
            rw.set_num_threads(threads)
            merged = rw.merge(mixed_pool, "lego", rank=2)
            assert merged.merge_info is not None
            t = merged.merge_info["timings"]
            assert set(t) == {"units", "kmeans", "assemble"} and all(v >= 0 for v in t.values())
            assert sum(t.values()) <= threads * merged.merge_info["seconds"] + 1e-3
    finally:
        rw.set_num_threads(0)


def test_cluster_means_rejects_bad_input() -> None:
    x = np.zeros((3, 4), dtype=np.float32)
    signs = np.ones(3, dtype=np.float32)
    with pytest.raises(rw.OptionError, match=r"label 3 of row 2 is not in 0\.\.3"):
        _core.cluster_means(x, np.array([0, 1, 3]), signs, 3, 2)
    with pytest.raises(rw.OptionError, match=r"x has 12 values, labels 2"):
        _core.cluster_means(x, np.array([0, 1]), signs[:2], 3, 2)
    with pytest.raises(rw.OptionError, match=r"part_norms has 4 values, expected 2·n = 6"):
        _core.cluster_means(x, np.array([0, 1, 2]), signs, 3, 2, np.ones((2, 2), dtype=np.float32))


def test_modules_run_at_once_on_a_resident_pool_with_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a pool that stays resident LEGO merges several modules at once (one per core thread):
    the same bytes as one thread, modules reported in order; a streaming pool goes one module at
    a time (its pages are dropped after each)."""
    import threading

    from rankwise.methods import lego as lego_module
    from raw_adapter import write_pool

    pool = rw.AdapterPool.load(write_pool(tmp_path, 4, modules=6, d=48, rank=4, seed=5))
    assert not pool.streams
    names: set[str] = set()

    def spying(real):  # type: ignore[no-untyped-def]
        def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
            names.add(threading.current_thread().name)
            return real(*args, **kwargs)

        return spy

    # small modules cluster from their unit Grams (kmeans_gram), others from the rows
    monkeypatch.setattr(lego_module, "kmeans", spying(lego_module.kmeans))
    monkeypatch.setattr(lego_module, "kmeans_gram", spying(lego_module.kmeans_gram))
    try:
        rw.set_num_threads(1)
        want = rw.merge(pool, "lego", rank=6)
        rw.set_num_threads(2)
        names.clear()
        seen: list[str] = []
        got = rw.merge(pool, "lego", rank=6, progress=lambda i, n, m: seen.append(m))
        assert any(n.startswith("rankwise-merge") for n in names)  # the parallel loop ran
        assert seen == list(pool.modules)
        monkeypatch.setattr(type(pool), "streams", property(lambda self: True))
        names.clear()
        streamed = rw.merge(pool, "lego", rank=6)
        assert names == {threading.main_thread().name}
    finally:
        rw.set_num_threads(0)
    for name in want.modules:
        for w, g, s in zip(want.factors(name), got.factors(name), streamed.factors(name)):
            np.testing.assert_array_equal(g, w)
            np.testing.assert_array_equal(s, w)
