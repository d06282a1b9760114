"""``Adapter``: one LoRA adapter, its modules and factors, loaded from or saved to a PEFT folder."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import peft_format as pf
from ._atomic import atomic_dir
from .errors import AdapterFormatError, AdapterNotFoundError, MergeConfigError

if TYPE_CHECKING:
    from ._core import MappedFiles

DTYPES = ("F32", "F16", "BF16", "F64")
_DTYPE_ALIASES = {
    "float32": "F32", "fp32": "F32", "f32": "F32",
    "float16": "F16", "fp16": "F16", "f16": "F16", "half": "F16",
    "bfloat16": "BF16", "bf16": "BF16",
    "float64": "F64", "f64": "F64",
}  # fmt: skip


def normalize_dtype(dtype: str) -> str:
    """'bf16', 'bfloat16', 'torch.bfloat16', 'BF16' -> 'BF16'."""
    d = str(dtype).removeprefix("torch.")
    d = _DTYPE_ALIASES.get(d.lower(), d.upper())
    if d not in DTYPES:
        raise MergeConfigError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16")
    return d


@dataclass(frozen=True)
class ModuleInfo:
    """One adapted module: its shape, rank and scaling (delta = scaling · B @ A)."""

    name: str
    rank: int
    alpha: float
    scaling: float
    d_in: int
    d_out: int
    dtype: str
    key_a: str
    key_b: str

    @property
    def num_params(self) -> int:
        return self.rank * (self.d_in + self.d_out)


class Adapter:
    """A LoRA adapter: a config and, per module, factors A (rank × d_in) and B (d_out × rank).

    Loaded adapters read their factors from the memory-mapped file on demand; merged adapters
    hold them in memory. ``factors(name, folded=True)`` gives ``(A, scaling·B)``.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        modules: Mapping[str, ModuleInfo],
        *,
        path: Path | None = None,
        files: MappedFiles | None = None,
        file_index: int = 0,
        factors: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        self.config: dict[str, Any] = dict(config)
        self.modules: dict[str, ModuleInfo] = dict(modules)
        self.path = path
        self._files = files
        self._file_index = file_index
        self._factors = dict(factors) if factors is not None else None
        # Set by ``merge``: method, options, sizes and time, for summaries and logs.
        self.merge_info: dict[str, Any] | None = None
        if self._factors is None and files is None:
            raise ValueError("an Adapter needs either mapped files or in-memory factors")

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | os.PathLike[str], *, check_finite: bool = True) -> Adapter:
        """Loads a PEFT LoRA adapter folder (``adapter_config.json`` + safetensors)."""
        from .pool import open_adapters

        return open_adapters([Path(path)], check_finite=check_finite)[0]

    @classmethod
    def from_factors(
        cls,
        factors: Mapping[str, tuple[np.ndarray, np.ndarray]],
        *,
        base_config: Mapping[str, Any] | None = None,
        dtype: str = "F32",
    ) -> Adapter:
        """An in-memory adapter from folded factors ``{module: (A, B)}`` with delta = B @ A.

        The written config uses scaling 1 for every module (lora_alpha = r, per-module ranks in
        rank_pattern/alpha_pattern), and keeps the other fields of ``base_config``
        (base model, target modules, task type, fan_in_fan_out).
        """
        dtype = normalize_dtype(dtype)
        mods: dict[str, ModuleInfo] = {}
        clean: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, (a, b) in factors.items():
            a = np.ascontiguousarray(a, dtype=np.float32)
            b = np.ascontiguousarray(b, dtype=np.float32)
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise MergeConfigError(f"module '{name}': A {a.shape} and B {b.shape} are not rank-compatible")
            key_a, key_b = pf.factor_keys(name)
            r = int(a.shape[0])
            mods[name] = ModuleInfo(name, r, float(r), 1.0, a.shape[1], b.shape[0], dtype, key_a, key_b)
            clean[name] = (a, b)
        if not mods:
            raise MergeConfigError("an adapter needs at least one module")
        return cls(_merged_config(base_config or {}, mods), mods, factors=clean)

    # ----------------------------------------------------------------------------- access
    def __repr__(self) -> str:
        ranks = sorted({m.rank for m in self.modules.values()})
        where = f" from {self.path}" if self.path else ""
        return f"<rankwise.Adapter{where}: {len(self.modules)} modules, rank {ranks}>"

    @property
    def num_params(self) -> int:
        return sum(m.num_params for m in self.modules.values())

    @property
    def dtype(self) -> str:
        """The dtype of the factors (the most common one when modules differ)."""
        dts = [m.dtype for m in self.modules.values()]
        return max(set(dts), key=dts.count)

    def module(self, name: str) -> ModuleInfo:
        try:
            return self.modules[name]
        except KeyError:
            some = ", ".join(list(self.modules)[:3])
            raise KeyError(f"no module '{name}' in this adapter (has e.g. {some})") from None

    def factors(self, name: str, *, folded: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(A, B)`` as float32; with ``folded`` the module's scaling is multiplied into B."""
        info = self.module(name)
        if self._factors is not None:
            a, b = self._factors[name]
        else:
            assert self._files is not None
            a = self._files.read(self._file_index, info.key_a)
            b = self._files.read(self._file_index, info.key_b)
        if folded and info.scaling != 1.0:
            b = b * np.float32(info.scaling)
        return a, b

    def delta(self, name: str) -> np.ndarray:
        """The module's weight update ``scaling · B @ A`` (out × in, float32).

        PEFT adds the transpose of this to fan_in_fan_out (Conv1D) weights.
        """
        a, b = self.factors(name, folded=True)
        return b @ a

    def state_dict(self, framework: Literal["numpy", "torch"] = "numpy") -> dict[str, Any]:
        """The factors under PEFT's key names. numpy: float32 (bf16 has no numpy dtype)
        or float16; torch: the adapter's own dtypes."""
        if framework not in ("numpy", "torch"):
            raise ValueError(f"framework must be 'numpy' or 'torch', got {framework!r}")
        out: dict[str, Any] = {}
        for name, info in self.modules.items():
            a, b = self.factors(name)
            for key, val in ((info.key_a, a), (info.key_b, b)):
                out[key] = _to_framework(val, info.dtype, framework)
        return out

    # ----------------------------------------------------------------------------- saving
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False, dtype: str | None = None) -> Path:
        """Writes a PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``)
        atomically: into a temp folder beside ``path``, then renamed. Returns the path."""
        from . import _core

        out_dtype = normalize_dtype(dtype) if dtype is not None else None
        tensors = []
        for name, info in self.modules.items():
            a, b = self.factors(name)
            dt = out_dtype or info.dtype
            tensors.append((info.key_a, dt, np.ascontiguousarray(a, dtype=np.float32)))
            tensors.append((info.key_b, dt, np.ascontiguousarray(b, dtype=np.float32)))
        target = Path(path)
        with atomic_dir(target, overwrite=overwrite) as tmp:
            _core.write_safetensors(str(tmp / pf.WEIGHTS_NAME), tensors, {"format": "pt"})
            (tmp / pf.CONFIG_NAME).write_text(json.dumps(self.config, indent=2, sort_keys=True) + "\n")
        return target


