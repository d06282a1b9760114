//! k-means: greedy k-means++ seeding and Lloyd iterations, with GEMM distances, on rayon.
//!
//! The phases, as faiss keeps them: this file holds the API, the validation of the input and
//! the restarts; [`lloyd`] the iterations (assignment by GEMM, the distance cache, empty
//! clusters); [`exact_sums`] the fixed-point cluster sums that make the centres independent of
//! the thread count; [`seeding`] k-means++ (with a subsample and, for wide data, a random
//! projection); [`gram`] the same seeding and Lloyd loop from the points' Gram matrix (for n
//! small next to d). The per-element kernels are `crate::simd`'s. `benches/RESULTS.md`
//! (bench_kmeans) compares it with faiss and scikit-learn, and `rust/core/benches/kmeans.rs`
//! times its phases.
//!
//! The Lloyd loop follows scikit-learn's `_kmeans_single_lloyd` step for step, so that given the
//! same initial centres the labels are identical and the centres agree to float rounding:
//!
//! * every iteration assigns each point to its nearest current centre (ties to the lowest index),
//!   then recomputes each centre as the mean of its points (exact sums, see [`exact_sums`]);
//! * an empty cluster is re-seeded with the point farthest from its assigned centre
//!   (`_relocate_empty_clusters`): the points with the largest distance to their centre, in
//!   order of decreasing distance, one per empty cluster in increasing cluster order; the point
//!   is moved out of its old cluster's sum but keeps its label, as in scikit-learn;
//! * it stops when the labels did not change from the previous iteration (strict convergence),
//!   when the total squared centre shift is `<= tol * mean(var(x, axis=0))`, or after
//!   `max_iter` iterations; when not strictly converged, a last assignment pass makes the labels
//!   match the returned centres. `n_iter` counts the iterations run.
//!
//! Determinism: GEMM blocks have a fixed number of rows that depends on the shape only (never
//! on the thread count), each block's GEMM is single-threaded and rayon runs blocks in
//! parallel, so there is no nested oversubscription and the bytes out do not depend on the
//! number of threads. GEMM crate: `faer` (0.24, `Par::Seq`), which on x86-64 runs
//! `private-gemm-x86` kernels chosen at run time (AVX-512 or AVX2+FMA; portable fallbacks
//! elsewhere), so one wheel serves AVX2-only and AVX-512 hosts; it measured fastest of faer,
//! gemm, matrixmultiply and OpenBLAS on the k-means shapes (bench_kmeans).
//!
//! Restarts: the projection matrix of seeding is drawn from the first output of a splitmix64
//! stream started at `seed` (when used); restart `r` of `n_init` uses the next output; the run
//! with the lowest inertia is kept (the first on ties).
//!
//! # Sign-invariant mode (`sign_invariant = true`, LoRA-LEGO's canonical rank units)
//! A point joins a cluster with either sign: its distance to centre c is
//! `min(‖x − c‖², ‖x + c‖²) = ‖x‖² + ‖c‖² − 2·|x·c|`. Assignment takes the arg-min over c of
//! `‖c‖² − 2·|x·c|` (ties to the lowest index) and the sign `s = −1` when `x·c < 0` for the
//! chosen c, else `+1`; centre sums add `s·x` (still exact fixed point: negation only flips the
//! sign of each rounded value, so the bytes stay independent of the threads); strict convergence
//! needs both labels and signs unchanged; k-means++ seeding, candidate distances, the empty-
//! cluster relocation (farthest point, with `s·x` moved out of its old sum) and the inertia all
//! use the sign-invariant distance (`‖x − s·c‖²`, ≥ 0). The sign is carried in the top bit of
//! the internal u32 labels ([`NEG`]), so k must be below 2³¹ in this mode. With every `x·c ≥ 0`
//! the two modes do exactly the same arithmetic and give the same bytes.

mod assign;
mod exact_sums;
mod gram;
mod lloyd;
mod seeding;
#[cfg(test)]
mod tests;

use rayon::prelude::*;

use crate::error::{catch_panic, Error, Result};
use crate::rng::{SplitMix64, Xoshiro256};
use crate::simd::{abs_max_bits, Level};
use exact_sums::FixedPoint;
use lloyd::lloyd;
use seeding::{seed_kmeans_pp, SeedSpace};

pub use assign::{assign, Assignment};
pub use gram::{kmeans_gram, GramKMeansResult};
pub use seeding::{SEED_POINTS_PER_CENTRE, SEED_PROJECTION_DIM};

