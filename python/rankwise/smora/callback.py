"""SMoRACallback: SMoRA's balance step and routing statistics inside the HF ``Trainer``.

Needs ``transformers`` (imported here, and by ``rankwise.smora`` only when this name is asked
for). ``on_step_end`` runs once per optimizer step, after gradient accumulation, which is when
the balance bias must move; do not also ``attach_balancer`` the Trainer's optimizer (that would
step the bias twice). Statistics cover the tokens routed since the previous log.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import TrainerCallback

from .inject import smora_balance_step, smora_layers
from .stats import reset_routing_stats, routing_stats


def summary(model: nn.Module) -> dict[str, float]:
    """Routing statistics of all SMoRA layers in one flat dict (logged under these keys):
    mean normalized entropy of expert usage (1 = even), and the smallest ``min_load`` and the
    largest ``max_load`` over layers (expert count x share of the least / most used expert)."""
    stats = [s for s in routing_stats(model).values() if s.tokens > 0]
    if not stats:
        return {}
    return {
        "smora/entropy": sum(s.normalized_entropy for s in stats) / len(stats),
        "smora/min_load": min(s.min_load for s in stats),
        "smora/max_load": max(s.max_load for s in stats),
    }


class SMoRACallback(TrainerCallback):
    """``Trainer(..., callbacks=[SMoRACallback()])``: balances every optimizer step and adds
    ``smora/entropy``, ``smora/min_load``, ``smora/max_load`` to each log (``state.log_history``
    and the loggers that run after it, e.g. the progress bar). Loggers the Trainer registered
    before user callbacks (``report_to``) see them from ``trainer.callback_handler.callbacks
    .insert(0, SMoRACallback())`` instead. ``balance=False`` only logs."""

    def __init__(self, balance: bool = True) -> None:
        self.balance = balance
        self._model: nn.Module | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kw: Any) -> None:
        self._model = model
        if model is not None:
            reset_routing_stats(model)

    def on_step_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kw: Any) -> None:
        if self.balance and model is not None:
            smora_balance_step(model)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        model = kw.get("model") or self._model
        if logs is None or model is None or not smora_layers(model):
            return
        extra = summary(model)
        logs.update(extra)
        # The Trainer stored a copy of ``logs`` before calling us: complete it too.
        if state.log_history and all(state.log_history[-1].get(k) == v for k, v in logs.items() if k not in extra):
            state.log_history[-1].update(extra)
        reset_routing_stats(model)
