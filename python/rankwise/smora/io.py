"""Saving and loading SMoRA adapters: ``smora_model.safetensors`` + ``smora_config.json``.

Keys are ``<module>.lora_A`` (rank x in), ``<module>.lora_B`` (out x rank),
``<module>.router.weight`` (rank x in) and ``<module>.balance_bias`` (rank,), with ``<module>``
the name in ``model.named_modules()``. The JSON holds the config and the list of adapted modules,
so loading adapts exactly the saved modules whatever ``target_modules`` would match today.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .._atomic import atomic_dir
from ..errors import AdapterFormatError, AdapterNotFoundError, MergeConfigError
from .config import SMoRAConfig
from .inject import _inject, smora_config, smora_layers
from .layer import SMoRALinear

CONFIG_NAME = "smora_config.json"
WEIGHTS_NAME = "smora_model.safetensors"
FORMAT = "rankwise-smora"
FORMAT_VERSION = 1

_PARTS = ("lora_A", "lora_B", "router.weight", "balance_bias")


def _expected_shapes(rank: int, m: nn.Module) -> dict[str, tuple[int, ...]]:
    # m: an SMoRALinear or the nn.Linear it will wrap (both have in/out_features).
    return {
        "lora_A": (rank, m.in_features),
        "lora_B": (m.out_features, rank),
        "router.weight": (rank, m.in_features),
        "balance_bias": (rank,),
    }


def _tensor(m: SMoRALinear, part: str) -> torch.Tensor:
    return m.router.weight if part == "router.weight" else getattr(m, part)


def smora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The SMoRA tensors of ``model`` (detached, not copied), keyed ``<module>.<part>``."""
    layers = smora_layers(model)
    if not layers:
        raise MergeConfigError("the model has no SMoRA layers: call inject_smora(model, config)")
    return {f"{n}.{p}": _tensor(m, p).detach() for n, m in layers.items() for p in _PARTS}


def save_smora(model: nn.Module, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Writes the adapter to ``directory`` atomically (a failed save leaves no partial folder;
    an existing non-empty folder needs ``overwrite=True``). Returns the folder's path."""
    sd = {k: v.to("cpu").contiguous() for k, v in smora_state_dict(model).items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": smora_config(model).to_dict(),
        "modules": list(smora_layers(model)),
    }
    target = Path(directory)
    with atomic_dir(target, overwrite=overwrite) as tmp:
        save_file(sd, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return target


def read_smora_config(directory: str | os.PathLike[str]) -> tuple[SMoRAConfig, list[str]]:
    """The config and module list of a saved adapter, validated (``AdapterFormatError``)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise AdapterNotFoundError(f"{path}: not found (is {directory} a save_smora folder?)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterFormatError(f"{path}: not valid JSON: {e}") from e
    except RecursionError:
        raise AdapterFormatError(f"{path}: JSON nested too deeply to be a SMoRA config") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AdapterFormatError(f"{path}: key 'format' must be {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise AdapterFormatError(
            f"{path}: key 'format_version' is {meta.get('format_version')!r}, this rankwise reads {FORMAT_VERSION}"
        )
    for key in ("config", "modules"):
        if key not in meta:
            raise AdapterFormatError(f"{path}: key {key!r} is missing")
    try:
        config = SMoRAConfig.from_dict(meta["config"])
    except (MergeConfigError, TypeError) as e:
        raise AdapterFormatError(f"{path}: key 'config': {e}") from e
    modules = meta["modules"]
    if not isinstance(modules, list) or not modules or not all(isinstance(n, str) and n for n in modules):
        raise AdapterFormatError(f"{path}: key 'modules' must be a non-empty list of names")
    seen: set[str] = set()
    for n in modules:
        if n in seen:
            # Checked before anything is injected: a second wrap would leave the model half-done.
            raise AdapterFormatError(f"{path}: key 'modules' lists {n!r} twice")
        seen.add(n)
    return config, modules


def load_smora(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Loads a ``save_smora`` folder into ``model``: injects SMoRA into the saved modules if the
    model has none yet (else checks the existing layers match), then copies the tensors. Every
    problem (missing or extra key, wrong shape or dtype, non-finite values, module absent from
    the model) raises ``AdapterFormatError`` naming the file and the key. Returns the model."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_NAME
    config, modules = read_smora_config(directory)
    wpath = directory / WEIGHTS_NAME
    if not wpath.is_file():
        raise AdapterNotFoundError(f"{wpath}: not found")
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterFormatError(f"{wpath}: not a readable safetensors file: {e}") from e

    layers = smora_layers(model)
    if layers:
        if sorted(layers) != sorted(modules):
            raise AdapterFormatError(
                f"{cfg_path}: key 'modules' lists {len(modules)} modules that differ from the "
                f"model's {len(layers)} SMoRA layers "
                f"(e.g. {sorted(set(modules) ^ set(layers))[:3]})"
            )
        cur = smora_config(model)
        for opt in ("rank", "top_k", "lora_alpha"):
            if getattr(cur, opt) != getattr(config, opt):
                raise AdapterFormatError(
                    f"{cfg_path}: key 'config.{opt}' is {getattr(config, opt)!r}, the model's "
                    f"SMoRA layers have {getattr(cur, opt)!r}"
                )
    else:
        names = dict(model.named_modules())
        for n in modules:
            if not isinstance(names.get(n), nn.Linear):
                what = "absent from the model" if n not in names else type(names[n]).__name__
                raise AdapterFormatError(f"{cfg_path}: key 'modules': {n!r} is {what}")
    _check_tensors(wpath, tensors, modules, model, layers, config.rank)
    if not layers:
        _inject(model, config, modules)
        layers = smora_layers(model)
    with torch.no_grad():
        for n, m in layers.items():
            for p in _PARTS:
                dst = _tensor(m, p)
                dst.copy_(tensors[f"{n}.{p}"].to(device=dst.device, dtype=dst.dtype))
            m.balance_counts.zero_()
            m.usage_counts.zero_()
    return model


def _check_tensors(
    wpath: Path,
    tensors: dict[str, torch.Tensor],
    modules: list[str],
    model: nn.Module,
    layers: dict[str, SMoRALinear],
    rank: int,
) -> None:
    expected: dict[str, tuple[int, ...]] = {}
    for n in modules:
        if n in layers:
            shapes = _expected_shapes(layers[n].rank, layers[n])
        else:
            shapes = _expected_shapes(rank, model.get_submodule(n))
        expected.update({f"{n}.{p}": s for p, s in shapes.items()})
    for key in expected:
        if key not in tensors:
            raise AdapterFormatError(f"{wpath}: key {key!r} is missing")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise AdapterFormatError(
            f"{wpath}: key {extra[0]!r} is not a tensor of the listed modules"
            + (f" ({len(extra)} such keys)" if len(extra) > 1 else "")
        )
    for key, shape in expected.items():
        t = tensors[key]
        if not t.is_floating_point():
            raise AdapterFormatError(f"{wpath}: key {key!r} has dtype {t.dtype}, not a float")
        if tuple(t.shape) != shape:
            raise AdapterFormatError(f"{wpath}: key {key!r} has shape {tuple(t.shape)}, expected {shape}")
        if not bool(torch.isfinite(t).all()):
            raise AdapterFormatError(f"{wpath}: key {key!r} has non-finite values")
