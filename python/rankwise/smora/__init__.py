"""SMoRA: every rank of a LoRA is an expert, routed per token (arXiv 2501.15103).

Imports only torch, safetensors and the standard library (never the compiled core), except
``from_pool`` and ``export_lora(rank=...)``, which need ``rankwise.merge`` and import it when
called. ``SMoRACallback`` (``rankwise.smora.callback``) needs ``transformers`` and is imported
when first asked for.
"""

from typing import Any

from .config import ALL_LINEAR, SMoRAConfig
from .export import export_lora, mean_gates
from .inject import (
    attach_balancer,
    find_targets,
    inject_smora,
    set_smora_attention_mask,
    smora_attention_mask,
    smora_balance_step,
    smora_config,
    smora_layers,
)
from .io import load_smora, read_smora_config, save_smora, smora_state_dict
from .layer import SMoRALinear, choose_path
from .pool import from_pool
from .stats import RoutingStats, reset_routing_stats, routing_stats

__all__ = [
    "ALL_LINEAR",
    "RoutingStats",
    "SMoRACallback",
    "SMoRAConfig",
    "SMoRALinear",
    "attach_balancer",
    "choose_path",
    "export_lora",
    "find_targets",
    "from_pool",
    "inject_smora",
    "load_smora",
    "mean_gates",
    "read_smora_config",
    "reset_routing_stats",
    "routing_stats",
    "save_smora",
    "set_smora_attention_mask",
    "smora_attention_mask",
    "smora_balance_step",
    "smora_config",
    "smora_layers",
    "smora_state_dict",
]


def __getattr__(name: str) -> Any:
    if name == "SMoRACallback":  # transformers is optional: import it only when asked for
        from .callback import SMoRACallback

        return SMoRACallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
