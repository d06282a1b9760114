"""The merge baselines of PEFT's ``LoraModel.add_weighted_adapter``, with PEFT's numerics.

``rw.merge(pool, method=M, weights=..., **options)`` for M in (options in brackets):

- ``linear``: the A's and the B's, each a weighted sum (equal ranks; a rough approximation).
- ``cat``: every adapter's units side by side, rank Σ r_j: the exact weighted sum.
- ``svd`` [svd_rank, svd_clamp]: truncated SVD of Σ w_j·ΔW_j.
- ``ties`` [density, majority_sign_method]: the A's and the B's: trim, elect sign, disjoint mean.
- ``dare_linear`` [density, seed], ``dare_ties`` [density, majority_sign_method, seed]: the A's
  and the B's: random drop with rescale, then a sum or TIES' election and disjoint mean.
- ``magnitude_prune`` [density]: the A's and the B's: keep the largest-|x| fraction, sum.
- ``ties_svd``, ``dare_linear_svd``, ``dare_ties_svd``, ``magnitude_prune_svd``: the same
  combinations applied to the dense deltas ΔW_j, then a truncated SVD [+ svd_rank, svd_clamp].

Weights: ``weights=w`` are the rule's (methods/weighting.py: the target is Σ_j w_j·ΔW_j,
default 1/N); each method runs PEFT's combination with PEFT weights ``c(w)·w``, c per method
there (1 for ``cat``, ``svd`` and the sums of deltas). ``peft_weights=p`` runs it with p as
given, for PEFT's bytes; below, "weights" are the ones the combination runs with.

Numerics follow PEFT 0.21 (``tuners/lora/model.py``, ``utils/merge_utils.py``), which is the
oracle of tests/test_baselines.py:

- Factor methods (``linear``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune``)
  combine the raw lora_A's with weights ``sign(w_j·s_j)·sqrt(|w_j·s_j|)`` and the raw lora_B's
  with ``sqrt(|w_j·s_j|)`` (s_j the adapter's scaling), each side on its own, in float32. Pruning
  and sign election look at the unweighted (pruned) tensors; the disjoint mean divides the sum of
  the weighted values that agree with the elected sign by their count (at least 1).
- ``cat`` stacks ``w_j·s_j·A_j`` (the weight sits on A, as in PEFT) and ``B_j``.
- SVD methods combine the dense deltas ``ΔW_j = s_j·B_j @ A_j`` with the plain weights w_j, take
  ``U, S, Vh`` of the result, keep ``k = svd_rank`` (default: the largest rank of the pool)
  triplets and write ``B = U_k·S_k``, ``A = Vh_k``. ``svd_clamp = q`` clips both to
  ``[-h, h]``, h the q-quantile (linear interpolation, like ``torch.quantile``) of all entries
  of ``U_k·S_k`` and ``Vh_k`` together.
- The merged adapter has scaling 1 (PEFT writes r = lora_alpha = new rank).

Speed: ``svd`` never forms a d_out × d_in matrix when the stacked rank R = Σ r_j is below
min(d_out, d_in). With ``B_w = [w_j·s_j·B_j]`` (d_out × R; weight and scaling folded into the raw
factors in float64) and ``A = [A_j]`` (R × d_in), the core (rust/core/src/linalg/lowrank_svd.rs, GIL
released) forms the R × R Gram matrices ``G_A = A·Aᵀ`` and ``G_B = B_wᵀ·B_w``, the Cholesky
factor ``G_A = L·Lᵀ`` and ``M = Lᵀ·G_B·L``. Since ``(B_w·L)(B_w·L)ᵀ = ΔW·ΔWᵀ``, the top-k
eigenpairs ``M·W = W·Λ`` (tridiagonal reduction, then bisection and inverse iteration for the k
wanted only, like LAPACK's syevr) give ``U_k·S_k = B_w·L·W`` and
``Vh_k = S_k⁻²·(U_k·S_k)ᵀ·B_w·A`` (so ``U_k·S_k·Vh_k = U_k·U_kᵀ·ΔW``): the SVD of the sum,
exact. No inverse is formed. Where the Cholesky factor does not exist (G_A singular in floating
point: the same adapter twice, a zero row) or σ_k ≤ 1e-4·max(σ_1, ‖A‖₂‖B_w‖₂) (Vh would divide
by ~0; a sum that cancels to ~0), the Householder QR path runs instead: ``Aᵀ = Q_a·R_a`` (Q_a
kept as its R reflectors), the top-k eigenpairs of ``R_a·G_B·R_aᵀ``, ``U_k·S_k = B_w·R_aᵀ·W_k``
and ``Vh_k = (Q_a·W_k)ᵀ`` (the reflectors applied blockwise to the k columns of W_k;
orthonormal for any σ). Cost O((d_out + d_in)·R² + R³) against PEFT's O(d_out·d_in·min(d_out,
d_in)) SVD of the dense sum. When R ≥ min(d_out, d_in), or svd_rank > R, the delta is formed
and its top-k singular triplets come from the eigenpairs of its smaller Gram matrix (float64).
Modules run in parallel, one per thread (``parallel_modules``). The QR and dense paths take
their top-k eigenpairs from scipy's syevr when scipy is installed (an optional speed-up, not a
dependency), else from numpy's full ``eigh``.

Precision of ``svd``: float64, except when the merged factors are written in float16 or
bfloat16. Then the Gram path runs in float32 wherever the core proves the result close: its
error is about 5·2⁻²⁴·ρ² relative to σ_1, with ρ = ‖A‖₂‖B_w‖₂/σ_1 (1 to 2 for adapters that
add up; large where the weighted sum cancels), and float32 is kept only for ρ² ≤ 32 and
σ_k ≥ 1e-2·σ_1, i.e. errors ≲ 1e-5, far below the ≥ 2⁻¹¹ rounding of the written factors.
Elsewhere float64 runs. PEFT computes the whole SVD in float32.
The pruned SVD variants need the dense deltas (pruning is elementwise on them); they stream
them: one adapter's delta at a time plus the accumulators of the sum (TIES keeps five
d_out × d_in arrays: elected-sign sum, and per sign the weighted sum and the count), never the
stack of all n deltas that PEFT builds.

DARE's random masks: adapter j's mask for module i is drawn from
``numpy.random.default_rng([seed, i, j, t])``, t = 0 for lora_A, 1 for lora_B, 2 for the dense
delta (the ``_svd`` variants); an entry is kept when ``rng.random() < density`` (float64
uniforms), and kept entries are divided by density. Same seed, same masks, whatever the thread
count or the order modules are merged in. PEFT draws from torch's global RNG; its masks have the
same distribution but not the same bits.

Deviations from PEFT, on purpose:

- ``magnitude_prune``/TIES trimming keeps exactly ``int(density·numel)`` entries of largest
  |x| like ``torch.topk``; among entries tied with the k-th largest magnitude, the lowest flat
  indices are kept (torch.topk's choice among ties is unspecified). Ties are common only in
  fp16/bf16 factors.
- Singular pairs have a fixed sign: the largest-|.| entry of each column of ``U·S`` is positive.
  PEFT keeps LAPACK's arbitrary signs; the delta is the same, except with ``svd_clamp``, where
  the clip interval [-h, h] is symmetric but the quantile is not sign-invariant, so PEFT's
  result depends on the signs its LAPACK picked. rankwise's is reproducible.
- ``svd_rank`` above min(d_out, d_in) is capped there (PEFT fails or caps, depending on the
  shape). Where the delta has fewer than k non-zero singular values, the extra rows of A are
  orthonormal (factored path, or d_out ≥ d_in) or zero (d_out < d_in), and the extra columns of
  B are zero: the delta does not depend on them.
- ``cat``'s rank is Σ r_j per module; PEFT pads every module to the sum of the configs' largest
  ranks with zero rows/columns (same delta).
- With one adapter PEFT silently switches any method to ``linear``; rankwise runs the method
  asked for (``svd`` of one adapter truncates it).
- PEFT keeps ``use_rslora`` of the first adapter in the merged config with r = lora_alpha, which
  multiplies its merged delta by sqrt(new rank). rankwise's merged adapter has scaling 1.
- PEFT rounds each adapter's dense delta to the adapter's dtype (fp16 on a fp16 model) before
  the SVD variants combine them; rankwise keeps float32 (float64 for ``svd``).
- ``density`` has no default (PEFT's is None, which fails inside the merge).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .. import _core
from ..errors import OptionError, RankwiseError
from ..pool import AdapterPool
from . import weighting
from .contract import Factors, ModuleContext, Prepare, register_method
from .weighting import PeftFactor

MAJORITY_SIGN_METHODS = ("total", "frequency")

# Tags of the DARE random streams (the 4th entry of the seed sequence).
_TAG_A, _TAG_B, _TAG_DELTA = 0, 1, 2

# How each method treats its tensors: (pruning, sign election).
_PRUNE = {
    "linear": (None, False),
    "ties": ("magnitude", True),
    "dare_linear": ("random", False),
    "dare_ties": ("random", True),
    "magnitude_prune": ("magnitude", False),
    "svd": (None, False),
    "ties_svd": ("magnitude", True),
    "dare_linear_svd": ("random", False),
    "dare_ties_svd": ("random", True),
    "magnitude_prune_svd": ("magnitude", False),
}
_EQUAL_RANKS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")

# Output dtypes whose rounding (≥ 2⁻¹¹ relative) dwarfs the float32 svd's error: see svd().
_HALF_DTYPES = ("F16", "BF16")

# Householder reflectors are applied to W in blocks of this many (compact WY form).
_QR_BLOCK = 64


# ------------------------------------------------------------------------------- validation
def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _make_prepare(method: str, params: list[str]) -> Prepare:
    def prepare(pool: AdapterPool, weights: np.ndarray, opts: dict[str, Any]) -> dict[str, Any]:
        if method in _EQUAL_RANKS:
            for m in pool.modules:
                ranks = pool.ranks(m)
                if len(set(ranks)) != 1:
                    raise OptionError(
                        f"method {method!r} merges A's and B's entrywise, so every adapter needs the "
                        f"same rank per module, but module '{m}' has ranks {ranks} (one per adapter); "
                        "use 'cat' or an svd method for mixed ranks"
                    )
        if "density" in params:
            d = opts.get("density")
            if d is None:
                raise OptionError(
                    f"method {method!r} needs density=, the fraction of values each adapter keeps, in (0, 1]"
                )
            if not _is_real(d) or not 0.0 < float(d) <= 1.0:
                raise OptionError(f"density must be in (0, 1] (the fraction of values each adapter keeps), got {d!r}")
            opts["density"] = float(d)
        if "majority_sign_method" in params:
            msm = opts.get("majority_sign_method", "total")
            if msm not in MAJORITY_SIGN_METHODS:
                raise OptionError(
                    f"majority_sign_method must be 'total' (sign of the sum) or 'frequency' (sign of "
                    f"the majority), got {msm!r}"
                )
        if "seed" in params:
            s = opts.get("seed", 0)
            if not _is_int(s) or s < 0:
                raise OptionError(f"seed must be a non-negative int, got {s!r}")
        if "svd_rank" in params:
            r = opts.get("svd_rank")
            if r is None:
                # PEFT: the largest rank of the inputs, one rank for every module.
                r = max(max(pool.ranks(m)) for m in pool.modules)
            elif not _is_int(r) or r < 1:
                raise OptionError(f"svd_rank must be a positive int (the merged rank), got {r!r}")
            opts["svd_rank"] = int(r)
        if "svd_clamp" in params:
            c = opts.get("svd_clamp")
            if c is not None and (not _is_real(c) or not 0.0 < float(c) < 1.0):
                raise OptionError(f"svd_clamp must be None or a quantile in (0, 1) (e.g. 0.99), got {c!r}")
        return opts

    return prepare


Decorator = Callable[[Callable[..., Factors]], Callable[..., Factors]]


# How the rule's weights map to PEFT's, per method (methods/weighting.py).
_PEFT_FACTORS: dict[str, PeftFactor] = {
    "linear": weighting.linear_family("linear"),
    "dare_linear": weighting.linear_family("dare_linear"),
    "magnitude_prune": weighting.linear_family("magnitude_prune"),
    "ties": weighting.ties_family("ties"),
    "dare_ties": weighting.ties_family("dare_ties"),
    "cat": weighting.unit,
    "svd": weighting.unit,
    "dare_linear_svd": weighting.unit,
    "magnitude_prune_svd": weighting.unit,
    "ties_svd": weighting.ties_delta,
    "dare_ties_svd": weighting.ties_delta,
}


def _register(name: str, *, parallel_modules: bool = False) -> Decorator:
    """register_method with a prepare that validates the options ``fn`` takes, and the method's
    map from the rule's weights to PEFT's."""

    def deco(fn: Callable[..., Factors]) -> Callable[..., Factors]:
        params = [p for p in inspect.signature(fn).parameters if p != "ctx"]
        prepare = _make_prepare(name, params)
        return register_method(
            name, prepare=prepare, parallel_modules=parallel_modules, peft_factor=_PEFT_FACTORS[name]
        )(fn)

    return deco


# ------------------------------------------------------------------------------- elementwise
def _magnitude_prune(x: np.ndarray, density: float) -> np.ndarray:
    """Keeps the ``int(density·numel)`` entries of largest |x| (ties: lowest flat index)."""
    if density >= 1.0:
        return x
    n = x.size
    k = int(density * n)
    if k <= 0:
        return np.zeros_like(x)
    mag = np.abs(x).ravel()
    thr = np.partition(mag, n - k)[n - k]  # the k-th largest magnitude
    keep = mag > thr
    need = k - int(np.count_nonzero(keep))
    if need > 0:
        keep[np.flatnonzero(mag == thr)[:need]] = True
    return np.where(keep.reshape(x.shape), x, np.float32(0))


def _random_prune(x: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    """DARE: keeps each entry with probability density and divides the kept ones by it."""
    if density >= 1.0:
        return x
    keep = rng.random(x.shape) < density
    return np.where(keep, x, np.float32(0)) / np.float32(density)


def _combine(
    tensors: Iterable[np.ndarray],
    weights: np.ndarray,
    *,
    prune: str | None,
    elect: bool,
    density: float = 1.0,
    majority_sign_method: str = "total",
    rng: Callable[[int], np.random.Generator] | None = None,
) -> np.ndarray:
    """PEFT's task_arithmetic / magnitude_prune / ties / dare_linear / dare_ties over float32
    tensors, streamed (one input at a time). ``weights`` float32, one per tensor."""
    acc = None  # Σ w_j·p_j
    elected = pos_sum = neg_sum = pos_cnt = neg_cnt = None
    for j, x in enumerate(tensors):
        x = np.asarray(x, dtype=np.float32)
        if prune == "magnitude":
            p = _magnitude_prune(x, density)
        elif prune == "random":
            assert rng is not None
            p = _random_prune(x, density, rng(j))
        else:
            p = x
        wp = p * weights[j]
        if not elect:
            if acc is None:
                acc = wp  # a new array (p times a weight)
            else:
                acc += wp
            continue
        pos, neg = p > 0, p < 0
        vote = p if majority_sign_method == "total" else pos.astype(np.float32) - neg.astype(np.float32)
        if elected is None:
            elected = vote.astype(np.float32, copy=True)
            pos_sum, neg_sum = np.where(pos, wp, np.float32(0)), np.where(neg, wp, np.float32(0))
            pos_cnt, neg_cnt = pos.astype(np.float32), neg.astype(np.float32)
        else:
            elected += vote
            pos_sum += np.where(pos, wp, np.float32(0))
            neg_sum += np.where(neg, wp, np.float32(0))
            pos_cnt += pos
            neg_cnt += neg
    if not elect:
        if acc is None:
            raise OptionError("nothing to merge: the pool is empty")
        return acc
    assert elected is not None and pos_sum is not None and neg_sum is not None
    # Disjoint merge: the mean of the weighted values whose sign agrees with the elected one.
    return np.where(
        elected >= 0,
        pos_sum / np.maximum(pos_cnt, np.float32(1)),
        neg_sum / np.maximum(neg_cnt, np.float32(1)),
    ).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------- factor methods
def _sqrt_weights(ctx: ModuleContext) -> tuple[np.ndarray, np.ndarray]:
    """PEFT's per-side weights: A gets sign(w·s)·sqrt(|w·s|), B gets sqrt(|w·s|)."""
    wa, wb = [], []
    for j, w in enumerate(ctx.weights):
        ws = float(w) * ctx.pool[j].module(ctx.module).scaling
        root = math.sqrt(abs(ws))
        wa.append(root if ws >= 0 else -root)
        wb.append(root)
    return np.asarray(wa, dtype=np.float32), np.asarray(wb, dtype=np.float32)


