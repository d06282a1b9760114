"""LEGO for a module whose unit matrix does not fit in ``memory_limit`` (docs/ALGORITHMS.md
§1.5): the units come in blocks of adapters (``unit_blocks.py``), are clustered by the
streaming k-means (``rankwise.streaming_kmeans``), and the projection assembly is folded over
the blocks: centroid sums Σ_blocks, core C = Σ (X_b U)ᵀ (X_a V), and for the norm T V = Σ X_bᵀ
(X_a V) and the Hutchinson probes T g = Σ X_bᵀ (X_a g), all in one pass. The norm is chosen as
in memory (lego_projection.target_sq_norm): ``exact``, or ``auto`` when the Gram work
n²·(d_out + d_in) is at most EXACT_NORM_WORK, is pᵀ (G_b ∘ G_a) p summed over block pairs
(each pair's Grams rows_a × rows_b), so both paths agree to float rounding.

Budget split of the limit: a quarter for a block, half for the seeding (a uniform sample of at
most SEED_POINTS_PER_CENTRE·k rows, or k-means||'s candidates, ~1 + 10k rows, when fewer than
MIN_SAMPLE_PER_CENTRE·k rows fit; freed before the Lloyd passes), the rest for the per-point state
(labels, signs, distances, k-means||'s D² and nearest candidate: 36 bytes a unit) and the
k-row working arrays. A single adapter larger than a block still makes one block, and
k-means||'s candidates are held whatever the limit: either exceeds a limit that small.
"""

from __future__ import annotations

import numpy as np

from .. import _core
from ..errors import OptionError
from ..streaming_kmeans import SEED_POINTS_PER_CENTRE, streaming_kmeans
from .contract import Factors, ModuleContext
from .lego_projection import (
    balanced_factors,
    cols_times,
    complement_probes,
    core_svd,
    grams_are_cheap,
    norm_ratio,
    orth_rows,
    rows_times,
)
from .unit_blocks import UnitBlocks

#: Largest dot-product cache of the in-memory k-means (rust/core/src/kmeans/lloyd.rs CACHE_BYTES).
_KMEANS_CACHE_BYTES = 512 << 20


def in_memory_bytes(n: int, width: int, k: int) -> int:
    """What the in-memory path holds for a module: the n × width float32 unit matrix and its
    part norms, the k-means distance cache, the assembly's two n × k float64 products, and for
    small modules the two n × n unit Grams and their sum (float32) that it clusters from."""
    grams = 12 * n * n if grams_are_cheap(n, width) else 0
    return 4 * n * width + 8 * n + min(4 * n * k, _KMEANS_CACHE_BYTES) + 16 * n * k + grams


def must_stream(ctx: ModuleContext, k: int) -> bool:
    return ctx.memory_limit is not None and in_memory_bytes(sum(ctx.ranks), sum(ctx.shape), k) > ctx.memory_limit


