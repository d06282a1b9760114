"""The model card written beside every saved merge: front matter, sources with their sha256,
options, and a recipe that redoes the merge bit for bit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import yaml

import rankwise as rw
from insight_pools import MODULES, saved_pool
from rankwise.recipe import parse


def _card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text(encoding="utf-8")
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_card_front_matter_sources_and_recipe_reproduce_the_merge(tmp_path: Path) -> None:
    paths = saved_pool(tmp_path, 3)
    merged = rw.merge(paths, "lego", rank=2, weights=[1.0, 0.5, 2.0], seed=3)
    out = merged.save(tmp_path / "merged")
    front, body = _card(out)
    assert front == {"base_model": "tiny/base", "library_name": "peft", "tags": ["rankwise", "merge", "lego"]}
    for p in paths:
        digest = hashlib.sha256((p / "adapter_model.safetensors").read_bytes()).hexdigest()
        assert f"`{p}`" in body and digest in body
    assert "- seed: `3`" in body and "- rank:" in body
    # The recipe block alone redoes the merge.
    recipe = parse(yaml.safe_load(body.split("```yaml\n", 1)[1].split("```", 1)[0]))
    again = rw.merge(recipe.paths, recipe.method, weights=recipe.weights, dtype=recipe.dtype, **recipe.options)
    for m in MODULES:
        for x, y in zip(merged.factors(m), again.factors(m)):
            np.testing.assert_array_equal(x, y)
    # adapter_config.json stays what PEFT expects: no rankwise keys in it.
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert not any("rankwise" in k for k in cfg)


def test_a_plain_adapter_gets_no_card(tmp_path: Path) -> None:
    out = saved_pool(tmp_path, 1)[0]
    assert not (out / "README.md").exists()