def _factor_merge(
    ctx: ModuleContext, method: str, density: float | None = 1.0, majority_sign_method: str = "total", seed: int = 0
) -> Factors:
    prune, elect = _PRUNE[method]
    density = 1.0 if density is None else float(density)
    wa, wb = _sqrt_weights(ctx)
    raw = [ctx.factors(j, folded=False) for j in range(len(ctx.pool))]
    out = []
    for side, (w, tag) in enumerate(((wa, _TAG_A), (wb, _TAG_B))):
        out.append(
            _combine(
                (f[side] for f in raw),
                w,
                prune=prune,
                elect=elect,
                density=density,
                majority_sign_method=majority_sign_method,
                rng=_rng_factory(seed, ctx.index, tag),
            )
        )
    return out[0], out[1]


def _rng_factory(seed: int, module_index: int, tag: int) -> Callable[[int], np.random.Generator]:
    return lambda j: np.random.default_rng([seed, module_index, j, tag])


@_register("linear")
def linear(ctx: ModuleContext) -> Factors:
    """Weighted sum of the A's and of the B's (PEFT 'linear'; equal ranks; approximate)."""
    return _factor_merge(ctx, "linear")


@_register("ties")
def ties(ctx: ModuleContext, *, density: float | None = None, majority_sign_method: str = "total") -> Factors:
    """TIES on the A's and B's: trim to density, elect signs, disjoint mean (PEFT 'ties')."""
    return _factor_merge(ctx, "ties", density, majority_sign_method)


