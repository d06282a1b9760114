"""The model card of a merged adapter: a ``README.md`` in the Hugging Face convention (YAML front
matter with ``base_model``, ``library_name: peft``, ``tags``), listing the sources (folder and
sha256 of each weights file), the method, every option, the weights, the rankwise version and
the recipe, so that the merge can be redone from the card alone. Written by ``Adapter.save``
for every adapter that ``merge`` made (``merge_info``). The recipe is JSON, which is YAML too:
the card needs no YAML library."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

CARD_NAME = "README.md"


@functools.cache
def rankwise_version() -> str:
    try:
        return importlib.metadata.version("rankwise")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recipe_of(info: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe (``rankwise.recipe``'s format) that redoes the merge ``info`` describes."""
    sources = info.get("sources") or []
    peft = info.get("weights") is None and info.get("peft_weights") is not None
    weights = info.get("peft_weights") if peft else info.get("weights")
    paths = [os.path.abspath(s["path"]) if s.get("file") else s["path"] for s in sources]
    out: dict[str, Any] = {
        "sources": [{"path": p} for p in paths]
        if weights is None
        else [{"path": p, "weight": float(w)} for p, w in zip(paths, weights)],
        "method": info["method"],
        "options": dict(info.get("options") or {}),
        "dtype": info.get("dtype"),
    }
    if peft:
        out["peft_weights"] = True
    if info.get("streamed"):  # the streamed modules' bytes depend on the limit (block bounds, sample)
        out["memory_limit"] = info.get("memory_limit")
    return out


def render(config: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    """The card's text. Hashes each source's weights file (read once, in 1 MB blocks; files on
    threads at once: hashlib releases the GIL, and the hashes were most of a small merge's save)."""
    method = str(info["method"])
    base = config.get("base_model_name_or_path")
    front = ["---"]
    if base:
        front.append(f"base_model: {json.dumps(base)}")
    front += ["library_name: peft", "tags:", "- rankwise", "- merge", f"- {json.dumps(method)}", "---", ""]
    sources = info.get("sources") or []
    weights = info.get("weights") or info.get("peft_weights") or [None] * len(sources)
    lines = [
        f"# Merged LoRA adapter ({method})",
        "",
        f"Made by rankwise {rankwise_version()} from {len(sources)} adapters with `{method}`"
        + (f" on `{base}`." if base else "."),
        "",
        "## Sources",
        "",
        "| # | adapter | weight | sha256 of the weights file |",
        "|---|---|---|---|",
    ]
    files = [s["file"] for s in sources if s.get("file")]
    with ThreadPoolExecutor(max_workers=max(1, min(len(files), os.cpu_count() or 1))) as ex:
        digests = dict(zip(files, ex.map(sha256_file, files)))
    for j, (s, w) in enumerate(zip(sources, weights)):
        digest = digests[s["file"]] if s.get("file") else "(in memory)"
        lines.append(f"| {j} | `{s['path']}` | {'' if w is None else f'{float(w):g}'} | `{digest}` |")
    lines += ["", "## Method and options", "", f"- method: `{method}`"]
    lines += [f"- {k}: `{json.dumps(v, sort_keys=True)}`" for k, v in sorted((info.get("options") or {}).items())]
    if info.get("streamed"):  # only then do the bytes depend on it (the default changes with free RAM)
        lines.append(f"- memory_limit: `{info['memory_limit']}` bytes ({len(info['streamed'])} module(s) streamed)")
    lines += [f"- dtype: `{info.get('dtype')}`", f"- rankwise: `{rankwise_version()}`"]
    ret = info.get("retention")
    if ret:
        lines += [
            "",
            "## Retention (how much of each source the merge kept)",
            "",
            "| adapter | kept | cos |",
            "|---|---|---|",
        ]
        lines += [f"| `{r['path']}` | {r['kept']:.3f} | {r['cos']:.3f} |" for r in ret["adapters"]]
    lines += [
        "",
        "## Recipe",
        "",
        "Redo this merge with `rankwise merge --config recipe.yaml -o OUT`, the recipe being:",
        "",
        "```yaml",
        json.dumps(recipe_of(info), indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(front + lines)
