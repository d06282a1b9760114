"""LoRA-LEGO merging: identities, the formulas of docs/ALGORITHMS.md §1 against independent numpy code, PEFT
loading of the result, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from peft_factory import lora_layers, make_adapter, peft_model
from precision import assert_centroids_match
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
        merged = rw.merge(mixed_pool, "lego", rank=k, weights=w, reweight=False, scale="mass")
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
        units = pool.unit_matrix(m, [0.25] * 4)[0]  # the default weights, 1/N
        labels = np.array(truth[m])
        want = reference_lego(units, labels, 3, h, param=param, output=output, mass=scale == "mass", r_bar=2.0)
        got = layers[m].get_delta_weight("a0").detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_rank_mapping_and_default_rank(mixed_pool: rw.AdapterPool) -> None:
    merged = rw.merge(mixed_pool, "lego", rank={"q_proj": 3, "v_proj": 2})
    assert {n: m.rank for n, m in merged.modules.items()} == {n: 3 if "q_proj" in n else 2 for n in mixed_pool.modules}
    # Default: 2 × the most common source rank (ties: the larger), capped at the units available.
    # q_proj: ranks 2, 4, 3 -> 8 (9 units); v_proj: ranks 2, 4, 1 -> 8 capped at 7 units.
    default = rw.merge(mixed_pool, "lego")
    assert {n: m.rank for n, m in default.modules.items()} == {n: 8 if "q_proj" in n else 7 for n in mixed_pool.modules}
    with pytest.raises(rw.OptionError, match="gives no rank for module"):
        rw.merge(mixed_pool, "lego", rank={"q_proj": 3})


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
        rw.merge(mixed_pool, "lego", scale="big")


def test_kmeans_on_real_units_matches_sklearn(mixed_pool: rw.AdapterPool) -> None:
    from sklearn.cluster import KMeans

    units = mixed_pool.unit_matrix(mixed_pool.modules[0])[0]
    init = units[:3].copy()
    sk = KMeans(3, init=init, n_init=1, algorithm="lloyd").fit(units)
    ours = rw.kmeans(units, 3, init=init)
    np.testing.assert_array_equal(ours.labels, sk.labels_)
    assert_centroids_match(ours.centroids, sk.cluster_centers_, units, ours.labels)


def test_merge_reports_phase_timings(mixed_pool: rw.AdapterPool) -> None:
    merged = rw.merge(mixed_pool, "lego", rank=2)
    assert merged.merge_info is not None
    t = merged.merge_info["timings"]
    assert set(t) == {"units", "kmeans", "assemble"} and all(v >= 0 for v in t.values())
    assert sum(t.values()) <= merged.merge_info["seconds"] + 1e-3


def test_cluster_means_rejects_bad_input() -> None:
    x = np.zeros((3, 4), dtype=np.float32)
    signs = np.ones(3, dtype=np.float32)
    with pytest.raises(rw.OptionError, match=r"label 3 of row 2 is not in 0\.\.3"):
        _core.cluster_means(x, np.array([0, 1, 3]), signs, 3, 2)
    with pytest.raises(rw.OptionError, match=r"x has 12 values, labels 2"):
        _core.cluster_means(x, np.array([0, 1]), signs[:2], 3, 2)
    with pytest.raises(rw.OptionError, match=r"part_norms has 4 values, expected 2·n = 6"):
        _core.cluster_means(x, np.array([0, 1, 2]), signs, 3, 2, np.ones((2, 2), dtype=np.float32))
