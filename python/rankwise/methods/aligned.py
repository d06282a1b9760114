"""Unit alignment: ``align(reference, other)``, the ``aligned`` merge, and LEGO's aligned init.

The units of a LoRA (b_i, a_i) have no order, no sign and no scale: reordering them, flipping
(b_i, a_i) to (−b_i, −a_i) or rescaling to (c·b_i, a_i/c) leaves ΔW = Σ_i b_i·a_iᵀ unchanged.
Averaging the factors of two adapters position by position (``linear``) therefore averages
unrelated units as soon as the adapters disagree on order or sign. Alignment undoes that: per
module, an exact Hungarian matching (Rust core, O(r³), parallel across modules and adapters)
pairs each unit of ``other`` with one of ``reference``, maximising the summed similarity.

Similarity (``similarity=``), from cos_b = cos(b, b') and cos_a = cos(a, a'), which do not depend
on a unit's sign or scale (they are the cosines of the canonical units):

- ``"delta"`` (default): cos_b·cos_a, the cosine between the rank-one updates b·aᵀ and b'·a'ᵀ:
  units are paired by what they add to ΔW.
- ``"units"``: |cos_b + cos_a| / 2, the absolute cosine of the canonical units ``[b̃ ; ã]``
  (‖b̃‖ = ‖ã‖), the geometry LEGO's k-means on canonical units sees.

A matched unit's sign is that of cos_b + cos_a: flipping makes it point like its reference unit.

The ``aligned`` merge (``rw.merge(pool, method="aligned")``): align every adapter to a reference
adapter (``reference=None``: the medoid, see ``medoid_index``), put every aligned unit in
canonical scale (‖b‖ = ‖a‖, keeping b·aᵀ), and take the weighted mean of the b's and of the a's
of each group of matched units, with the pool weights normalised to sum to 1:
``b̄_i = Σ_j w_j b̃_ji / Σ_j w_j``, ``ā_i = Σ_j w_j ã_ji / Σ_j w_j``, then scale the module by
Σ_j w_j (√ on each side), the rule of methods/weighting.py. The merged module has the common
rank r. The mean of identical units is that unit, so a pool of permuted, sign-flipped and
rescaled copies of one adapter merges to (Σ_j w_j)·ΔW exactly: ΔW for the default 1/N (tested).
Every adapter must have the same rank per module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _core
from ..adapter import Adapter
from ..errors import IncompatibleAdaptersError, OptionError
from ..pool import AdapterPool
from .contract import Factors, ModuleContext, register_method

SIMILARITIES = ("delta", "units")
# Modules per Rust call in ``align``: enough to keep every thread busy, few enough that only a
# slice of the reference's factors is in memory at once.
_ALIGN_BATCH = 16


def _check_similarity(similarity: Any) -> str:
    if similarity not in SIMILARITIES:
        raise OptionError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    return str(similarity)


def _as_adapter(x: Any, what: str) -> Adapter:
    if isinstance(x, Adapter):
        return x
    if isinstance(x, (str, os.PathLike)):
        return Adapter.load(x)
    raise TypeError(f"{what} must be an rw.Adapter or an adapter folder, got {type(x).__name__}")


def _name(adapter: Adapter, default: str) -> str:
    return str(adapter.path) if adapter.path else default


def _sign_scaled(adapter: Adapter, module: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(A, B) as stored, and (A, ±B) whose product has the sign of the delta (the similarity
    is invariant to a positive scaling, so only a negative one needs folding)."""
    a, b = adapter.factors(module)
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    return a, b, a, (-b if adapter.modules[module].scaling < 0 else b)


def _release(*adapters: Adapter) -> None:
    for a in adapters:
        if a.source is not None:
            a.source.release()