/// Parameters of [`kmeans`]. The defaults are scikit-learn's (`n_init = 1`).
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansParams {
    /// Number of clusters, `1 <= k <= n`.
    pub k: usize,
    /// Number of k-means++ restarts (forced to 1 when initial centres are given).
    pub n_init: usize,
    /// Maximum number of Lloyd iterations per restart.
    pub max_iter: usize,
    /// Relative tolerance on the total squared centre shift (times the mean feature variance).
    pub tol: f64,
    /// Seed of the k-means++ seeding and of the restarts.
    pub seed: u64,
    /// Cluster modulo sign (distance `‖x‖² + ‖c‖² − 2·|x·c|`, see the module doc).
    pub sign_invariant: bool,
    /// Keep the `n × k` dot products across Lloyd iterations (when they fit in `CACHE_BYTES`)
    /// and recompute only the columns of the centres that moved. Same bytes either way; off
    /// only to measure the full per-iteration cost.
    pub distance_cache: bool,
    /// Seed wide data in a random projection (see [`SEED_PROJECTION_DIM`]); off: exact
    /// distances (scikit-learn's seeding, slower on wide data).
    pub seed_projection: bool,
}

impl Default for KMeansParams {
    fn default() -> Self {
        KMeansParams {
            k: 8,
            n_init: 1,
            max_iter: 300,
            tol: 1e-4,
            seed: 0,
            sign_invariant: false,
            distance_cache: true,
            seed_projection: true,
        }
    }
}

/// Result of [`kmeans`].
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansResult {
    /// `k × d` row-major centres.
    pub centroids: Vec<f32>,
    /// Cluster of each of the `n` points, in `0..k`.
    pub labels: Vec<i64>,
    /// Sum of squared distances of the points to their centre.
    pub inertia: f64,
    /// Lloyd iterations run (of the restart that was kept).
    pub n_iter: usize,
    /// Orientation of each of the `n` points in its cluster, `±1.0` (the point counts as
    /// `signs[i]·x_i`); all `1.0` unless `sign_invariant`.
    pub signs: Vec<f32>,
}

/// Top bit of an internal u32 label: the point joined its cluster negated (sign-invariant mode).
pub(crate) const NEG: u32 = 1 << 31;

/// Cluster index of an internal label.
#[inline(always)]
pub(crate) fn cluster(l: u32) -> usize {
    (l & !NEG) as usize
}

#[inline(always)]
pub(crate) fn is_neg(l: u32) -> bool {
    l & NEG != 0
}

/// The clusters of internal labels, as the results give them.
pub(crate) fn public_labels(labels: &[u32]) -> Vec<i64> {
    labels.iter().map(|&l| cluster(l) as i64).collect()
}

/// The orientation (±1) of each point that internal labels carry.
pub(crate) fn signs_of(labels: &[u32]) -> Vec<f32> {
    labels
        .iter()
        .map(|&l| if is_neg(l) { -1.0 } else { 1.0 })
        .collect()
}

/// k-means of the `n × d` row-major matrix `x` (Lloyd, k-means++ seeding), on the current rayon
/// pool. `init`: optional `k × d` initial centres; then `n_init` is forced to 1, as
/// scikit-learn does.
pub fn kmeans(
    x: &[f32],
    n: usize,
    d: usize,
    params: &KMeansParams,
    init: Option<&[f32]>,
) -> Result<KMeansResult> {
    validate(x.len(), n, d, params, init)?;
    catch_panic("kmeans", || {
        // One pass over x finds both the non-finite values and the fixed-point scales.
        let max_bits = column_abs_max_bits(x, n, d);
        if max_bits.iter().any(|&b| b >= INF_BITS) {
            let pos = first_non_finite(x).unwrap_or(0);
            return Err(Error::invalid(format!(
                "x has a non-finite value ({}) at row {}, column {}",
                x[pos],
                pos / d,
                pos % d
            )));
        }
        let top = max_bits.iter().copied().max().unwrap_or(0);
        let Some(e) = rescale_exponent(f32::from_bits(top)) else {
            let fx = FixedPoint::new(&max_bits, n);
            return run(x, n, d, params, init, &fx);
        };
        // Extreme scales: squared distances would overflow (or underflow to 0) in float32.
        // Cluster x·2^-e (largest magnitude in [1, 2): exact but for values that fall below
        // float32's normal range) and scale the centres and inertia back.
        let down = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .map(|&t| (t as f64 * (-e as f64).exp2()) as f32)
                .collect()
        };
        let xs = down(x);
        let init_s = init.map(down);
        let fx = FixedPoint::new(&column_abs_max_bits(&xs, n, d), n);
        let mut r = run(&xs, n, d, params, init_s.as_deref(), &fx)?;
        let up = (e as f64).exp2();
        r.centroids
            .iter_mut()
            .for_each(|c| *c = (*c as f64 * up) as f32);
        r.inertia *= up * up;
        Ok(r)
    })
}