@_register("dare_linear")
def dare_linear(ctx: ModuleContext, *, density: float | None = None, seed: int = 0) -> Factors:
    """DARE on the A's and B's: random drop with rescale, weighted sum (PEFT 'dare_linear')."""
    return _factor_merge(ctx, "dare_linear", density, seed=seed)


@_register("dare_ties")
def dare_ties(
    ctx: ModuleContext, *, density: float | None = None, majority_sign_method: str = "total", seed: int = 0
) -> Factors:
    """DARE then TIES sign election on the A's and B's (PEFT 'dare_ties')."""
    return _factor_merge(ctx, "dare_ties", density, majority_sign_method, seed)


@_register("magnitude_prune")
def magnitude_prune(ctx: ModuleContext, *, density: float | None = None) -> Factors:
    """Magnitude pruning of the A's and B's, weighted sum (PEFT 'magnitude_prune')."""
    return _factor_merge(ctx, "magnitude_prune", density)


@_register("cat")
def cat(ctx: ModuleContext) -> Factors:
    """Concatenation of every adapter's units: rank Σ r_j, the exact weighted sum (PEFT 'cat')."""
    a_parts, b_parts = [], []
    for j, w in enumerate(ctx.weights):
        a, b = ctx.factors(j, folded=False)
        s = ctx.pool[j].module(ctx.module).scaling
        a_parts.append(a * np.float32(w) * np.float32(s))  # PEFT: A·weight·scaling, in float32
        b_parts.append(b)
    return np.concatenate(a_parts, axis=0), np.concatenate(b_parts, axis=1)


