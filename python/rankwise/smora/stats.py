"""Routing statistics: how evenly each SMoRA layer uses its ranks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .inject import smora_layers


@dataclass(frozen=True)
class RoutingStats:
    """Expert usage of one layer over the forwards counted since the last reset; an expert is a
    block of ``block_size`` ranks (a rank at block_size 1), E = rank / block_size of them.

    ``usage[e]``: share of (token, selected expert) pairs that went to expert e (sums to 1; all
    zeros before any forward). ``entropy``: Shannon entropy of ``usage`` in nats, at most
    log(E) (perfectly even use) and at least log(top_k) (every token picks the same experts).
    ``normalized_entropy`` = entropy / log(E). ``max_load``: E x max(usage), 1 if even;
    ``min_load``: E x min(usage).
    Padding tokens are excluded where the attention mask is known; checkpoint recomputes too.
    """

    tokens: int
    usage: list[float]
    entropy: float
    normalized_entropy: float
    max_load: float
    min_load: float
    balance_bias: list[float]


def routing_stats(model: nn.Module) -> dict[str, RoutingStats]:
    """Per SMoRA layer (by module name) rank usage and entropy; see ``RoutingStats``."""
    out: dict[str, RoutingStats] = {}
    for name, m in smora_layers(model).items():
        c = m.usage_counts.detach().to("cpu", torch.float64)
        total = float(c.sum())
        p = c / total if total > 0 else torch.zeros_like(c)
        nz = p[p > 0]
        ent = float(-(nz * nz.log()).sum()) if total > 0 else 0.0
        out[name] = RoutingStats(
            tokens=int(total) // m.top_k,
            usage=p.tolist(),
            entropy=ent,
            normalized_entropy=ent / math.log(m.n_blocks) if m.n_blocks > 1 else 1.0,
            max_load=float(p.max()) * m.n_blocks if total > 0 else 0.0,
            min_load=float(p.min()) * m.n_blocks if total > 0 else 0.0,
            balance_bias=m.balance_bias.detach().cpu().tolist(),
        )
    return out


def reset_routing_stats(model: nn.Module) -> None:
    """Zeroes the usage counters behind ``routing_stats`` (not the pending balance counts)."""
    for m in smora_layers(model).values():
        m.usage_counts.zero_()
