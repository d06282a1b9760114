"""Put SMoRA layers into any torch model, and the model-level helpers (mask, balancing).

Padding-aware balancing needs each layer to know which tokens are padding. ``inject_smora``
installs a forward pre-hook on the model it is given that captures the ``attention_mask``
argument of every call (keyword or positional, e.g. HF models and the HF Trainer) and a forward
hook that releases it afterwards; layers use it when its shape equals their token shape
(batch, seq). Models without such an argument can use ``smora_attention_mask(model, mask)``.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import MergeConfigError
from .config import ALL_LINEAR, SMoRAConfig
from .layer import SMoRALinear, _MaskSlot

_STATE_ATTR = "_rankwise_smora"


class _SMoRAState:
    """What inject_smora attaches to a model: its config, the shared mask slot and the hooks.

    The hooks are bound methods of this object so that ``copy.deepcopy(model)`` gives the copy
    its own state and slot (deepcopy copies a bound method's ``__self__`` through the memo).
    """

    def __init__(self, model: nn.Module, config: SMoRAConfig) -> None:
        self.config = copy.deepcopy(config)  # later edits of the caller's config do not leak in
        self.slot = _MaskSlot()
        self._stack: list[torch.Tensor | None] = []
        self._mask_pos: int | None = None
        try:
            params = list(inspect.signature(model.forward).parameters)
            self._mask_pos = params.index("attention_mask")
        except (ValueError, TypeError):
            pass
        self.handles = [
            model.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
            model.register_forward_hook(self._post_hook, always_call=True),
        ]

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and self._mask_pos is not None and len(args) > self._mask_pos:
            mask = args[self._mask_pos]
        self._stack.append(self.slot.mask)
        # Only a (batch, seq) 0/1 mask says which tokens are padding; 4-D masks are additive.
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            self.slot.mask = mask

    def _post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._stack:
            self.slot.mask = self._stack.pop()


def smora_layers(model: nn.Module) -> dict[str, SMoRALinear]:
    """The model's SMoRA layers by module name (as in ``model.named_modules()``)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SMoRALinear)}


def smora_config(model: nn.Module) -> SMoRAConfig:
    """The config ``inject_smora`` (or ``load_smora``) used on this model."""
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        raise MergeConfigError("the model has no SMoRA layers: call inject_smora(model, config)")
    return state.config


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n]


def _output_embedding(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    if callable(get):
        try:
            return get()
        except (NotImplementedError, AttributeError):
            return None
    return None


def find_targets(model: nn.Module, config: SMoRAConfig) -> list[str]:
    """Names of the ``nn.Linear`` modules that ``config.target_modules`` selects."""
    modules = dict(model.named_modules())
    linears = _linear_names(model)
    t = config.target_modules
    if t == ALL_LINEAR:
        head = _output_embedding(model)
        names = [n for n in linears if modules[n] is not head]
        if not names:
            raise MergeConfigError("target_modules='all-linear': the model has no nn.Linear")
        return names
    if isinstance(t, str):
        names = [n for n in linears if re.fullmatch(t, n)]
        if not names:
            raise MergeConfigError(f"target_modules regex {t!r} matches no nn.Linear module; {_examples(linears)}")
        return names
    chosen: list[str] = []
    for suffix in t:
        hits = [n for n in modules if n == suffix or n.endswith("." + suffix)]
        if not hits:
            raise MergeConfigError(f"target module {suffix!r} matches no module of the model; {_examples(linears)}")
        for n in hits:
            m = modules[n]
            if isinstance(m, SMoRALinear):
                raise MergeConfigError(f"module {n!r} already has SMoRA (inject_smora twice?)")
            if not isinstance(m, nn.Linear):
                raise MergeConfigError(
                    f"target module {suffix!r} matches {n!r}, a {type(m).__name__}; "
                    f"SMoRA wraps nn.Linear only. {_examples(linears)}"
                )
        chosen.extend(n for n in hits if n not in chosen)
    return [n for n in linears if n in chosen]  # model order


def _examples(linears: list[str]) -> str:
    if not linears:
        return "the model has no nn.Linear modules"
    suffixes = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in linears))
    return f"nn.Linear names in this model include {suffixes[:12]} (e.g. {linears[0]!r})"


def inject_smora(model: nn.Module, config: SMoRAConfig) -> nn.Module:
    """Wraps the target linears of ``model`` in ``SMoRALinear`` (in place), freezes every other
    parameter, installs the attention-mask capture, and returns the model."""
    if not isinstance(config, SMoRAConfig):
        raise MergeConfigError(f"inject_smora needs an SMoRAConfig, got {type(config).__name__}")
    config.validate()
    if smora_layers(model):
        raise MergeConfigError("the model already has SMoRA layers (inject_smora twice?)")
    return _inject(model, config, find_targets(model, config))


def _inject(model: nn.Module, config: SMoRAConfig, names: list[str]) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    state = _SMoRAState(model, config)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = SMoRALinear(getattr(parent, child), config)
        layer.mask_slot = state.slot
        setattr(parent, child, layer)
    for layer in smora_layers(model).values():
        for p in (layer.lora_A, layer.lora_B, layer.router.weight):
            p.requires_grad_(True)
    object.__setattr__(model, _STATE_ATTR, state)
    return model


@contextlib.contextmanager
def smora_attention_mask(model: nn.Module, mask: torch.Tensor | None) -> Iterator[None]:
    """Within the block, SMoRA layers of ``model`` count only tokens where ``mask`` is nonzero
    (a (batch, seq) mask). For models whose forward has no ``attention_mask`` argument."""
    slot = _state(model).slot
    prev = slot.mask
    slot.mask = mask
    try:
        yield
    finally:
        slot.mask = prev


def set_smora_attention_mask(model: nn.Module, mask: torch.Tensor | None) -> None:
    """Sets (``None``: clears) the mask until changed; prefer ``smora_attention_mask``."""
    _state(model).slot.mask = mask


def _state(model: nn.Module) -> _SMoRAState:
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        raise MergeConfigError("the model has no SMoRA layers: call inject_smora(model, config)")
    return state


@torch.no_grad()
def smora_balance_step(model: nn.Module) -> None:
    """Applies the balance-bias update of every SMoRA layer from the tokens counted since the
    last call; call once per optimizer step (or use ``attach_balancer``). Under
    torch.distributed, counts are summed over processes first so every replica keeps the same
    bias."""
    layers = list(smora_layers(model).values())
    if not layers:
        return
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flat = torch.cat([m.balance_counts for m in layers])
        dist.all_reduce(flat)
        for m, c in zip(layers, flat.split([m.n_blocks for m in layers])):
            m.balance_counts.copy_(c)
    for m in layers:
        m.balance_step()


def attach_balancer(optimizer: torch.optim.Optimizer, model: nn.Module) -> Any:
    """Runs ``smora_balance_step(model)`` after every ``optimizer.step()``; returns the hook
    handle (``.remove()`` detaches it). A step skipped by a GradScaler does not call it, and the
    counts roll over into the next step. With the HF Trainer: ``attach_balancer(
    trainer.create_optimizer(), model)`` before ``trainer.train()`` (the Trainer keeps an
    optimizer that already exists, and accelerate's wrapper calls its ``step``)."""
    _state(model)
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: smora_balance_step(model))
