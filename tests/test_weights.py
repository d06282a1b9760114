"""One meaning of ``weights`` for every method (methods/weighting.py): the target is Σ_j w_j·ΔW_j,
default w_j = 1/N. On N copies of one adapter every method must return that target; PEFT itself
is the oracle of the map from the rule's weights to PEFT's (``merge_info["peft_weights"]``), and
``peft_weights=`` gives PEFT's numerics."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from peft_factory import lora_layers, make_adapter, peft_model
from precision import delta64, gamma
from rankwise.methods import METHODS
from rankwise.methods.weighting import RULE

N, R = 3, 4
PEFT_METHODS = sorted(n for n, m in METHODS.items() if m.peft_factor is not None)


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """N folders holding the same rank-R adapter (scaling 2)."""
    root = tmp_path_factory.mktemp("copies")
    first = make_adapter(root / "c0", seed=3, r=R, lora_alpha=8)
    return [first] + [Path(shutil.copytree(first, root / f"c{j}")) for j in range(1, N)]


@pytest.fixture(scope="module")
def pool(copies: list[Path]) -> rw.AdapterPool:
    return rw.AdapterPool.load(copies)


@pytest.fixture(scope="module")
def distinct(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three different adapters with different scalings (alpha 8, 4, 16)."""
    root = tmp_path_factory.mktemp("distinct")
    return [make_adapter(root / f"d{i}", seed=10 + i, r=R, lora_alpha=al) for i, al in enumerate((8, 4, 16))]


def _options(method: str) -> dict[str, float]:
    # density 1 keeps every value: pruning is lossy by design, the scale is what is tested here.
    return {"density": 1.0} if "density" in METHODS[method].params else {}


def _deltas(adapter: rw.Adapter) -> dict[str, np.ndarray]:
    return {m: delta64(*adapter.factors(m), adapter.modules[m].scaling) for m in adapter.modules}


def _assert_scaled_copy(merged: dict[str, np.ndarray], source: dict[str, np.ndarray], total: float, what: str) -> None:
    """merged = total·source per module, and so ‖merged‖_F = |total|·‖source‖_F, within γ_n of
    the target's norm: n bounds the float32 roundings of one entry on any method's way (the weight
    and scaling folds, the sums over N adapters, the R-term products, the written factors)."""
    bound = gamma(4 * (N + R))
    for m, d in source.items():
        target = total * d
        norm = np.linalg.norm(target)
        err = np.linalg.norm(merged[m] - target)
        assert err <= bound * norm, f"{what}, {m}: ‖merged − Σw·ΔW‖ = {err:.3g}, bound {bound * norm:.3g}"
        assert abs(np.linalg.norm(merged[m]) - norm) <= bound * norm, f"{what}, {m}: norm"


