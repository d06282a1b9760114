"""The kohya / A1111 single-file LoRA layout (sd-scripts ``networks/lora.py``), read and written.

Keys: ``<lora_name>.lora_down.weight`` (rank × in, or rank × in × kh × kw for conv LoRA),
``<lora_name>.lora_up.weight`` (out × rank, or out × rank × 1 × 1) and ``<lora_name>.alpha``
(a scalar); scaling = alpha / rank (alpha absent or 0 means alpha = rank, as sd-scripts does).
``lora_name`` is a prefix (``lora_unet``, ``lora_te``, or ``lora_te1``/``lora_te2`` for SDXL's two
text encoders) and the module path with every ``.`` turned into ``_``.

rankwise names a module by its dotted path under the component, as diffusers does:
``lora_unet_down_blocks_0_attentions_0_proj_in`` -> ``unet.down_blocks.0.attentions.0.proj_in``.
Which ``_`` were dots is read off a list of the multi-word names of diffusers' UNet and of CLIP;
writing turns every dot back into ``_``, so a file read and written keeps its keys whatever the
guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from .errors import AdapterFormatError
from .peft_format import DTYPES, ModuleInfo, natural_key

DOWN = ".lora_down.weight"
UP = ".lora_up.weight"
ALPHA = ".alpha"

#: kohya prefix -> rankwise component (``lora_te1`` is SDXL's first encoder, ``text_encoder``).
PREFIXES = {
    "lora_unet": "unet",
    "lora_te": "text_encoder",
    "lora_te1": "text_encoder",
    "lora_te2": "text_encoder_2",
}

# Names of diffusers' UNet2DConditionModel / sgm UNet and of CLIP's text model that hold a "_".
_COMPOUNDS = sorted(
    (
        tuple(w.split("_"))
        for w in (
            "down_blocks up_blocks mid_block input_blocks output_blocks middle_block "
            "transformer_blocks proj_in proj_out to_q to_k to_v to_out add_q_proj add_k_proj "
            "add_v_proj to_add_out conv_in conv_out conv_shortcut conv_norm_out time_emb_proj "
            "time_embedding time_embed linear_1 linear_2 emb_layers in_layers out_layers "
            "skip_connection label_emb add_embedding class_embedding encoder_hid_proj "
            "text_model self_attn q_proj k_proj v_proj out_proj final_layer_norm layer_norm1 "
            "layer_norm2 text_projection token_embedding position_embedding"
        ).split()
    ),
    key=len,
    reverse=True,
)

# LyCORIS and other layouts that share the prefixes but are not LoRA factors rankwise can merge.
_FOREIGN = {
    "dora_scale": "DoRA (dora_scale)",
    "hada_w1_a": "LyCORIS LoHa (hada_*)",
    "lokr_w1": "LyCORIS LoKr (lokr_*)",
    "lora_mid.weight": "LoCon with a CP/Tucker middle kernel (lora_mid)",
}


def is_kohya_key(key: str) -> bool:
    return key.startswith(tuple(p + "_" for p in PREFIXES))


def module_name(lora_name: str) -> str:
    """``lora_unet_mid_block_attentions_0_to_q`` -> ``unet.mid_block.attentions.0.to_q``."""
    for prefix in sorted(PREFIXES, key=len, reverse=True):
        if lora_name.startswith(prefix + "_"):
            rest = lora_name[len(prefix) + 1 :]
            break
    else:
        raise ValueError(lora_name)
    tokens, parts, i = rest.split("_"), [], 0
    while i < len(tokens):
        for c in _COMPOUNDS:
            if tuple(tokens[i : i + len(c)]) == c:
                parts.append("_".join(c))
                i += len(c)
                break
        else:
            parts.append(tokens[i])
            i += 1
    return f"{PREFIXES[prefix]}.{'.'.join(parts)}"


def lora_name(module: str, *, two_encoders: bool) -> str:
    """The kohya name of a rankwise module name (the inverse of ``module_name``)."""
    component, _, path = module.partition(".")
    if component == "unet":
        prefix = "lora_unet"
    elif component == "text_encoder":
        prefix = "lora_te1" if two_encoders else "lora_te"
    elif component == "text_encoder_2":
        prefix = "lora_te2"
    else:
        raise AdapterFormatError(
            f"module '{module}': the kohya layout has no prefix for component '{component}' "
            "(unet, text_encoder, text_encoder_2)"
        )
    return f"{prefix}_{path.replace('.', '_')}"


def factor_keys(module: str, *, two_encoders: bool) -> tuple[str, str, str]:
    """The down, up and alpha keys of a module."""
    n = lora_name(module, two_encoders=two_encoders)
    return n + DOWN, n + UP, n + ALPHA


def read_modules(
    weights: Path,
    listing: Mapping[str, tuple[str, list[int]]],
    read: Callable[[str], np.ndarray],
) -> dict[str, ModuleInfo]:
    """The module table of a kohya file from its tensor listing; ``read(key)`` reads an alpha."""
    downs: dict[str, str] = {}
    ups: set[str] = set()
    alphas: set[str] = set()
    for key in listing:
        for marker, feature in _FOREIGN.items():
            if marker in key:
                raise AdapterFormatError(f"{weights}: tensor '{key}': {feature} is not supported by rankwise")
        stem, _, _ = key.partition(".")
        if not stem.startswith(tuple(p + "_" for p in PREFIXES)):
            raise AdapterFormatError(
                f"{weights}: tensor '{key}' is not a kohya LoRA key (expected lora_unet_… / lora_te_… / "
                "lora_te1_… / lora_te2_…)"
            )
        if key.endswith(DOWN) and key == stem + DOWN:
            downs[stem] = key
        elif key == stem + UP:
            ups.add(stem)
        elif key == stem + ALPHA:
            alphas.add(stem)
        else:
            raise AdapterFormatError(
                f"{weights}: tensor '{key}' is not a LoRA factor (expected '{DOWN}', '{UP}' or '{ALPHA}')"
            )
    for stem in sorted(ups - downs.keys()):
        raise AdapterFormatError(f"{weights}: tensor '{stem}{UP}' has no matching '{DOWN}'")
    for stem in sorted(downs.keys() - ups):
        raise AdapterFormatError(f"{weights}: tensor '{stem}{DOWN}' has no matching '{UP}'")
    for stem in sorted(alphas - downs.keys()):
        raise AdapterFormatError(f"{weights}: tensor '{stem}{ALPHA}' belongs to no LoRA module")
    if not downs:
        raise AdapterFormatError(f"{weights}: holds no LoRA factors")
    mods: dict[str, ModuleInfo] = {}
    for stem in downs:
        name = module_name(stem)
        if name in mods:
            raise AdapterFormatError(f"{weights}: tensor '{stem}{DOWN}': module '{name}' appears twice")
        info = factor_info(weights, name, stem + DOWN, stem + UP, listing)
        alpha = float(info.rank)
        if stem in alphas:
            akey = stem + ALPHA
            dt, shape = listing[akey]
            if dt not in DTYPES or math.prod(shape) != 1:
                raise AdapterFormatError(f"{weights}: tensor '{akey}': expected one float, got {dt} of shape {shape}")
            a = float(read(akey).reshape(-1)[0])
            if not math.isfinite(a) or a < 0:
                raise AdapterFormatError(f"{weights}: tensor '{akey}': alpha must be finite and >= 0, got {a}")
            alpha = a if a > 0 else float(info.rank)
        mods[name] = _with_alpha(info, alpha)
    return {n: mods[n] for n in sorted(mods, key=natural_key)}


def factor_info(
    weights: Path,
    name: str,
    key_a: str,
    key_b: str,
    listing: Mapping[str, tuple[str, list[int]]],
) -> ModuleInfo:
    """A module's table row from the shapes of its down (A) and up (B) factors, linear or conv
    (A rank × in × kh × kw is a unit of width in·kh·kw; B must be out × rank × 1 × 1). Alpha = rank."""
    (a_dt, a_shape), (b_dt, b_shape) = listing[key_a], listing[key_b]
    for key, dt in ((key_a, a_dt), (key_b, b_dt)):
        if dt not in DTYPES:
            raise AdapterFormatError(
                f"{weights}: tensor '{key}': dtype {dt} is not supported (rankwise reads F16, BF16, F32 and F64)"
            )
    conv = len(a_shape) == 4
    if not ((len(a_shape) == 2 and len(b_shape) == 2) or (conv and len(b_shape) == 4 and tuple(b_shape[2:]) == (1, 1))):
        raise AdapterFormatError(
            f"{weights}: tensor '{key_a}' has shape {a_shape} and '{key_b}' {b_shape}: expected a linear "
            "LoRA (rank × in, out × rank) or a conv LoRA (rank × in × kh × kw, out × rank × 1 × 1)"
        )
    if a_shape[0] != b_shape[1]:
        raise AdapterFormatError(
            f"{weights}: tensor '{key_b}': rank mismatch: it has shape {b_shape} but '{key_a}' has "
            f"rank {a_shape[0]} (shape {a_shape})"
        )
    r = int(a_shape[0])
    kernel = (int(a_shape[2]), int(a_shape[3])) if conv else None
    d_in = math.prod(a_shape[1:])
    dtype = a_dt if a_dt == b_dt else "F32"
    return ModuleInfo(name, r, float(r), 1.0, d_in, int(b_shape[0]), dtype, key_a, key_b, kernel=kernel)


def _with_alpha(info: ModuleInfo, alpha: float) -> ModuleInfo:
    return replace(info, alpha=alpha, scaling=alpha / info.rank)
