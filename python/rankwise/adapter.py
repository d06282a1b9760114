"""``Adapter``: one LoRA adapter, its modules and factors, loaded from or saved to a PEFT folder.

Loading maps the weights files of many folders in one core call (``open_adapters``); a loaded
adapter reads its factors from its mapped file (``Adapter.source``) on demand.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import json
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import _core, card
from . import formats as fm
from . import heads as hd
from . import peft_format as pf
from ._atomic import atomic_dir, atomic_file
from .errors import AdapterFormatError, NonFiniteError, OptionError, OutputWriteError, RankwiseError
from .heads import HeadTensor
from .peft_format import DTYPES, ModuleInfo

__all__ = [
    "RESIDENT_BYTES",
    "Adapter",
    "AdapterSource",
    "ModuleInfo",
    "check_factors_finite",
    "distinct_sources",
    "expand_paths",
    "load_adapter",
    "mapped_bytes",
    "normalize_dtype",
    "open_adapters",
]

#: Pools whose weight files add up to at most this many bytes keep the pages they map (in the
#: load's finite check, in merges) in the resident set until the pool is dropped; larger pools
#: drop each file's pages after the check and each module's pages once a merge has read them,
#: so the resident set stays near one module's pages. Dropping costs a system call per file
#: and module and interrupts the other threads (TLB flushes), and mapping the pages again
#: costs as much (benches/RESULTS.md). The pages stay in the page cache either way.
RESIDENT_BYTES = 256 << 20

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
        raise OptionError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16")
    return d


@dataclass(frozen=True)
class AdapterSource:
    """Where a loaded adapter's factors are: file ``index`` of the core's mapped ``files``
    (one ``MappedFiles`` may hold the files of many adapters loaded together)."""

    files: _core.MappedFiles
    index: int

    @property
    def path(self) -> Path:
        return Path(self.files.path(self.index))

    @property
    def nbytes(self) -> int:
        """The size of the mapped weights file."""
        return os.path.getsize(self.files.path(self.index))

    def read(self, key: str) -> np.ndarray:
        """Tensor ``key`` as float32 (a copy)."""
        return self.files.read(self.index, key)

    def release(self) -> None:
        """Drops the file's mapped pages from this process's resident set (they stay cached)."""
        self.files.release(self.index)


class Adapter:
    """A LoRA adapter: a config and, per module, factors A (rank × d_in) and B (d_out × rank);
    ``heads``: the full-copy tensors it carries (``heads.py``), by name, carried unchanged.

    Loaded adapters read their factors from the memory-mapped file on demand; merged adapters
    hold them in memory. ``factors(name, folded=True)`` gives ``(A, scaling·B)``.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        modules: Mapping[str, ModuleInfo],
        *,
        path: Path | None = None,
        source: AdapterSource | None = None,
        factors: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
        format: str = "peft",
        metadata: Mapping[str, str] | None = None,
        heads: Mapping[str, HeadTensor] | None = None,
        head_values: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.config: dict[str, Any] = dict(config)
        #: The layout the modules' keys are in (``formats.FORMATS``), the default of ``save``.
        self.format = format
        #: The safetensors ``__metadata__`` of the file it was read from, written back on save.
        self.metadata: dict[str, str] = dict(metadata or {})
        self.modules: dict[str, ModuleInfo] = dict(modules)
        self.heads: dict[str, HeadTensor] = dict(heads or {})
        self._head_values = dict(head_values) if head_values is not None else None
        self.path = path
        self._source = source
        self._factors = dict(factors) if factors is not None else None
        # Set by ``merge``: method, options, sizes and time, for summaries and logs.
        self.merge_info: dict[str, Any] | None = None
        # The folders this adapter's factors come from: ``save`` never writes over one of them.
        self.inputs: list[Path] = [path] if path is not None else []
        # Set by ``merge``, which checked every merged factor: float32/float64 writes skip the check.
        self.checked_finite = False
        if self._factors is None and source is None:
            raise ValueError("an Adapter needs either mapped files or in-memory factors")

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | os.PathLike[str], *, check_finite: bool = True, format: str | None = None) -> Adapter:
        """Loads a PEFT adapter folder, or a kohya / diffusers LoRA file or folder (the layout
        read off the keys unless ``format`` forces it)."""
        return open_adapters([Path(path)], check_finite=check_finite, format=format)[0]

    @classmethod
    def from_factors(
        cls,
        factors: Mapping[str, tuple[np.ndarray, np.ndarray]],
        *,
        base_config: Mapping[str, Any] | None = None,
        dtype: str = "F32",
        heads: Mapping[str, tuple[HeadTensor, np.ndarray]] | None = None,
        embeddings: Collection[str] = (),
    ) -> Adapter:
        """An in-memory adapter from folded factors ``{module: (A, B)}`` with delta = B @ A.

        The written config uses scaling 1 for every module (lora_alpha = r, per-module ranks in
        rank_pattern/alpha_pattern), and keeps the other fields of ``base_config``
        (base model, target modules, task type, fan_in_fan_out, modules_to_save while heads are
        kept). ``heads``: full-copy tensors to carry, ``{name: (HeadTensor, value)}``;
        ``embeddings``: the modules that are embedding LoRA (saved as lora_embedding_A/B).
        """
        dtype = normalize_dtype(dtype)
        mods: dict[str, ModuleInfo] = {}
        clean: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, (a, b) in factors.items():
            a = np.ascontiguousarray(a, dtype=np.float32)
            b = np.ascontiguousarray(b, dtype=np.float32)
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise OptionError(f"module '{name}': A {a.shape} and B {b.shape} are not rank-compatible")
            emb = name in embeddings
            key_a, key_b = pf.factor_keys(name, emb)
            r = int(a.shape[0])
            mods[name] = ModuleInfo(name, r, float(r), 1.0, a.shape[1], b.shape[0], dtype, key_a, key_b, emb)
            clean[name] = (a, b)
        if not mods:
            raise OptionError("an adapter needs at least one module")
        heads = heads or {}
        config = _merged_config(base_config or {}, mods)
        if not heads:
            config.pop("modules_to_save", None)
        values = {n: np.ascontiguousarray(v, dtype=np.float32).reshape(t.shape) for n, (t, v) in heads.items()}
        return cls(config, mods, factors=clean, heads={n: t for n, (t, _) in heads.items()}, head_values=values)

    # ----------------------------------------------------------------------------- access
    @property
    def source(self) -> AdapterSource | None:
        """The mapped file the factors are read from; None for an adapter held in memory."""
        return self._source

    def __repr__(self) -> str:
        ranks = sorted({m.rank for m in self.modules.values()})
        where = f" from {self.path}" if self.path else ""
        heads = f", heads {sorted(self.heads)}" if self.heads else ""
        return f"<rankwise.Adapter{where}: {len(self.modules)} modules, rank {ranks}{heads}>"

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
            assert self._source is not None
            a, b = self._source.read(info.key_a), self._source.read(info.key_b)
            if info.kernel is not None:  # conv LoRA: the down kernel's rows are the units' A
                a, b = a.reshape(info.rank, info.d_in), b.reshape(info.d_out, info.rank)
        if folded and info.scaling != 1.0:
            b = b * np.float32(info.scaling)
        return a, b

    def head(self, name: str) -> np.ndarray:
        """Full-copy tensor ``name`` (a key of ``heads``) as float32 (exact for F16/BF16/F32)."""
        t = self.heads[name]
        if self._head_values is not None:
            return self._head_values[name]
        assert self._source is not None
        return self._source.read(t.key)

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
        for name, t in self.heads.items():
            out[t.key] = _to_framework(self.head(name), t.dtype, framework)
        return out

    # ----------------------------------------------------------------------------- saving
    def carry_layout(self, other: Adapter) -> Adapter:
        """Takes ``other``'s layout, metadata, key names and conv kernels for the modules both
        have (a merge's result keeps its pool's), so that ``save`` writes what ``other`` was."""
        self.format, self.metadata = other.format, dict(other.metadata)
        if other.format == "peft":  # PEFT keys are rankwise's own (prefixed) names
            return self
        for name, info in self.modules.items():
            o = other.modules.get(name)
            if o is not None and (o.d_in, o.d_out) == (info.d_in, info.d_out):
                self.modules[name] = dataclasses.replace(info, key_a=o.key_a, key_b=o.key_b, kernel=o.kernel)
        return self

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        dtype: str | None = None,
        format: str | None = None,
    ) -> Path:
        """Writes the adapter atomically (a temp file or folder beside ``path``, then renamed) in
        layout ``format`` (default: the one it was read in): a PEFT folder
        (``adapter_config.json`` + ``adapter_model.safetensors``), or a kohya / diffusers
        safetensors file (``path`` ending in ``.safetensors``) or a folder holding one; a
        merge's PEFT folder also gets its model card ``README.md`` (``rankwise.card``).
        Returns the path."""
        out_dtype = normalize_dtype(dtype) if dtype is not None else None
        fmt = fm.check_format(format) or self.format
        if fmt != "peft":
            return self._save_file(Path(path), fmt, out_dtype, overwrite)
        target = Path(path)
        tensors = []
        for name, info in self.modules.items():
            a, b = self.factors(name)
            dt = out_dtype or info.dtype
            for key, x in ((info.key_a, a), (info.key_b, b)):
                x = np.ascontiguousarray(x, dtype=np.float32)
                if not (self.checked_finite and dt in ("F32", "F64")):
                    check_castable(x, dt, f"{target}: module '{name}': tensor '{key}'{self._merged_from()}")
                tensors.append((key, dt, x))
        for name, t in self.heads.items():
            x = np.ascontiguousarray(self.head(name), dtype=np.float32)
            check_castable(x, t.dtype, f"{target}: head '{name}': tensor '{t.key}'")
            tensors.append((t.key, t.dtype, x))
        config = self.config if self.format == "peft" else fm.peft_config(self.modules)
        weights = None
        try:
            with atomic_dir(target, overwrite=overwrite, inputs=self.inputs) as tmp:
                weights = tmp / pf.WEIGHTS_NAME
                _core.write_safetensors(str(weights), tensors, {"format": "pt"})
                (tmp / pf.CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
                if self.merge_info is not None and "method" in self.merge_info:
                    (tmp / card.CARD_NAME).write_text(card.render(config, self.merge_info), encoding="utf-8")
        except RankwiseError as e:
            # The core reports a failed write (disk full, ...) as a format error naming the temp file.
            if weights is None or isinstance(e, OSError) or str(weights) not in str(e):
                raise
            raise OutputWriteError(f"{target}: writing the output failed: {e}; nothing was written") from e
        return target

    def _save_file(self, path: Path, fmt: str, dtype: str | None, overwrite: bool) -> Path:
        tensors, meta = fm.tensors_and_metadata(
            self.modules,
            self.factors,
            fmt,
            own_keys=fmt == self.format,
            dtype=dtype,
            metadata=self.metadata,
            merge_info=self.merge_info,
        )
        for key, dt, x in tensors:
            if not (self.checked_finite and dt in ("F32", "F64")):
                check_castable(x, dt, f"{path}: tensor '{key}'{self._merged_from()}")
        folder, name = fm.weights_target(path, fmt)
        if path.suffix == ".safetensors":
            with atomic_file(path, overwrite=overwrite, inputs=self.inputs) as tmp:
                _core.write_safetensors(str(tmp), tensors, meta)
            return path
        with atomic_dir(folder, overwrite=overwrite, inputs=self.inputs) as tmp:
            _core.write_safetensors(str(tmp / name), tensors, meta)
        return folder

    def _merged_from(self) -> str:
        if self.merge_info:
            return f" (merged by {self.merge_info.get('method')} from {len(self.inputs)} adapters)"
        return f" (of {self.inputs[0]})" if self.inputs else ""


#: Per output dtype, the smallest magnitude that rounds to inf in the cast (round to nearest
#: even): float16's largest value is 65504, bfloat16's 0x7F7F; one comparison per value
#: (NaN fails it too) is the whole check on the write path.
_OVERFLOW = {"F16": 65520.0, "BF16": float(np.uint32(0x7F7F8000).view(np.float32)), "F32": np.inf, "F64": np.inf}


def check_castable(x: np.ndarray, dtype: str, where: str) -> None:
    """Raises ``NonFiniteError`` (naming ``where`` and the stage) unless every value of the
    float32 array ``x`` stays finite when cast to ``dtype``: rankwise never writes a non-finite
    value."""
    with np.errstate(invalid="ignore"):
        ok = np.abs(x) < np.float32(_OVERFLOW[dtype])
    if ok.all():
        return
    bad = ~ok
    i = int(np.flatnonzero(bad.reshape(-1))[0])
    v = float(x.reshape(-1)[i])
    cast = {"F16": "float16", "BF16": "bfloat16"}.get(dtype)
    stage = f"after the cast to {cast}" if cast and np.isfinite(x).all() else "before any cast"
    raise NonFiniteError(
        f"{where}: value {v:g} at flat index {i} is not finite {stage} ({int(bad.sum())} such values); "
        "rankwise never writes a non-finite value"
        + ("; save with dtype='float32' to keep these values" if "cast to" in stage else "")
    )


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


def load_adapter(path: str | os.PathLike[str], *, check_finite: bool = True, format: str | None = None) -> Adapter:
    """Loads a PEFT adapter folder or a kohya / diffusers LoRA file or folder (``format``:
    forces the layout). Factors stay in the mapped file until asked for."""
    return Adapter.load(path, check_finite=check_finite, format=format)


def expand_paths(paths_or_glob: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """A glob string, one path, or a list of paths (globs inside are expanded, in sorted order)."""
    items = [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike)) else list(paths_or_glob)
    out: list[Path] = []
    for item in items:
        s = os.fsdecode(os.fspath(item))
        # A path that exists is taken literally (folder names may hold '[', '*', '?').
        if not os.path.lexists(s) and glob.has_magic(s):
            hits = sorted(glob.glob(s))
            if not hits:
                raise RankwiseError(f"{s}: the pattern matches no adapter folder")
            out.extend(Path(h) for h in hits)
        else:
            out.append(Path(s))
    return out


def open_adapters(folders: Sequence[Path], *, check_finite: bool = True, format: str | None = None) -> list[Adapter]:
    """Parses the configs, then maps every weights file in one parallel Rust call."""
    located = [fm.locate(Path(f), format) for f in folders]
    specs = {i: pf.read_config(loc.path) for i, loc in enumerate(located) if loc.format == "peft"}
    for loc in located:
        try:
            os.fspath(loc.weights).encode("utf-8")
        except UnicodeEncodeError:
            raise AdapterFormatError(
                f"{os.fsencode(loc.weights)!r}: the path is not valid UTF-8; rankwise's reader takes UTF-8 "
                "paths: rename the folder"
            ) from None
    files = _core.MappedFiles.open([str(loc.weights) for loc in located])
    adapters = []
    for i, loc in enumerate(located):
        if i in specs:
            heads, listing = hd.split_listing(loc.weights, files.tensors(i), specs[i].modules_to_save)
            mods = pf.modules_from_listing(loc.path, loc.weights, specs[i], listing)
            adapters.append(Adapter(specs[i].raw, mods, path=loc.path, source=AdapterSource(files, i), heads=heads))
            continue
        listing = files.tensors(i)
        fmt = loc.format or fm.detect(loc.weights, list(listing))
        meta = files.metadata(i)
        mods = fm.read_modules(loc, fmt, listing, meta, lambda k, i=i: files.read(i, k))
        adapters.append(
            Adapter(
                fm.peft_config(mods), mods, path=loc.path, source=AdapterSource(files, i), format=fmt, metadata=meta
            )
        )
    if check_finite:
        # Pages stay mapped for the merge that follows, unless the pool is too large for that.
        check_factors_finite(adapters, release=mapped_bytes(adapters) > RESIDENT_BYTES)
    return adapters


def check_factors_finite(adapters: Sequence[Adapter], modules: Sequence[str] | None = None, *, release: bool) -> None:
    """The core's NaN/inf check of the adapters' factors read from files: of ``modules``, or of
    every module and head (factors first, then heads). ``release`` drops the pages once read."""
    by_files: dict[int, tuple[_core.MappedFiles, list[tuple[int, str]], list[tuple[int, str]]]] = {}
    for a in adapters:
        src = a.source
        if src is None:
            continue
        _, factors, heads = by_files.setdefault(id(src.files), (src.files, [], []))
        infos = a.modules.values() if modules is None else [a.module(m) for m in modules]
        factors += [(src.index, k) for m in infos for k in (m.key_a, m.key_b)]
        if modules is None:
            heads += [(src.index, t.key) for t in a.heads.values()]
    for files, factors, heads in by_files.values():
        files.check_finite(factors + heads, release=release)


def distinct_sources(adapters: Sequence[Adapter]) -> list[AdapterSource]:
    """The mapped files the adapters are read from, each once, in order (in-memory ones have none)."""
    return list(dict.fromkeys(a.source for a in adapters if a.source is not None))


def mapped_bytes(adapters: Sequence[Adapter]) -> int:
    """The size of the distinct weight files the adapters are mapped from."""
    return sum(s.nbytes for s in distinct_sources(adapters))