@pytest.mark.parametrize("weights", [None, [2.0, 0.0, 0.0]], ids=["default", "2-0-0"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_merges_copies_to_the_weighted_sum(pool: rw.AdapterPool, method: str, weights) -> None:
    merged = rw.merge(pool, method, weights=weights, **_options(method))
    total = 1.0 if weights is None else sum(weights)  # default 1/N: the copy itself
    _assert_scaled_copy(_deltas(merged), _deltas(pool[0]), total, method)
    assert merged.merge_info["weights"] == pytest.approx(weights or [1 / N] * N, rel=1e-15)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_mixed_sign_and_unequal_weights(pool: rw.AdapterPool, method: str) -> None:
    w = [1.0, -0.5, 0.75] if method != "aligned" else [1.0, 2.0, 0.5]  # aligned needs Σw > 0
    merged = rw.merge(pool, method, weights=w, **_options(method))
    _assert_scaled_copy(_deltas(merged), _deltas(pool[0]), sum(w), method)


@pytest.mark.parametrize("options", [{}, {"features": "raw"}, {"canonicalize": False}, {"reweight": False}])
def test_lego_unequal_weights_on_copies(pool: rw.AdapterPool, options: dict[str, object]) -> None:
    """Canonical units carry the relative weight on b (ModuleContext._canonical_weights): had
    each weight been balanced as √w_j into both parts, copies would merge to (Σ √w_j)²/N·ΔW."""
    w = [1.0, 2.0, 0.5]
    merged = rw.merge(pool, "lego", weights=w, **options)
    _assert_scaled_copy(_deltas(merged), _deltas(pool[0]), sum(w), f"lego {options}")


def _peft_deltas(pm, method: str, weights: list[float], **kw) -> dict[str, np.ndarray]:
    name = f"m{method}{len(pm.peft_config)}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns that density 1 prunes nothing
        pm.add_weighted_adapter([f"a{i}" for i in range(N)], weights, name, combination_type=method, **kw)
    out = {}
    for m, layer in lora_layers(pm).items():
        a = layer.lora_A[name].weight.detach().double().numpy()
        b = layer.lora_B[name].weight.detach().double().numpy()
        out[m] = layer.scaling[name] * b @ a
    pm.delete_adapter(name)
    return out


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_peft_with_the_mapped_weights_merges_copies_to_the_weighted_sum(
    copies: list[Path], pool: rw.AdapterPool, method: str
) -> None:
    """PEFT as the oracle of c(w): given the weights merge_info records, PEFT's own
    add_weighted_adapter merges N copies to Σ w_j·ΔW_j."""
    pm = peft_model(copies)
    for w in ([1 / N] * N, [2.0, 0.0, 0.0], [1.0, -0.5, 0.75]):
        p = rw.merge(pool, method, weights=w, **_options(method)).merge_info["peft_weights"]
        _assert_scaled_copy(_peft_deltas(pm, method, p, **_options(method)), _deltas(pool[0]), sum(w), method)


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_peft_weights_give_peft_and_the_rule_weights_the_same(distinct: list[Path], method: str) -> None:
    """On different adapters: peft_weights=p is PEFT's merge with p; the rule's weights
    merge_info reports for it (p / c(p)) give the same merge back; weights=w equals
    peft_weights=c(w)·w byte for byte."""
    pool = rw.AdapterPool.load(distinct)
    opts = _options(method) | ({"density": 0.5} if method in ("ties", "ties_svd") else {})
    p = [0.7, 1.3, 0.5]
    via_peft = rw.merge(pool, method, peft_weights=p, **opts)
    assert via_peft.merge_info["peft_weights"] == p
    want = _peft_deltas(peft_model(distinct), method, p, **opts)
    for m, d in _deltas(via_peft).items():
        np.testing.assert_allclose(d, want[m], rtol=1e-4, atol=1e-4 * np.abs(want[m]).max(), err_msg=m)
    w = via_peft.merge_info["weights"]
    again = rw.merge(pool, method, weights=w, **opts)
    assert again.merge_info["peft_weights"] == pytest.approx(p, rel=1e-12)
    for m, d in _deltas(again).items():
        np.testing.assert_allclose(d, want[m], rtol=1e-4, atol=1e-4 * np.abs(want[m]).max(), err_msg=m)
    w2 = [0.2, 0.5, 0.3]
    by_rule = rw.merge(pool, method, weights=w2, **opts)
    by_peft = rw.merge(pool, method, peft_weights=by_rule.merge_info["peft_weights"], **opts)
    for m in by_rule.modules:
        for x, y in zip(by_rule.factors(m), by_peft.factors(m)):
            np.testing.assert_array_equal(x, y)


def test_exact_methods_give_twice_the_first_adapter(distinct: list[Path]) -> None:
    """Weights (2, 0, 0) on different adapters: the methods that are exact for one adapter's
    update (cat; svd at the source rank; linear, whose mapped PEFT weights are (2, 0, 0))."""
    pool = rw.AdapterPool.load(distinct)
    first = _deltas(pool[0])
    for method in ("cat", "svd", "linear"):
        merged = rw.merge(pool, method, weights=[2.0, 0.0, 0.0])
        _assert_scaled_copy(_deltas(merged), first, 2.0, method)


def test_weights_errors(pool: rw.AdapterPool) -> None:
    with pytest.raises(rw.OptionError, match="not both"):
        rw.merge(pool, "svd", weights=[1, 1, 1], peft_weights=[1, 1, 1])
    with pytest.raises(rw.OptionError, match="'lego' has no PEFT counterpart"):
        rw.merge(pool, "lego", peft_weights=[1, 1, 1])
    with pytest.raises(rw.OptionError, match="got 2 weights for 3 adapters"):
        rw.merge(pool, "linear", peft_weights=[1, 1])
    # Signed roots that cancel: on copies linear gives 0·ΔW, the rule asks 0.5·ΔW.
    with pytest.raises(rw.OptionError, match=r"'linear' cannot merge to Σ w_j·ΔW_j .* pass peft_weights="):
        rw.merge(pool, "linear", weights=[1.0, -0.25, -0.25])
    # PEFT's numerics stay available for such weights; no rule weights are equivalent.
    merged = rw.merge(pool, "linear", peft_weights=[1.0, -0.25, -0.25])
    assert merged.merge_info["weights"] is None
    assert merged.merge_info["peft_weights"] == [1.0, -0.25, -0.25]


def test_rule_is_stated_in_methods_and_the_merge_summary(copies: list[Path], tmp_path: Path, capsys) -> None:
    from rankwise.cli import main

    assert main(["methods"]) == 0
    assert RULE in capsys.readouterr().out
    assert main(["merge", *map(str, copies), "-o", str(tmp_path / "m"), "--method", "svd", "-q"]) == 0
    assert "target: Σ w_j ΔW_j with w = 0.333333 for each of the 3\n" in capsys.readouterr().out
    args = ["merge", *map(str, copies), "-o", str(tmp_path / "l"), "--method", "linear", "-q", "--weights", "2,0,0"]
    assert main(args) == 0
    assert "target: Σ w_j ΔW_j with w = [2, 0, 0]\n" in capsys.readouterr().out
    args = ["merge", *map(str, copies), "-o", str(tmp_path / "p"), "--method", "ties", "-q", "--peft-weights", "1,1,1"]
    assert main([*args, "--option", "density=0.5"]) == 0
    out = capsys.readouterr().out
    assert "target: Σ w_j ΔW_j with w = 0.333333 for each of the 3 (PEFT's ties run with weights 1 for each" in out
