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
from . import heads as hd
from . import memory as _memory
from .adapter import Adapter, normalize_dtype
from .distributed import merge_modules_on_ray
from .errors import AdapterFormatError, NonFiniteError, OptionError
from .methods import METHODS, Factors, MergeMethod, ModuleContext, weighting
from .methods.weighting import Weighting
from .pool import AdapterPool
from .retention import retention as _retention
from .threads import single_threaded_blas

__all__ = ["get_method", "merge", "merge_methods", "prune"]

_F32_MAX = float(np.finfo(np.float32).max)


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
    peft_weights: Sequence[float] | None = None,
    dtype: str | None = None,
    progress: bool | Callable[[int, int, str], None] = False,
    heads: str | int | None = None,
    retention: bool = False,
    executor: str = "local",
    ray_address: str | None = None,
    memory_limit: int | str | None = None,
    **options: Any,
) -> Adapter:
    """Merges the adapters of ``pool`` with ``method`` into one Adapter.

    ``pool``: an AdapterPool, or paths/a glob to load one. ``weights``: one per adapter,
    task-arithmetic coefficients: every method's target is Σ_j w_j·ΔW_j (default 1/N, the
    mean; ``methods/weighting.py``). ``peft_weights``: instead of ``weights``, for a method of
    PEFT's ``add_weighted_adapter``: the weights PEFT would be given, for PEFT's numerics.
    ``dtype``: of the written factors (default: the pool's dtype when all
    adapters share one, else float32). ``progress``: True for a tqdm bar on stderr, or a
    callable ``(done, total, module)``. ``heads``: what to do with full-copy heads
    (``modules_to_save``) when the adapters carry any: ``"mean"`` (Σ w_j·head_j, w_j = 1/N by
    default), ``"first"``, ``"drop"`` or an adapter index; required then (a pool of one keeps
    its heads). ``retention``: record in ``merge_info["retention"]`` how much of each source
    the merge kept (``rankwise.retention``, from Grams; the CLI does by default). Other
    keywords are the method's options. ``executor``: ``"local"`` (this process's threads) or
    ``"ray"``: modules become Ray tasks whose workers open the adapter files by path (see
    ``rankwise.distributed``), on the cluster at ``ray_address`` or one Ray starts locally;
    same bytes as the local merge. ``memory_limit``: bytes one module may take (an int or e.g.
    ``"64MB"``, ``"2GiB"``; default half the available RAM, ``rankwise.memory``): LEGO streams a
    module whose unit matrix would exceed it (``merge_info["streamed"]`` lists them).
    ``merge_info["timings"]``: seconds per phase, summed over the modules; where modules run at
    once (several core threads, or Ray tasks) that is thread-seconds, up to that many times
    the wall time.
    """
    if executor not in ("local", "ray"):
        raise OptionError(f"executor must be 'local' or 'ray', got {executor!r}")
    if not isinstance(pool, AdapterPool):
        # A Ray merge checks the factors for NaN/inf in the workers, module by module.
        pool = AdapterPool.load(pool, check_finite=executor == "local")
    limit = _memory.memory_limit(memory_limit)
    m = get_method(method)
    unknown = sorted(set(options) - set(m.params))
    if unknown:
        raise OptionError(f"method {method!r} has no option(s) {', '.join(unknown)}; it takes: {', '.join(m.params)}")
    wts = _weighting(pool, m, weights, peft_weights)
    w = wts.run
    _check_weight_range(pool, w)
    # Heads are decided before the (long) merge runs, so a missing choice fails fast; a mean of
    # heads follows the weights rule (Σ w_j·head_j, the rule's w: 1/N by default).
    head_w = wts.rule if wts.rule is not None else np.full(len(pool), 1.0 / len(pool))
    names = [str(a.path or f"adapter {j}") for j, a in enumerate(pool)]
    if any(a.heads for a in pool):
        hd.combine([a.heads for a in pool], lambda j, t: np.zeros(0, np.float32), heads, head_w, names, dry_run=True)
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
    streamed: list[str] = []
    t0 = time.perf_counter()

    def done(i: int, name: str, factors: Factors) -> None:
        _check_merged(pool, w, method, name, factors)
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
    parallel = m.parallel_modules is True or (m.parallel_modules == "resident" and not pool.streams)
    workers = min(threads, len(modules)) if parallel else 1
    if executor == "ray":
        workers = 0  # nothing of the pool is read here
        merge_modules_on_ray(
            pool, method, w, opts, out_dtype, address=ray_address, done=done, timings=timings,
            memory_limit=limit, streamed=streamed,
        )  # fmt: skip
    elif workers <= 1:
        scratch: dict[str, Any] = {}
        for i, name in enumerate(modules):
            done(
                i,
                name,
                _run_module(
                    m,
                    ModuleContext(pool, name, i, w, timings, scratch, threads, out_dtype, lock, limit, streamed),
                    opts,
                ),
            )
    else:
        # numpy's BLAS on one thread for the whole parallel run: threadpoolctl's limit is
        # process-wide, so per-module contexts in two threads would restore each other's value.
        with single_threaded_blas():
            # memory_limit is per module (what one module's units may take), so the bytes do not
            # depend on how many modules are in flight.
            _merge_parallel(m, pool, w, opts, timings, out_dtype, lock, workers, done, limit, streamed)
        if pool.streams:
            pool.release()
    if bar is not None:
        bar.close()
    merged_heads = hd.combine([a.heads for a in pool], lambda j, t: pool[j].head(t.name), heads, head_w, names)
    base_config = dict(pool[0].config, base_model_name_or_path=pool.base_model)
    embeddings = {n for n, info in pool[0].modules.items() if info.embedding}
    out = Adapter.from_factors(
        merged, base_config=base_config, dtype=out_dtype, heads=merged_heads, embeddings=embeddings
    ).carry_layout(pool[0])
    out.inputs = [p for a in pool for p in a.inputs]
    out.checked_finite = True  # _check_merged saw every factor
    out.merge_info = {
        "method": method,
        "executor": executor,
        "adapters": len(pool),
        "modules": len(modules),
        **wts.info(),
        "seconds": time.perf_counter() - t0,
        "timings": timings,
        "options": {k: v for k, v in opts.items() if _jsonable(v)},
        "memory_limit": limit,
        "streamed": sorted(streamed, key=modules.index),
        "heads": sorted(merged_heads) if merged_heads else None,
        "dtype": out_dtype,
        "sources": [_source(a, j) for j, a in enumerate(pool)],
    }
    if retention:
        out.merge_info["retention"] = _retention(pool, out)
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
    limit: int | None = None,
    streamed: list[str] | None = None,
) -> None:
    """Runs ``workers`` modules at once, each on one core thread, reporting them in order.
    At most ``workers`` modules are in flight, so memory stays that many modules' worth."""
    modules = pool.modules

    local = threading.local()  # one scratch per worker thread: its buffers outlive a module

    def one(i: int) -> Factors:
        if not hasattr(local, "scratch"):
            local.scratch = {}
        ctx = ModuleContext(
            pool,
            modules[i],
            i,
            w,
            timings,
            local.scratch,
            1,
            out_dtype,
            lock,
            limit,
            streamed if streamed is not None else [],
        )
        return _run_module(m, ctx, opts)

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