def _apply(a: np.ndarray, b: np.ndarray, perm: np.ndarray, signs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit i of the result is unit ``perm[i]`` times ``signs[i]`` (new arrays, flipped in place)."""
    a2 = np.take(a, perm, axis=0)
    a2 *= signs[:, None]
    b2 = np.take(b, perm, axis=1)
    b2 *= signs[None, :]
    return a2, b2


def align(reference: Any, other: Any, *, similarity: str = "delta") -> Adapter:
    """``other`` with its units permuted and sign-flipped, per module, to match ``reference``.

    Both must adapt the same modules with the same shapes and ranks (else
    ``IncompatibleAdaptersError``). The result is an in-memory Adapter with ``other``'s config
    and module table (scaling, alpha, dtype, key names) and ``other``'s own factors, reordered
    and sign-flipped (no rescaling), so its delta is exactly ``other``'s and ``save`` writes a
    folder PEFT loads like ``other``'s. ``merge_info`` holds the mean matched similarity per
    module (``"scores"``; 1.0 for an exact copy up to order, sign and scale).
    """
    ref = _as_adapter(reference, "reference")
    oth = _as_adapter(other, "other")
    similarity = _check_similarity(similarity)
    ref_name, oth_name = _name(ref, "the reference"), _name(oth, "the other adapter")
    missing = [m for m in ref.modules if m not in oth.modules]
    extra = [m for m in oth.modules if m not in ref.modules]
    if missing or extra:
        what = f"lacks '{missing[0]}'" if missing else f"has '{extra[0]}' that {ref_name} lacks"
        raise IncompatibleAdaptersError(
            f"{oth_name}: cannot align onto {ref_name}: the module sets differ ({oth_name} {what}; "
            f"{len(missing)} missing, {len(extra)} extra)"
        )
    for m, ri in ref.modules.items():
        oi = oth.modules[m]
        if (oi.d_out, oi.d_in) != (ri.d_out, ri.d_in):
            raise IncompatibleAdaptersError(
                f"{oth_name}: module '{m}' is {oi.d_out}×{oi.d_in} (out × in) but in {ref_name} "
                f"it is {ri.d_out}×{ri.d_in}"
            )
        if oi.rank != ri.rank:
            raise IncompatibleAdaptersError(
                f"{oth_name}: module '{m}' has rank {oi.rank} but in {ref_name} rank {ri.rank}: "
                "alignment matches units one to one and needs equal ranks"
            )
    names = list(oth.modules)
    factors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    scores: dict[str, float] = {}
    for start in range(0, len(names), _ALIGN_BATCH):
        batch = names[start : start + _ALIGN_BATCH]
        pairs, stored = [], []
        for m in batch:
            _, _, ar, br = _sign_scaled(ref, m)
            ao, bo, ao_s, bo_s = _sign_scaled(oth, m)
            pairs.append((ar, br, ao_s, bo_s))
            stored.append((ao, bo))
        results = _core.align_factors(pairs, similarity)
        for m, (ao, bo), (perm, signs, score) in zip(batch, stored, results):
            factors[m] = _apply(ao, bo, perm, signs)
            scores[m] = float(score)
        _release(ref, oth)
    out = Adapter(oth.config, oth.modules, factors=factors)
    out.merge_info = {
        "method": "align",
        "similarity": similarity,
        "score": float(np.mean(list(scores.values()))) if scores else 1.0,
        "scores": scores,
    }
    return out


# ------------------------------------------------------------------------------- medoid
def _medoid(factor_lists: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], n: int) -> int:
    """The medoid of n adapters given, per module, each adapter's folded (A, B)."""
    total = np.zeros((n, n), dtype=np.float64)
    for fs in factor_lists:
        total += _delta_distances(fs)
    return int(np.argmin(total.sum(axis=1)))


def _delta_distances(fs: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """‖ΔW_i − ΔW_j‖²_F from r×r Gram matrices (Rust), never forming a ΔW."""
    g = _core.delta_gram([(np.asarray(a, np.float32), np.asarray(b, np.float32)) for a, b in fs])
    d = np.diag(g)
    return np.maximum(d[:, None] + d[None, :] - 2.0 * g, 0.0)


def medoid_index(pool: AdapterPool) -> int:
    """The adapter whose summed squared delta distance to the others, Σ_modules Σ_j
    ‖ΔW_i − ΔW_j‖²_F, is smallest (the lowest index on ties). Unweighted: a reference is a
    template to match against, the weights only enter the average.

    ‖ΔW_i − ΔW_j‖² = ‖ΔW_i‖² + ‖ΔW_j‖² − 2⟨ΔW_i, ΔW_j⟩ with ⟨B_i A_i, B_j A_j⟩ =
    Σ (B_iᵀB_j) ⊙ (A_i A_jᵀ): two r×r Gram matrices per pair, one module in memory at a time.
    """
    n = len(pool)
    if n <= 2:
        return 0
    total = np.zeros((n, n), dtype=np.float64)
    for m in pool.modules:
        total += _delta_distances([a.factors(m, folded=True) for a in pool])
        pool.release()
    return int(np.argmin(total.sum(axis=1)))


# ------------------------------------------------------------------------------- merge
def _prepare(pool: AdapterPool, weights: np.ndarray, opts: dict[str, Any]) -> dict[str, Any]:
    opts["similarity"] = _check_similarity(opts.get("similarity", "delta"))
    for m in pool.modules:
        ranks = pool.ranks(m)
        if len(set(ranks)) > 1:
            detail = ", ".join(f"{_name(a, f'adapter {j}')}: {r}" for j, (a, r) in enumerate(zip(pool, ranks)))
            raise IncompatibleAdaptersError(
                f"module '{m}': the aligned merge matches units one to one and needs equal ranks, "
                f"got {detail} (use method='lego' for pools of different ranks)"
            )
    if not weights.sum() > 0:
        raise OptionError(f"the aligned merge averages with weights that must have a positive sum, got {list(weights)}")
    ref = opts.get("reference")
    n = len(pool)
    if ref is None:
        ref = medoid_index(pool)
    elif isinstance(ref, bool) or not isinstance(ref, (int, np.integer)) or not 0 <= ref < n:
        raise OptionError(f"reference must be None (the medoid adapter) or an adapter index in [0, {n}), got {ref!r}")
    opts["reference"] = int(ref)
    return opts


@register_method("aligned", prepare=_prepare)
def aligned(ctx: ModuleContext, *, reference: Any = None, similarity: str = "delta") -> Factors:
    """Aligned average: Hungarian-match every adapter's units to a reference's, average matched units."""
    p = int(reference)
    n = len(ctx.pool)
    fs = [ctx.factors(j, folded=True) for j in range(n)]
    fs = [(np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)) for a, b in fs]
    others = [j for j in range(n) if j != p]
    results = _core.align_factors([(*fs[p], *fs[j]) for j in others], similarity)
    matched = {p: (fs[p][0], fs[p][1])}
    for j, (perm, signs, _) in zip(others, results):
        a, b = fs[j]
        matched[j] = _apply(a, b, perm, signs)
    w = ctx.weights
    r, d_in = fs[p][0].shape
    acc_a = np.zeros((r, d_in), dtype=np.float64)
    acc_b = np.zeros((fs[p][1].shape[0], r), dtype=np.float64)
    for j in range(n):
        if w[j] == 0:
            continue
        a, b = _canonical_scale(*matched[j])
        acc_a += w[j] * a
        acc_b += w[j] * b
    # The weighted means times Σw (the rule's target on copies), √ of it on each side.
    root = np.sqrt(float(w.sum()))
    return (acc_a / root).astype(np.float32), np.ascontiguousarray(acc_b / root, dtype=np.float32)


def _canonical_scale(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rescales unit i to (c_i·b_i, a_i/c_i) with ‖c_i·b_i‖ = ‖a_i/c_i‖ (b_i·a_iᵀ unchanged);
    units with a zero part are left as they are. float64."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=0)
    ok = (na > 0) & (nb > 0)
    c = np.where(ok, np.sqrt(np.where(ok, na, 1.0) / np.where(ok, nb, 1.0)), 1.0)
    return a / c[:, None], b * c[None, :]


# ------------------------------------------------------------------------------- LEGO init
def aligned_init(ctx: ModuleContext, k: int, units: np.ndarray, *, canonical: bool = False) -> np.ndarray | None:
    """Initial k-means centroids for LEGO (``rw.merge(pool, "lego", init="aligned")``).

    ``units`` is the module's unit matrix as LEGO clusters it (rows ``[w·s·b ; a]`` per adapter,
    canonical or not). When every adapter has rank k for this module, the adapters' unit blocks
    are aligned onto the block of the module's medoid adapter (by the weighted units' deltas)
    and centroid i is the mean of the matched, sign-flipped rows, in ``units``' own layout: the
    centroid k-means would compute if the matched groups were its clusters. Otherwise (k is not
    the common rank, or ranks differ) it returns None and LEGO seeds with k-means++ as usual, so
    that a sweep over k can keep ``init="aligned"``.

    Sign flips make each centroid a meaningful unit. With ``canonicalize=True`` LEGO clusters
    modulo sign, and these are exactly the centroids of the matched groups there; with raw
    units, a member stored with the opposite sign is far from its centroid, so aligned seeding
    suits pools that share signs (adapters trained from one initialisation). Measured in
    benches/bench_align.py (``--quality``): not a consistent win over k-means++, so not a default.
    """
    ranks = ctx.ranks
    if len(set(ranks)) != 1 or ranks[0] != k:
        return None
    n = len(ranks)
    d_out = ctx.shape[0]
    u = np.ascontiguousarray(units, dtype=np.float32)
    blocks = u.reshape(n, k, u.shape[1])
    p = _medoid([[(blk[:, d_out:], blk[:, :d_out].T) for blk in blocks]], n) if n > 2 else 0
    perms, signs, _ = _core.align_units(blocks[p], blocks, d_out, "delta")
    picked = np.take_along_axis(blocks, perms[:, :, None], axis=1) * signs[:, :, None]
    return picked.mean(axis=0, dtype=np.float64).astype(np.float32)
