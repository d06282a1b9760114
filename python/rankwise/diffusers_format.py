"""The diffusers LoRA layouts (``diffusers/loaders/lora_base.py``, ``utils/state_dict_utils.py``).

- ``diffusers``: what ``save_lora_weights`` writes, PEFT keys under a component prefix,
  ``unet.<module>.lora_A.weight`` / ``text_encoder.<module>.lora_B.weight``; the components'
  LoraConfigs (rank, alpha, patterns) as JSON under the ``lora_adapter_metadata`` metadata key,
  each config field prefixed with its component (``unet.r``). Without it diffusers takes the
  ranks from the tensors and alpha = the most common rank, so rankwise does the same.
- ``diffusers-processor``: the older attention-processor files,
  ``….attn1.processor.to_q_lora.down.weight`` (``to_out_lora`` is ``to_out.0``), the text
  encoder's ``self_attn.to_q_lora`` (``q_proj``), ``….lora_linear_layer.down.weight`` and
  ``….lora.down.weight``; keys without a component prefix are the UNet's. No alphas: scaling 1.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .errors import AdapterFormatError
from .kohya_format import factor_info
from .peft_format import LoraSpec, ModuleInfo, natural_key

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")

_A, _B = ".lora_A.weight", ".lora_B.weight"
# Old processor names -> module names: (key pattern, down/up, module suffix).
_PROC_UNET = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_PROC_TE = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
_PROC_RE = re.compile(
    r"^(?P<stem>.*?)(?P<proc>\.processor)?\.(?P<which>to_q|to_k|to_v|to_out)_lora\.(?P<du>down|up)\.weight$"
)
_LAYER_RE = re.compile(r"^(?P<stem>.*)\.(?:lora_linear_layer|lora)\.(?P<du>down|up)\.weight$")


def component(key: str) -> str | None:
    head = key.split(".", 1)[0]
    return head if head in COMPONENTS else None


def is_processor_key(key: str) -> bool:
    return bool(_PROC_RE.match(key) or _LAYER_RE.match(key))


def _parse(key: str, fmt: str) -> tuple[str, str] | None:
    """(module name, 'a' | 'b') of a key of layout ``fmt``; None when it is not a factor key."""
    if fmt == "diffusers":
        for suffix, which in ((_A, "a"), (_B, "b")):
            if key.endswith(suffix) and component(key):
                return key[: -len(suffix)], which
        return None
    m = _PROC_RE.match(key)
    if m:
        stem = m["stem"] if component(key) else f"unet.{m['stem']}"
        table = _PROC_TE if stem.startswith("text_encoder") and not m["proc"] else _PROC_UNET
        return f"{stem}.{table[m['which']]}", "a" if m["du"] == "down" else "b"
    m = _LAYER_RE.match(key)
    if m:
        stem = m["stem"] if component(key) else f"unet.{m['stem']}"
        return stem, "a" if m["du"] == "down" else "b"
    return None


def factor_keys(module: str, fmt: str) -> tuple[str, str]:
    """The keys of a module's (A, B) in layout ``fmt``."""
    comp = component(module)
    if comp is None:
        raise AdapterFormatError(
            f"module '{module}': the diffusers layouts need a component prefix ({', '.join(COMPONENTS)})"
        )
    if fmt == "diffusers":
        return module + _A, module + _B
    stem, _, last = module.rpartition(".")
    if comp == "unet":
        if last == "0" and stem.endswith(".to_out"):
            stem, last = stem[: -len(".to_out")], "to_out"
        proc = last in _PROC_UNET and re.search(r"\.attn\d*$", stem) is not None
        base = f"{stem}.processor.{last}_lora" if proc else f"{module}.lora"
    else:
        inv = {v: k for k, v in _PROC_TE.items()}
        base = f"{stem}.{inv[last]}_lora" if last in inv and stem.endswith("self_attn") else f"{module}.lora"
    return base + ".down.weight", base + ".up.weight"


