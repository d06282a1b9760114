"""Heads: full copies of modules an adapter carries beside its LoRA factors.

PEFT's ``modules_to_save`` (task heads such as ``classifier``, ``score``, ``pre_classifier``,
``qa_outputs``; PEFT adds ``classifier``/``score`` itself for ``task_type="SEQ_CLS"``) are trained
as whole modules and saved whole. How their keys look:
- ``base_model.model.<head>.<param>`` (PEFT strips ``modules_to_save.<adapter>`` on save), or,
  in older files, ``base_model.model.<head>.modules_to_save.default.<param>``;
- older PEFT saved the head without listing it in the config: a key under one of the known head
  names is a head even when ``modules_to_save`` is empty;
- ``<module>.base_layer.weight``: the base embedding PEFT saves with embedding LoRA
  (``save_embedding_layers``), a full copy too.

A head has no rank units, so rankwise carries it bit-identically (load, save, prune) and a merge
of adapters with heads is told what to do with them (``combine``): ``"mean"`` (Σ w_j·head_j, the
weights rule of the LoRA part: default w = 1/N), ``"first"``, ``"drop"``, or an adapter index.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AdapterFormatError, IncompatibleAdaptersError, OptionError
from .peft_format import DTYPES, KEY_PREFIX, LORA_MARKERS

#: Head modules older PEFT versions saved without listing them in ``modules_to_save``.
KNOWN_HEADS = ("classifier", "score", "pre_classifier", "qa_outputs")

#: What a merge may do with heads (besides an int: that adapter's heads).
CHOICES = ("mean", "first", "drop")

_WRAPPER = ".modules_to_save."
_BASE_LAYER = ".base_layer."

#: One adapter's heads: display name -> HeadTensor.
Heads = dict[str, "HeadTensor"]


@dataclass(frozen=True)
class HeadTensor:
    """One full-copy tensor: ``name`` as shown (``score.weight``), ``module`` it belongs to
    (``score``), the ``key`` it is saved under, its dtype and shape."""

    name: str
    module: str
    key: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def num_params(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def head_module(key: str, listed: Sequence[str]) -> tuple[str, str] | None:
    """``(display name, head module)`` of a tensor key, or None when it is not a head.

    ``listed``: the config's ``modules_to_save``. A LoRA factor is never a head."""
    if any(m in key for m in LORA_MARKERS):
        return None
    stem = key.removeprefix(KEY_PREFIX)
    if _WRAPPER in stem:
        module, _, rest = stem.partition(_WRAPPER)
        param = rest.split(".", 1)[1] if "." in rest else rest  # drop the adapter name
        return f"{module}.{param}", module
    if _BASE_LAYER in stem:
        module = stem.partition(_BASE_LAYER)[0]
        return stem, module
    parts = stem.split(".")
    for i in range(1, len(parts)):  # the shortest module path that names a head; parts[-1] is the param
        path = ".".join(parts[:i])
        if parts[i - 1] in KNOWN_HEADS or any(path == n or path.endswith(f".{n}") for n in listed):
            return stem, path
    return None


def split_listing(
    weights: Path,
    listing: Mapping[str, tuple[str, list[int]]],
    listed: Sequence[str],
) -> tuple[Heads, dict[str, tuple[str, list[int]]]]:
    """The heads of a file's tensor listing, and the rest (the LoRA factors, checked by
    ``peft_format``). A head's dtype must be one rankwise writes back unchanged."""
    heads: Heads = {}
    rest: dict[str, tuple[str, list[int]]] = {}
    for key, (dtype, shape) in listing.items():
        found = head_module(key, listed)
        if found is None:
            rest[key] = (dtype, shape)
            continue
        name, module = found
        if dtype not in DTYPES or dtype == "F64":
            raise AdapterFormatError(
                f"{weights}: tensor '{key}' (full copy of head '{module}'): dtype {dtype} is not supported "
                "(rankwise carries F16, BF16 and F32 heads unchanged)"
            )
        if name in heads:
            raise AdapterFormatError(f"{weights}: tensor '{key}': head tensor '{name}' is saved twice")
        heads[name] = HeadTensor(name, module, key, dtype, tuple(int(s) for s in shape))
    return heads, rest


def check_choice(choice: Any, n: int) -> str | int:
    """``heads=`` validated: one of CHOICES or an adapter index in [0, n)."""
    if isinstance(choice, str) and choice.lstrip("-").isdigit():
        choice = int(choice)
    if isinstance(choice, bool) or not isinstance(choice, (str, int)):
        raise OptionError(f"heads must be one of {', '.join(CHOICES)} or an adapter index, got {choice!r}")
    if isinstance(choice, int):
        if not 0 <= choice < n:
            raise OptionError(f"heads={choice}: there are {n} adapters (indices 0..{n - 1})")
        return choice
    if choice not in CHOICES:
        raise OptionError(f"heads must be one of {', '.join(CHOICES)} or an adapter index, got {choice!r}")
    return choice


def combine(
    heads: Sequence[Heads],
    read: Callable[[int, HeadTensor], np.ndarray],
    choice: Any,
    weights: np.ndarray,
    names: Sequence[str],
    *,
    dry_run: bool = False,
) -> dict[str, tuple[HeadTensor, np.ndarray]]:
    """The merged adapter's heads. ``heads``: per adapter; ``read(j, tensor)``: adapter j's tensor
    as float32; ``weights``: the per-adapter w_j of ``mean``; ``names``: the adapters, for errors.
    ``dry_run``: check the choice and the shapes only (nothing read, {} returned).

    Without a choice (None) a pool with heads is refused, naming them and the option."""
    n = len(heads)
    carried = sorted({h for hs in heads for h in hs})
    if not carried:
        return {}
    if choice is None:
        if n == 1:
            choice = 0
        else:
            raise OptionError(
                f"the adapters carry full-copy heads ({', '.join(carried)}): say what the merge does with "
                "them: heads='mean' (Σ w_j·head_j, default w_j = 1/N), 'first', 'drop' or an adapter "
                "index (CLI: --heads)"
            )
    choice = check_choice(choice, n)
    if choice == "drop" or (dry_run and choice != "mean"):
        return {}
    if choice == "first" or isinstance(choice, int):
        j = 0 if choice == "first" else int(choice)
        return {name: (t, read(j, t)) for name, t in heads[j].items()}
    ref = heads[0]
    for j, hs in enumerate(heads):
        if set(hs) != set(ref):
            diff = sorted(set(hs) ^ set(ref))
            raise IncompatibleAdaptersError(
                f"{names[j]}: heads differ from {names[0]}'s (e.g. '{diff[0]}'): heads='mean' needs the same "
                "heads in every adapter; use 'first', 'drop' or an index"
            )
        for name, t in hs.items():
            if t.shape != ref[name].shape:
                raise IncompatibleAdaptersError(
                    f"{names[j]}: head '{name}' has shape {list(t.shape)} but in {names[0]} "
                    f"{list(ref[name].shape)}: heads='mean' needs equal shapes"
                )
    out: dict[str, tuple[HeadTensor, np.ndarray]] = {}
    if dry_run:
        return out
    for name, t in ref.items():
        acc = np.zeros(t.shape, dtype=np.float64)
        for j in range(n):
            acc += float(weights[j]) * read(j, heads[j][name]).astype(np.float64)
        value = acc.astype(np.float32)
        if not np.all(np.isfinite(value)):
            raise OptionError(f"heads='mean': head '{name}' overflows float32 with weights {list(weights)}")
        out[name] = (t, value)
    return out
