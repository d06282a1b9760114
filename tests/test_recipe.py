"""Recipes: parsed and checked key by key, dumped from a command line, merged from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from insight_pools import MODULES, saved_pool
from rankwise import recipe
from rankwise.cli import main
from rankwise.errors import OptionError


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


def test_recipe_with_rank_overrides_merges_like_the_api(tmp_path: Path) -> None:
    saved_pool(tmp_path, 3)
    p = _write(
        tmp_path,
        "sources:\n  - path: a0\n    weight: 2\n  - {path: a1, weight: 1}\n  - {path: a2, weight: 0.5}\n"
        "method: lego\nrank: 3\nrank_overrides: {v_proj: 1}\noptions: {seed: 4}\ndtype: bfloat16\n",
    )
    r = recipe.load(p)
    assert r.weights == [2.0, 1.0, 0.5] and r.paths[1] == str(tmp_path / "a1")
    assert main(["--threads", "1", "merge", "--config", str(p), "-o", str(tmp_path / "m"), "-q"]) == 0
    got = rw.Adapter.load(tmp_path / "m")
    paths = [tmp_path / f"a{j}" for j in range(3)]
    ref = rw.merge(paths, "lego", weights=[2, 1, 0.5], seed=4, dtype="bf16", rank={"v_proj": 1, "q_proj": 3})
    ref = rw.Adapter.load(ref.save(tmp_path / "ref"))
    assert got.modules[MODULES[1]].rank == 1 and got.modules[MODULES[0]].rank == 3
    assert got.dtype == "BF16"
    for m in MODULES:
        np.testing.assert_array_equal(got.delta(m), ref.delta(m))


def test_dump_config_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved_pool(tmp_path, 2)
    args = ["merge", str(tmp_path / "a0"), str(tmp_path / "a1"), "--rank", "2", "--weights", "1,3", "--seed", "5"]
    assert main([*args, "--dump-config", str(tmp_path / "r.yaml")]) == 0
    r = recipe.load(tmp_path / "r.yaml")
    assert (r.method, r.weights, r.options) == ("lego", [1.0, 3.0], {"rank": 2, "seed": 5})
    assert r.paths == [str(tmp_path / "a0"), str(tmp_path / "a1")]


def test_dumped_relative_paths_resolve_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Folders given relative to the working directory are written absolute."""
    saved_pool(tmp_path, 2)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    assert main(["merge", "a0", "a1", "--dump-config", "elsewhere/r.yaml"]) == 0
    r = recipe.load(tmp_path / "elsewhere" / "r.yaml")
    assert r.paths == [str(tmp_path / "a0"), str(tmp_path / "a1")]
    assert r.weights is None and not r.peft_weights  # no weights given: merge's default (1/N)


def test_peft_weights_round_trip_through_a_recipe(tmp_path: Path) -> None:
    saved_pool(tmp_path, 2)
    paths = [str(tmp_path / "a0"), str(tmp_path / "a1")]
    assert (
        main(
            [
                "merge",
                *paths,
                "--method",
                "ties_svd",
                "--option",
                "density=0.5",
                "--peft-weights",
                "1,2",
                "--dump-config",
                str(tmp_path / "r.yaml"),
            ]
        )
        == 0
    )
    r = recipe.load(tmp_path / "r.yaml")
    assert r.peft_weights and r.weights == [1.0, 2.0]
    assert main(["--threads", "1", "merge", "--config", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "m"), "-q"]) == 0
    ref = rw.merge(paths, "ties_svd", peft_weights=[1.0, 2.0], density=0.5)
    got = rw.Adapter.load(tmp_path / "m")
    for m in MODULES:
        np.testing.assert_allclose(got.delta(m), ref.delta(m), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("sources: [a0]\nmethd: lego\n", "'methd'"),
        ("sources: [a0]\nrank: sixteen\n", "'rank'"),
        ("sources: [a0, nowhere]\n", "'sources[1].path'"),
        ("sources: [{path: a0, wieght: 1}]\n", "'sources[0].wieght'"),
        ("sources: [{path: a0, weight: heavy}]\n", "'sources[0].weight'"),
        ("sources: [a0]\noptions: [1]\n", "'options'"),
        ("sources: [a0]\nrank_overrides: {v_proj: 2}\n", "'rank_overrides'"),
        ("method: lego\n", "'sources'"),
        ("sources: [a0]\ndtype: 16\n", "'dtype'"),
        ("sources: [{path: a0, weight: 1}, a0]\n", "'sources[1].weight'"),
        ("sources: [a0]\npeft_weights: yes please\n", "'peft_weights'"),
    ],
)
def test_bad_recipes_get_one_line_errors_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    saved_pool(tmp_path, 1)
    p = _write(tmp_path, text)
    with pytest.raises(OptionError) as e:
        recipe.load(p)
    msg = str(e.value)
    assert key in msg and str(p) in msg and "\n" not in msg


def test_not_yaml_is_an_option_error(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="not valid YAML"):
        recipe.load(_write(tmp_path, "sources: [a0\n"))
