"""A merge's modules as Ray tasks: ``merge(..., executor="ray")``.

The driver validates the pool (headers only) and the options once, then sends each task the
adapters' file paths, the weights, the resolved options and a group of module indices. Every
worker opens the files itself (a shared filesystem, as on a real cluster), checks the factors of
its own modules for NaN/inf, and merges them with the same method function the local loop runs,
so the pool never travels through Ray's object store: only the merged factors (k rows per
module) come back. Ray retries a task whose worker died; a task that raised re-raises the
rankwise exception it ended with. Ray is an optional dependency (``rankwise[ray]``), imported
only here and only when a Ray merge runs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _core
from .adapter import check_factors_finite
from .errors import OptionError, RankwiseError
from .methods import METHODS, Factors, ModuleContext
from .pool import AdapterPool

__all__ = ["merge_modules_on_ray", "module_groups"]

#: Tasks per Ray worker CPU: more, smaller tasks balance uneven modules and shorten a retry.
TASKS_PER_CPU = 4
#: Retries of a task whose worker process died (Ray's own retry of system failures).
MAX_RETRIES = 3


def module_groups(n_modules: int, n_tasks: int) -> list[list[int]]:
    """Contiguous groups of module indices, ``n_tasks`` of them at most, sizes within one."""
    n_tasks = max(1, min(n_tasks, n_modules))
    bounds = np.linspace(0, n_modules, n_tasks + 1).round().astype(int)
    return [list(range(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


def _merge_group(
    paths: list[str],
    method: str,
    weights: np.ndarray,
    opts: dict[str, Any],
    out_dtype: str,
    indices: list[int],
    threads: int,
) -> tuple[dict[str, Factors], dict[str, float]]:
    """One task: open the pool from its paths, check and merge the modules at ``indices``."""
    _core.set_num_threads(threads)
    pool = AdapterPool.load(paths, check_finite=False)
    names = [pool.modules[i] for i in indices]
    check_factors_finite(pool.adapters, names, release=pool.streams)  # what a local load checks
    m = METHODS[method]
    timings: dict[str, float] = {}
    scratch: dict[str, Any] = {}
    lock = threading.Lock()
    out = {}
    for i, name in zip(indices, names):
        out[name] = m.fn(ModuleContext(pool, name, i, weights, timings, scratch, threads, out_dtype, lock), **opts)
        if pool.streams:
            pool.release()
    pool.release()
    return out, timings


def _pool_paths(pool: AdapterPool) -> list[str]:
    paths = []
    for j, a in enumerate(pool):
        if a.path is None or a.source is None:
            raise OptionError(
                f"executor='ray' needs adapters loaded from files (workers open them by path); "
                f"adapter {j} is held in memory"
            )
        paths.append(os.fspath(os.path.abspath(a.path)))
    return paths


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise OptionError('executor="ray" needs Ray: pip install "rankwise[ray]"') from None
    return ray


def merge_modules_on_ray(
    pool: AdapterPool,
    method: str,
    weights: np.ndarray,
    opts: dict[str, Any],
    out_dtype: str,
    *,
    address: str | None = None,
    cpus_per_task: int = 1,
    done: Callable[[int, str, Factors], None],
    timings: dict[str, float],
) -> None:
    """Merges every module of ``pool`` in Ray tasks, calling ``done(i, name, factors)`` in module
    order. Connects to the cluster at ``address`` (or starts a local one) unless Ray is
    already initialised in this process."""
    ray = _import_ray()
    if isinstance(cpus_per_task, bool) or not isinstance(cpus_per_task, int) or cpus_per_task < 1:
        raise OptionError(f"cpus_per_task must be a positive int, got {cpus_per_task!r}")
    paths = _pool_paths(pool)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=cpus_per_task, max_retries=MAX_RETRIES)(_merge_group)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_task)
    groups = module_groups(len(pool.modules), cpus * TASKS_PER_CPU)
    w_ref, opts_ref = ray.put(weights), ray.put(opts)
    refs = {task.remote(paths, method, w_ref, opts_ref, out_dtype, g, cpus_per_task): gi for gi, g in enumerate(groups)}
    results: dict[int, dict[str, Factors]] = {}
    reported = 0  # groups handed to `done`, in order
    pending = list(refs)
    gi = -1
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            gi = refs[ready[0]]
            factors, t = ray.get(ready[0])
            results[gi] = factors
            for phase, s in t.items():
                timings[phase] = timings.get(phase, 0.0) + s
            while reported in results:
                for i in groups[reported]:
                    name = pool.modules[i]
                    done(i, name, results[reported][name])
                del results[reported]
                reported += 1
    except ray.exceptions.RayTaskError as e:
        for ref in pending:
            ray.cancel(ref)
        cause = getattr(e, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None  # the same typed error a local merge raises
        raise RankwiseError(f"a Ray merge task failed: {e}") from None
    except ray.exceptions.RayError as e:  # a worker or node lost more often than Ray retries
        for ref in pending:
            ray.cancel(ref)
        names = [pool.modules[i] for i in groups[gi]] if gi >= 0 else []
        what = f"modules '{names[0]}'..'{names[-1]}'" if names else "a task"
        raise RankwiseError(
            f"the Ray task merging {what} failed {MAX_RETRIES + 1} times ({type(e).__name__}: {e})"
        ) from None
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
