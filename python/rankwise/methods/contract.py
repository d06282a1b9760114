"""The contract between a merge method and the merge loop (``rankwise.merging``).

A method is a function ``fn(ctx: ModuleContext, **options) -> (A, B)`` that merges one module
and returns folded factors (delta = B @ A), registered by name with ``@register_method``; an
optional ``prepare(pool, weights, options) -> options`` validates and resolves the options once,
before any module is merged. A method registered with ``parallel_modules=True`` does its heavy
work in core calls that release the GIL and run on one thread when ``ctx.threads == 1``: the
loop then runs that many modules at once (rankwise's thread count), each on one thread, instead
of one module on all. ``parallel_modules="resident"``: the same, but only for a pool whose pages
stay resident (``AdapterPool.streams`` false), for a method whose reads do not drop their own
pages (a streaming pool is then merged one module at a time, its pages dropped after each);
LEGO is one: its k-means calls share the core's pool, and their bytes do not depend on it.
``weights`` mean the same for every method (``methods/weighting.py``:
the target is Σ_j w_j·ΔW_j); a method with a PEFT counterpart registers ``peft_factor``, the
scalar c(w) that makes PEFT's combination with weights c(w)·w meet that rule.
Adding a method is one file in this package with one ``@register_method``
function, imported by ``methods/__init__.py``, plus its test.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..pool import AdapterPool
from .weighting import PeftFactor

Factors = tuple[np.ndarray, np.ndarray]
#: ``prepare(pool, weights, options) -> options``: validates and resolves a method's options once.
Prepare = Callable[[AdapterPool, np.ndarray, dict[str, Any]], dict[str, Any]]


@dataclass
class ModuleContext:
    """What a method sees of one module of the pool."""

    pool: AdapterPool
    module: str
    index: int  # position of the module in the pool's module list
    weights: np.ndarray  # per-adapter weights the method computes with (float64; PEFT's for a peft_factor method)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, summed over modules
    scratch: dict[str, Any] = field(default_factory=dict)  # buffers a method reuses across modules
    threads: int = 1  # threads this module's core calls may use (see parallel_modules)
    out_dtype: str = "F32"  # safetensors dtype the merged factors are written in
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards timings across modules
    memory_limit: int | None = None  # bytes a method may hold for this module (rankwise.memory); None: no limit
    streamed: list[str] = field(default_factory=list)  # modules a method streamed (merge_info["streamed"])

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Adds the time spent in the block to ``timings[phase]`` (reported in merge_info)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            with self.lock:
                self.timings[phase] = self.timings.get(phase, 0.0) + dt

    @property
    def shape(self) -> tuple[int, int]:
        return self.pool.shape(self.module)

    @property
    def ranks(self) -> list[int]:
        return self.pool.ranks(self.module)

    def units(self, *, canonical: bool = False, weighted: bool = True) -> np.ndarray:
        """``U[Σ ranks, d_out + d_in]``: rows ``[w_j·s_j·b_i ; a_i]`` (Rust, from the mapped files),
        in the module buffer (see :meth:`rows_buffer`): valid until the next module. Canonical
        rows: see :meth:`_canonical_weights`."""
        w = self.weights if weighted else None
        out = self.rows_buffer()
        with self.timed("units"):
            split = self._canonical_weights() if canonical and weighted else None
            if split is None:
                return self.pool.unit_matrix(self.module, w, canonical=canonical, out=out)[0]
            common, rel = split
            u = self.pool.unit_matrix(self.module, common, canonical=True, out=out)[0]
            u[:, : self.shape[0]] *= rel[:, None]
            return u

    def unit_features(self, *, canonical: bool = False, adapters: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The weighted units with unit-length parts, and their part norms (AdapterPool.unit_features),
        in the module buffer (see :meth:`rows_buffer`): valid until the next module. Canonical
        rows: see :meth:`_canonical_weights`. ``adapters``: the rows of these adapters only (same
        bytes as theirs in the whole matrix), in a new array: a block of a streamed module."""
        out = self.rows_buffer() if adapters is None else None
        with self.timed("units"):
            split = self._canonical_weights() if canonical else None
            if split is None:
                return self.pool.unit_features(
                    self.module, self.weights, canonical=canonical, out=out, adapters=adapters
                )
            common, rel = split
            x, norms = self.pool.unit_features(self.module, common, canonical=True, out=out, adapters=adapters)
            if adapters is not None:
                starts = np.concatenate([[0], np.cumsum(self.ranks)])
                rel = rel[starts[adapters.start or 0] : starts[adapters.stop]]
            b = x[:, : self.shape[0]]
            b[rel < 0] *= np.float32(-1)
            b[rel == 0] = 0.0  # a zero part stays zero (its norm is 0 below)
            norms[:, 0] *= np.abs(rel)
            return x, norms

    def _canonical_weights(self) -> tuple[list[float], np.ndarray] | None:
        """For unequal weights: one common weight w̄ = mean |w_j| to balance every unit with
        (canonical rows ``[√w̄·b̃ ; √w̄·ã]``), and per row the factor w_j / w̄ its b part then
        takes (float32). A weight balanced into both parts (√w_j each) would make a cluster of
        copies of one unit merge to (Σ √w_j)²/n instead of Σ w_j (the weights rule). None for
        equal weights, where both are the same."""
        w = self.weights
        if np.all(w == w[0]):
            return None
        common = float(np.mean(np.abs(w)))
        return [common] * w.size, np.repeat(w / common, self.ranks).astype(np.float32)

    def rows_buffer(self) -> np.ndarray:
        """A ``Σ ranks × (d_out + d_in)`` float32 array in one buffer kept in ``scratch`` and reused
        by the next module (as large as the largest module so far): at scale a module's unit
        matrix is hundreds of MB, and fresh pages for each cost a quarter of building it."""
        n, width = sum(self.ranks), sum(self.shape)
        buf = self.scratch.get("rows")
        if buf is None or buf.size < n * width:
            self.scratch.pop("rows", None)
            buf = None  # the smaller buffer is freed before the larger one is allocated
            buf = self.scratch["rows"] = np.empty(n * width, dtype=np.float32)
        return buf[: n * width].reshape(n, width)

    def factors(self, j: int, *, folded: bool = True) -> Factors:
        """Adapter j's ``(A, B)`` for this module (scaling folded into B, weight not applied)."""
        return self.pool[j].factors(self.module, folded=folded)


