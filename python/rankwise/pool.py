"""``AdapterPool``: many adapters, validated against each other, read one module at a time."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from . import _core
from . import adapter as _adapter
from .adapter import Adapter, distinct_sources, expand_paths, mapped_bytes, open_adapters
from .errors import BaseModelWarning, IncompatibleAdaptersError, OptionError, RankwiseError

#: Per adapter, the file index and the keys of one module's factors in the pool's mapped files.
FileSources = list[tuple[int, str, str]]


class AdapterPool:
    """Adapters that fit together: the same modules with the same (out, in) shapes.

    Ranks may differ between adapters and between modules. Factors stay in the mapped files;
    ``unit_matrix(module)`` reads one module across the pool.
    """

    def __init__(self, adapters: Sequence[Adapter]) -> None:
        if not adapters:
            raise OptionError("an AdapterPool needs at least one adapter")
        self.adapters = list(adapters)
        _check_compatible(self.adapters)
        self.mapped_bytes = mapped_bytes(self.adapters)
        bases = {a.config.get("base_model_name_or_path") for a in self.adapters}
        if len(bases) > 1:
            warnings.warn(
                f"the adapters name {len(bases)} base models ({', '.join(sorted(map(str, bases)))}); their "
                "shapes agree, so they are merged, but check that they share one base model (the merged "
                "config names none)",
                BaseModelWarning,
                stacklevel=2,
            )

    @property
    def base_model(self) -> str | None:
        """The ``base_model_name_or_path`` every adapter names, or None when they differ."""
        bases = {a.config.get("base_model_name_or_path") for a in self.adapters}
        return bases.pop() if len(bases) == 1 else None

    @classmethod
    def load(
        cls,
        paths_or_glob: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        check_finite: bool = True,
        format: str | None = None,
    ) -> AdapterPool:
        """Loads adapters (a list, or a glob such as ``"runs/*/"``): PEFT folders, kohya or
        diffusers LoRA files or folders (``format`` forces the layout)."""
        folders = expand_paths(paths_or_glob)
        if not folders:
            raise OptionError("no adapter folders given")
        return cls(open_adapters(folders, check_finite=check_finite, format=format))

    def __len__(self) -> int:
        return len(self.adapters)

    @property
    def streams(self) -> bool:
        """Whether merges drop each module's mapped pages once read (``adapter.RESIDENT_BYTES``)."""
        return self.mapped_bytes > _adapter.RESIDENT_BYTES

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
        try:
            w = np.asarray(weights, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise OptionError(f"weights must be numbers, got {weights!r} ({e})") from None
        if w.shape[0] != len(self):
            raise OptionError(f"got {w.shape[0]} weights for {len(self)} adapters")
        if not np.all(np.isfinite(w)):
            raise OptionError(f"weights must be finite, got {[float(x) for x in w]}")
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
        adapters: slice | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The units of :meth:`unit_matrix` with each part scaled to unit length, rows
        ``[b/‖b‖ ; a/‖a‖]`` (float32; zero parts stay zero), and the norms ``[‖b‖, ‖a‖]`` of each
        row (``[Σ ranks, 2]``), from which the units are ``x * norms`` part by part: LoRA-LEGO's
        normalized features and raw units in one matrix, built in one Rust pass. ``out``: a
        C-contiguous float32 array of that shape to write the rows into (and return).
        ``adapters``: only the rows of these adapters (a block of a streamed module; ``weights``
        still gives one per adapter of the pool)."""
        x, _, norms = self._units(module, weights, canonical, normalized=True, out=out, adapters=adapters)
        assert norms is not None
        return x, norms

    def _units(
        self,
        module: str,
        weights: Sequence[float] | None,
        canonical: bool,
        normalized: bool,
        out: np.ndarray | None = None,
        adapters: slice | None = None,
    ) -> tuple[np.ndarray, list[int], np.ndarray | None]:
        w = self.check_weights(weights)
        chosen = self.adapters if adapters is None else self.adapters[adapters]
        if adapters is not None:
            w = w[adapters]
        sources = [a.source for a in chosen]
        if any(src is None for src in sources):
            raise RankwiseError("unit_matrix needs adapters loaded from files")
        infos = [a.module(module) for a in chosen]
        rows = [
            (src.files, (src.index, m.key_a, m.key_b, float(m.scaling * wj)))
            for src, m, wj in zip(sources, infos, w)
            if src is not None
        ]
        files = rows[0][0]
        if all(f is files for f, _ in rows):
            units, ranks, norms = files.unit_matrix([r for _, r in rows], canonical, normalized, out)
            return units, list(ranks), norms
        # Adapters loaded separately (each its own file set): one call each, stacked in order.
        parts = [f.unit_matrix([r], canonical, normalized) for f, r in rows]
        ranks = [r for _, rs, _ in parts for r in rs]
        norms = np.concatenate([n for _, _, n in parts]) if normalized else None
        return np.concatenate([u for u, _, _ in parts], out=out), ranks, norms

    def file_sources(self, module: str) -> tuple[_core.MappedFiles, FileSources] | None:
        """The one MappedFiles every adapter is read from and, per adapter, ``(file index,
        key_A, key_B)`` of ``module``; None when an adapter is held in memory or the adapters
        were loaded separately (each its own MappedFiles)."""
        sources = [a.source for a in self.adapters]
        first = sources[0]
        if first is None or any(src is None or src.files is not first.files for src in sources):
            return None
        return first.files, [
            (src.index, a.module(module).key_a, a.module(module).key_b)
            for src, a in zip(sources, self.adapters)
            if src is not None
        ]

    def release(self) -> None:
        """Drops every mapped page from this process's resident set."""
        for src in distinct_sources(self.adapters):
            src.release()


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
