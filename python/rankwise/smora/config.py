"""SMoRA configuration: defaults from the authors' runs (arXiv 2501.15103), validated eagerly."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import MergeConfigError

#: Special ``target_modules`` value: every ``nn.Linear`` except the model's output embedding
#: (``lm_head``), as in PEFT. The paper adapts all linear layers.
ALL_LINEAR = "all-linear"

PATHS = ("auto", "dense", "gathered")


@dataclass
class SMoRAConfig:
    """Options of a SMoRA adapter (one rank-r LoRA per module whose ranks are routed experts).

    Defaults are the authors' (rank 64, top-8, lora_alpha 16, all linear layers, balance rate
    1e-5). ``lora_alpha / (top_k * block_size)`` is the adapter's scale: lora_alpha over the
    number of active ranks (the paper's code divides by k, not r).

    - ``block_size``: the router scores blocks of ``block_size`` consecutive ranks; ``top_k``
      and balancing count blocks. 1 is SMoRA; ``block_size=8, top_k=1`` is a multi-LoRA MoE of
      rank/8 experts of rank 8 with top-1 routing; ``block_size=rank, top_k=1`` is plain LoRA
      (the paper's unified view). Must divide ``rank``.

    - ``target_modules``: a list of module-name suffixes (``"q_proj"`` matches
      ``"model.layers.0.self_attn.q_proj"``), a regex string matched against full names with
      ``re.fullmatch``, or ``"all-linear"``.
    - ``balance``: loss-free load balancing of rank usage by a sign-updated bias (see layer.py);
      ``balance_rate`` is its step u.
    - ``path``: ``"dense"`` (masked full-rank products), ``"gathered"`` (only the selected ranks'
      rows and columns), or ``"auto"`` (chosen per device, see ``layer.choose_path``). Both give
      the same results up to float rounding.
    """

    rank: int = 64
    top_k: int = 8
    lora_alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str = field(default=ALL_LINEAR)
    balance: bool = True
    balance_rate: float = 1e-5
    path: str = "auto"
    block_size: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        self.validate()

    def validate(self) -> None:
        """Raises ``MergeConfigError`` naming the option and the accepted domain."""
        if not _is_int(self.rank) or self.rank < 1:
            raise MergeConfigError(f"SMoRAConfig.rank must be an integer >= 1, got {self.rank!r}")
        if not _is_int(self.top_k) or self.top_k < 1:
            raise MergeConfigError(f"SMoRAConfig.top_k must be an integer >= 1, got {self.top_k!r}")
        if not _is_int(self.block_size) or self.block_size < 1:
            raise MergeConfigError(f"SMoRAConfig.block_size must be an integer >= 1, got {self.block_size!r}")
        if self.rank % self.block_size:
            raise MergeConfigError(
                f"SMoRAConfig.block_size ({self.block_size}) must divide rank ({self.rank}): "
                "the router scores blocks of block_size consecutive ranks"
            )
        if self.top_k > self.n_blocks:
            of = f"rank ({self.rank})"
            if self.block_size > 1:
                of += f" / block_size ({self.block_size}) = {self.n_blocks}"
            raise MergeConfigError(
                f"SMoRAConfig.top_k ({self.top_k}) must be <= {of}: "
                "a token cannot activate more experts than the adapter has"
            )
        alpha = self.lora_alpha
        if not _is_real(alpha) or not math.isfinite(alpha) or alpha <= 0:
            raise MergeConfigError(f"SMoRAConfig.lora_alpha must be a finite number > 0, got {self.lora_alpha!r}")
        if not _is_real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise MergeConfigError(f"SMoRAConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.balance, bool):
            raise MergeConfigError(f"SMoRAConfig.balance must be a bool, got {self.balance!r}")
        if not _is_real(self.balance_rate) or not math.isfinite(self.balance_rate) or self.balance_rate < 0:
            raise MergeConfigError(f"SMoRAConfig.balance_rate must be a finite number >= 0, got {self.balance_rate!r}")
        if self.path not in PATHS:
            raise MergeConfigError(f"SMoRAConfig.path must be one of {PATHS}, got {self.path!r}")
        _validate_targets(self.target_modules)

    @property
    def n_blocks(self) -> int:
        """Number of routed experts: rank / block_size."""
        return self.rank // self.block_size

    @property
    def scale(self) -> float:
        """Multiplier of the routed update: lora_alpha / (top_k * block_size), i.e. lora_alpha
        over the active ranks (the paper's code: lora_alpha / top_k at block_size 1)."""
        return float(self.lora_alpha) / (self.top_k * self.block_size)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(d["target_modules"], list):
            d["target_modules"] = list(d["target_modules"])
        if d["block_size"] == 1:
            del d["block_size"]  # block_size 1 saves exactly what rankwise wrote before it existed
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SMoRAConfig:
        """Inverse of ``to_dict``; unknown keys are an error (they usually mean a typo)."""
        if not isinstance(d, Mapping):
            raise MergeConfigError(f"SMoRA config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MergeConfigError(f"unknown SMoRA config key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**dict(d))


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _validate_targets(t: object) -> None:
    if isinstance(t, str):
        if not t:
            raise MergeConfigError("SMoRAConfig.target_modules must not be empty")
        if t != ALL_LINEAR:
            try:
                re.compile(t)
            except re.error as e:
                raise MergeConfigError(f"SMoRAConfig.target_modules {t!r} is not a valid regex: {e}") from e
        return
    if not isinstance(t, list) or not t:
        raise MergeConfigError(
            "SMoRAConfig.target_modules must be a non-empty list of module-name suffixes, "
            f"a regex string or {ALL_LINEAR!r}; got {t!r}"
        )
    for name in t:
        if not isinstance(name, str) or not name or name != name.strip() or name.startswith("."):
            raise MergeConfigError(
                f"SMoRAConfig.target_modules entries must be module names like 'q_proj', got {name!r}"
            )
