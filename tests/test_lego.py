"""LoRA-LEGO merging: identities, the PAPERS.md formulas against independent numpy code, PEFT
loading of the result, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from peft_factory import lora_layers, make_adapter, peft_model
from rankwise import _core
from rankwise.adapter import Adapter

QV = ["q_proj", "v_proj"]


@pytest.fixture(scope="module")
def mixed_pool(tmp_path_factory: pytest.TempPathFactory) -> rw.AdapterPool:
    root = tmp_path_factory.mktemp("mixed")
    dirs = [
        make_adapter(root / f"a{i}", seed=10 + i, r=r, lora_alpha=alpha, target_modules=QV, **kw)
        for i, (r, alpha, kw) in enumerate(
            [(2, 4, {}), (4, 8, {"use_rslora": True}), (3, 5, {"rank_pattern": {"v_proj": 1}})]
        )
    ]
    return rw.AdapterPool.load(dirs)


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
        reweight=False,
        scale="union",
        features=features,
        canonicalize=canonicalize,
    )
    for name in mixed_pool.modules:
        assert merged.modules[name].rank == k[name]
        np.testing.assert_allclose(merged.delta(name), weighted_sum(mixed_pool, name, w), rtol=1e-4, atol=1e-5)


def test_mass_scale_with_k_equal_units_is_the_weighted_average(mixed_pool: rw.AdapterPool) -> None:
    w = [0.5, 1.0, 2.0]
    k = {m: sum(mixed_pool.ranks(m)) for m in mixed_pool.modules}
    merged = rw.merge(mixed_pool, "lego", rank=k, weights=w, reweight=False, scale="mass")
    for name in mixed_pool.modules:
        np.testing.assert_allclose(merged.delta(name), weighted_sum(mixed_pool, name, w) / sum(w), rtol=1e-4, atol=1e-5)


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
    w_sum: float,
) -> np.ndarray:
    """PAPERS.md §1 written out plainly with loops: returns the merged delta."""
    delta = np.zeros((d_out, units.shape[1] - d_out))
    for c in range(k):
        members = units[labels == c].astype(np.float64)
        cent = members.mean(axis=0)
        b, a = cent[:d_out], cent[d_out:]
        if param:
            b = b * np.mean([np.linalg.norm(u[:d_out]) for u in members]) / np.linalg.norm(b)
            a = a * np.mean([np.linalg.norm(u[d_out:]) for u in members]) / np.linalg.norm(a)
        weight = len(members) / w_sum if mass else 1.0
        delta += weight * np.outer(b, a)
    if output and not mass:
        delta *= np.sqrt(r_bar / k)
    return delta


@pytest.mark.parametrize(
    ("reweight", "scale"),
    [(True, "union"), ("param", "union"), ("output", "union"), (False, "union"), (True, "mass"), (False, "mass")],
)
def test_merged_delta_follows_the_formulas_and_loads_in_peft(tmp_path: Path, reweight: bool | str, scale: str) -> None:
    """Adapters built from 3 well-separated prototype units per module (so the clusters are known
    by construction), merged at k=3; the delta PEFT sees equals the numpy reference."""
    rng = np.random.default_rng(0)
    h = 32
    ref = make_adapter(tmp_path / "shape", r=2, target_modules=["q_proj"])
    names = list(rw.load_adapter(ref).modules)
    protos = {m: rng.standard_normal((3, 2 * h)) for m in names}
    truth: dict[str, list[int]] = {m: [] for m in names}
    dirs = []
    for j in range(4):
        factors = {}
        for m in names:
            pick = rng.choice(3, size=2, replace=False)
            truth[m] += list(pick)
            u = protos[m][pick] * rng.uniform(0.7, 1.3, size=(2, 1)) + 0.05 * rng.standard_normal((2, 2 * h))
            factors[m] = (u[:, h:].astype(np.float32), np.ascontiguousarray(u[:, :h].T, dtype=np.float32))
        cfg = rw.load_adapter(ref).config
        dirs.append(Adapter.from_factors(factors, base_config=cfg).save(tmp_path / f"p{j}"))
    pool = rw.AdapterPool.load(dirs)
    merged = rw.merge(pool, "lego", rank=3, reweight=reweight, scale=scale, seed=1, features="raw", canonicalize=False)
    out = merged.save(tmp_path / "merged")
    layers = lora_layers(peft_model(out))
    param = reweight in (True, "param")
    output = reweight in (True, "output")
    for m in names:
        units = pool.unit_matrix(m)[0]
        labels = np.array(truth[m])
        want = reference_lego(
            units, labels, 3, h, param=param, output=output, mass=scale == "mass", r_bar=2.0, w_sum=4.0
        )
        got = layers[m].get_delta_weight("a0").detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_rank_mapping_and_default_rank(mixed_pool: rw.AdapterPool) -> None:
    merged = rw.merge(mixed_pool, "lego", rank={"q_proj": 3, "v_proj": 2})
    assert {n: m.rank for n, m in merged.modules.items()} == {n: 3 if "q_proj" in n else 2 for n in mixed_pool.modules}
    # Default: 2 × the most common source rank (ties: the larger), capped at the units available.
    # q_proj: ranks 2, 4, 3 -> 8 (9 units); v_proj: ranks 2, 4, 1 -> 8 capped at 7 units.
    default = rw.merge(mixed_pool, "lego")
    assert {n: m.rank for n, m in default.modules.items()} == {n: 8 if "q_proj" in n else 7 for n in mixed_pool.modules}
    with pytest.raises(rw.MergeConfigError, match="gives no rank for module"):
        rw.merge(mixed_pool, "lego", rank={"q_proj": 3})


def test_prune_one_adapter(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "a", r=6, target_modules=QV)
    pruned = rw.prune(rw.load_adapter(folder), rank=2, reweight=False)
    assert {m.rank for m in pruned.modules.values()} == {2}
    full = rw.prune(folder, rank=6, reweight=False)  # k = r: the adapter itself
    src = rw.load_adapter(folder)
    for name in src.modules:
        np.testing.assert_allclose(full.delta(name), src.delta(name), rtol=1e-4, atol=1e-5)


def test_same_seed_same_bytes_and_progress(mixed_pool: rw.AdapterPool, tmp_path: Path) -> None:
    seen: list[tuple[int, int, str]] = []
    a = rw.merge(mixed_pool, "lego", rank=3, seed=7, progress=lambda i, n, m: seen.append((i, n, m)))
    b = rw.merge(mixed_pool, "lego", rank=3, seed=7)
    assert [s[0] for s in seen] == list(range(1, len(mixed_pool.modules) + 1))
    pa, pb = a.save(tmp_path / "a"), b.save(tmp_path / "b")
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        assert (pa / f).read_bytes() == (pb / f).read_bytes()
    assert a.merge_info is not None and a.merge_info["method"] == "lego"


def test_output_dtype_follows_inputs_or_request(tmp_path: Path) -> None:
    dirs = [make_adapter(tmp_path / f"h{i}", seed=i, r=2, target_modules=["q_proj"], dtype="BF16") for i in range(2)]
    pool = rw.AdapterPool.load(dirs)
    assert rw.merge(pool, "lego", rank=2).dtype == "BF16"
    assert rw.merge(pool, "lego", rank=2, dtype="float16").dtype == "F16"
    with pytest.raises(rw.MergeConfigError, match="unknown dtype 'int8'"):
        rw.merge(pool, "lego", rank=2, dtype="int8")


def test_bad_merge_input(mixed_pool: rw.AdapterPool) -> None:
    with pytest.raises(rw.MergeConfigError, match=r"rank k=99 is larger than the \d+ rank units the pool has"):
        rw.merge(mixed_pool, "lego", rank=99)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(rw.MergeConfigError, match="rank k must be a positive int"):
            rw.merge(mixed_pool, "lego", rank=bad)
    with pytest.raises(rw.MergeConfigError, match="got 2 weights for 3 adapters"):
        rw.merge(mixed_pool, "lego", weights=[1, 2])
    with pytest.raises(rw.MergeConfigError, match="weights must be finite"):
        rw.merge(mixed_pool, "lego", weights=[1, float("nan"), 1])
    with pytest.raises(rw.MergeConfigError, match="unknown merge method 'legoo'"):
        rw.merge(mixed_pool, "legoo")
    with pytest.raises(rw.MergeConfigError, match="has no option.* densty"):
        rw.merge(mixed_pool, "lego", densty=0.5)
    with pytest.raises(rw.MergeConfigError, match="scale must be one of"):
        rw.merge(mixed_pool, "lego", scale="big")
    with pytest.raises(rw.MergeConfigError, match="needs at least one adapter"):
        rw.AdapterPool([])


def test_kmeans_matches_sklearn_given_its_init() -> None:
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(n_samples=600, n_features=12, centers=5, random_state=0)
    x = x.astype(np.float32)
    init = x[[0, 100, 200, 300, 400]].copy()
    sk = KMeans(5, init=init, n_init=1, algorithm="lloyd", max_iter=300, tol=1e-4).fit(x)
    ours = rw.kmeans(x, 5, init=init)
    np.testing.assert_array_equal(ours.labels, sk.labels_)
    np.testing.assert_allclose(ours.centroids, sk.cluster_centers_, rtol=1e-5, atol=1e-5)
    assert ours.inertia == pytest.approx(sk.inertia_, rel=1e-4)


def test_kmeans_on_real_units_matches_sklearn(mixed_pool: rw.AdapterPool) -> None:
    from sklearn.cluster import KMeans

    units = mixed_pool.unit_matrix(mixed_pool.modules[0])[0]
    init = units[:3].copy()
    sk = KMeans(3, init=init, n_init=1, algorithm="lloyd").fit(units)
    ours = rw.kmeans(units, 3, init=init)
    np.testing.assert_array_equal(ours.labels, sk.labels_)
    np.testing.assert_allclose(ours.centroids, sk.cluster_centers_, rtol=1e-5, atol=1e-5)


# (n, d, k, cluster_std, n_init). The wide case has d >= 1024 and k >= 16, so seeding measures
# distances in a random projection (kmeans.rs, projects_for_seeding); its blobs are noisy enough
# that restarts land in different local optima on either side of scikit-learn's.
@pytest.mark.parametrize("shape", [(2000, 32, 12, 3.0, 4), (2000, 1100, 16, 25.0, 3)], ids=["narrow", "wide"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_plus_plus_inertia_close_to_sklearn(seed: int, shape: tuple[int, int, int, float, int]) -> None:
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs

    n, d, k, std, n_init = shape
    x, _ = make_blobs(n_samples=n, n_features=d, centers=k, cluster_std=std, random_state=seed)
    x = x.astype(np.float32)
    sk = KMeans(k, n_init=n_init, algorithm="lloyd", random_state=seed).fit(x)
    ours = rw.kmeans(x, k, n_init=n_init, seed=seed)
    assert ours.inertia <= 1.01 * sk.inertia_


@pytest.mark.parametrize(("n", "d", "sign_invariant"), [(3000, 40, False), (900, 1100, False), (900, 1100, True)])
def test_kmeans_same_bytes_at_one_and_two_threads(n: int, d: int, sign_invariant: bool) -> None:
    x = np.random.default_rng(3).standard_normal((n, d)).astype(np.float32)
    try:
        rw.set_num_threads(1)
        one = rw.kmeans(x, 16, n_init=2, seed=5, sign_invariant=sign_invariant)
        rw.set_num_threads(2)
        two = rw.kmeans(x, 16, n_init=2, seed=5, sign_invariant=sign_invariant)
    finally:
        rw.set_num_threads(0)
    assert one.centroids.tobytes() == two.centroids.tobytes()
    assert one.labels.tobytes() == two.labels.tobytes()
    assert one.inertia == two.inertia and one.n_iter == two.n_iter


def test_kmeans_bad_input() -> None:
    x = np.zeros((10, 3), dtype=np.float32)
    with pytest.raises(rw.MergeConfigError, match="larger than the n=10"):
        rw.kmeans(x, 11)
    with pytest.raises(rw.MergeConfigError, match="k"):
        rw.kmeans(x, 0)
    with pytest.raises(rw.MergeConfigError, match="2-D"):
        rw.kmeans(np.zeros(5, dtype=np.float32), 2)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(rw.MergeConfigError, match="finite"):
        rw.kmeans(bad, 2)
    with pytest.raises(rw.MergeConfigError, match="init"):
        rw.kmeans(x, 2, init=np.zeros((3, 3), dtype=np.float32))


def test_sign_invariant_kmeans_groups_units_with_either_sign() -> None:
    """Noisy copies of 5 prototypes with random signs: clusters are the prototypes, and the
    returned signs orient every member like its cluster."""
    from rankwise.kmeans import sign_invariant_kmeans

    rng = np.random.default_rng(0)
    protos = rng.standard_normal((5, 40)).astype(np.float32)
    truth = rng.integers(0, 5, size=300)
    flips = rng.choice([-1.0, 1.0], size=300).astype(np.float32)
    x = (protos[truth] + 0.05 * rng.standard_normal((300, 40))).astype(np.float32) * flips[:, None]
    labels, signs = sign_invariant_kmeans(x, 5, seed=1)
    # Same partition as the truth (up to relabelling) ...
    pairs = set(zip(labels.tolist(), truth.tolist()))
    assert len(pairs) == 5
    # ... and within each cluster, sign·flip is constant (members oriented alike).
    for c in range(5):
        assert len(set((signs * flips)[labels == c].tolist())) == 1


def test_merge_reports_phase_timings(mixed_pool: rw.AdapterPool) -> None:
    merged = rw.merge(mixed_pool, "lego", rank=2)
    assert merged.merge_info is not None
    t = merged.merge_info["timings"]
    assert set(t) == {"units", "kmeans", "assemble"} and all(v >= 0 for v in t.values())
    assert sum(t.values()) <= merged.merge_info["seconds"] + 1e-3


def test_rw_merge_and_kmeans_stay_functions_after_importing_the_submodules() -> None:
    """`rankwise.kmeans` is a submodule and a function: the function must win; `rankwise.merge`
    is no longer a package (the loop is `rankwise.merging`)."""
    import subprocess
    import sys

    code = (
        "import rankwise.kmeans, rankwise.methods.lego, rankwise.merging, rankwise as rw, inspect; "
        "print(inspect.isfunction(rw.merge), inspect.isfunction(rw.kmeans))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["True", "True"], res.stderr


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
        with pytest.raises(rw.MergeConfigError, match=r"out has shape \(\d+, \d+\), expected"):
            mixed_pool.unit_features(m, w, canonical=canonical, out=np.empty((x.shape[0] + 1, x.shape[1]), np.float32))


def test_cluster_means_rejects_bad_input() -> None:
    x = np.zeros((3, 4), dtype=np.float32)
    signs = np.ones(3, dtype=np.float32)
    with pytest.raises(rw.MergeConfigError, match=r"label 3 of row 2 is not in 0\.\.3"):
        _core.cluster_means(x, np.array([0, 1, 3]), signs, 3, 2)
    with pytest.raises(rw.MergeConfigError, match=r"x has 12 values, labels 2"):
        _core.cluster_means(x, np.array([0, 1]), signs[:2], 3, 2)
    with pytest.raises(rw.MergeConfigError, match=r"part_norms has 4 values, expected 2·n = 6"):
        _core.cluster_means(x, np.array([0, 1, 2]), signs, 3, 2, np.ones((2, 2), dtype=np.float32))