def read_modules(
    weights: Path,
    fmt: str,
    listing: Mapping[str, tuple[str, list[int]]],
    metadata: Mapping[str, str],
) -> dict[str, ModuleInfo]:
    """The module table of a diffusers file: keys paired, shapes checked, scalings from the
    ``lora_adapter_metadata`` configs (``diffusers``) or 1."""
    a_keys: dict[str, str] = {}
    b_keys: dict[str, str] = {}
    for key in listing:
        if "lora_magnitude_vector" in key or "dora_scale" in key:
            raise AdapterFormatError(f"{weights}: tensor '{key}': DoRA is not supported by rankwise")
        parsed = _parse(key, fmt)
        if parsed is None:
            want = (
                "'<component>.<module>.lora_A.weight' / '.lora_B.weight'"
                if fmt == "diffusers"
                else "'….processor.to_q_lora.down.weight' or '….lora.down.weight'"
            )
            raise AdapterFormatError(f"{weights}: tensor '{key}' is not a LoRA factor of the {fmt} layout ({want})")
        name, which = parsed
        table = a_keys if which == "a" else b_keys
        if name in table:
            raise AdapterFormatError(f"{weights}: tensor '{key}': module '{name}' appears twice")
        table[name] = key
    for name in sorted(a_keys.keys() - b_keys.keys()):
        raise AdapterFormatError(f"{weights}: tensor '{a_keys[name]}' has no matching up / lora_B factor")
    for name in sorted(b_keys.keys() - a_keys.keys()):
        raise AdapterFormatError(f"{weights}: tensor '{b_keys[name]}' has no matching down / lora_A factor")
    if not a_keys:
        raise AdapterFormatError(f"{weights}: holds no LoRA factors")
    mods = {n: factor_info(weights, n, a_keys[n], b_keys[n], listing) for n in sorted(a_keys, key=natural_key)}
    specs = _specs(weights, metadata) if fmt == "diffusers" else {}
    out = {}
    for name, info in mods.items():
        comp, _, rel = name.partition(".")
        spec = specs.get(comp)
        if spec is None:
            # diffusers: alpha = the component's most common rank (get_peft_kwargs without alphas).
            ranks = Counter(m.rank for n, m in mods.items() if n.startswith(comp + ".")) if fmt == "diffusers" else None
            alpha = float(ranks.most_common(1)[0][0]) if ranks else float(info.rank)
            out[name] = replace(info, alpha=alpha, scaling=alpha / info.rank)
            continue
        alpha = spec.rank_and_alpha(rel)[1]
        scaling = alpha / math.sqrt(info.rank) if spec.use_rslora else alpha / info.rank
        out[name] = replace(info, alpha=alpha, scaling=scaling)
    return out


def _specs(weights: Path, metadata: Mapping[str, str]) -> dict[str, LoraSpec]:
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError as e:
        raise AdapterFormatError(f"{weights}: metadata '{METADATA_KEY}' is not valid JSON ({e})") from e
    if not isinstance(flat, dict):
        raise AdapterFormatError(f"{weights}: metadata '{METADATA_KEY}' is not a JSON object")
    out = {}
    for comp in COMPONENTS:
        cfg = {k[len(comp) + 1 :]: v for k, v in flat.items() if k.startswith(comp + ".")}
        if not cfg:
            continue
        if cfg.get("use_dora"):
            raise AdapterFormatError(f"{weights}: metadata '{METADATA_KEY}': {comp} uses DoRA, not supported")
        try:
            r = int(cfg.get("r", 8))
            out[comp] = LoraSpec(
                r=r,
                lora_alpha=float(cfg.get("lora_alpha", r)),
                use_rslora=bool(cfg.get("use_rslora", False)),
                rank_pattern={k.lstrip("^"): int(v) for k, v in (cfg.get("rank_pattern") or {}).items()},
                alpha_pattern={k.lstrip("^"): float(v) for k, v in (cfg.get("alpha_pattern") or {}).items()},
                fan_in_fan_out=False,
                target_modules=cfg.get("target_modules"),
                raw=cfg,
            )
        except (TypeError, ValueError, AttributeError) as e:
            raise AdapterFormatError(f"{weights}: metadata '{METADATA_KEY}': bad {comp} config ({e})") from e
    return out


def adapter_metadata(mods: Mapping[str, ModuleInfo]) -> str:
    """``lora_adapter_metadata`` for modules whose (rank, alpha) are their own: per component a
    LoraConfig with the common rank and alpha and patterns for the rest (full module names)."""
    flat: dict[str, Any] = {}
    for comp in COMPONENTS:
        ms = {n.partition(".")[2]: m for n, m in mods.items() if n.startswith(comp + ".")}
        if not ms:
            continue
        r = Counter(m.rank for m in ms.values()).most_common(1)[0][0]
        alpha = Counter(m.alpha for m in ms.values()).most_common(1)[0][0]
        cfg = {
            "peft_type": "LORA",
            "r": r,
            "lora_alpha": alpha,
            "rank_pattern": {f"^{n}": m.rank for n, m in ms.items() if m.rank != r},
            "alpha_pattern": {f"^{n}": m.alpha for n, m in ms.items() if m.alpha != alpha},
            "target_modules": sorted(ms),
            "use_dora": False,
            "use_rslora": False,
            "bias": "none",
            "lora_dropout": 0.0,
        }
        flat.update({f"{comp}.{k}": v for k, v in cfg.items()})
    return json.dumps(flat, indent=2, sort_keys=True)