def budget(limit: int, width: int, k: int) -> tuple[int, int]:
    """Rows per block and rows of the seeding sample for units of ``width`` under ``limit``
    (the split of the module docstring)."""
    per_block = max(1, (limit // 4) // (4 * width + 4 * k + 48))
    sample = max(k, min(SEED_POINTS_PER_CENTRE * k, (limit // 2) // (4 * width + 4 * k)))
    return per_block, sample


def lego_streamed(
    ctx: ModuleContext,
    k: int,
    *,
    canonicalize: bool,
    assembly: str,
    norm: str,
    norm_probes: int,
    n_init: int,
    max_iter: int,
    tol: float,
    seed: int,
    init: str | None,
    features: str,
) -> Factors:
    limit = ctx.memory_limit
    assert limit is not None
    what = (
        f"module '{ctx.module}' ({sum(ctx.ranks)} units of width {sum(ctx.shape)}) exceeds "
        f"memory_limit={limit} bytes and streams"
    )
    if assembly not in ("projection", "projection-norm"):
        raise OptionError(
            f"{what}: streaming supports assembly 'projection' and 'projection-norm', not {assembly!r}; "
            "raise memory_limit"
        )
    if init is not None or features != "normalized":
        raise OptionError(f"{what}: streaming supports features='normalized' without init only; raise memory_limit")
    d_out, width = ctx.shape[0], sum(ctx.shape)
    per_block, sample = budget(limit, width, k)
    blocks = UnitBlocks(ctx, canonical=canonicalize, rows_per_block=per_block)
    with ctx.lock:
        ctx.streamed.append(ctx.module)
    with ctx.timed("kmeans"):
        r = streaming_kmeans(
            blocks,
            k,
            sample_rows=sample,
            n_init=n_init,
            max_iter=max_iter,
            tol=tol,
            seed=seed,
            sign_invariant=canonicalize,
        )
    with ctx.timed("assemble"):
        probe_seed = int(np.random.SeedSequence([seed, ctx.index]).generate_state(1)[0])
        assert r.signs is not None
        return _project(
            blocks,
            r.labels,
            r.signs,
            k,
            d_out,
            restore_norm=assembly == "projection-norm",
            exact=norm == "exact" or (norm == "auto" and grams_are_cheap(blocks.n, width)),
            probes=norm_probes,
            seed=probe_seed,
        )


def _project(
    blocks: UnitBlocks,
    labels: np.ndarray,
    signs: np.ndarray,
    k: int,
    d_out: int,
    *,
    restore_norm: bool,
    exact: bool,
    probes: int,
    seed: int,
) -> Factors:
    """lego_projection.project folded over the blocks (the norm exact by block pairs, or estimated)."""
    d_in = blocks.d - d_out
    sums = np.zeros((k, blocks.d))
    for b, (lo, hi) in enumerate(blocks.bounds):
        x, norms = blocks.block(b)
        mean, counts, _, _ = _core.cluster_means(x, labels[lo:hi], signs[lo:hi], k, d_out, norms)
        sums += mean * counts[:, None]
        del x, norms  # one block alive at a time
    u = orth_rows(sums[:, :d_out])  # the span of the centroids' parts (means: sums scaled)
    v = orth_rows(sums[:, d_out:])
    estimate = restore_norm and not exact
    g = complement_probes(v, d_in, probes, seed) if estimate else np.zeros((d_in, 0))
    core = np.zeros((u.shape[1], v.shape[1]))
    tv = np.zeros((d_out, v.shape[1]))
    tg = np.zeros((d_out, g.shape[1]))
    for b in range(len(blocks)):
        x, norms = blocks.block(b)
        xb, xa = x[:, :d_out], x[:, d_out:]
        nb = norms[:, 0].astype(np.float64)
        pb = rows_times(xb, u, norms[:, 0])
        pa = rows_times(xa, v, norms[:, 1])
        core += pb.T @ pa
        if estimate:
            tv += cols_times(xb, pa, nb)
            tg += cols_times(xb, rows_times(xa, g, norms[:, 1]), nb)
        del x, xb, xa, norms
    p, s, qt = core_svd(core)
    if restore_norm:
        t_sq = blocks_sq_norm(blocks, d_out) if exact else float(np.sum(tv**2) + np.sum(tg**2) / probes)
        s = s * norm_ratio(t_sq, float(np.sum(s**2)))
    return balanced_factors(p, s, qt, u, v, k, d_out, d_in)


def blocks_sq_norm(blocks: UnitBlocks, d_out: int) -> float:
    """‖T‖_F² exactly, T = Σ_i p_i b_i a_iᵀ over the blocks' part-normalized rows (p_i = ‖b_i‖·‖a_i‖):
    Σ over block pairs (a ≤ b) of p_aᵀ (G_b^{ab} ∘ G_a^{ab}) p_b, G^{ab} the float32 Gram of the
    two blocks' rows of one part (as the core's in-memory units_sq_norm), summed in float64, the
    pairs a < b twice. Two blocks alive at a time; each block is built once per outer block."""
    total = 0.0
    for i in range(len(blocks)):
        xi, ni = blocks.block(i)
        pi = ni[:, 0].astype(np.float64) * ni[:, 1]
        for j in range(i, len(blocks)):
            xj, pj = (xi, pi) if j == i else _scaled_block(blocks, j)
            gb = (xi[:, :d_out] @ xj[:, :d_out].T).astype(np.float64)
            ga = (xi[:, d_out:] @ xj[:, d_out:].T).astype(np.float64)
            total += (1.0 if j == i else 2.0) * float(pi @ ((gb * ga) @ pj))
            del xj, gb, ga
        del xi
    return total


def _scaled_block(blocks: UnitBlocks, b: int) -> tuple[np.ndarray, np.ndarray]:
    x, norms = blocks.block(b)
    return x, norms[:, 0].astype(np.float64) * norms[:, 1]
