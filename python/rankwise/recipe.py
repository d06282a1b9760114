"""Merge recipes: a YAML file in the spirit of mergekit's that says everything about a merge.

    sources:                  # adapter folders, each a path or {path, weight}
      - path: runs/math
        weight: 1.0
      - runs/code
    method: lego              # default lego
    rank: 16                  # the merged rank (lego), optional
    rank_overrides:           # per-module ranks (PEFT rank_pattern keys), need `rank`
      v_proj: 8
    options: {seed: 0}        # the method's other options
    dtype: bfloat16           # output dtype, optional
    peft_weights: false       # true: the weights are PEFT's add_weighted_adapter weights

Weights are task-arithmetic coefficients (the target is Σ w_j·ΔW_j, ``methods/weighting.py``):
give one for every source or none (then 1/N each).

``load`` checks it whole: an unknown key, a wrong type or a missing source folder is an
``OptionError`` of one line naming the file and the key. PyYAML (``rankwise[recipe]``) is
imported only when a recipe is read or written as YAML, so the numpy-only merge never needs it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import OptionError
from .memory import memory_limit

KEYS = {"sources", "method", "rank", "rank_overrides", "options", "dtype", "peft_weights", "memory_limit"}


@dataclass
class Recipe:
    paths: list[str]
    weights: list[float] | None  # None: the default, 1/N each
    method: str = "lego"
    options: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    peft_weights: bool = False  # the weights are PEFT's (merge's peft_weights=)
    memory_limit: int | str | None = None  # merge's memory_limit (None: its default)

    def to_dict(self) -> dict[str, Any]:
        opts = dict(self.options)
        out: dict[str, Any] = {
            "sources": [{"path": p} for p in self.paths]
            if self.weights is None
            else [{"path": p, "weight": w} for p, w in zip(self.paths, self.weights)],
            "method": self.method,
        }
        rank = opts.pop("rank", None)
        if isinstance(rank, dict):
            default = rank.get(".*")
            out["rank"], out["rank_overrides"] = default, {k: v for k, v in rank.items() if k != ".*"}
            if default is None:
                del out["rank"]
        elif rank is not None:
            out["rank"] = rank
        if opts:
            out["options"] = opts
        if self.dtype is not None:
            out["dtype"] = self.dtype
        if self.peft_weights:
            out["peft_weights"] = True
        if self.memory_limit is not None:
            out["memory_limit"] = self.memory_limit
        return out


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise OptionError("recipes need PyYAML: pip install 'rankwise[recipe]'") from None
    return yaml


def parse(raw: Any, where: str = "recipe") -> Recipe:
    """A recipe from its parsed YAML (a mapping), checked key by key."""
    if not isinstance(raw, dict):
        raise OptionError(f"{where}: expected a mapping of {sorted(KEYS)}, got {type(raw).__name__}")
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise OptionError(f"{where}: unknown key {unknown[0]!r}; a recipe has {', '.join(sorted(KEYS))}")
    srcs = raw.get("sources")
    if not isinstance(srcs, list) or not srcs:
        raise OptionError(f"{where}: 'sources' must be a non-empty list of adapter folders")
    base = Path(where).parent if where != "recipe" else Path()
    paths: list[str] = []
    weights: list[float] = []
    for i, s in enumerate(srcs):
        key = f"sources[{i}]"
        if isinstance(s, str):
            s = {"path": s}
        if not isinstance(s, dict):
            raise OptionError(f"{where}: '{key}' must be a path or a mapping with 'path' and 'weight'")
        bad = sorted(set(s) - {"path", "weight"})
        if bad:
            raise OptionError(f"{where}: unknown key '{key}.{bad[0]}'; a source has 'path' and 'weight'")
        p = s.get("path")
        if not isinstance(p, str):
            raise OptionError(f"{where}: '{key}.path' must be a string, got {p!r}")
        if ("weight" in s) != ("weight" in (srcs[0] if isinstance(srcs[0], dict) else {})):
            raise OptionError(f"{where}: '{key}.weight': give a weight for every source or for none")
        w = s.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise OptionError(f"{where}: '{key}.weight' must be a number, got {w!r}")
        full = p if os.path.isabs(p) else str(base / p)
        if not os.path.isdir(full):
            raise OptionError(f"{where}: '{key}.path': adapter folder {full} does not exist")
        paths.append(full)
        weights.append(float(w))
    method = raw.get("method", "lego")
    if not isinstance(method, str):
        raise OptionError(f"{where}: 'method' must be a string, got {method!r}")
    options = raw.get("options", {})
    if not isinstance(options, dict):
        raise OptionError(f"{where}: 'options' must be a mapping, got {type(options).__name__}")
    options = dict(options)
    rank = raw.get("rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)):
        raise OptionError(f"{where}: 'rank' must be an int, got {rank!r}")
    overrides = raw.get("rank_overrides")
    if overrides is not None:
        if not isinstance(overrides, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in overrides.values()
        ):
            raise OptionError(f"{where}: 'rank_overrides' must map module patterns to ints")
        if rank is None:
            raise OptionError(f"{where}: 'rank_overrides' needs 'rank' for the other modules")
        options["rank"] = {**{str(k): v for k, v in overrides.items()}, ".*": rank}
    elif rank is not None:
        options["rank"] = rank
    dtype = raw.get("dtype")
    if dtype is not None and not isinstance(dtype, str):
        raise OptionError(f"{where}: 'dtype' must be a string, got {dtype!r}")
    peft = raw.get("peft_weights", False)
    if not isinstance(peft, bool):
        raise OptionError(f"{where}: 'peft_weights' must be true or false, got {peft!r}")
    has_weights = isinstance(srcs[0], dict) and "weight" in srcs[0]
    if peft and not has_weights:
        raise OptionError(f"{where}: 'peft_weights' needs a weight on every source")
    limit = raw.get("memory_limit")
    if limit is not None:
        memory_limit(limit)  # an OptionError naming the value
    return Recipe(paths, weights if has_weights else None, method, options, dtype, peft, limit)


def load(path: str | os.PathLike[str]) -> Recipe:
    yaml = _yaml()
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise OptionError(f"{p}: cannot read the recipe ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise OptionError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse(raw, str(p))


def dump(recipe: Recipe) -> str:
    """YAML text of the recipe (JSON, also YAML, when PyYAML is absent)."""
    try:
        import yaml
    except ImportError:
        return json.dumps(recipe.to_dict(), indent=2) + "\n"
    return str(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
