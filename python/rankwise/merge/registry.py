"""The merge-method registry and the one loop every method runs in.

A method is a function ``fn(ctx: ModuleContext, **options) -> (A, B)`` that merges one module
and returns folded factors (delta = B @ A). ``merge`` validates the options once, streams the
pool module by module (one module's units in memory at a time), and builds the merged Adapter.
A method registered with ``parallel_modules=True`` does its heavy work in core calls that
release the GIL and run on one thread when ``ctx.threads == 1``: ``merge`` then runs that many
modules at once (rankwise's thread count), each on one thread, instead of one module on all.
Adding a method is one file with one ``@register_method`` function, plus its test.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _core
from ..adapter import Adapter, normalize_dtype
from ..errors import MergeConfigError
from ..pool import AdapterPool

Factors = tuple[np.ndarray, np.ndarray]


@dataclass
class ModuleContext:
    """What a method sees of one module of the pool."""

    pool: AdapterPool
    module: str
    index: int  # position of the module in the pool's module list
    weights: np.ndarray  # per-adapter weights (float64)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, summed over modules
    scratch: dict[str, Any] = field(default_factory=dict)  # buffers a method reuses across modules
    threads: int = 1  # threads this module's core calls may use (see parallel_modules)
    out_dtype: str = "F32"  # safetensors dtype the merged factors are written in
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards timings across modules

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
        in the module buffer (see :meth:`rows_buffer`): valid until the next module."""
        w = self.weights if weighted else None
        out = self.rows_buffer()
        with self.timed("units"):
            return self.pool.unit_matrix(self.module, w, canonical=canonical, out=out)[0]

    def unit_features(self, *, canonical: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The weighted units with unit-length parts, and their part norms (AdapterPool.unit_features),
        in the module buffer (see :meth:`rows_buffer`): valid until the next module."""
        out = self.rows_buffer()
        with self.timed("units"):
            return self.pool.unit_features(self.module, self.weights, canonical=canonical, out=out)

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
    name: str
    fn: Callable[..., Factors]
    prepare: Callable[[AdapterPool, np.ndarray, dict[str, Any]], dict[str, Any]] | None
    summary: str
    params: list[str] = field(default_factory=list)
    parallel_modules: bool = False


_METHODS: dict[str, MergeMethod] = {}


def register_method(
    name: str,
    *,
    prepare: Callable[[AdapterPool, np.ndarray, dict[str, Any]], dict[str, Any]] | None = None,
    parallel_modules: bool = False,
) -> Callable[[Callable[..., Factors]], Callable[..., Factors]]:
    """Registers ``fn(ctx, **options) -> (A, B)`` under ``name``. ``prepare(pool, weights,
    options) -> options`` (optional) validates and resolves options once, before any work.
    ``parallel_modules``: see the module docstring."""

    def deco(fn: Callable[..., Factors]) -> Callable[..., Factors]:
        params = [p for p in inspect.signature(fn).parameters if p != "ctx"]
        doc = (fn.__doc__ or "").strip().splitlines()
        _METHODS[name] = MergeMethod(name, fn, prepare, doc[0] if doc else "", params, parallel_modules)
        return fn

    return deco


def merge_methods() -> dict[str, str]:
    """The registered methods and a one-line summary of each."""
    _load_builtin_methods()
    return {n: m.summary for n, m in sorted(_METHODS.items())}


def _load_builtin_methods() -> None:
    from . import lego  # noqa: F401

    try:
        from . import baselines  # noqa: F401
    except ImportError:  # pragma: no cover - baselines land in their own module
        pass
    try:
        from . import aligned  # noqa: F401
    except ImportError:  # pragma: no cover
        pass


def get_method(name: str) -> MergeMethod:
    _load_builtin_methods()
    try:
        return _METHODS[name]
    except KeyError:
        raise MergeConfigError(f"unknown merge method {name!r}; available: {', '.join(sorted(_METHODS))}") from None


def merge(
    pool: AdapterPool | Sequence[Any] | str,
    method: str = "lego",
    *,
    weights: Sequence[float] | None = None,
    dtype: str | None = None,
    progress: bool | Callable[[int, int, str], None] = False,
    **options: Any,
) -> Adapter:
    """Merges the adapters of ``pool`` with ``method`` into one Adapter.

    ``pool``: an AdapterPool, or paths/a glob to load one. ``weights``: one per adapter
    (default 1). ``dtype``: of the written factors (default: the pool's dtype when all
    adapters share one, else float32). ``progress``: True for a tqdm bar on stderr, or a
    callable ``(done, total, module)``. Other keywords are the method's options.
    """
    if not isinstance(pool, AdapterPool):
        pool = AdapterPool.load(pool)
    m = get_method(method)
    unknown = sorted(set(options) - set(m.params))
    if unknown:
        raise MergeConfigError(
            f"method {method!r} has no option(s) {', '.join(unknown)}; it takes: {', '.join(m.params)}"
        )
    w = pool.check_weights(weights)
    opts = m.prepare(pool, w, dict(options)) if m.prepare else dict(options)
    out_dtype = normalize_dtype(dtype) if dtype is not None else _pool_dtype(pool)

    modules = pool.modules
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(modules), desc=f"merge ({method})", unit="module", leave=False)
    merged: dict[str, Factors] = {}
    timings: dict[str, float] = {}
    lock = threading.Lock()
    t0 = time.perf_counter()

    def done(i: int, name: str, factors: Factors) -> None:
        merged[name] = factors
        if workers <= 1 and pool.streams:
            pool.release()  # keep the resident set to one module's pages
        if bar is not None:
            bar.update(1)
        elif callable(progress):
            progress(i + 1, len(modules), name)

    # A pool too large to stay resident (pool.streams) drops each module's pages once read:
    # the others here, parallel methods per module themselves (releasing every mapped page
    # between modules would drop those of the modules still running), and all at the end.
    threads = _core.get_num_threads()
    workers = min(threads, len(modules)) if m.parallel_modules else 1
    if workers <= 1:
        scratch: dict[str, Any] = {}
        for i, name in enumerate(modules):
            done(i, name, m.fn(ModuleContext(pool, name, i, w, timings, scratch, threads, out_dtype, lock), **opts))
    else:
        _merge_parallel(m, pool, w, opts, timings, out_dtype, lock, workers, done)
        if pool.streams:
            pool.release()
    if bar is not None:
        bar.close()
    out = Adapter.from_factors(merged, base_config=pool[0].config, dtype=out_dtype)
    out.merge_info = {
        "method": method,
        "adapters": len(pool),
        "modules": len(modules),
        "seconds": time.perf_counter() - t0,
        "timings": timings,
        "options": {k: v for k, v in opts.items() if _jsonable(v)},
    }
    return out


def _merge_parallel(
    m: MergeMethod,
    pool: AdapterPool,
    w: np.ndarray,
    opts: dict[str, Any],
    timings: dict[str, float],
    out_dtype: str,
    lock: threading.Lock,
    workers: int,
    done: Callable[[int, str, Factors], None],
) -> None:
    """Runs ``workers`` modules at once, each on one core thread, reporting them in order.
    At most ``workers`` modules are in flight, so memory stays that many modules' worth."""
    modules = pool.modules

    local = threading.local()  # one scratch per worker thread: its buffers outlive a module

    def one(i: int) -> Factors:
        if not hasattr(local, "scratch"):
            local.scratch = {}
        ctx = ModuleContext(pool, modules[i], i, w, timings, local.scratch, 1, out_dtype, lock)
        return m.fn(ctx, **opts)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rankwise-merge") as ex:
        pending: dict[int, Future[Factors]] = {}
        nxt = 0
        try:
            for i, name in enumerate(modules):
                while nxt < len(modules) and nxt < i + workers:
                    pending[nxt] = ex.submit(one, nxt)
                    nxt += 1
                done(i, name, pending.pop(i).result())
        except BaseException:
            for f in pending.values():
                f.cancel()
            raise


def _pool_dtype(pool: AdapterPool) -> str:
    dts = {m.dtype for a in pool for m in a.modules.values()}
    return dts.pop() if len(dts) == 1 else "F32"


def _jsonable(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool, type(None))) or (
        isinstance(v, Mapping) and all(isinstance(x, (int, float, str)) for x in v.values())
    )