def _merged_config(base: Mapping[str, Any], mods: Mapping[str, ModuleInfo]) -> dict[str, Any]:
    cfg = copy.deepcopy(dict(base))
    ranks = [m.rank for m in mods.values()]
    r = max(set(ranks), key=ranks.count)
    cfg.update(
        peft_type="LORA",
        r=r,
        lora_alpha=r,
        use_rslora=False,
        use_dora=False,
        # Full module names match themselves under PEFT's pattern rule.
        rank_pattern={n: m.rank for n, m in mods.items() if m.rank != r},
        alpha_pattern={n: m.rank for n, m in mods.items() if m.rank != r},
    )
    cfg.setdefault("bias", "none")
    cfg.setdefault("task_type", None)
    if not cfg.get("target_modules"):
        cfg["target_modules"] = sorted({n.rsplit(".", 1)[-1] for n in mods})
    return cfg


def _to_framework(val: np.ndarray, dtype: str, framework: str) -> Any:
    if framework == "numpy":
        return val.astype(np.float16) if dtype == "F16" else val
    import torch

    tdt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    return torch.from_numpy(np.ascontiguousarray(val)).to(tdt[dtype])


def modules_from_listing(
    folder: Path,
    weights: Path,
    spec: pf.LoraSpec,
    listing: Mapping[str, tuple[str, list[int]]],
) -> dict[str, ModuleInfo]:
    """Builds the module table of one adapter from its parsed config and tensor listing."""
    keys = pf.module_keys(weights, list(listing))
    mods: dict[str, ModuleInfo] = {}
    for name, k in keys.items():
        a_dt, a_shape = listing[k.key_a]
        b_dt, b_shape = listing[k.key_b]
        for key, dt, shape, what in (
            (k.key_a, a_dt, a_shape, "rank × in_features"),
            (k.key_b, b_dt, b_shape, "out_features × rank"),
        ):
            if dt not in DTYPES:
                raise AdapterFormatError(
                    f"{weights}: tensor '{key}': dtype {dt} is not supported (rankwise reads F16, BF16, F32 and F64)"
                )
            if len(shape) != 2:
                raise AdapterFormatError(
                    f"{weights}: tensor '{key}': expected a 2-D ({what}) factor, got shape "
                    f"{shape} (conv LoRA is not supported)"
                )
        if a_shape[0] != b_shape[1]:
            raise AdapterFormatError(
                f"{weights}: tensor '{k.key_b}': rank mismatch: lora_B has shape {b_shape} but "
                f"'{k.key_a}' has rank {a_shape[0]} (shape {a_shape})"
            )
        rank = a_shape[0]
        cfg_rank, alpha = spec.rank_and_alpha(name)
        if rank != cfg_rank:
            raise AdapterFormatError(
                f"{weights}: tensor '{k.key_a}': rank {rank} but {folder / pf.CONFIG_NAME} "
                f"gives this module rank {cfg_rank} (r / rank_pattern)"
            )
        dtype = a_dt if a_dt == b_dt else "F32"
        mods[name] = ModuleInfo(name, rank, alpha, spec.scaling(name), a_shape[1], b_shape[0], dtype, k.key_a, k.key_b)
    return mods


def weights_path(folder: Path) -> Path:
    p = folder / pf.WEIGHTS_NAME
    if not p.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise AdapterFormatError(
                f"{folder / 'adapter_model.bin'}: pickled weights are not read (unsafe); re-save "
                "the adapter with safe_serialization=True"
            )
        raise AdapterNotFoundError(f"{p}: missing; {folder} has no adapter weights")
    return p