/// Data whose largest magnitude is at least 2³² or below 2⁻³² (not zero) is clustered
/// rescaled by a power of two: `Some(e)` with `2^e <= max_abs < 2^(e+1)`.
fn rescale_exponent(max_abs: f32) -> Option<i32> {
    if max_abs == 0.0 || (max_abs >= 2f32.powi(-32) && max_abs < 2f32.powi(32)) {
        return None;
    }
    Some((max_abs as f64).log2().floor() as i32)
}

/// Checks everything but the finiteness of x.
fn validate(
    len: usize,
    n: usize,
    d: usize,
    params: &KMeansParams,
    init: Option<&[f32]>,
) -> Result<()> {
    let k = params.k;
    if d < 1 {
        return Err(Error::invalid("k-means needs at least one feature (d=0)"));
    }
    match n.checked_mul(d) {
        Some(nd) if nd == len => {}
        _ => {
            return Err(Error::invalid(format!(
                "x has {len} values, expected n*d = {n}*{d}"
            )))
        }
    }
    validate_params(n, params)?;
    if let Some(c) = init {
        if c.len() != k * d {
            return Err(Error::invalid(format!(
                "init has {} values, expected k*d = {k}*{d}",
                c.len()
            )));
        }
        if let Some(pos) = first_non_finite(c) {
            return Err(Error::invalid(format!(
                "init has a non-finite value ({}) at row {}, column {}",
                c[pos],
                pos / d,
                pos % d
            )));
        }
    }
    Ok(())
}

/// Checks the parameters against n points (the row and the Gram paths share them).
pub(crate) fn validate_params(n: usize, params: &KMeansParams) -> Result<()> {
    let k = params.k;
    if k < 1 {
        return Err(Error::invalid(format!("k must be at least 1, got k={k}")));
    }
    if k > n {
        return Err(Error::invalid(format!(
            "k={k} is larger than the n={n} points available"
        )));
    }
    if k > u32::MAX as usize || (params.sign_invariant && k >= NEG as usize) {
        return Err(Error::invalid(format!("k={k} is too large")));
    }
    if params.n_init < 1 {
        return Err(Error::invalid(format!(
            "n_init must be at least 1, got {}",
            params.n_init
        )));
    }
    if params.max_iter < 1 {
        return Err(Error::invalid(format!(
            "max_iter must be at least 1, got {}",
            params.max_iter
        )));
    }
    if !(params.tol.is_finite() && params.tol >= 0.0) {
        return Err(Error::invalid(format!(
            "tol must be a finite number >= 0, got {}",
            params.tol
        )));
    }
    Ok(())
}

/// Bits of +inf: `bits & 0x7fff_ffff` is at least this for inf and NaN, and orders the
/// magnitudes of finite values like the values themselves.
const INF_BITS: u32 = 0x7f80_0000;

/// Per column, the largest `bits(x_ij) & 0x7fff_ffff` (so `>= INF_BITS` iff the column has a
/// non-finite value, else the bits of its largest magnitude). Blocks of rows in parallel; max is
/// exact, so the result does not depend on the order.
fn column_abs_max_bits(x: &[f32], n: usize, d: usize) -> Vec<u32> {
    let level = Level::detect();
    let rows = block_rows(n, d);
    x.par_chunks(rows * d)
        .map(|b| {
            let mut m = vec![0u32; d];
            for row in b.chunks_exact(d) {
                abs_max_bits(level, &mut m, row);
            }
            m
        })
        .reduce(
            || vec![0u32; d],
            |mut a, b| {
                for (p, q) in a.iter_mut().zip(b) {
                    *p = (*p).max(q);
                }
                a
            },
        )
}

