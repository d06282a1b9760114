"""LoRA-LEGO (Zhao et al., ICLR 2025, arXiv 2409.16167): merge by clustering rank units.

Per module: pool the units ``u = [w·s·b_i ; a_i]`` of every adapter (the paper's Minimal
Semantic Units) and cluster them into k groups with k-means. The raw units sum to the target
T = Σ_j w_j·ΔW_j. How the k centroids become the merged rank-k LoRA is ``assembly``
(docs/ALGORITHMS.md §1.3-1.4):

- ``"projection-norm"`` (default): T projected onto the span of the centroids' b parts (columns)
  and a parts (rows), U Uᵀ T V Vᵀ, rescaled to ‖T‖_F (``lego_projection.py``);
- ``"projection"``: the same without the rescale;
- ``"legacy"``: each centroid is one unit, with the dual reweighting of our earlier reading and
  ``scale``/``reweight`` as before (parameter reweighting: each centroid part rescaled to its
  members' mean norm; ``scale="mass"``: centroid c weighted by n_c; ``scale="union"``
  with output reweighting: the delta × √(r̄/k)), and the default rank 2r: old results by name;
- ``"paper"``: each centroid unit rescaled to its members' mean L∞ norm, B × √(r̄/k): the
  reading of one third-party implementation.

Identities (tested): with k = the number of units every cluster is one unit, so projection(-norm)
and legacy without reweighting reproduce T exactly, ``scale="union"`` and ``scale="mass"`` alike
(under the weights rule, methods/weighting.py, mass weights centroid c by its member count n_c:
the sum of its members).

Defaults: ``features="normalized"`` (cluster on cat(b/‖b‖, a/‖a‖), centroids the means of the
raw members), ``canonicalize=True`` (scale-balanced units clustered modulo sign),
``assembly="projection-norm"`` and ``rank`` = 4 × the sources' rank, chosen leave-one-pool-out
("Merge quality" in benches/RESULTS.md; docs/ALGORITHMS.md §1.4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _core
from .. import peft_format as pf
from ..errors import OptionError
from ..kmeans import kmeans, kmeans_gram
from ..pool import AdapterPool
from ..threads import single_threaded_blas
from .aligned import aligned_init
from .contract import Factors, ModuleContext, register_method
from .lego_projection import NORMS, grams_are_cheap, project
from .lego_streamed import lego_streamed, must_stream

FEATURES = ("raw", "normalized")
ASSEMBLIES = ("projection-norm", "projection", "legacy", "paper")
SCALES = ("union", "mass")
REWEIGHTS = (True, False, "param", "output")


def _prepare(pool: AdapterPool, weights: np.ndarray, opts: dict[str, Any]) -> dict[str, Any]:
    rank = opts.get("rank")
    ranks: dict[str, int] = {}
    for m in pool.modules:
        k = _rank_for(rank, m, pool, 2 if opts.get("assembly") == "legacy" else 4)
        n_units = sum(pool.ranks(m))
        if k > n_units:
            raise OptionError(
                f"module '{m}': rank k={k} is larger than the {n_units} rank units the pool has "
                f"for it ({len(pool)} adapters, ranks {sorted(set(pool.ranks(m)))})"
            )
        ranks[m] = k
    opts["rank"] = ranks
    assembly = opts.get("assembly", "projection-norm")
    if assembly not in ASSEMBLIES:
        raise OptionError(f"assembly must be one of {ASSEMBLIES}, got {assembly!r}")
    if assembly != "legacy":
        given = [name for name in ("scale", "reweight") if opts.get(name) is not None]
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            raise OptionError(
                f"{' and '.join(given)} {verb} to assembly='legacy' only (assembly is {assembly!r}); "
                "pass assembly='legacy' for today's reweighting and scale rules"
            )
    else:
        opts.setdefault("scale", "mass")
        opts.setdefault("reweight", True)
    if opts.get("norm", "auto") not in NORMS:
        raise OptionError(f"norm must be one of {NORMS}, got {opts['norm']!r}")
    if opts.get("features", "normalized") not in FEATURES:
        raise OptionError(f"features must be one of {FEATURES}, got {opts['features']!r}")
    if opts.get("scale", "mass") not in SCALES:
        raise OptionError(f"scale must be one of {SCALES}, got {opts['scale']!r}")
    if opts.get("reweight", True) not in REWEIGHTS:
        raise OptionError(f"reweight must be True, False, 'param' or 'output', got {opts['reweight']!r}")
    if not isinstance(opts.get("canonicalize", True), bool):
        raise OptionError(f"canonicalize must be true or false, got {opts['canonicalize']!r}")
    seed = opts.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise OptionError(f"seed must be an int in [0, 2**64), got {seed!r}")
    tol = opts.get("tol", 1e-4)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise OptionError(f"tol must be a finite number >= 0, got {tol!r}")
    if opts.get("init") not in (None, "aligned"):
        raise OptionError(f"init must be None or 'aligned', got {opts['init']!r}")
    for name in ("n_init", "max_iter", "norm_probes"):
        v = opts.get(name, 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise OptionError(f"{name} must be a positive int, got {v!r}")
    return opts


def _rank_for(rank: Any, module: str, pool: AdapterPool, times: int) -> int:
    if rank is None:
        # `times` × the sources' most common rank (ties: the larger), capped at the units
        # available: 4 for the projection assemblies (stable over seeds only there, and more rank
        # never scored lower), 2 for legacy, as it was chosen (benches/RESULTS.md).
        rs = pool.ranks(module)
        common = max(set(rs), key=lambda r: (rs.count(r), r))
        return min(times * common, sum(rs))
    if isinstance(rank, Mapping):
        for key in rank:
            pf.check_pattern(key, "option rank", OptionError)
        key = pf.pattern_key(rank, module)
        if key not in rank:
            raise OptionError(f"rank mapping gives no rank for module '{module}'")
        rank = rank[key]
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise OptionError(f"rank k must be a positive int, got {rank!r} (module '{module}')")
    return int(rank)


@register_method("lego", prepare=_prepare, parallel_modules="resident")
def lego(
    ctx: ModuleContext,
    *,
    rank: Any = None,
    features: str = "normalized",
    canonicalize: bool = True,
    assembly: str = "projection-norm",
    reweight: bool | str | None = None,
    scale: str | None = None,
    norm: str = "auto",
    norm_probes: int = 64,
    n_init: int = 3,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    init: str | None = None,
) -> Factors:
    """LoRA-LEGO: k-means over the pool's rank units, the target projected on the centroids' span (arXiv 2409.16167)."""
    k = rank[ctx.module] if isinstance(rank, Mapping) else int(rank)
    d_out, _ = ctx.shape
    if must_stream(ctx, k):  # the unit matrix would not fit in memory_limit
        return lego_streamed(
            ctx, k, canonicalize=canonicalize, assembly=assembly, norm=norm, norm_probes=norm_probes,
            n_init=n_init, max_iter=max_iter, tol=tol, seed=seed, init=init, features=features,
        )  # fmt: skip
    # One matrix holds both what is clustered and the raw units: with normalized features the
    # rows are [b/‖b‖ ; a/‖a‖] and `norms` gives the units back (at scale the matrix is hundreds of MB).
    if features == "raw":
        x, norms = ctx.units(canonical=canonicalize), None
    else:
        x, norms = ctx.unit_features(canonical=canonicalize)
    init_c = None
    if init == "aligned":
        units = x if norms is None else _scaled(x, norms, d_out)
        init_c = aligned_init(ctx, k, units, canonical=canonicalize)
        if init_c is not None and norms is not None:
            init_c = _normalized(init_c, d_out)
        del units
    elif init is not None:
        raise OptionError(f"init must be None or 'aligned', got {init!r}")
    projecting = assembly in ("projection", "projection-norm")
    grams = None
    with ctx.timed("kmeans"):
        # With canonicalize, a unit and its negation are the same rank-one update, and no per-unit
        # sign rule is stable under noise, so canonical units are clustered modulo sign; members
        # then count in their centroid's orientation (b, a) -> (-b, -a), which keeps every delta.
        if projecting and norms is not None and init_c is None and grams_are_cheap(*x.shape):
            # The unit Grams the exact target norm needs anyway: their sum is the Gram of the
            # normalized features, and k-means from it costs n² an iteration instead of n·k·width.
            grams = _core.unit_grams(x, d_out)
            r = kmeans_gram(
                grams[0] + grams[1], k, d=x.shape[1], n_init=n_init, max_iter=max_iter, tol=tol,
                seed=seed, sign_invariant=canonicalize,
            )  # fmt: skip
        else:
            r = kmeans(
                x,
                k,
                n_init=1 if init_c is not None else n_init,
                max_iter=max_iter,
                tol=tol,
                seed=seed,
                init=init_c,
                sign_invariant=canonicalize,
            )
    with ctx.timed("assemble"), single_threaded_blas():
        # Centroids are the means of the raw member units (whatever features were clustered).
        # numpy's BLAS on one thread: its products here are small, and its spinning workers
        # would slow the core's next call (threads.single_threaded_blas).
        cent, counts, norm_b, norm_a = _core.cluster_means(x, r.labels, r.signs, k, d_out, norms)
        if projecting:
            probe_seed = np.random.SeedSequence([seed, ctx.index])
            return project(
                x,
                norms,
                cent,
                k,
                d_out,
                restore_norm=assembly == "projection-norm",
                norm=norm,
                probes=norm_probes,
                seed=int(probe_seed.generate_state(1)[0]),
                grams=grams,
            )
        del x
        if assembly == "paper":
            return _paper(ctx, cent, r.labels, k, d_out, canonicalize)
        b, a = cent[:, :d_out], cent[:, d_out:]
        if reweight in (True, "param"):
            b = _restore_norm(b, norm_b)
            a = _restore_norm(a, norm_a)
        if scale == "mass":
            b = b * counts[:, None]
        elif reweight in (True, "output"):
            r_bar = float(np.mean(ctx.ranks))
            b = b * np.sqrt(r_bar / k)
        return a.astype(np.float32), np.ascontiguousarray(b.T, dtype=np.float32)


def _paper(
    ctx: ModuleContext,
    cent: np.ndarray,
    labels: np.ndarray,
    k: int,
    d_out: int,
    canonicalize: bool,
) -> Factors:
    """The third-party reading of the paper's dual reweighting (docs/ALGORITHMS.md §1.3): each
    centroid unit [b ; a] rescaled to its members' mean L∞ norm, then B × √(r̄/k)."""
    units = ctx.units(canonical=canonicalize)  # the raw rows (the buffer held the features)
    peak = np.abs(units).max(axis=1).astype(np.float64)
    mean_peak = np.bincount(labels, weights=peak, minlength=k) / np.maximum(np.bincount(labels, minlength=k), 1)
    cur = np.abs(cent).max(axis=1).astype(np.float64)
    factor = np.where(cur > 0, mean_peak / np.where(cur > 0, cur, 1.0), 1.0)
    unit = cent * factor[:, None]
    b = unit[:, :d_out] * np.sqrt(float(np.mean(ctx.ranks)) / k)
    return unit[:, d_out:].astype(np.float32), np.ascontiguousarray(b.T, dtype=np.float32)


