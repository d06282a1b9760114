"""The merge loop: ``merge(pool, method, ...)`` runs a registered method (``rankwise.methods``)
over every module of a pool and builds the merged Adapter; ``prune`` is LEGO on one adapter.

``merge`` validates the options once (the method's ``prepare``), streams the pool module by
module (one module's units in memory at a time; the pages of a pool too large to stay resident
are dropped as it goes), runs ``parallel_modules`` methods on several modules at once, and
records what it did in ``merge_info``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from . import _core
from .adapter import Adapter, normalize_dtype
from .distributed import merge_modules_on_ray
from .errors import OptionError
from .methods import METHODS, Factors, MergeMethod, ModuleContext
from .pool import AdapterPool

__all__ = ["get_method", "merge", "merge_methods", "prune"]


def merge_methods() -> dict[str, str]:
    """The registered methods and a one-line summary of each."""
    return {n: m.summary for n, m in sorted(METHODS.items())}


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise OptionError(f"unknown merge method {name!r}; available: {', '.join(sorted(METHODS))}") from None


def merge(
    pool: AdapterPool | Sequence[Any] | str,
    method: str = "lego",
    *,
    weights: Sequence[float] | None = None,
    dtype: str | None = None,
    progress: bool | Callable[[int, int, str], None] = False,
    executor: str = "local",
    ray_address: str | None = None,
    **options: Any,
) -> Adapter:
    """Merges the adapters of ``pool`` with ``method`` into one Adapter.

    ``pool``: an AdapterPool, or paths/a glob to load one. ``weights``: one per adapter
    (default 1). ``dtype``: of the written factors (default: the pool's dtype when all
    adapters share one, else float32). ``progress``: True for a tqdm bar on stderr, or a
    callable ``(done, total, module)``. ``executor``: ``"local"`` (this process's threads) or
    ``"ray"``: modules become Ray tasks whose workers open the adapter files by path (see
    ``rankwise.distributed``), on the cluster at ``ray_address`` or one Ray starts locally;
    same bytes as the local merge. Other keywords are the method's options.
    """
    if executor not in ("local", "ray"):
        raise OptionError(f"executor must be 'local' or 'ray', got {executor!r}")
    if not isinstance(pool, AdapterPool):
        # A Ray merge checks the factors for NaN/inf in the workers, module by module.
        pool = AdapterPool.load(pool, check_finite=executor == "local")
    m = get_method(method)
    unknown = sorted(set(options) - set(m.params))
    if unknown:
        raise OptionError(f"method {method!r} has no option(s) {', '.join(unknown)}; it takes: {', '.join(m.params)}")
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
    if executor == "ray":
        workers = 0  # nothing of the pool is read here
        merge_modules_on_ray(pool, method, w, opts, out_dtype, address=ray_address, done=done, timings=timings)
    elif workers <= 1:
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
        "executor": executor,
        "adapters": len(pool),
        "modules": len(modules),
        "seconds": time.perf_counter() - t0,
        "timings": timings,
        "options": {k: v for k, v in opts.items() if _jsonable(v)},
    }
    return out


def prune(adapter: Adapter | AdapterPool | str | os.PathLike[str], rank: Any, **options: Any) -> Adapter:
    """Prunes one adapter to rank k with LEGO clustering of its own units (the paper's
    single-adapter pruning, arXiv 2409.16167). ``adapter``: an Adapter, its folder, or a pool of one."""
    if isinstance(adapter, AdapterPool):
        pool = adapter
    else:
        pool = AdapterPool([adapter if isinstance(adapter, Adapter) else Adapter.load(adapter)])
    if len(pool) != 1:
        raise OptionError(f"prune takes one adapter, got a pool of {len(pool)}")
    return merge(pool, "lego", rank=rank, **options)


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