def _source(a: Adapter, j: int) -> dict[str, str | None]:
    """Where source j came from, for the model card (``rankwise.card``)."""
    src = a.source
    return {"path": str(a.path) if a.path is not None else f"adapter {j}", "file": str(src.path) if src else None}


def _weighting(
    pool: AdapterPool, m: MergeMethod, weights: Sequence[float] | None, peft_weights: Sequence[float] | None
) -> Weighting:
    if weights is not None and peft_weights is not None:
        raise OptionError("pass weights= (the rule's coefficients) or peft_weights= (PEFT's), not both")
    if peft_weights is not None:
        return weighting.resolve(m.name, m.peft_factor, None, pool.check_weights(peft_weights))
    w = pool.check_weights(weights) if weights is not None else np.full(len(pool), 1.0 / len(pool))
    return weighting.resolve(m.name, m.peft_factor, w, None)


def _check_merged(pool: AdapterPool, w: np.ndarray, method: str, module: str, factors: Factors) -> None:
    """Raises ``NonFiniteError`` when the merged factors of ``module`` hold a non-finite value,
    naming the adapters and the stage it came from: the read (a file changed after its load
    check), the fold (scaling × weight × B overflows float32) or the merge itself."""
    if all(np.isfinite(f).all() for f in factors):
        return
    err = _non_finite_inputs(pool, w, module)
    if err is not None:
        raise err
    raise NonFiniteError(
        f"module '{module}': the merge ({method}) stage gave a non-finite value from {len(pool)} adapters "
        "whose folded factors are finite; rankwise never writes a non-finite value"
    )


def _non_finite_inputs(pool: AdapterPool, w: np.ndarray, module: str) -> NonFiniteError | None:
    """The error naming the adapters whose factors of ``module`` are not finite as read now (the
    file changed after the load check: stage "read") or once folded (stage "fold"); None if all are."""
    culprits: list[str] = []
    stage = "fold"
    with np.errstate(over="ignore", invalid="ignore"):
        for a, wj in zip(pool, w):
            fa, fb = a.factors(module)
            info = a.module(module)
            name = str(a.path or "an in-memory adapter")
            if not (np.isfinite(fa).all() and np.isfinite(fb).all()):
                culprits.append(
                    f"{name} (its factors hold NaN/inf: the file changed after the load check, "
                    "or was loaded with check_finite=False)"
                )
                stage = "read"
            elif not np.isfinite(fb * np.float32(info.scaling * wj)).all():
                culprits.append(f"{name} (scaling {info.scaling:g} × weight {wj:g} × B overflows float32)")
    if not culprits:
        return None
    return NonFiniteError(
        f"module '{module}': the {stage} stage gives a non-finite value, from {', '.join(culprits)}; "
        "rankwise never writes a non-finite value"
    )


def _check_weight_range(pool: AdapterPool, w: np.ndarray) -> None:
    """A weight whose product with an adapter's scaling leaves float32 would fold into inf."""
    for a, wj in zip(pool, w):
        top = max(m.scaling for m in a.modules.values()) * abs(float(wj))
        if top > _F32_MAX:
            raise OptionError(
                f"weight {wj:g} of {a.path or 'an in-memory adapter'}: weight × scaling = {top:g} overflows "
                "float32 when folded into its factors"
            )


def _run_module(m: MergeMethod, ctx: ModuleContext, opts: dict[str, Any]) -> Factors:
    """The method on one module; an error caused by non-finite folded inputs is reported as such."""
    try:
        return m.fn(ctx, **opts)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as e:
        if isinstance(e, (NonFiniteError, AdapterFormatError)):
            raise  # already names the file and tensor (the core's own finite checks)
        err = _non_finite_inputs(ctx.pool, ctx.weights, ctx.module)
        if err is None:
            raise
        raise err from e


def _pool_dtype(pool: AdapterPool) -> str:
    dts = {m.dtype for a in pool for m in a.modules.values()}
    return dts.pop() if len(dts) == 1 else "F32"


def _jsonable(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool, type(None))) or (
        isinstance(v, Mapping) and all(isinstance(x, (int, float, str)) for x in v.values())
    )