def _scaled(x: np.ndarray, norms: np.ndarray, d_out: int) -> np.ndarray:
    """The units back from normalized rows and their part norms (a new array)."""
    out = x.copy()
    out[:, :d_out] *= norms[:, :1]
    out[:, d_out:] *= norms[:, 1:]
    return out


def _normalized(units: np.ndarray, d_out: int) -> np.ndarray:
    """cat(b/‖b‖, a/‖a‖) per row (zero parts stay zero), float32: for the k rows of an aligned
    init (the unit matrix itself comes normalized from the core, AdapterPool.unit_features)."""
    out = np.empty(units.shape, dtype=np.float32)
    for part in (slice(0, d_out), slice(d_out, units.shape[1])):
        src = units[:, part]
        norm = np.sqrt(np.einsum("ij,ij->i", src, src, dtype=np.float64))
        np.divide(src, np.where(norm > 0, norm, 1.0)[:, None].astype(np.float32), out=out[:, part])
    return out


def _restore_norm(part: np.ndarray, mean_norm: np.ndarray) -> np.ndarray:
    """Rescales each centroid part (row) to its members' mean norm of that part."""
    cur = np.linalg.norm(part, axis=1)
    factor = np.where(cur > 0, mean_norm / np.where(cur > 0, cur, 1), 1.0)
    return part * factor[:, None]