pub(crate) fn first_non_finite(v: &[f32]) -> Option<usize> {
    const CHUNK: usize = 1 << 16;
    let bad = |f: &f32| f.to_bits() & 0x7f80_0000 == 0x7f80_0000;
    let chunk = v
        .par_chunks(CHUNK)
        .position_first(|c| c.iter().fold(false, |acc, f| acc | bad(f)))?;
    let start = chunk * CHUNK;
    v[start..].iter().position(bad).map(|p| start + p)
}

fn run(
    x: &[f32],
    n: usize,
    d: usize,
    params: &KMeansParams,
    init: Option<&[f32]>,
    fx: &FixedPoint,
) -> Result<KMeansResult> {
    let k = params.k;
    let (si, cache) = (params.sign_invariant, params.distance_cache);
    let tol_abs = if params.tol > 0.0 {
        params.tol * mean_variance(x, n, d)
    } else {
        0.0
    };
    if let Some(c) = init {
        return lloyd(x, n, d, fx, c.to_vec(), params.max_iter, tol_abs, si, cache);
    }
    let mut seeds = SplitMix64(params.seed);
    let mut space = SeedSpace::new(n, d, k, params.n_init, params.seed_projection, &mut seeds);
    let mut best: Option<KMeansResult> = None;
    for _ in 0..params.n_init {
        let mut rng = Xoshiro256::new(seeds.next_u64());
        let centres = seed_kmeans_pp(x, &mut space, n, d, k, &mut rng, si)?;
        let r = lloyd(x, n, d, fx, centres, params.max_iter, tol_abs, si, cache)?;
        if best.as_ref().is_none_or(|b| r.inertia < b.inertia) {
            best = Some(r);
        }
    }
    best.ok_or_else(|| Error::invalid("n_init must be at least 1"))
}

/// Rows per GEMM block: a function of the shape only, so results never depend on the threads.
/// 256 rows for d in 2048..=8192 (1-8 MiB of x: the packed centres are reused across many rows
/// and the block is still in cache when its rows are added to the sums), up to 1024 rows for
/// small d, down to 64 for huge d; and at least 8 blocks when n allows it (work for 2+ threads).
pub(crate) fn block_rows(n: usize, d: usize) -> usize {
    let by_size = if d <= 2048 {
        ((1usize << 19) / d).clamp(256, 1024)
    } else {
        ((1usize << 21) / d).clamp(64, 256)
    };
    let by_count = n.div_ceil(8).max(16);
    by_size.min(by_count)
}

/// `out (m×k) = xb (m×d) · cᵀ`, single-threaded.
pub(crate) fn gemm_xct(xb: &[f32], m: usize, d: usize, c: &[f32], k: usize, out: &mut [f32]) {
    use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef, Par};
    let lhs = MatRef::from_row_major_slice(xb, m, d);
    let rhs = MatRef::from_row_major_slice(c, k, d).transpose();
    let dst = MatMut::from_row_major_slice_mut(out, m, k);
    matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, Par::Seq);
}

/// Columns per task of the column statistics.
const STAT_COLS: usize = 1024;

/// Per-column means of x (f64), columns in parallel, rows summed in order.
pub(crate) fn column_means(x: &[f32], n: usize, d: usize) -> Vec<f64> {
    let mut mean = vec![0f64; d];
    mean.par_chunks_mut(STAT_COLS)
        .enumerate()
        .for_each(|(c, acc)| {
            let (off, w) = (c * STAT_COLS, acc.len());
            for row in x.chunks_exact(d) {
                for (a, &v) in acc.iter_mut().zip(&row[off..off + w]) {
                    *a += v as f64;
                }
            }
            for a in acc.iter_mut() {
                *a /= n as f64;
            }
        });
    mean
}

/// scikit-learn's `_tolerance` base: the mean over features of the per-feature variance (ddof 0).
fn mean_variance(x: &[f32], n: usize, d: usize) -> f64 {
    let mean = column_means(x, n, d);
    let mut var = vec![0f64; d];
    var.par_chunks_mut(STAT_COLS)
        .enumerate()
        .for_each(|(c, acc)| {
            let (off, w) = (c * STAT_COLS, acc.len());
            let mu = &mean[off..off + w];
            for row in x.chunks_exact(d) {
                for ((a, &v), &m) in acc.iter_mut().zip(&row[off..off + w]).zip(mu) {
                    let t = v as f64 - m;
                    *a += t * t;
                }
            }
        });
    var.iter().sum::<f64>() / (n as f64 * d as f64)
}
