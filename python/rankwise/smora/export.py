"""Export a trained SMoRA model as a plain PEFT LoRA folder, for servers that load only LoRA.

A routed layer has no LoRA equivalent: its update depends on the token. The export keeps the
expected update over calibration tokens, with each rank unit weighted by its mean gate:
    ΔW = scale * sum_i mean_t(g_i(t)) * b_i a_i        (g_i(t) = 0 where rank i is not selected)
written as a rank-r LoRA (lora_A = A, lora_B = B diag(scale * mean g), lora_alpha = r, so PEFT's
scaling is 1). With ``rank``, those weighted units are compressed by ``rankwise.merge`` (``svd``:
truncated SVD of ΔW; ``lego``: k-means of the units), which is the one place this module needs
the compiled core (imported when called).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .._atomic import atomic_dir
from ..errors import OptionError
from .inject import smora_layers
from .layer import SMoRALinear

METHODS = ("svd", "lego")
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


class _GateMeter:
    """Forward hook summing each rank's gate over the layer's (non-padding) tokens."""

    def __init__(self, layer: SMoRALinear) -> None:
        self.layer = layer
        self.sums = torch.zeros(layer.n_blocks, dtype=torch.float64)
        self.tokens = 0

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        m = self.layer
        x = args[0]
        lead = x.shape[:-1]
        x2 = x.reshape(-1, m.in_features).to(m.router.weight.dtype)
        idx, gates = m.route(m.router(x2))
        g = torch.zeros(idx.shape[0], m.n_blocks, dtype=torch.float64, device=idx.device)
        g.scatter_(-1, idx, gates.double())
        wts = m._token_weights(lead)
        if wts is not None:
            g = g * wts.to(g.device, g.dtype).unsqueeze(-1)
            self.tokens += int(wts.sum())
        else:
            self.tokens += g.shape[0]
        self.sums += g.sum(0).cpu()

    def mean_rank_gates(self) -> torch.Tensor:
        """Mean gate per rank (tokens x blocks -> ranks), float64."""
        return (self.sums / self.tokens).repeat_interleave(self.layer.block_size)


def mean_gates(model: nn.Module, calibration_batches: Iterable[Any]) -> dict[str, torch.Tensor]:
    """Per SMoRA layer, each rank's mean gate over the calibration tokens (padding excluded
    where an attention mask is passed). A batch is a mapping of keyword arguments of the model
    (e.g. ``{"input_ids": ..., "attention_mask": ...}``), a tuple of positional ones, or one
    tensor. Runs in eval mode without gradients; the model's mode and routing stats are kept."""
    layers = smora_layers(model)
    if not layers:
        raise OptionError("export: the model has no SMoRA layers: call inject_smora(model, config)")
    meters = {n: _GateMeter(m) for n, m in layers.items()}
    usage = {n: m.usage_counts.clone() for n, m in layers.items()}
    handles = [m.register_forward_hook(meters[n]) for n, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in calibration_batches:
                if isinstance(batch, Mapping):
                    model(**batch)
                elif isinstance(batch, tuple):
                    model(*batch)
                else:
                    model(batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        for n, m in layers.items():
            m.usage_counts.copy_(usage[n])
    empty = [n for n, mt in meters.items() if mt.tokens == 0]
    if empty:
        raise OptionError(
            f"export: calibration_batches gave no tokens to SMoRA layer {empty[0]!r} "
            f"({len(empty)} of {len(meters)} layers saw none); pass at least one non-empty batch"
        )
    return {n: mt.mean_rank_gates() for n, mt in meters.items()}


Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]


def expected_factors(model: nn.Module, gates: Mapping[str, torch.Tensor]) -> Factors:
    """Per layer (A, B') float32 with B' A the expected update: B' = B diag(scale * mean g)."""
    out = {}
    for n, m in smora_layers(model).items():
        w = gates[n].to(torch.float64) * m.scale
        a = m.lora_A.detach().to("cpu", torch.float64)
        b = m.lora_B.detach().to("cpu", torch.float64) * w
        out[n] = (a.float().contiguous(), b.float().contiguous())
    return out


def _write_peft(folder: Path, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]], base: str | None) -> None:
    ranks = {a.shape[0] for a, _ in factors.values()}
    (r,) = ranks  # every SMoRA layer of a model has the config's rank
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": r,  # PEFT scaling lora_alpha / r = 1: the scale is folded into B
        "target_modules": list(factors),  # full names match themselves in PEFT
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "task_type": None,
        "inference_mode": True,
        "base_model_name_or_path": base,
    }
    tensors = {}
    for n, (a, b) in factors.items():
        tensors[f"base_model.model.{n}.lora_A.weight"] = a
        tensors[f"base_model.model.{n}.lora_B.weight"] = b
    save_file(tensors, str(folder / PEFT_WEIGHTS), metadata={"format": "pt"})
    (folder / PEFT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def export_lora(
    model: nn.Module,
    calibration_batches: Iterable[Any],
    rank: int | None = None,
    *,
    path: str | os.PathLike[str],
    method: str = "svd",
    overwrite: bool = False,
    seed: int = 0,
) -> Path:
    """Writes each SMoRA layer of ``model`` as a plain PEFT LoRA folder at ``path`` (loadable by
    ``PeftModel.from_pretrained`` on the base model): the expected update over
    ``calibration_batches`` (see the module docstring and ``mean_gates``). ``rank=None`` keeps
    all r units; an int compresses each layer to that rank with ``rankwise.merge(method=
    "svd" | "lego", seed=seed)``. Written atomically; an existing non-empty folder needs
    ``overwrite=True``. Returns the folder's path."""
    if method not in METHODS:
        raise OptionError(f"export_lora: method must be one of {METHODS}, got {method!r}")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        raise OptionError(f"export_lora: rank must be None or an integer >= 1, got {rank!r}")
    factors = expected_factors(model, mean_gates(model, calibration_batches))
    base = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    target = Path(path)
    if rank is None:
        with atomic_dir(target, overwrite=overwrite) as tmp:
            _write_peft(tmp, factors, base)
        return target
    import rankwise as rw  # the compiled core is needed for compression only

    with tempfile.TemporaryDirectory(prefix="rankwise-export-") as scratch:
        full = Path(scratch) / "full"
        full.mkdir()
        _write_peft(full, factors, base)
        options: dict[str, Any] = {"svd_rank": rank} if method == "svd" else {"rank": rank, "seed": seed}
        merged = rw.merge(rw.AdapterPool.load([full]), method=method, **options)
        return merged.save(target, overwrite=overwrite)
