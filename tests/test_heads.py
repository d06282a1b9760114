"""Heads (heads.py): which keys are full copies, and what a merge does with them, against numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from rankwise.heads import head_module
from raw_adapter import CONFIG, good_header, write_raw

HEAD_KEY = "base_model.model.score.weight"


def test_head_keys() -> None:
    assert head_module(HEAD_KEY, []) == ("score.weight", "score")
    assert head_module("base_model.model.score.modules_to_save.default.weight", []) == ("score.weight", "score")
    assert head_module("base_model.model.model.embed_tokens.base_layer.weight", []) == (
        "model.embed_tokens.base_layer.weight",
        "model.embed_tokens",
    )
    assert head_module("base_model.model.lm_head.weight", []) is None
    assert head_module("base_model.model.lm_head.weight", ["lm_head"]) == ("lm_head.weight", "lm_head")
    assert head_module("base_model.model.score.lora_A.weight", []) is None  # a LoRA factor, never a head


def with_head(folder: Path, value: np.ndarray, shape: tuple[int, ...] = (3, 4)) -> Path:
    header, data = good_header()
    n = len(data)
    header[HEAD_KEY] = {"dtype": "F32", "shape": list(shape), "data_offsets": [n, n + 4 * value.size]}
    return write_raw(folder, header, data + value.astype(np.float32).tobytes(), config=CONFIG)


@pytest.fixture
def heads3(tmp_path: Path) -> tuple[list[Path], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    values = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3)]
    return [with_head(tmp_path / f"h{j}", v) for j, v in enumerate(values)], values


def test_mean_is_the_weighted_sum_default_one_over_n(heads3: tuple[list[Path], list[np.ndarray]]) -> None:
    folders, values = heads3
    got = rw.merge(folders, "linear", heads="mean").head("score.weight")
    np.testing.assert_allclose(got, sum(v.astype(np.float64) for v in values) / 3, rtol=1e-6)
    w = [0.5, 2.0, -1.0]
    got = rw.merge(folders, "linear", weights=w, heads="mean").head("score.weight")
    np.testing.assert_allclose(got, sum(wj * v.astype(np.float64) for wj, v in zip(w, values)), rtol=1e-6)


def test_identical_heads_mean_to_themselves_bit_for_bit(heads3: tuple[list[Path], list[np.ndarray]]) -> None:
    folders, values = heads3
    got = rw.merge([folders[1]] * 4, "linear", heads="mean").head("score.weight")
    np.testing.assert_array_equal(got, values[1])


def test_mean_needs_equal_shapes_and_the_same_heads(
    tmp_path: Path, heads3: tuple[list[Path], list[np.ndarray]]
) -> None:
    folders, _ = heads3
    odd = with_head(tmp_path / "odd", np.zeros(8), shape=(2, 4))
    with pytest.raises(
        rw.IncompatibleAdaptersError, match=r"odd: head 'score.weight' has shape \[2, 4\] but in .*h0 \[3, 4\]"
    ):
        rw.merge([folders[0], odd], "linear", heads="mean")
    plain = write_raw(tmp_path / "plain", *good_header())
    with pytest.raises(rw.IncompatibleAdaptersError, match=r"plain: heads differ from .*h0's \(e.g. 'score.weight'\)"):
        rw.merge([folders[0], plain], "linear", heads="mean")
    assert rw.merge([plain, folders[0]], "linear", heads="first").heads == {}
    with pytest.raises(rw.OptionError, match=r"heads must be one of mean, first, drop or an adapter index, got 'avg'"):
        rw.merge(folders, "linear", heads="avg")