# ------------------------------------------------------------------------------- svd methods
def _sign_fix(us: np.ndarray, vh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orients each singular pair so that the largest-|.| entry of its U·S column is positive."""
    if us.shape[1] == 0:
        return us, vh
    idx = np.argmax(np.abs(us), axis=0)
    flip = np.where(us[idx, np.arange(us.shape[1])] < 0, -1.0, 1.0)
    return us * flip[None, :], vh * flip[:, None]


def _clamp(us: np.ndarray, vh: np.ndarray, q: float | None) -> tuple[np.ndarray, np.ndarray]:
    """PEFT's svd_clamp: clip U·S and Vh to [-h, h], h the q-quantile of all their entries."""
    us = np.ascontiguousarray(us, dtype=np.float32)
    vh = np.ascontiguousarray(vh, dtype=np.float32)
    if q is None:
        return us, vh
    dist = np.concatenate([us.ravel(), vh.ravel()])
    hi = np.float32(np.quantile(dist, q))  # linear interpolation, as torch.quantile
    return np.clip(us, -hi, hi), np.clip(vh, -hi, hi)


def _top_eigh(m: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest eigenvalues (descending, clipped at 0) and eigenvectors of symmetric m.

    With scipy installed, only those k are computed (LAPACK syevr: tridiagonal reduction, then
    MRRR on the wanted part; faster than all n, benches/RESULTS.md); else numpy's full ``eigh``."""
    if _scipy() is not None:
        # A symmetric C-contiguous m is its own transpose: m.T is the Fortran array LAPACK wants.
        res = _syevr_top(m.T if m.flags.c_contiguous else np.asfortranarray(m), k, overwrite=False)
        if res is not None:
            return res
    lam, vec = np.linalg.eigh(m)
    return np.maximum(lam[::-1][:k], 0.0), np.ascontiguousarray(vec[:, ::-1][:, :k])


def _syevr_top(m: np.ndarray, k: int, *, overwrite: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """syevr's k largest eigenpairs (descending, eigenvalues clipped at 0) of the symmetric
    matrix whose lower triangle is that of the Fortran-ordered m; None if LAPACK fails."""
    n = m.shape[0]
    lam, vec, found, _, info = _scipy().lapack.dsyevr(
        m, compute_v=1, range="I", lower=1, il=n - k + 1, iu=n, overwrite_a=int(overwrite)
    )
    if info != 0 or found != k:  # pragma: no cover - LAPACK's MRRR failing to converge
        return None
    return np.maximum(lam[k - 1 :: -1], 0.0), np.ascontiguousarray(vec[:, ::-1])


_SCIPY: Any = None  # None: not looked up yet; False: scipy (or a LAPACK wrapper used) is missing


def _scipy() -> Any:
    """``scipy.linalg`` when it is installed with the LAPACK wrapper used here, else None."""
    global _SCIPY
    if _SCIPY is None:
        try:
            import scipy.linalg as sl

            sl.lapack.dsyevr  # noqa: B018 - present in this build?
        except (ImportError, AttributeError):  # pragma: no cover - scipy is optional
            _SCIPY = False
        else:
            _SCIPY = sl
    return _SCIPY or None


def _dense_top_k(d: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(U_k·S_k, Vh_k)`` of a dense d_out × d_in matrix, from its smaller Gram matrix."""
    d = np.asarray(d, dtype=np.float64)
    d_out, d_in = d.shape
    if d_out >= d_in:
        _, v = _top_eigh(d.T @ d, k)
        return d @ v, v.T
    lam, u = _top_eigh(d @ d.T, k)
    s = np.sqrt(lam)
    vh = u.T @ d
    nz = s > 0
    vh[nz] /= s[nz, None]
    vh[~nz] = 0.0
    return u * s[None, :], vh


def _gram_top_k(
    units: np.ndarray, d_out: int, fold: np.ndarray, k: int, *, single: bool = False, parallel: bool = False
) -> Factors | None:
    """``(U_k·S_k, Vh_k)`` of ``Σ_i fold_i·b_i·a_iᵀ`` (row i of ``units``: ``[b_i ; a_i]``,
    float32 or float64; R rows, R < min(d_out, d_in), k ≤ R) by the Gram path of the core
    (rust/core/src/linalg/lowrank_svd.rs; GIL released). ``single``: float32 where the core proves it
    close, else float64. None where the path declines: the Cholesky factor of A·Aᵀ does not
    exist in floating point, or σ_k ≤ 1e-4·σ_1 (Vh would divide by ~0); the caller then takes
    the QR path."""
    return _core.gram_top_k(units, d_out, fold, k, allow_single=single, parallel=parallel)


def _factored_top_k(b: np.ndarray, a: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(U_k·S_k, Vh_k)`` of ``b @ a`` (b: d_out × R, a: R × d_in, float64, k ≤ R < d_in)
    without forming it: Householder QR of aᵀ, then the top-k eigenpairs of an R × R matrix."""
    r = a.shape[0]
    h, tau = np.linalg.qr(a.T, mode="raw")  # LAPACK geqrf; h is R × d_in (row i: column i)
    ra = np.triu(h.T[:r])  # aᵀ = Q_a·R_a
    m = ra @ (b.T @ b) @ ra.T  # (b·R_aᵀ)ᵀ(b·R_aᵀ)
    _, w = _top_eigh((m + m.T) * 0.5, k)
    return b @ (ra.T @ w), _apply_q(h, tau, w).T


def _apply_q(h: np.ndarray, tau: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``Q @ [w; 0]`` for ``h, tau = numpy.linalg.qr(x, mode="raw")`` (x: d × R, Q: d × d).

    Q = H_0·H_1·…·H_{R-1}, ``H_i = I - tau_i·v_i·v_iᵀ``, v_i = (0…0, 1, h[i, i+1:]). Blocks of
    reflectors are applied last to first in compact WY form ``I - V·T·Vᵀ``, with
    ``T⁻¹ = diag(1/tau) + strict_upper(VᵀV)`` (tau_i = 2/‖v_i‖², or 0 for H_i = I)."""
    h = np.ascontiguousarray(h)
    r, d = h.shape
    y = np.zeros((d, w.shape[1]))
    y[: w.shape[0]] = w
    for i0 in range(((r - 1) // _QR_BLOCK) * _QR_BLOCK, -1, -_QR_BLOCK):
        i1 = min(i0 + _QR_BLOCK, r)
        nb = i1 - i0
        v = np.tril(h[i0:i1, i0:].T, -1)
        diag = np.arange(nb)
        v[diag, diag] = 1.0
        t = tau[i0:i1]
        ident = t == 0
        v[:, ident] = 0.0
        t_inv = np.triu(v.T @ v, 1)
        t_inv[diag, diag] = 1.0 / np.where(ident, 1.0, t)
        y[i0:] -= v @ np.linalg.solve(t_inv, v.T @ y[i0:])
    return y


def _svd_finish(us: np.ndarray, vh: np.ndarray, svd_clamp: float | None) -> Factors:
    us, vh = _sign_fix(us, vh)
    us, vh = _clamp(us, vh, svd_clamp)
    return vh, us


def _rank_for(ctx: ModuleContext, svd_rank: int) -> int:
    return min(int(svd_rank), *ctx.shape)


def _module_top_k(ctx: ModuleContext, fold: np.ndarray, k: int, *, single: bool) -> Factors | None:
    """The Gram path on the module's stacked factors: straight from the mapped files when the
    pool has them (no unit matrix in between), else from the stacked rows."""
    parallel = ctx.threads > 1
    mapped = ctx.pool.file_sources(ctx.module)
    if mapped is not None:
        files, sources = mapped
        return files.svd_top_k(sources, fold, k, allow_single=single, parallel=parallel, stream=ctx.pool.streams)
    return _gram_top_k(_stacked_units(ctx), ctx.shape[0], fold, k, single=single, parallel=parallel)


def _folds(ctx: ModuleContext) -> np.ndarray:
    """Each unit's fold ``w_j·s_j`` (weight times scaling of its adapter), float64."""
    scalings = [a.module(ctx.module).scaling for a in ctx.pool]
    return np.repeat([float(w) * s for w, s in zip(ctx.weights, scalings)], ctx.ranks)


def _stacked_units(ctx: ModuleContext) -> np.ndarray:
    """The module's raw factors of all adapters as rows ``[b_i ; a_i]`` (float32, R × (d_out +
    d_in)), in the module buffer (``ctx.rows_buffer()``)."""
    d_out = ctx.shape[0]
    scalings = [a.module(ctx.module).scaling for a in ctx.pool]
    out = ctx.rows_buffer()
    if all(s != 0.0 and math.isfinite(1.0 / s) for s in scalings):
        # One Rust call reads the module's units [s_j·w'_j·b_i ; a_i] of all adapters; with
        # w'_j = 1/s_j, s_j·w'_j is within an ulp of 1 in float64, so exactly 1 in the float32
        # the core folds with: the rows are the raw factors, converted exactly to float32.
        try:
            return ctx.pool.unit_matrix(ctx.module, [1.0 / s for s in scalings], out=out)[0]
        except RankwiseError:  # adapters not backed by files: read them one by one below
            pass
    i = 0
    for j in range(len(ctx.pool)):
        aj, bj = ctx.factors(j, folded=False)
        n = aj.shape[0]
        out[i : i + n, :d_out] = bj.T
        out[i : i + n, d_out:] = aj
        i += n
    return out


def _top_k_by_paths(
    r: int,
    shape: tuple[int, int],
    k: int,
    gram: Callable[[], Factors | None],
    stacked: Callable[[], tuple[np.ndarray, np.ndarray]],
) -> Factors:
    """``(U_k·S_k, Vh_k)`` of a product of R stacked units: the Gram path ``gram()`` when
    R < min(d_out, d_in) and k ≤ R, the Householder QR path where it declines (None), else the
    dense delta; the last two on ``stacked() = (Bᵀ, A)`` (R × d_out, R × d_in, float64)."""
    if r < min(shape) and k <= r:
        res = gram()
        if res is not None:
            return res
        bt, a = stacked()
        return _factored_top_k(bt.T, a, k)
    bt, a = stacked()
    return _dense_top_k(bt.T @ a, k)


def _product_top_k(bt: np.ndarray, a: np.ndarray, k: int) -> Factors:
    """``(U_k·S_k, Vh_k)`` of ``btᵀ @ a`` (bt: R × d_out, a: R × d_in, float64; k ≤
    min(d_out, d_in)), by :func:`_top_k_by_paths`."""
    r, d_out = bt.shape
    return _top_k_by_paths(
        r,
        (d_out, a.shape[1]),
        k,
        lambda: _gram_top_k(np.concatenate([bt, a], axis=1), d_out, np.ones(r), k),
        lambda: (bt, a),
    )


@_register("svd", parallel_modules=True)
def svd(ctx: ModuleContext, *, svd_rank: int | None = None, svd_clamp: float | None = None) -> Factors:
    """Truncated SVD of Σ w_j·ΔW_j, computed from the factors (PEFT 'svd')."""
    assert svd_rank is not None  # resolved by prepare
    k = _rank_for(ctx, svd_rank)
    d_out = ctx.shape[0]
    fold = _folds(ctx)

    def stacked() -> tuple[np.ndarray, np.ndarray]:
        units = _stacked_units(ctx)
        return np.multiply(units[:, :d_out], fold[:, None], dtype=np.float64), units[:, d_out:].astype(np.float64)

    single = ctx.out_dtype in _HALF_DTYPES
    with ctx.timed("svd"):
        res = _top_k_by_paths(fold.size, ctx.shape, k, lambda: _module_top_k(ctx, fold, k, single=single), stacked)
    return _svd_finish(*res, svd_clamp)


def _delta_svd_merge(
    ctx: ModuleContext,
    method: str,
    *,
    density: float | None,
    majority_sign_method: str = "total",
    seed: int = 0,
    svd_rank: int | None,
    svd_clamp: float | None,
) -> Factors:
    assert svd_rank is not None and density is not None  # resolved by prepare
    prune, elect = _PRUNE[method]
    k = _rank_for(ctx, svd_rank)

    def deltas() -> Iterable[np.ndarray]:
        for j in range(len(ctx.pool)):
            a, b = ctx.factors(j, folded=False)
            s = ctx.pool[j].module(ctx.module).scaling
            yield (b @ a) * np.float32(s)  # PEFT's get_delta_weight, float32

    merged = _combine(
        deltas(),
        ctx.weights.astype(np.float32),
        prune=prune,
        elect=elect,
        density=density,
        majority_sign_method=majority_sign_method,
        rng=_rng_factory(seed, ctx.index, _TAG_DELTA),
    )
    return _svd_finish(*_dense_top_k(merged, k), svd_clamp)


@_register("ties_svd")
def ties_svd(
    ctx: ModuleContext,
    *,
    density: float | None = None,
    majority_sign_method: str = "total",
    svd_rank: int | None = None,
    svd_clamp: float | None = None,
) -> Factors:
    """TIES on the dense deltas, then truncated SVD (PEFT 'ties_svd')."""
    return _delta_svd_merge(
        ctx, "ties_svd", density=density, majority_sign_method=majority_sign_method,
        svd_rank=svd_rank, svd_clamp=svd_clamp,
    )  # fmt: skip


@_register("dare_linear_svd")
def dare_linear_svd(
    ctx: ModuleContext,
    *,
    density: float | None = None,
    seed: int = 0,
    svd_rank: int | None = None,
    svd_clamp: float | None = None,
) -> Factors:
    """DARE (random drop, rescale) on the dense deltas, sum, truncated SVD (PEFT 'dare_linear_svd')."""
    return _delta_svd_merge(ctx, "dare_linear_svd", density=density, seed=seed, svd_rank=svd_rank, svd_clamp=svd_clamp)


@_register("dare_ties_svd")
def dare_ties_svd(
    ctx: ModuleContext,
    *,
    density: float | None = None,
    majority_sign_method: str = "total",
    seed: int = 0,
    svd_rank: int | None = None,
    svd_clamp: float | None = None,
) -> Factors:
    """DARE then TIES on the dense deltas, truncated SVD (PEFT 'dare_ties_svd')."""
    return _delta_svd_merge(
        ctx, "dare_ties_svd", density=density, majority_sign_method=majority_sign_method,
        seed=seed, svd_rank=svd_rank, svd_clamp=svd_clamp,
    )  # fmt: skip


@_register("magnitude_prune_svd")
def magnitude_prune_svd(
    ctx: ModuleContext,
    *,
    density: float | None = None,
    svd_rank: int | None = None,
    svd_clamp: float | None = None,
) -> Factors:
    """Magnitude pruning of the dense deltas, weighted sum, truncated SVD (PEFT 'magnitude_prune_svd')."""
    return _delta_svd_merge(ctx, "magnitude_prune_svd", density=density, svd_rank=svd_rank, svd_clamp=svd_clamp)