@dataclass
class MergeMethod:
    """A registered method: its function, option check, one-line summary, option names, and for a
    PEFT combination the factor that maps the rule's weights to PEFT's (``methods/weighting.py``)."""

    name: str
    fn: Callable[..., Factors]
    prepare: Prepare | None
    summary: str
    params: list[str] = field(default_factory=list)
    parallel_modules: bool | str = False
    peft_factor: PeftFactor | None = None


#: The registry: method name -> MergeMethod. Filled by ``register_method``.
METHODS: dict[str, MergeMethod] = {}


def register_method(
    name: str,
    *,
    prepare: Prepare | None = None,
    parallel_modules: bool | str = False,
    peft_factor: PeftFactor | None = None,
) -> Callable[[Callable[..., Factors]], Callable[..., Factors]]:
    """Registers ``fn(ctx, **options) -> (A, B)`` under ``name``. ``prepare(pool, weights,
    options) -> options`` (optional) validates and resolves options once, before any work.
    ``parallel_modules``, ``peft_factor``: see the module docstring."""

    def deco(fn: Callable[..., Factors]) -> Callable[..., Factors]:
        params = [p for p in inspect.signature(fn).parameters if p != "ctx"]
        doc = (fn.__doc__ or "").strip().splitlines()
        METHODS[name] = MergeMethod(name, fn, prepare, doc[0] if doc else "", params, parallel_modules, peft_factor)
        return fn

    return deco
