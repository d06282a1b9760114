"""Which layout an adapter path holds, and reading / writing the non-PEFT ones.

Layouts: ``peft`` (a folder with ``adapter_config.json``), ``kohya`` (``kohya_format``),
``diffusers`` and ``diffusers-processor`` (``diffusers_format``). A path is a folder or a
``.safetensors`` file; a folder without a PEFT config holds one safetensors file (diffusers'
``pytorch_lora_weights.safetensors`` first). The layout is read off the tensor keys unless forced.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import diffusers_format as df
from . import kohya_format as kf
from . import peft_format as pf
from .errors import AdapterFormatError, AdapterNotFoundError, OptionError
from .peft_format import ModuleInfo

FORMATS = ("peft", "kohya", "diffusers", "diffusers-processor")
#: The metadata key under which rankwise writes what a merge did (JSON).
RANKWISE_KEY = "rankwise"


@dataclass(frozen=True)
class Located:
    path: Path
    weights: Path
    format: str | None  # None: read off the keys once the file is mapped


def check_format(fmt: str | None) -> str | None:
    if fmt is not None and fmt not in FORMATS:
        raise OptionError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return fmt


def locate(path: Path, fmt: str | None = None) -> Located:
    """The weights file of ``path`` and its layout when the path alone tells it."""
    check_format(fmt)
    if not path.exists():
        pf.read_config(path)  # PEFT's missing-folder error, with its hints (a hub id, ...)
        raise AdapterNotFoundError(f"{path}: adapter folder does not exist (nor a LoRA file)")
    if path.is_dir():
        peft_like = (path / pf.CONFIG_NAME).is_file() or any(
            (path / n).is_file() for n in (pf.WEIGHTS_NAME, "adapter_model.bin")
        )
        files = sorted(path.glob("*.safetensors"))
        if fmt == "peft" or (fmt is None and (peft_like or not files)):
            pf.read_config(path)  # the PEFT errors: a missing or bad config
            return Located(path, pf.weights_path(path), "peft")
        preferred = [f for f in files if f.name == df.WEIGHTS_NAME]
        if preferred or len(files) == 1:
            return Located(path, (preferred or files)[0], fmt)
        raise AdapterFormatError(
            f"{path}: holds {len(files)} .safetensors files and no {pf.CONFIG_NAME}; name the file to load"
        )
    if fmt == "peft" or path.suffix != ".safetensors":
        raise AdapterFormatError(
            f"{path}: is not a folder (expected a PEFT adapter folder) nor a .safetensors LoRA file "
            "(kohya / diffusers; pickled weights are not read: unsafe)"
        )
    return Located(path, path, fmt)


def detect(weights: Path, keys: list[str]) -> str:
    """The layout of a LoRA file from its tensor keys."""
    if keys and all(kf.is_kohya_key(k) for k in keys):
        return "kohya"
    if keys and all(df.component(k) or df.is_processor_key(k) for k in keys):
        if any(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys):
            return "diffusers"
        return "diffusers-processor"
    some = next((k for k in keys if not (kf.is_kohya_key(k) or df.component(k))), keys[0] if keys else "")
    raise AdapterFormatError(
        f"{weights}: not a LoRA layout rankwise knows (kohya lora_unet_…/lora_te_…, diffusers unet.…/"
        f"text_encoder.…); e.g. tensor '{some}'"
    )


def read_modules(
    loc: Located,
    fmt: str,
    listing: Mapping[str, tuple[str, list[int]]],
    metadata: Mapping[str, str],
    read: Any,
) -> dict[str, ModuleInfo]:
    if fmt == "kohya":
        return kf.read_modules(loc.weights, listing, read)
    return df.read_modules(loc.weights, fmt, listing, metadata)


def peft_config(mods: Mapping[str, ModuleInfo]) -> dict[str, Any]:
    """A PEFT LoraConfig that gives each module its own rank and alpha (for a non-PEFT file)."""
    r = Counter(m.rank for m in mods.values()).most_common(1)[0][0]
    alpha = Counter(m.alpha for m in mods.values()).most_common(1)[0][0]
    return {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "rank_pattern": {n: m.rank for n, m in mods.items() if m.rank != r},
        "alpha_pattern": {n: m.alpha for n, m in mods.items() if m.alpha != alpha},
        "target_modules": sorted({n.rsplit(".", 1)[-1] for n in mods}),
        "bias": "none",
        "task_type": None,
    }


def weights_target(path: Path, fmt: str) -> tuple[Path, str]:
    """(folder to write atomically, file name) of a kohya/diffusers save to ``path``: a
    ``.safetensors`` path is the file itself, anything else a folder for the layout's file."""
    if path.suffix == ".safetensors":
        return path, path.name
    return path, df.WEIGHTS_NAME if fmt.startswith("diffusers") else "lora.safetensors"


def tensors_and_metadata(
    mods: Mapping[str, ModuleInfo],
    factors: Any,
    fmt: str,
    own_keys: bool,
    dtype: str | None,
    metadata: Mapping[str, str],
    merge_info: Mapping[str, Any] | None,
) -> tuple[list[tuple[str, str, Any]], dict[str, str]]:
    """The (key, dtype, float32 array) triples and the metadata of a kohya/diffusers file.

    ``own_keys``: the modules' keys are already in layout ``fmt`` (kept as they are). Conv
    factors get their 4-D shapes back; kohya alphas are written per module, in its dtype."""
    two = any(n.startswith("text_encoder_2.") for n in mods)
    out: list[tuple[str, str, Any]] = []
    for name, info in mods.items():
        if own_keys:
            ka, kb = info.key_a, info.key_b
        elif fmt == "kohya":
            ka, kb, _ = kf.factor_keys(name, two_encoders=two)
        else:
            ka, kb = df.factor_keys(name, fmt)
        a, b = factors(name)
        if info.kernel is not None:
            a = a.reshape(info.rank, info.d_in // math.prod(info.kernel), *info.kernel)
            b = b.reshape(info.d_out, info.rank, 1, 1)
        dt = dtype or info.dtype
        out.append((ka, dt, np.ascontiguousarray(a, dtype=np.float32)))
        out.append((kb, dt, np.ascontiguousarray(b, dtype=np.float32)))
        if fmt == "kohya":
            stem = ka[: -len(kf.DOWN)] if ka.endswith(kf.DOWN) else kf.lora_name(name, two_encoders=two)
            out.append((stem + kf.ALPHA, dt, np.array(info.alpha, dtype=np.float32)))
    meta = dict(metadata)
    meta.setdefault("format", "pt")
    if fmt == "diffusers" and not (own_keys and merge_info is None):
        meta[df.METADATA_KEY] = df.adapter_metadata(mods)
    elif fmt != "diffusers":
        meta.pop(df.METADATA_KEY, None)
    if merge_info is not None:
        meta[RANKWISE_KEY] = json.dumps(merge_info, sort_keys=True, default=str)
    return out, meta
