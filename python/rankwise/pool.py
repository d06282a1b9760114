"""``AdapterPool``: many adapters, validated against each other, read one module at a time."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import _core
from . import peft_format as pf
from .adapter import Adapter, modules_from_listing, weights_path
from .errors import IncompatibleAdaptersError, MergeConfigError, RankwiseError

#: Pools whose weight files add up to at most this many bytes keep the pages they map (in the
#: load's finite check, in merges) in the resident set until the pool is dropped; larger pools
#: drop each file's pages after the check and each module's pages once a merge has read them,
#: so the resident set stays near one module's pages. Dropping costs a system call per file
#: and module and interrupts the other threads (TLB flushes), and mapping the pages again
#: costs as much: together ~10% of a small pool's svd merge. The pages stay in the page cache
#: either way.
RESIDENT_BYTES = 256 << 20


def expand_paths(paths_or_glob: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """A glob string, one path, or a list of paths (globs inside are expanded, in sorted order)."""
    items = [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike)) else list(paths_or_glob)
    out: list[Path] = []
    for item in items:
        s = os.fspath(item)
        if glob.has_magic(s):
            hits = sorted(glob.glob(s))
            if not hits:
                raise RankwiseError(f"{s}: the pattern matches no adapter folder")
            out.extend(Path(h) for h in hits)
        else:
            out.append(Path(s))
    return out


def open_adapters(folders: Sequence[Path], *, check_finite: bool = True) -> list[Adapter]:
    """Parses the configs, then maps every weights file in one parallel Rust call."""
    specs = [pf.read_config(f) for f in folders]
    weights = [weights_path(f) for f in folders]
    files = _core.MappedFiles.open([str(w) for w in weights])
    adapters = []
    for i, (folder, w, spec) in enumerate(zip(folders, weights, specs)):
        mods = modules_from_listing(folder, w, spec, files.tensors(i))
        adapters.append(Adapter(spec.raw, mods, path=folder, files=files, file_index=i))
    if check_finite:
        # Pages stay mapped for the merge that follows, unless the pool is too large for that.
        files.check_finite(
            [(i, k) for i, a in enumerate(adapters) for m in a.modules.values() for k in (m.key_a, m.key_b)],
            release=mapped_bytes(adapters) > RESIDENT_BYTES,
        )
    return adapters


def mapped_bytes(adapters: Sequence[Adapter]) -> int:
    """The size of the distinct weight files the adapters are mapped from."""
    files = {(id(a._files), a._file_index): a for a in adapters if a._files is not None}
    return sum(os.path.getsize(a._files.path(a._file_index)) for a in files.values())


class AdapterPool:
    """Adapters that fit together: the same modules with the same (out, in) shapes.

    Ranks may differ between adapters and between modules. Factors stay in the mapped files;
    ``unit_matrix(module)`` reads one module across the pool.
    """

    def __init__(self, adapters: Sequence[Adapter]) -> None:
        if not adapters:
            raise MergeConfigError("an AdapterPool needs at least one adapter")
        self.adapters = list(adapters)
        _check_compatible(self.adapters)
        self.mapped_bytes = mapped_bytes(self.adapters)

    @classmethod
    def load(
        cls,
        paths_or_glob: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        check_finite: bool = True,
    ) -> AdapterPool:
        """Loads PEFT adapter folders (a list, or a glob such as ``"runs/*/"``)."""
        folders = expand_paths(paths_or_glob)
        if not folders:
            raise MergeConfigError("no adapter folders given")
        return cls(open_adapters(folders, check_finite=check_finite))

    def __len__(self) -> int:
        return len(self.adapters)

    @property
    def streams(self) -> bool:
        """Whether merges drop each module's mapped pages once read (``RESIDENT_BYTES``)."""
        return self.mapped_bytes > RESIDENT_BYTES

    def __iter__(self) -> Iterator[Adapter]:
        return iter(self.adapters)

    def __getitem__(self, i: int) -> Adapter:
        return self.adapters[i]

    def __repr__(self) -> str:
        return f"<rankwise.AdapterPool: {len(self)} adapters, {len(self.modules)} modules>"

    @property
    def modules(self) -> list[str]:
        return list(self.adapters[0].modules)

    def shape(self, module: str) -> tuple[int, int]:
        """(d_out, d_in) of a module."""
        m = self.adapters[0].module(module)
        return m.d_out, m.d_in

    def ranks(self, module: str) -> list[int]:
        return [a.modules[module].rank for a in self.adapters]

    def check_weights(self, weights: Sequence[float] | None) -> np.ndarray:
        """Per-adapter weights as float64, validated (length, finite)."""
        if weights is None:
            return np.ones(len(self), dtype=np.float64)
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != len(self):
            raise MergeConfigError(f"got {w.shape[0]} weights for {len(self)} adapters")
        if not np.all(np.isfinite(w)):
            raise MergeConfigError(f"weights must be finite, got {[float(x) for x in w]}")
        return w

    def unit_matrix(
        self,
        module: str,
        weights: Sequence[float] | None = None,
        *,
        canonical: bool = False,
        out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[int]]:
        """Units of one module across the pool: ``U[Σ ranks, d_out + d_in]`` (float32), rows
        ``[w_j·s_j·b_i ; a_i]``, and the rank each adapter contributed. ``out``: a C-contiguous
        float32 array of that shape to write the rows into (and return).

        Built in Rust straight from the mapped bytes.
        """
        units, ranks, _ = self._units(module, weights, canonical, normalized=False, out=out)
        return units, ranks

    def unit_features(
        self,
        module: str,
        weights: Sequence[float] | None = None,
        *,
        canonical: bool = False,
        out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The units of :meth:`unit_matrix` with each part scaled to unit length, rows
        ``[b/‖b‖ ; a/‖a‖]`` (float32; zero parts stay zero), and the norms ``[‖b‖, ‖a‖]`` of each
        row (``[Σ ranks, 2]``), from which the units are ``x * norms`` part by part: LoRA-LEGO's
        normalized features and raw units in one matrix, built in one Rust pass. ``out``: a
        C-contiguous float32 array of that shape to write the rows into (and return)."""
        x, _, norms = self._units(module, weights, canonical, normalized=True, out=out)
        assert norms is not None
        return x, norms

    def _units(
        self,
        module: str,
        weights: Sequence[float] | None,
        canonical: bool,
        normalized: bool,
        out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[int], np.ndarray | None]:
        w = self.check_weights(weights)
        per_adapter = self._sources(module)
        if per_adapter is None:
            raise RankwiseError("unit_matrix needs adapters loaded from files")
        sources = [
            (f, (*src, float(a.module(module).scaling * wj))) for (f, src), a, wj in zip(per_adapter, self.adapters, w)
        ]
        files = sources[0][0]
        if all(f is files for f, _ in sources):
            units, ranks, norms = files.unit_matrix([s for _, s in sources], canonical, normalized, out)
            return units, list(ranks), norms
        # Adapters loaded separately (each its own file set): one call each, stacked in order.
        parts = [f.unit_matrix([s], canonical, normalized) for f, s in sources]
        ranks = [r for _, rs, _ in parts for r in rs]
        norms = np.concatenate([n for _, _, n in parts]) if normalized else None
        return np.concatenate([u for u, _, _ in parts], out=out), ranks, norms

    def _sources(self, module: str) -> list[tuple[Any, tuple[int, str, str]]] | None:
        """Per adapter, its MappedFiles and ``(file index, key_A, key_B)`` of ``module``; None
        when an adapter is held in memory."""
        if any(a._files is None for a in self.adapters):
            return None
        return [(a._files, (a._file_index, a.module(module).key_a, a.module(module).key_b)) for a in self.adapters]

    def _file_sources(self, module: str) -> tuple[Any, list[tuple[int, str, str]]] | None:
        """The one MappedFiles all adapters are read from and ``(file index, key_A, key_B)`` of
        ``module`` per adapter, or None (adapters in memory, or loaded separately)."""
        per_adapter = self._sources(module)
        if per_adapter is None or any(f is not per_adapter[0][0] for f, _ in per_adapter):
            return None
        return per_adapter[0][0], [src for _, src in per_adapter]

    def release(self) -> None:
        """Drops every mapped page from this process's resident set."""
        seen = set()
        for a in self.adapters:
            if a._files is not None and (id(a._files), a._file_index) not in seen:
                seen.add((id(a._files), a._file_index))
                a._files.release(a._file_index)


def _check_compatible(adapters: Sequence[Adapter]) -> None:
    ref = adapters[0]
    ref_name = ref.path or "adapter 0"
    for j, a in enumerate(adapters[1:], start=1):
        name = a.path or f"adapter {j}"
        missing = [m for m in ref.modules if m not in a.modules]
        extra = [m for m in a.modules if m not in ref.modules]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"lacks {len(missing)} module(s) of {ref_name}, e.g. '{missing[0]}'")
            if extra:
                parts.append(f"has {len(extra)} module(s) {ref_name} lacks, e.g. '{extra[0]}'")
            raise IncompatibleAdaptersError(
                f"{name}: {'; '.join(parts)}: adapters in a pool must adapt the same modules"
            )
        for m, info in ref.modules.items():
            o = a.modules[m]
            if (o.d_out, o.d_in) != (info.d_out, info.d_in):
                raise IncompatibleAdaptersError(
                    f"{name}: module '{m}' is {o.d_out}×{o.d_in} (out × in) but in {ref_name} "
                    f"it is {info.d_out}×{info.d_in}: adapters in a pool must share a base model"
                )
