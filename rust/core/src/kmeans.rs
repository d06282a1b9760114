//! k-means: greedy k-means++ seeding and Lloyd iterations, with GEMM distances, on rayon.
//!
//! The Lloyd loop follows scikit-learn's `_kmeans_single_lloyd` step for step, so that given the
//! same initial centres the labels are identical and the centres agree to float rounding:
//!
//! * every iteration assigns each point to its nearest current centre (ties to the lowest index),
//!   then recomputes each centre as the mean of its points (exact sums, see Centre update);
//! * an empty cluster is re-seeded with the point farthest from its assigned centre
//!   (`_relocate_empty_clusters`): the points with the largest distance to their centre, in
//!   order of decreasing distance, one per empty cluster in increasing cluster order; the point
//!   is moved out of its old cluster's sum but keeps its label, as in scikit-learn;
//! * it stops when the labels did not change from the previous iteration (strict convergence),
//!   when the total squared centre shift is `<= tol * mean(var(x, axis=0))`, or after
//!   `max_iter` iterations; when not strictly converged, a last assignment pass makes the labels
//!   match the returned centres. `n_iter` counts the iterations run.
//!
//! # Distances
//! `‖x‖² − 2·x·cᵀ + ‖c‖²` as one GEMM per block of rows; for the arg-min only `‖c‖² − 2·x·cᵀ`
//! matters. Blocks have a fixed number of rows that depends on the shape only (never on the
//! thread count), each block's GEMM is single-threaded and rayon runs blocks in parallel, so
//! there is no nested oversubscription and the bytes out do not depend on the number of threads.
//!
//! Distance cache: the `n × k` dot products are kept across iterations (when they fit in
//! `CACHE_BYTES`; else one `rows × k` block per worker), and an iteration recomputes only the
//! columns of the centres whose bytes changed (a centre whose members did not change is the same
//! mean). Late iterations move few centres, so they cost a fraction of a full GEMM. faer gives a
//! column the same bytes whatever other columns share the call, from two columns on (a single
//! column goes through its matrix-vector path, so one moved centre is padded with a second):
//! cached or not, the result is the same bytes (tested, AVX-512 and AVX2 paths).
//!
//! GEMM crate: `faer` (0.24, `Par::Seq`), which on x86-64 runs `private-gemm-x86` kernels chosen
//! at run time (AVX-512 or AVX2+FMA; portable `gemm`/`nano-gemm` fallbacks elsewhere), so one
//! wheel serves AVX2-only and AVX-512 hosts. Measured on a 2-core AMD EPYC (Zen 3, AVX2) with
//! 2 rayon threads, GEMM `x·cᵀ` alone over all 8000 rows, best block size per crate:
//!
//! | crate (single-threaded per block)   | (8000, 2048, 16) | (8000, 8192, 64) |
//! |-------------------------------------|------------------|------------------|
//! | `faer` 0.24 (`private-gemm-x86`)    | 110 GFLOP/s      | 159 GFLOP/s      |
//! | `gemm` 0.19 (either orientation)    |  97 GFLOP/s      | 128 GFLOP/s      |
//! | `matrixmultiply` 0.3                |  71 GFLOP/s      | 114 GFLOP/s      |
//! | numpy/OpenBLAS, 2 threads, same op  |  57 GFLOP/s      | 134 GFLOP/s      |
//!
//! On a 2-core AVX-512 EPYC, faer's GEMM reaches ≈ 400-420 GFLOP/s on the large shape (numpy's
//! OpenBLAS with its SkylakeX kernels ≈ 470 on 4096² products).
//!
//! # Centre update
//! Fused into the assignment pass: as soon as a block's labels are known, the rows whose label
//! changed (all of them in the first pass) are moved, while still in cache, from their old
//! cluster's sum to the new one's, in the worker's accumulator slot. The sums are exact 64-bit
//! fixed point (see `FixedPoint`: each value rounded once to at least f32 precision of its
//! column's largest magnitude, sums exact), converted once to f64 (one rounding) for the means.
//! Integer addition is associative, so the sums, and therefore the centres, are the same bytes
//! whatever the thread count, the slot a block lands in or the order of the blocks, and updating
//! them by the changed rows only gives the bytes of summing every member afresh. The same
//! centres as f64 summation to ~1e-15 relative.
//!
//! # Performance
//! benches/RESULTS.md (bench_kmeans) has the tables against faiss and scikit-learn, per
//! iteration with and without the distance cache, and the time to equal inertia.
//!
//! # Seeding
//! scikit-learn's greedy k-means++ (`n_local_trials = 2 + floor(ln k)`), driven by xoshiro256**
//! seeded through splitmix64. The candidates' distances are one GEMM per block of rows. When
//! `n > 256·k`, seeding runs on a uniform subsample of `256·k` points (without replacement), as
//! faiss does with its `max_points_per_centroid = 256`: k-means++ only needs enough points to
//! see every cluster's mass, and its cost is k passes over the points (each against 2 + ln k
//! candidates), which would otherwise dwarf a few Lloyd iterations for large n. For wide data
//! (d ≥ 1024, k ≥ 16) the dot products of seeding are taken in a random projection to
//! [`SEED_PROJECTION_DIM`] dimensions (see `projects_for_seeding`): the projection matrix is
//! drawn once per call; all of x is projected once when the restarts' subsamples together
//! cover at least n rows, else each restart projects its own subsample.
//! The projection matrix is drawn from the first output of a splitmix64 stream started at `seed`
//! (when used); restart `r` of `n_init` uses the next output; the run with the lowest inertia is
//! kept (the first on ties).
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

use crate::error::{catch_panic, Error, Result};
use crate::threads::check_cancelled;
use rayon::prelude::*;

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
const NEG: u32 = 1 << 31;

/// Cluster index of an internal label.
#[inline(always)]
fn cluster(l: u32) -> usize {
    (l & !NEG) as usize
}

#[inline(always)]
fn is_neg(l: u32) -> bool {
    l & NEG != 0
}

/// Points per centre kept for k-means++ seeding (faiss's `max_points_per_centroid`).
pub const SEED_POINTS_PER_CENTRE: usize = 256;

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
        let fx = FixedPoint::new(&max_bits, n);
        run(x, n, d, params, init, &fx)
    })
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

/// Bits of +inf: `bits & 0x7fff_ffff` is at least this for inf and NaN, and orders the
/// magnitudes of finite values like the values themselves.
const INF_BITS: u32 = 0x7f80_0000;

/// Per column, the largest `bits(x_ij) & 0x7fff_ffff` (so `>= INF_BITS` iff the column has a
/// non-finite value, else the bits of its largest magnitude). Blocks of rows in parallel; max is
/// exact, so the result does not depend on the order.
fn column_abs_max_bits(x: &[f32], n: usize, d: usize) -> Vec<u32> {
    let simd = Simd::detect();
    let rows = block_rows(n, d);
    x.par_chunks(rows * d)
        .map(|b| {
            let mut m = vec![0u32; d];
            for row in b.chunks_exact(d) {
                simd.abs_max_bits(&mut m, row);
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

fn first_non_finite(v: &[f32]) -> Option<usize> {
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

// ---------------------------------------------------------------------------------------------
// Lloyd

/// Rows per GEMM block: a function of the shape only, so results never depend on the threads.
/// 256 rows for d in 2048..=8192 (1-8 MiB of x: the packed centres are reused across many rows
/// and the block is still in cache when its rows are added to the sums), up to 1024 rows for
/// small d, down to 64 for huge d; and at least 8 blocks when n allows it (work for 2+ threads).
fn block_rows(n: usize, d: usize) -> usize {
    #[cfg(test)]
    {
        let o = tests::BLOCK_OVERRIDE.load(std::sync::atomic::Ordering::Relaxed);
        if o > 0 {
            return o;
        }
    }
    let by_size = if d <= 2048 {
        ((1usize << 19) / d).clamp(256, 1024)
    } else {
        ((1usize << 21) / d).clamp(64, 256)
    };
    let by_count = n.div_ceil(8).max(16);
    by_size.min(by_count)
}

/// Largest dot-product cache (`n × k` f32) kept across Lloyd iterations; with more, every
/// iteration recomputes every distance.
const CACHE_BYTES: usize = 512 << 20;

/// Internal label of a point not yet assigned (before the first pass).
const NONE: u32 = u32::MAX;

#[allow(clippy::too_many_arguments)]
fn lloyd(
    x: &[f32],
    n: usize,
    d: usize,
    fx: &FixedPoint,
    mut centres: Vec<f32>,
    max_iter: usize,
    tol_abs: f64,
    si: bool,
    cache: bool,
) -> Result<KMeansResult> {
    let k = centres.len() / d;
    let slots = Slots::new(k, d);
    let mut sums = ClusterSums::new(k, d);
    let cache_fits = cache && n.saturating_mul(k).saturating_mul(4) <= CACHE_BYTES;
    let mut cache = cache_fits.then(|| vec![0f32; n * k]);
    let mut labels = vec![NONE; n];
    // Centres that moved since the cached distances were computed (None: all of them).
    let mut moved: Option<Vec<u32>> = None;
    let mut strict = false;
    let mut n_iter = 0;
    for it in 0..max_iter {
        check_cancelled()?;
        n_iter = it + 1;
        let (changed, _) = pass(
            x,
            n,
            d,
            &centres,
            moved.as_deref(),
            cache.as_deref_mut(),
            &mut labels,
            si,
            Some((fx, &slots)),
        );
        slots.drain_into(&mut sums);
        let (fsums, counts) = sums.to_f64(fx);
        let new_centres = update_centres(x, n, d, &centres, &labels, fsums, counts);
        let shift = centre_shift(&new_centres, &centres);
        if cache.is_some() {
            moved = Some(moved_centres(&new_centres, &centres, d));
        }
        centres = new_centres;
        if changed == 0 {
            strict = true;
            break;
        }
        if shift <= tol_abs {
            break;
        }
    }
    let inertia = if strict {
        inertia(x, n, d, &centres, &labels)
    } else {
        let (_, inertia) = pass(
            x,
            n,
            d,
            &centres,
            moved.as_deref(),
            cache.as_deref_mut(),
            &mut labels,
            si,
            None,
        );
        inertia
    };
    debug_assert!(labels.iter().all(|&l| cluster(l) < k));
    Ok(KMeansResult {
        centroids: centres,
        labels: labels.iter().map(|&l| cluster(l) as i64).collect(),
        inertia,
        n_iter,
        signs: labels
            .iter()
            .map(|&l| if is_neg(l) { -1.0 } else { 1.0 })
            .collect(),
    })
}

/// Indices of the centres whose bytes differ between `new` and `old`.
fn moved_centres(new: &[f32], old: &[f32], d: usize) -> Vec<u32> {
    new.chunks_exact(d)
        .zip(old.chunks_exact(d))
        .enumerate()
        .filter(|(_, (a, b))| a.iter().zip(*b).any(|(p, q)| p.to_bits() != q.to_bits()))
        .map(|(j, _)| j as u32)
        .collect()
}

/// `out (m×k) = xb (m×d) · cᵀ`, single-threaded.
fn gemm_xct(xb: &[f32], m: usize, d: usize, c: &[f32], k: usize, out: &mut [f32]) {
    use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef, Par};
    let lhs = MatRef::from_row_major_slice(xb, m, d);
    let rhs = MatRef::from_row_major_slice(c, k, d).transpose();
    let dst = MatMut::from_row_major_slice_mut(out, m, k);
    matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, Par::Seq);
}

/// Per-block scratch of [`pass`].
#[derive(Default)]
struct Scratch {
    /// Distances of the block when there is no cache.
    dots: Vec<f32>,
    /// Dot products with the moved centres only.
    sub: Vec<f32>,
    /// Rows of the block whose label changed, with their previous label.
    changed: Vec<(u32, u32)>,
    /// (bucket, row) of each sum update: bucket `2·cluster + (sign < 0)`.
    entries: Vec<(u32, u32)>,
    rows: Vec<u32>,
}

/// One assignment pass by blocks of rows: the nearest centre of every point (ties to the lowest
/// index; with `si`, modulo sign, the sign in the [`NEG`] bit) into `labels`, which hold the
/// previous labels on entry. With `cache` (`n × k` dot products of the previous pass), only the
/// columns of the `moved` centres are recomputed (all when `moved` is None): a centre whose
/// members did not change has the same bytes, so its dot products are the ones cached. With
/// `acc`, each block's points that changed cluster (all of them on the first pass) are moved,
/// exactly in fixed point, from their old cluster's sum to the new one's in the worker's slot
/// while the block is still in cache; the sums of the clusters stay exact sums over their
/// current members. Returns the number of changed labels and, without `acc`, the inertia of the
/// new labels (blocks reduced in a fixed order).
#[allow(clippy::too_many_arguments)]
fn pass(
    x: &[f32],
    n: usize,
    d: usize,
    centres: &[f32],
    moved: Option<&[u32]>,
    cache: Option<&mut [f32]>,
    labels: &mut [u32],
    si: bool,
    acc: Option<(&FixedPoint, &Slots)>,
) -> (usize, f64) {
    let k = centres.len() / d;
    let simd = Simd::detect();
    let cn: Vec<f32> = centres
        .chunks_exact(d)
        .map(|c| simd.sq_norm(c) as f32)
        .collect();
    // The moved centres, packed, when they are a strict subset. One moved centre is padded with
    // an unmoved one: faer computes a one-column product as a matrix-vector product, whose
    // rounding differs from its GEMM kernels; from two columns on, every column has the bytes
    // of the full product (tested: `gemm_columns_do_not_depend_on_the_other_columns`), so the
    // cache gives the same bytes as recomputing every distance.
    let subset: Option<(Vec<f32>, Vec<u32>)> = match moved {
        Some(idx) if idx.len() < k => {
            let mut idx = idx.to_vec();
            if idx.len() == 1 {
                idx.push(((idx[0] as usize + 1) % k) as u32);
            }
            let mut c = Vec::with_capacity(idx.len() * d);
            for &j in &idx {
                c.extend_from_slice(&centres[j as usize * d..(j as usize + 1) * d]);
            }
            Some((c, idx))
        }
        _ => None,
    };
    let block = |s: &mut Scratch, lab: &mut [u32], xb: &[f32], dots: &mut [f32]| -> (usize, f64) {
        let m = lab.len();
        match &subset {
            None => gemm_xct(xb, m, d, centres, k, dots),
            Some((c, idx)) if !idx.is_empty() => {
                let km = idx.len();
                s.sub.resize(m * km, 0.0);
                gemm_xct(xb, m, d, c, km, &mut s.sub);
                for (drow, srow) in dots.chunks_exact_mut(k).zip(s.sub.chunks_exact(km)) {
                    for (&j, &v) in idx.iter().zip(srow) {
                        drow[j as usize] = v;
                    }
                }
            }
            Some(_) => {}
        }
        s.changed.clear();
        for (i, (l, row)) in lab.iter_mut().zip(dots.chunks_exact(k)).enumerate() {
            let new = if si {
                argmin_dist_si(&cn, row)
            } else {
                argmin_dist(&cn, row)
            };
            if new != *l {
                s.changed.push((i as u32, *l));
                *l = new;
            }
        }
        let changed = s.changed.len();
        match acc {
            Some((fx, slots)) => {
                if changed > 0 {
                    move_members(s, lab, xb, d, fx, slots, simd);
                }
                (changed, 0.0)
            }
            None => {
                let inertia = xb
                    .chunks_exact(d)
                    .zip(lab.iter())
                    .map(|(row, &l)| {
                        let c = cluster(l);
                        simd.sq_dist_signed(row, &centres[c * d..(c + 1) * d], is_neg(l))
                    })
                    .sum::<f64>();
                (changed, inertia)
            }
        }
    };
    let rows = block_rows(n, d);
    let parts: Vec<(usize, f64)> = match cache {
        Some(cache) => labels
            .par_chunks_mut(rows)
            .zip(x.par_chunks(rows * d))
            .zip(cache.par_chunks_mut(rows * k))
            .map_init(Scratch::default, |s, ((lab, xb), dots)| {
                block(s, lab, xb, dots)
            })
            .collect(),
        None => labels
            .par_chunks_mut(rows)
            .zip(x.par_chunks(rows * d))
            .map_init(Scratch::default, |s, (lab, xb)| {
                let mut dots = std::mem::take(&mut s.dots);
                dots.resize(lab.len() * k, 0.0);
                let r = block(s, lab, xb, &mut dots);
                s.dots = dots;
                r
            })
            .collect(),
    };
    parts
        .iter()
        .fold((0, 0.0), |(c, e), &(pc, pe)| (c + pc, e + pe))
}

/// Moves the block's changed rows (`s.changed`, labels now in `lab`) between the cluster sums of
/// the worker's slot: `−s_old·x` from the old cluster, `+s_new·x` to the new one. The updates
/// are bucketed by cluster and sign so that each bucket is added in one streaming pass.
fn move_members(
    s: &mut Scratch,
    lab: &[u32],
    xb: &[f32],
    d: usize,
    fx: &FixedPoint,
    slots: &Slots,
    simd: Simd,
) {
    let bucket = |l: u32, negate: bool| 2 * cluster(l) as u32 + (is_neg(l) != negate) as u32;
    s.entries.clear();
    let mut slot = slots.lock();
    let slot = &mut *slot;
    for &(i, old) in &s.changed {
        let new = lab[i as usize];
        if old != NONE {
            s.entries.push((bucket(old, true), i));
            slot.members[cluster(old)] -= 1;
        }
        s.entries.push((bucket(new, false), i));
        slot.members[cluster(new)] += 1;
    }
    s.entries.sort_unstable();
    s.rows.clear();
    s.rows.extend(s.entries.iter().map(|&(_, i)| i));
    let mut start = 0;
    while start < s.entries.len() {
        let b = s.entries[start].0;
        let end = start + s.entries[start..].partition_point(|e| e.0 == b);
        let (j, neg) = ((b / 2) as usize, b % 2 == 1);
        let (dst, adds) = if neg {
            (&mut slot.neg[j * d..(j + 1) * d], &mut slot.n_neg[j])
        } else {
            (&mut slot.pos[j * d..(j + 1) * d], &mut slot.n_pos[j])
        };
        simd.fx_accumulate(dst, xb, d, &s.rows[start..end], &fx.scale);
        *adds += (end - start) as i64;
        start = end;
    }
}

/// Index of the smallest `cn[j] − 2·dot[j]` (the first on ties).
#[inline]
fn argmin_dist(cn: &[f32], dots: &[f32]) -> u32 {
    let mut best = 0u32;
    let mut best_v = f32::INFINITY;
    for (j, (&c, &p)) in cn.iter().zip(dots).enumerate() {
        let v = c - 2.0 * p;
        if v < best_v {
            best_v = v;
            best = j as u32;
        }
    }
    best
}

/// Index of the smallest `cn[j] − 2·|dot[j]|` (the first on ties), with [`NEG`] set when the
/// chosen `dot[j] < 0`.
#[inline]
fn argmin_dist_si(cn: &[f32], dots: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::INFINITY;
    for (j, (&c, &p)) in cn.iter().zip(dots).enumerate() {
        let v = c - 2.0 * p.abs();
        if v < best_v {
            best_v = v;
            best = j;
        }
    }
    if dots[best] < 0.0 {
        best as u32 | NEG
    } else {
        best as u32
    }
}

/// Exact cluster sums in 64-bit fixed point. Column j is scaled by `2^e_j`, chosen so that every
/// `|x_ij|·2^e_j < 2^P` with `P = min(51, 62 − ⌈log2(n+1)⌉)`: each value is rounded once (to
/// `2^-P` of the column's largest magnitude, finer than an f32 ulp of it for any n below
/// 2^38), and no sum of up to n of them can overflow. Integer addition is associative, so the
/// sums are the same bytes whatever the block, worker or order in which rows are added or
/// removed: this is what lets the update run inside the assignment pass, on rows still in
/// cache, with one accumulator per worker and no ordering between them, and what lets the sums
/// be updated by the points that changed cluster only, with the same bytes as summing afresh.
/// The sums are converted to f64 once, exactly rounded, before the means are taken.
struct FixedPoint {
    scale: Vec<f64>,
    inv_scale: Vec<f64>,
}

/// `1.5·2^52`: for |v| < 2^51, the bits of `v + MAGIC` are `bits(MAGIC) + round(v)`.
const MAGIC: f64 = 6_755_399_441_055_744.0;

/// `2^e` for an exponent within the normal f64 range.
fn pow2(e: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&e));
    f64::from_bits(((e + 1023) as u64) << 52)
}

impl FixedPoint {
    /// Scales from the per-column largest magnitudes (as bits, all finite) of n rows.
    fn new(max_bits: &[u32], n: usize) -> Self {
        let p = 51.min(62 - (usize::BITS - n.leading_zeros()) as i32);
        let scale: Vec<f64> = max_bits
            .iter()
            .map(|&b| {
                let m = f32::from_bits(b) as f64;
                if m == 0.0 {
                    1.0
                } else {
                    // m < 2^ex (f64 holds f32 subnormals as normals, so this is exact).
                    let ex = (m.to_bits() >> 52) as i32 - 1023 + 1;
                    pow2(p - ex)
                }
            })
            .collect();
        let inv_scale = scale.iter().map(|&s| 1.0 / s).collect();
        FixedPoint { scale, inv_scale }
    }
}

/// Exact sums (fixed point, without bias) and member counts of the clusters' current members.
struct ClusterSums {
    d: usize,
    fx: Vec<i64>,
    counts: Vec<i64>,
}

impl ClusterSums {
    fn new(k: usize, d: usize) -> Self {
        ClusterSums {
            d,
            fx: vec![0; k * d],
            counts: vec![0; k],
        }
    }

    /// The sums as f64 (one rounding each) and the counts.
    fn to_f64(&self, fp: &FixedPoint) -> (Vec<f64>, Vec<usize>) {
        let mut out = vec![0f64; self.fx.len()];
        out.par_chunks_mut(self.d)
            .zip(self.fx.par_chunks(self.d))
            .for_each(|(o, s)| {
                for ((o, &s), &inv) in o.iter_mut().zip(s).zip(&fp.inv_scale) {
                    *o = s as f64 * inv;
                }
            });
        (out, self.counts.iter().map(|&c| c as usize).collect())
    }
}

/// A worker's pending changes to the cluster sums: fixed-point sums of the rows added with
/// sign + (`pos`) and with sign − (`neg`), each value biased by `bits(MAGIC)` (see
/// [`Simd::fx_accumulate`]), how many rows each got (to remove the bias), and the change in
/// the member counts.
struct Slot {
    pos: Vec<i64>,
    neg: Vec<i64>,
    n_pos: Vec<i64>,
    n_neg: Vec<i64>,
    members: Vec<i64>,
}

/// Per-worker accumulators (at most [`SLOT_BYTES`] in all, at least one). A worker uses slot
/// `thread index % slots`; the lock is uncontended when there is one slot per thread.
struct Slots(Vec<std::sync::Mutex<Slot>>);

/// Memory budget of the per-worker fixed-point accumulators.
const SLOT_BYTES: usize = 256 << 20;

impl Slots {
    fn new(k: usize, d: usize) -> Self {
        let per = 2 * (k * d * 8) + 3 * k * 8;
        let count = rayon::current_num_threads().min(SLOT_BYTES / per).max(1);
        Slots(
            (0..count)
                .map(|_| {
                    std::sync::Mutex::new(Slot {
                        pos: vec![0; k * d],
                        neg: vec![0; k * d],
                        n_pos: vec![0; k],
                        n_neg: vec![0; k],
                        members: vec![0; k],
                    })
                })
                .collect(),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        let i = rayon::current_thread_index().unwrap_or(0) % self.0.len();
        // A poisoned slot means a worker panicked; that panic is already on its way up.
        self.0[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the pending changes of every slot to `sums` (exact, any order) and clears them;
    /// only the clusters that got changes are touched.
    fn drain_into(&self, sums: &mut ClusterSums) {
        let d = sums.d;
        let magic = MAGIC.to_bits() as i64;
        {
            let slots: Vec<_> = self
                .0
                .iter()
                .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()))
                .collect();
            for s in &slots {
                for (c, &m) in sums.counts.iter_mut().zip(&s.members) {
                    *c += m;
                }
            }
            sums.fx.par_chunks_mut(d).enumerate().for_each(|(j, row)| {
                for s in &slots {
                    if s.n_pos[j] > 0 {
                        let bias = magic.wrapping_mul(s.n_pos[j]);
                        for (a, &t) in row.iter_mut().zip(&s.pos[j * d..(j + 1) * d]) {
                            *a = a.wrapping_add(t.wrapping_sub(bias));
                        }
                    }
                    if s.n_neg[j] > 0 {
                        let bias = magic.wrapping_mul(s.n_neg[j]);
                        for (a, &t) in row.iter_mut().zip(&s.neg[j * d..(j + 1) * d]) {
                            *a = a.wrapping_sub(t.wrapping_sub(bias));
                        }
                    }
                }
            });
        }
        self.0.par_iter().for_each(|s| {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            let s = &mut *s;
            for j in 0..s.members.len() {
                if s.n_pos[j] > 0 {
                    s.pos[j * d..(j + 1) * d].fill(0);
                    s.n_pos[j] = 0;
                }
                if s.n_neg[j] > 0 {
                    s.neg[j * d..(j + 1) * d].fill(0);
                    s.n_neg[j] = 0;
                }
                s.members[j] = 0;
            }
        });
    }
}

/// New centres from the cluster sums and counts of `labels`: empty clusters re-seeded as
/// scikit-learn does (`centres` are the ones the labels were assigned with), then the means.
fn update_centres(
    x: &[f32],
    n: usize,
    d: usize,
    centres: &[f32],
    labels: &[u32],
    mut sums: Vec<f64>,
    mut counts: Vec<usize>,
) -> Vec<f32> {
    let k = centres.len() / d;
    let empty: Vec<usize> = (0..k).filter(|&j| counts[j] == 0).collect();
    if !empty.is_empty() {
        let far = farthest_points(x, n, d, centres, labels, empty.len());
        for (&j_new, &i) in empty.iter().zip(&far) {
            let j_old = cluster(labels[i]);
            let row = &x[i * d..(i + 1) * d];
            // The point counted as ±x in its old cluster's sum.
            let sign = if is_neg(labels[i]) { -1.0 } else { 1.0 };
            for (s, &v) in sums[j_old * d..(j_old + 1) * d].iter_mut().zip(row) {
                *s -= sign * v as f64;
            }
            for (s, &v) in sums[j_new * d..(j_new + 1) * d].iter_mut().zip(row) {
                *s = v as f64;
            }
            counts[j_new] = 1;
            counts[j_old] -= 1;
        }
    }
    let mut out = vec![0f32; k * d];
    let mut mean: Option<Vec<f64>> = None;
    for j in 0..k {
        let dst = &mut out[j * d..(j + 1) * d];
        if counts[j] > 0 {
            let c = counts[j] as f64;
            for (o, s) in dst.iter_mut().zip(&sums[j * d..(j + 1) * d]) {
                *o = (s / c) as f32;
            }
        } else {
            // A cluster emptied by giving away its only point: scikit-learn leaves its (zero)
            // sum, which in its mean-centred coordinates is the mean of x.
            let m = mean.get_or_insert_with(|| column_means(x, n, d));
            for (o, &v) in dst.iter_mut().zip(m.iter()) {
                *o = v as f32;
            }
        }
    }
    out
}

/// The `count` points farthest from their assigned centre, farthest first (lowest index on ties).
fn farthest_points(
    x: &[f32],
    n: usize,
    d: usize,
    centres: &[f32],
    labels: &[u32],
    count: usize,
) -> Vec<usize> {
    let simd = Simd::detect();
    let dist: Vec<f64> = (0..n)
        .into_par_iter()
        .map(|i| {
            let l = labels[i];
            let c = cluster(l);
            simd.sq_dist_signed(
                &x[i * d..(i + 1) * d],
                &centres[c * d..(c + 1) * d],
                is_neg(l),
            )
        })
        .collect();
    let mut idx: Vec<usize> = (0..n).collect();
    let cmp = |a: &usize, b: &usize| dist[*b].total_cmp(&dist[*a]).then(a.cmp(b));
    if count < n {
        idx.select_nth_unstable_by(count, cmp);
        idx.truncate(count);
    }
    idx.sort_unstable_by(cmp);
    idx
}

/// Σ_j ‖new_j − old_j‖² in f64.
fn centre_shift(new: &[f32], old: &[f32]) -> f64 {
    new.iter()
        .zip(old)
        .map(|(&a, &b)| {
            let t = a as f64 - b as f64;
            t * t
        })
        .sum()
}

/// Σ_i ‖x_i − s_i·c_{label_i}‖², f64, blocks reduced in a fixed order.
fn inertia(x: &[f32], n: usize, d: usize, centres: &[f32], labels: &[u32]) -> f64 {
    let simd = Simd::detect();
    let rows = block_rows(n, d);
    let partial: Vec<f64> = x
        .par_chunks(rows * d)
        .zip(labels.par_chunks(rows))
        .map(|(xb, lab)| {
            xb.chunks_exact(d)
                .zip(lab)
                .map(|(row, &l)| {
                    let c = cluster(l);
                    simd.sq_dist_signed(row, &centres[c * d..(c + 1) * d], is_neg(l))
                })
                .sum::<f64>()
        })
        .collect();
    partial.iter().sum()
}

/// Columns per task of the column statistics.
const STAT_COLS: usize = 1024;

/// Per-column means of x (f64), columns in parallel, rows summed in order.
fn column_means(x: &[f32], n: usize, d: usize) -> Vec<f64> {
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

// ---------------------------------------------------------------------------------------------
// Seeding

/// Where k-means++ seeding measures distances: the points themselves or, for wide data (see
/// `projects_for_seeding`), their random projection `R·x` (R drawn once per call, shared by the
/// restarts). What is projected is what costs least: all of x once for every restart (`whole`,
/// made by the first restart) when the restarts' subsamples together cover at least n rows, else
/// each restart's own subsample.
struct SeedSpace {
    /// R (p × d), when projecting.
    r: Option<Vec<f32>>,
    /// Seed every restart from `whole` (all of x), not from its own subsample's projection.
    share_whole: bool,
    whole: Option<SeedPoints>,
}

/// Rows as seeding sees them: their projection (None: the rows themselves) and their exact
/// squared norms.
struct SeedPoints {
    y: Option<Vec<f32>>,
    norms: Vec<f64>,
}

impl SeedSpace {
    fn new(
        n: usize,
        d: usize,
        k: usize,
        n_init: usize,
        projection: bool,
        seeds: &mut SplitMix64,
    ) -> Self {
        let r = (projection && projects_for_seeding(d, k)).then(|| {
            sign_matrix(
                SEED_PROJECTION_DIM,
                d,
                &mut Xoshiro256::new(seeds.next_u64()),
            )
        });
        let m = seed_points_used(n, k);
        let share_whole = m == n || (r.is_some() && n <= n_init.saturating_mul(m));
        SeedSpace {
            r,
            share_whole,
            whole: None,
        }
    }
}

/// Points a restart seeds from: all n, or a subsample of `SEED_POINTS_PER_CENTRE·k`.
fn seed_points_used(n: usize, k: usize) -> usize {
    n.min(SEED_POINTS_PER_CENTRE.saturating_mul(k))
}

fn seed_points(rows: &[f32], m: usize, d: usize, r: Option<&[f32]>) -> SeedPoints {
    let simd = Simd::detect();
    let norms = rows.par_chunks(d).map(|v| simd.sq_norm(v)).collect();
    let y = r.map(|r| project(rows, m, d, r));
    SeedPoints { y, norms }
}

/// The rows `idx` of the row-major `src` (rows of `w` values), packed.
fn gather_rows(src: &[f32], w: usize, idx: &[usize]) -> Vec<f32> {
    let mut out = vec![0f32; idx.len() * w];
    out.par_chunks_mut(w)
        .zip(idx.par_iter())
        .for_each(|(dst, &i)| dst.copy_from_slice(&src[i * w..(i + 1) * w]));
    out
}

/// Greedy k-means++ (scikit-learn's `_kmeans_plusplus`) on x, or on a subsample of
/// `SEED_POINTS_PER_CENTRE·k` points when x has more; `si`: sign-invariant distances. The
/// distances are taken in `space` (a projection for wide x). Returns k rows of x.
fn seed_kmeans_pp(
    x: &[f32],
    space: &mut SeedSpace,
    n: usize,
    d: usize,
    k: usize,
    rng: &mut Xoshiro256,
    si: bool,
) -> Result<Vec<f32>> {
    let w = if space.r.is_some() {
        SEED_PROJECTION_DIM
    } else {
        d
    };
    let m = seed_points_used(n, k);
    let idx: Option<Vec<usize>> = (m < n).then(|| {
        // Partial Fisher-Yates: m distinct indices, then sorted for locality.
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..m {
            let j = i + rng.below(n - i);
            idx.swap(i, j);
        }
        idx.truncate(m);
        idx.sort_unstable();
        idx
    });
    let chosen = if space.share_whole {
        let SeedSpace { r, whole, .. } = space;
        let pts = whole.get_or_insert_with(|| seed_points(x, n, d, r.as_deref()));
        let all = pts.y.as_deref().unwrap_or(x);
        match &idx {
            None => kmeans_pp(all, &pts.norms, n, w, k, rng, si)?,
            Some(idx) => {
                let norms: Vec<f64> = idx.iter().map(|&i| pts.norms[i]).collect();
                let local = kmeans_pp(&gather_rows(all, w, idx), &norms, m, w, k, rng, si)?;
                local.into_iter().map(|i| idx[i]).collect()
            }
        }
    } else {
        // Only when m < n (share_whole holds for m = n).
        let idx = idx.unwrap_or_default();
        let sample = gather_rows(x, d, &idx);
        let pts = seed_points(&sample, m, d, space.r.as_deref());
        let local = kmeans_pp(
            pts.y.as_deref().unwrap_or(&sample),
            &pts.norms,
            m,
            w,
            k,
            rng,
            si,
        )?;
        local.into_iter().map(|i| idx[i]).collect()
    };
    let mut centres = Vec::with_capacity(k * d);
    for i in chosen {
        centres.extend_from_slice(&x[i * d..(i + 1) * d]);
    }
    Ok(centres)
}

/// Dimensions of the random projection that k-means++ seeding runs in for wide data.
pub const SEED_PROJECTION_DIM: usize = 256;

/// Whether seeding measures distances in a random projection: for d ≥ 4·p and k ≥ 16
/// (p = [`SEED_PROJECTION_DIM`]). Each of the k seeding steps streams every sampled point once
/// against 2 + ln k candidates (a skinny, memory-bound GEMM), so on the units of a 7B model's
/// module (d = 8192, k = 64) seeding cost as much as dozens of Lloyd iterations; projecting costs
/// one wide, compute-bound GEMM, after which the steps are p/d as large. The squared distance
/// `‖x‖² + ‖c‖² − 2·x·c` keeps the exact norms and takes the dot product in the projection
/// (`x·c ≈ Rx·Rc`, error ~‖x‖‖c‖/√p): the error of a projected norm would be shared by every
/// distance to the same candidate and bias the greedy choice between candidates. k-means++
/// only needs D² sampling and that choice; the seeds are still points of x, and Lloyd runs on
/// x itself. Measured against exact seeding (benches/RESULTS.md, bench_kmeans): the same final
/// inertia on average, 2-5× faster on LoRA unit matrices.
fn projects_for_seeding(d: usize, k: usize) -> bool {
    d >= 4 * SEED_PROJECTION_DIM && k >= 16
}

/// A random sign matrix (p × d, entries ±1/√p drawn from `rng`): `R·x` is a
/// Johnson-Lindenstrauss projection (E[Rx·Rc] = x·c).
fn sign_matrix(p: usize, d: usize, rng: &mut Xoshiro256) -> Vec<f32> {
    let scale = 1.0 / (p as f32).sqrt();
    let mut r = vec![0f32; p * d];
    for chunk in r.chunks_mut(64) {
        let bits = rng.next_u64();
        for (j, v) in chunk.iter_mut().enumerate() {
            *v = if bits >> j & 1 == 1 { scale } else { -scale };
        }
    }
    r
}

/// `y (n × p) = x · Rᵀ` for R (p × d), one GEMM per fixed block of rows.
fn project(x: &[f32], n: usize, d: usize, r: &[f32]) -> Vec<f32> {
    let p = r.len() / d;
    let rows = block_rows(n, d);
    let mut y = vec![0f32; n * p];
    y.par_chunks_mut(rows * p)
        .zip(x.par_chunks(rows * d))
        .for_each(|(out, xb)| gemm_xct(xb, xb.len() / d, d, r, p, out));
    y
}

/// Greedy k-means++ (scikit-learn's) over the m rows of `s` (m × d) whose squared norms are
/// `sn` (the exact norms, also when s is a projection): the indices of the k chosen rows.
fn kmeans_pp(
    s: &[f32],
    sn: &[f64],
    m: usize,
    d: usize,
    k: usize,
    rng: &mut Xoshiro256,
    si: bool,
) -> Result<Vec<usize>> {
    let trials = 2 + (k as f64).ln().floor() as usize;
    let mut chosen = Vec::with_capacity(k);
    let first = rng.below(m);
    chosen.push(first);
    let first_row = &s[first * d..(first + 1) * d];
    let (mut closest, pots) = candidate_distances(s, sn, m, d, first_row, &[sn[first]], None, si);
    let mut pot = pots[0];
    let mut cumsum = vec![0f64; m];
    let mut cand = vec![0f32; trials * d];
    let mut cn = vec![0f64; trials];
    let mut ids = vec![0usize; trials];
    for _ in 1..k {
        check_cancelled()?;
        let mut acc = 0f64;
        for (cs, &v) in cumsum.iter_mut().zip(&closest) {
            acc += v;
            *cs = acc;
        }
        for (t, id) in ids.iter_mut().enumerate() {
            let r = rng.next_f64() * pot;
            *id = cumsum.partition_point(|&v| v < r).min(m - 1);
            cand[t * d..(t + 1) * d].copy_from_slice(&s[*id * d..(*id + 1) * d]);
            cn[t] = sn[*id];
        }
        let (dist, pots) = candidate_distances(s, sn, m, d, &cand, &cn, Some(&closest), si);
        let mut best = 0;
        for (t, &p) in pots.iter().enumerate() {
            if p < pots[best] {
                best = t;
            }
        }
        pot = pots[best];
        for (cl, row) in closest.iter_mut().zip(dist.chunks_exact(trials)) {
            *cl = row[best];
        }
        chosen.push(ids[best]);
    }
    Ok(chosen)
}

/// For candidates `cand` (t × d) with squared norms `cn`: `dist[i·t + j] = min(closest[i],
/// sn_i + cn_j − 2·s_i·cand_j)` (clamped ≥ 0; without the min when `closest` is None) and each
/// candidate's potential `Σ_i dist[i·t + j]`, reduced over blocks in a fixed order. With `si`,
/// the dot product's absolute value.
#[allow(clippy::too_many_arguments)]
fn candidate_distances(
    s: &[f32],
    sn: &[f64],
    m: usize,
    d: usize,
    cand: &[f32],
    cn: &[f64],
    closest: Option<&[f64]>,
    si: bool,
) -> (Vec<f64>, Vec<f64>) {
    let t = cand.len() / d;
    let rows = block_rows(m, d);
    let mut dist = vec![0f64; m * t];
    let partial: Vec<Vec<f64>> = dist
        .par_chunks_mut(rows * t)
        .enumerate()
        .map_init(Vec::new, |dots: &mut Vec<f32>, (b, out)| {
            let r0 = b * rows;
            let mb = out.len() / t;
            dots.resize(mb * t, 0.0);
            gemm_xct(&s[r0 * d..(r0 + mb) * d], mb, d, cand, t, dots);
            let mut pots = vec![0f64; t];
            for (i, (o, p)) in out
                .chunks_exact_mut(t)
                .zip(dots.chunks_exact(t))
                .enumerate()
            {
                let xn = sn[r0 + i];
                for j in 0..t {
                    let pj = if si { p[j].abs() } else { p[j] };
                    let mut v = (xn - 2.0 * pj as f64 + cn[j]).max(0.0);
                    if let Some(cl) = closest {
                        v = v.min(cl[r0 + i]);
                    }
                    o[j] = v;
                    pots[j] += v;
                }
            }
            pots
        })
        .collect();
    let mut pots = vec![0f64; t];
    for p in &partial {
        for (a, b) in pots.iter_mut().zip(p) {
            *a += b;
        }
    }
    (dist, pots)
}

// ---------------------------------------------------------------------------------------------
// PRNG: splitmix64 (seed stream) and xoshiro256** (draws), as published by Vigna.

struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

struct Xoshiro256([u64; 4]);

impl Xoshiro256 {
    fn new(seed: u64) -> Self {
        let mut sm = SplitMix64(seed);
        Xoshiro256([sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (n ≥ 1), by multiply-shift (bias below 2⁻⁶⁴·n, irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// `Σ v²` in f64 with 8 lanes (AVX2 when the CPU has it): the same bytes on every CPU.
pub(crate) fn sq_norm(v: &[f32]) -> f64 {
    Simd::detect().sq_norm(v)
}

// ---------------------------------------------------------------------------------------------
// Small kernels, compiled twice: baseline x86-64 and AVX2 (chosen at run time). Their arithmetic
// is fixed by the source (no reassociation, no FMA contraction), so both give the same bytes.

#[derive(Clone, Copy)]
struct Simd {
    #[cfg(target_arch = "x86_64")]
    avx2: bool,
}

impl Simd {
    fn detect() -> Self {
        Simd {
            #[cfg(target_arch = "x86_64")]
            avx2: std::arch::is_x86_feature_detected!("avx2"),
        }
    }

    /// `acc[f] += Σ_{r in rows} fixed(xb[r·d + f]·scale[f])`, wrapping (see `FixedPoint`).
    #[inline]
    fn fx_accumulate(self, acc: &mut [i64], xb: &[f32], d: usize, rows: &[u32], scale: &[f64]) {
        assert!(acc.len() == d && scale.len() == d);
        assert!(rows.iter().all(|&r| (r as usize + 1) * d <= xb.len()));
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 support was detected at run time; the bounds were checked above.
            return unsafe { avx2::fx_accumulate(acc, xb, d, rows, scale) };
        }
        kern::fx_accumulate(acc, xb, d, rows, scale, 0)
    }

    /// `m[j] = max(m[j], bits(row[j]) & 0x7fff_ffff)`.
    #[inline]
    fn abs_max_bits(self, m: &mut [u32], row: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 support was detected at run time.
            return unsafe { avx2::abs_max_bits(m, row) };
        }
        kern::abs_max_bits(m, row)
    }

    #[inline]
    fn sq_dist(self, a: &[f32], b: &[f32]) -> f64 {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 support was detected at run time.
            return unsafe { avx2::sq_dist(a, b) };
        }
        kern::sq_dist(a, b)
    }

    /// `‖a − b‖²`, or `‖a + b‖²` when `neg`.
    #[inline]
    fn sq_dist_signed(self, a: &[f32], b: &[f32], neg: bool) -> f64 {
        if !neg {
            return self.sq_dist(a, b);
        }
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 support was detected at run time.
            return unsafe { avx2::sq_sum(a, b) };
        }
        kern::sq_sum(a, b)
    }

    #[inline]
    fn sq_norm(self, a: &[f32]) -> f64 {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 support was detected at run time.
            return unsafe { avx2::sq_norm(a) };
        }
        kern::sq_norm(a)
    }
}

mod kern {
    use super::MAGIC;

    #[inline(always)]
    pub fn abs_max_bits(m: &mut [u32], row: &[f32]) {
        for (a, &v) in m.iter_mut().zip(row) {
            *a = (*a).max(v.to_bits() & 0x7fff_ffff);
        }
    }

    /// Columns `from..d` of [`super::Simd::fx_accumulate`].
    #[inline(always)]
    pub fn fx_accumulate(
        acc: &mut [i64],
        xb: &[f32],
        d: usize,
        rows: &[u32],
        scale: &[f64],
        from: usize,
    ) {
        for f in from..d {
            let mut t = 0i64;
            for &r in rows {
                let v = xb[r as usize * d + f] as f64 * scale[f] + MAGIC;
                t = t.wrapping_add(v.to_bits() as i64);
            }
            acc[f] = acc[f].wrapping_add(t);
        }
    }

    /// Eight interleaved f64 partial sums, combined pairwise: a fixed order.
    #[inline(always)]
    fn sum8(acc: [f64; 8], tail: f64) -> f64 {
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
    }

    #[inline(always)]
    pub fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
        let mut acc = [0f64; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for l in 0..8 {
                let t = x[l] as f64 - y[l] as f64;
                acc[l] += t * t;
            }
        }
        let mut tail = 0f64;
        for (&x, &y) in ra.iter().zip(rb) {
            let t = x as f64 - y as f64;
            tail += t * t;
        }
        sum8(acc, tail)
    }

    /// `‖a + b‖²`, same order of operations as [`sq_dist`].
    #[inline(always)]
    pub fn sq_sum(a: &[f32], b: &[f32]) -> f64 {
        let mut acc = [0f64; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for l in 0..8 {
                let t = x[l] as f64 + y[l] as f64;
                acc[l] += t * t;
            }
        }
        let mut tail = 0f64;
        for (&x, &y) in ra.iter().zip(rb) {
            let t = x as f64 + y as f64;
            tail += t * t;
        }
        sum8(acc, tail)
    }

    #[inline(always)]
    pub fn sq_norm(a: &[f32]) -> f64 {
        let mut acc = [0f64; 8];
        let ca = a.chunks_exact(8);
        let ra = ca.remainder();
        for x in ca {
            for l in 0..8 {
                let t = x[l] as f64;
                acc[l] += t * t;
            }
        }
        let mut tail = 0f64;
        for &x in ra {
            tail += x as f64 * x as f64;
        }
        sum8(acc, tail)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::MAGIC;
    use std::arch::x86_64::*;

    /// 16 columns at a time: 4×4 f64 lanes of scale and of running sums stay in registers
    /// while the cluster's rows stream by. Same arithmetic as `kern::fx_accumulate` (the
    /// product by a power of two is exact, so mul-then-add rounds once, like the scalar code).
    ///
    /// # Safety
    /// AVX2 must be available; `acc` and `scale` have length d and every `(r+1)·d <= xb.len()`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn fx_accumulate(
        acc: &mut [i64],
        xb: &[f32],
        d: usize,
        rows: &[u32],
        scale: &[f64],
    ) {
        let magic = _mm256_set1_pd(MAGIC);
        let d16 = d / 16 * 16;
        let (xp, sp, ap) = (xb.as_ptr(), scale.as_ptr(), acc.as_mut_ptr());
        let mut c = 0;
        while c < d16 {
            let s0 = _mm256_loadu_pd(sp.add(c));
            let s1 = _mm256_loadu_pd(sp.add(c + 4));
            let s2 = _mm256_loadu_pd(sp.add(c + 8));
            let s3 = _mm256_loadu_pd(sp.add(c + 12));
            let mut a0 = _mm256_setzero_si256();
            let mut a1 = _mm256_setzero_si256();
            let mut a2 = _mm256_setzero_si256();
            let mut a3 = _mm256_setzero_si256();
            for &r in rows {
                let p = xp.add(r as usize * d + c);
                let y0 = _mm256_add_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(p)), s0), magic);
                let y1 = _mm256_add_pd(
                    _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(p.add(4))), s1),
                    magic,
                );
                let y2 = _mm256_add_pd(
                    _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(p.add(8))), s2),
                    magic,
                );
                let y3 = _mm256_add_pd(
                    _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(p.add(12))), s3),
                    magic,
                );
                a0 = _mm256_add_epi64(a0, _mm256_castpd_si256(y0));
                a1 = _mm256_add_epi64(a1, _mm256_castpd_si256(y1));
                a2 = _mm256_add_epi64(a2, _mm256_castpd_si256(y2));
                a3 = _mm256_add_epi64(a3, _mm256_castpd_si256(y3));
            }
            let q = ap.add(c) as *mut __m256i;
            _mm256_storeu_si256(q, _mm256_add_epi64(_mm256_loadu_si256(q), a0));
            _mm256_storeu_si256(q.add(1), _mm256_add_epi64(_mm256_loadu_si256(q.add(1)), a1));
            _mm256_storeu_si256(q.add(2), _mm256_add_epi64(_mm256_loadu_si256(q.add(2)), a2));
            _mm256_storeu_si256(q.add(3), _mm256_add_epi64(_mm256_loadu_si256(q.add(3)), a3));
            c += 16;
        }
        super::kern::fx_accumulate(acc, xb, d, rows, scale, d16)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn abs_max_bits(m: &mut [u32], row: &[f32]) {
        super::kern::abs_max_bits(m, row)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
        super::kern::sq_dist(a, b)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn sq_sum(a: &[f32], b: &[f32]) -> f64 {
        super::kern::sq_sum(a, b)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn sq_norm(a: &[f32]) -> f64 {
        super::kern::sq_norm(a)
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// Timing harness only: forces the rows per block.
    pub(super) static BLOCK_OVERRIDE: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);

    // ---- data -------------------------------------------------------------------------------

    /// Gaussian blobs: `centres` random in [-scale, scale]^d, unit-variance points around them.
    fn blobs(
        n: usize,
        d: usize,
        n_centres: usize,
        scale: f32,
        seed: u64,
    ) -> (Vec<f32>, Vec<usize>) {
        let mut rng = Xoshiro256::new(seed);
        let centres: Vec<f32> = (0..n_centres * d)
            .map(|_| (rng.next_f64() as f32 * 2.0 - 1.0) * scale)
            .collect();
        let mut x = vec![0f32; n * d];
        let mut truth = vec![0usize; n];
        for i in 0..n {
            let c = i % n_centres;
            truth[i] = c;
            for j in 0..d {
                x[i * d + j] = centres[c * d + j] + gauss(&mut rng) as f32;
            }
        }
        (x, truth)
    }

    fn gauss(rng: &mut Xoshiro256) -> f64 {
        let u1 = 1.0 - rng.next_f64();
        let u2 = rng.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Labels, signs, iterations, inertia and centroids all equal to the bit.
    fn assert_same_bytes(a: &KMeansResult, b: &KMeansResult) {
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.signs, b.signs);
        assert_eq!(a.n_iter, b.n_iter);
        assert_eq!(a.inertia.to_bits(), b.inertia.to_bits());
        let bits = |c: &[f32]| c.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&a.centroids), bits(&b.centroids));
    }

    fn params(k: usize) -> KMeansParams {
        KMeansParams {
            k,
            ..KMeansParams::default()
        }
    }

    fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    // ---- the independent reference: plain scikit-learn Lloyd, no GEMM, no threads ------------

    struct Naive {
        centres: Vec<f32>,
        labels: Vec<usize>,
        inertia: f64,
        n_iter: usize,
    }

    fn naive_d2(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
            .sum()
    }

    fn naive_assign(x: &[f32], d: usize, c: &[f32]) -> Vec<usize> {
        x.chunks(d)
            .map(|row| {
                let mut best = (f64::INFINITY, 0);
                for (j, cj) in c.chunks(d).enumerate() {
                    let v = naive_d2(row, cj);
                    if v < best.0 {
                        best = (v, j);
                    }
                }
                best.1
            })
            .collect()
    }

    fn naive_lloyd(x: &[f32], d: usize, init: &[f32], max_iter: usize, tol: f64) -> Naive {
        let n = x.len() / d;
        let k = init.len() / d;
        let var_mean = {
            let mut tot = 0.0;
            for j in 0..d {
                let mu = (0..n).map(|i| x[i * d + j] as f64).sum::<f64>() / n as f64;
                tot += (0..n)
                    .map(|i| (x[i * d + j] as f64 - mu).powi(2))
                    .sum::<f64>()
                    / n as f64;
            }
            tot / d as f64
        };
        let tol_abs = tol * var_mean;
        let mut c = init.to_vec();
        let mut labels_old = vec![usize::MAX; n];
        let mut labels = vec![0; n];
        let mut strict = false;
        let mut n_iter = 0;
        for it in 0..max_iter {
            n_iter = it + 1;
            labels = naive_assign(x, d, &c);
            let mut sums = vec![0f64; k * d];
            let mut counts = vec![0usize; k];
            for i in 0..n {
                counts[labels[i]] += 1;
                for j in 0..d {
                    sums[labels[i] * d + j] += x[i * d + j] as f64;
                }
            }
            let empty: Vec<usize> = (0..k).filter(|&j| counts[j] == 0).collect();
            if !empty.is_empty() {
                let dist: Vec<f64> = (0..n)
                    .map(|i| {
                        naive_d2(
                            &x[i * d..(i + 1) * d],
                            &c[labels[i] * d..(labels[i] + 1) * d],
                        )
                    })
                    .collect();
                let mut idx: Vec<usize> = (0..n).collect();
                idx.sort_by(|&a, &b| dist[b].partial_cmp(&dist[a]).unwrap().then(a.cmp(&b)));
                for (e, &jn) in empty.iter().enumerate() {
                    let i = idx[e];
                    let jo = labels[i];
                    for j in 0..d {
                        sums[jo * d + j] -= x[i * d + j] as f64;
                        sums[jn * d + j] = x[i * d + j] as f64;
                    }
                    counts[jn] = 1;
                    counts[jo] -= 1;
                }
            }
            let mut new = vec![0f32; k * d];
            for j in 0..k {
                assert!(
                    counts[j] > 0,
                    "reference does not handle emptied singletons"
                );
                for f in 0..d {
                    new[j * d + f] = (sums[j * d + f] / counts[j] as f64) as f32;
                }
            }
            let shift: f64 = new
                .iter()
                .zip(&c)
                .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                .sum();
            c = new;
            if labels == labels_old {
                strict = true;
                break;
            }
            if shift <= tol_abs {
                break;
            }
            labels_old = labels.clone();
        }
        if !strict {
            labels = naive_assign(x, d, &c);
        }
        let inertia = (0..n)
            .map(|i| {
                naive_d2(
                    &x[i * d..(i + 1) * d],
                    &c[labels[i] * d..(labels[i] + 1) * d],
                )
            })
            .sum();
        Naive {
            centres: c,
            labels,
            inertia,
            n_iter,
        }
    }

    fn assert_matches_naive(r: &KMeansResult, nv: &Naive, tol: f32) {
        let labels: Vec<usize> = r.labels.iter().map(|&l| l as usize).collect();
        assert_eq!(labels, nv.labels, "labels differ from the reference");
        assert_eq!(r.n_iter, nv.n_iter, "n_iter differs from the reference");
        for (a, b) in r.centroids.iter().zip(&nv.centres) {
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "centre {a} vs {b}");
        }
        assert!(
            (r.inertia - nv.inertia).abs() <= 1e-9 * nv.inertia.max(1.0),
            "inertia {} vs {}",
            r.inertia,
            nv.inertia
        );
    }

    // ---- Lloyd against the reference --------------------------------------------------------

    #[test]
    fn lloyd_matches_reference_on_blobs() {
        // d = 1100 > STAT_COLS exercises two column chunks, 7 and 33 the kernels' tails; n
        // large enough for several blocks.
        for &(n, d, k, seed) in &[(900, 7, 5, 1u64), (600, 1100, 4, 2), (3000, 33, 12, 3)] {
            let (x, _) = blobs(n, d, k, 6.0, seed);
            // Initial centres: points of the first rows perturbed, so the run takes a few steps.
            let init: Vec<f32> = x[..k * d].iter().map(|v| v + 0.5).collect();
            let p = KMeansParams {
                k,
                max_iter: 50,
                tol: 0.0,
                ..params(k)
            };
            let r = kmeans(&x, n, d, &p, Some(&init)).unwrap();
            let nv = naive_lloyd(&x, d, &init, 50, 0.0);
            assert_matches_naive(&r, &nv, 1e-5);
        }
    }

    #[test]
    fn lloyd_matches_reference_when_not_converged() {
        // Overlapping data, few iterations: exercises the final assignment pass and tol.
        let (n, d, k) = (2000, 16, 10);
        let (x, _) = blobs(n, d, 3, 1.0, 7);
        let init = x[..k * d].to_vec();
        for &(max_iter, tol) in &[(1, 0.0), (3, 0.0), (300, 1e-2), (300, 1e-4)] {
            let p = KMeansParams {
                k,
                max_iter,
                tol,
                ..params(k)
            };
            let r = kmeans(&x, n, d, &p, Some(&init)).unwrap();
            let nv = naive_lloyd(&x, d, &init, max_iter, tol);
            assert_matches_naive(&r, &nv, 1e-4);
            // The labels always belong to the returned centres.
            let again = naive_assign(&x, d, &r.centroids);
            if r.n_iter < max_iter || max_iter < 300 {
                let l: Vec<usize> = r.labels.iter().map(|&l| l as usize).collect();
                assert_eq!(l, again);
            }
        }
    }

    #[test]
    fn empty_clusters_are_reseeded_like_sklearn() {
        let (n, d, k) = (500, 5, 6);
        let (x, _) = blobs(n, d, 4, 5.0, 11);
        // Three centres far away get no point in the first iteration.
        let mut init = x[..k * d].to_vec();
        for j in 3..6 {
            for f in 0..d {
                init[j * d + f] = 1e3 + j as f32;
            }
        }
        let p = KMeansParams {
            k,
            max_iter: 30,
            tol: 0.0,
            ..params(k)
        };
        let r = kmeans(&x, n, d, &p, Some(&init)).unwrap();
        let nv = naive_lloyd(&x, d, &init, 30, 0.0);
        assert_matches_naive(&r, &nv, 1e-5);
        for j in 0..k as i64 {
            assert!(r.labels.contains(&j), "cluster {j} is empty");
        }
    }

    #[test]
    fn emptied_singleton_goes_to_the_mean() {
        // Cluster 0 holds only 0.4 (distance 0.16 to its centre), cluster 1 holds 10.1 and 9.9
        // (distances 0.01), cluster 2 is empty: it takes 0.4, the farthest point, which leaves
        // cluster 0 with nothing. scikit-learn then leaves its zero sum, which in its
        // mean-centred coordinates is the mean of x.
        let x = vec![0.4f32, 10.1, 9.9];
        let init = vec![0.0f32, 10.0, 100.0];
        let p = KMeansParams {
            k: 3,
            max_iter: 1,
            tol: 0.0,
            ..params(3)
        };
        let r = kmeans(&x, 3, 1, &p, Some(&init)).unwrap();
        let mean = ((0.4f32 as f64 + 10.1f32 as f64 + 9.9f32 as f64) / 3.0) as f32;
        let mid = ((10.1f32 as f64 + 9.9f32 as f64) / 2.0) as f32;
        assert_eq!(r.centroids, vec![mean, mid, 0.4]);
        assert_eq!(r.n_iter, 1);
    }

    #[test]
    fn ties_go_to_the_lowest_index() {
        let x = vec![0.0f32, 1.0, 2.0];
        // Two identical centres, and 1.0 is equidistant from 0.0 and 2.0.
        let init = vec![1.0f32, 1.0, 3.0];
        let p = KMeansParams {
            k: 3,
            max_iter: 1,
            tol: 0.0,
            ..params(3)
        };
        let r = kmeans(&x, 3, 1, &p, Some(&init)).unwrap();
        let nv = naive_lloyd(&x, 1, &init, 1, 0.0);
        assert_matches_naive(&r, &nv, 0.0);
    }

    // ---- determinism and restarts -----------------------------------------------------------

    #[test]
    fn same_bytes_at_one_and_two_threads() {
        let (n, d, k) = (5000, 40, 8);
        let (x, _) = blobs(n, d, 8, 2.0, 5);
        let p = KMeansParams {
            k,
            n_init: 3,
            max_iter: 20,
            tol: 0.0,
            seed: 42,
            ..params(k)
        };
        let a = in_pool(1, || kmeans(&x, n, d, &p, None).unwrap());
        let b = in_pool(2, || kmeans(&x, n, d, &p, None).unwrap());
        let c = in_pool(3, || kmeans(&x, n, d, &p, None).unwrap());
        for r in [&b, &c] {
            assert_same_bytes(&a, r);
        }
        // Another seed gives another result.
        let q = KMeansParams { seed: 43, ..p };
        let e = in_pool(2, || kmeans(&x, n, d, &q, None).unwrap());
        assert_ne!(a.centroids, e.centroids);
    }

    #[test]
    fn gemm_columns_do_not_depend_on_the_other_columns() {
        // The dot-product cache of `pass` recomputes only the moved centres' columns and keeps
        // the others: exact only if a column's bytes do not depend on which other columns share
        // the GEMM call. Holds from two columns on (one column is faer's matrix-vector path,
        // which `pass` avoids by padding); checked at depths below and above faer's blocking.
        let mut rng = Xoshiro256::new(3);
        for &(m, d, k) in &[
            (256usize, 8192usize, 64usize),
            (256, 2048, 16),
            (250, 24, 12),
            (64, 20000, 33),
            (1024, 300, 7),
        ] {
            let x: Vec<f32> = (0..m * d).map(|_| rng.next_f64() as f32 - 0.5).collect();
            let c: Vec<f32> = (0..k * d).map(|_| rng.next_f64() as f32 - 0.5).collect();
            let mut full = vec![0f32; m * k];
            gemm_xct(&x, m, d, &c, k, &mut full);
            let tails = (2..k).map(|km| (k - km..k).collect::<Vec<usize>>());
            let strided = (2..k).map(|km| (0..k).step_by(k.div_ceil(km)).collect::<Vec<usize>>());
            for subset in tails.chain(strided).filter(|s| s.len() >= 2) {
                let cs: Vec<f32> = subset
                    .iter()
                    .flat_map(|&j| c[j * d..(j + 1) * d].iter().copied())
                    .collect();
                let km = subset.len();
                let mut part = vec![0f32; m * km];
                gemm_xct(&x, m, d, &cs, km, &mut part);
                for (prow, frow) in part.chunks_exact(km).zip(full.chunks_exact(k)) {
                    for (&p, &j) in prow.iter().zip(&subset) {
                        assert_eq!(
                            p.to_bits(),
                            frow[j].to_bits(),
                            "m={m} d={d} k={k} columns {subset:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_pass_with_one_moved_centre_gives_the_bytes_of_a_full_pass() {
        // One moved centre (a sign flip inside a cluster, or a relocation) is the case where a
        // one-column product would round differently; `pass` pads it to two columns.
        let (n, d, k) = (700, 2100, 8);
        let mut rng = Xoshiro256::new(8);
        let x: Vec<f32> = (0..n * d).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let mut c: Vec<f32> = (0..k * d).map(|_| rng.next_f64() as f32 - 0.5).collect();
        for moved in [vec![3u32], vec![k as u32 - 1], vec![0, 5]] {
            for si in [false, true] {
                let mut cache = vec![0f32; n * k];
                let mut labels = vec![NONE; n];
                pass(&x, n, d, &c, None, Some(&mut cache), &mut labels, si, None);
                for &j in &moved {
                    for v in &mut c[j as usize * d..(j as usize + 1) * d] {
                        *v *= 1.01;
                    }
                }
                let (ch, e) = pass(
                    &x,
                    n,
                    d,
                    &c,
                    Some(&moved),
                    Some(&mut cache),
                    &mut labels,
                    si,
                    None,
                );
                let mut fresh_cache = vec![0f32; n * k];
                let mut fresh = vec![NONE; n];
                let (_, ef) = pass(
                    &x,
                    n,
                    d,
                    &c,
                    None,
                    Some(&mut fresh_cache),
                    &mut fresh,
                    si,
                    None,
                );
                assert_eq!(labels, fresh);
                assert_eq!(e.to_bits(), ef.to_bits());
                let a: Vec<u32> = cache.iter().map(|v| v.to_bits()).collect();
                let b: Vec<u32> = fresh_cache.iter().map(|v| v.to_bits()).collect();
                assert!(
                    a == b,
                    "moved {moved:?} si={si}: cached dot products differ ({ch} labels changed)"
                );
            }
        }
    }

    #[test]
    fn cached_distances_give_the_same_bytes_as_recomputing_them() {
        // Overlapping blobs keep a few clusters changing for many iterations, so most passes
        // recompute a strict subset of the columns; the result must not depend on the cache.
        // The wide case crosses faer's depth blocking, where a one-column product would round
        // differently (see `gemm_columns_do_not_depend_on_the_other_columns`).
        let (n, d, k) = (3000, 24, 12);
        let (x, _) = blobs(n, d, 6, 0.8, 11);
        let (y, _, _) = signed_copies(1200, 20, 6, 3);
        let (w, _) = blobs(600, 2100, 5, 0.3, 4);
        for (data, dd, si) in [
            (&x, d, false),
            (&x, d, true),
            (&y, 20, true),
            (&w, 2100, false),
            (&w, 2100, true),
        ] {
            let nn = data.len() / dd;
            for &(max_iter, tol, n_init) in &[(50, 0.0, 3), (4, 0.0, 1), (300, 1e-4, 2)] {
                let p = KMeansParams {
                    k,
                    n_init,
                    max_iter,
                    tol,
                    seed: 5,
                    sign_invariant: si,
                    distance_cache: true,
                    seed_projection: true,
                };
                let cached = kmeans(data, nn, dd, &p, None).unwrap();
                let fresh = kmeans(
                    data,
                    nn,
                    dd,
                    &KMeansParams {
                        distance_cache: false,
                        ..p.clone()
                    },
                    None,
                )
                .unwrap();
                assert_same_bytes(&cached, &fresh);
            }
        }
    }

    #[test]
    fn restarts_keep_the_lowest_inertia() {
        let (n, d, k) = (1500, 6, 9);
        let (x, _) = blobs(n, d, 12, 3.0, 9);
        let one = KMeansParams {
            k,
            n_init: 1,
            seed: 3,
            ..params(k)
        };
        let many = KMeansParams {
            n_init: 6,
            ..one.clone()
        };
        let r1 = kmeans(&x, n, d, &one, None).unwrap();
        let r6 = kmeans(&x, n, d, &many, None).unwrap();
        // Restart 0 of both is the same run.
        assert!(r6.inertia <= r1.inertia);
        // Given init: n_init is ignored.
        let init = x[..k * d].to_vec();
        let a = kmeans(&x, n, d, &one, Some(&init)).unwrap();
        let b = kmeans(&x, n, d, &many, Some(&init)).unwrap();
        assert_eq!(a, b);
    }

    // ---- sign-invariant mode ----------------------------------------------------------------

    /// `k` prototypes in [-scale, scale]^d; point i is `s_i·p_{i % k} + noise` with random s_i.
    fn signed_copies(n: usize, d: usize, k: usize, seed: u64) -> (Vec<f32>, Vec<usize>, Vec<f32>) {
        let mut rng = Xoshiro256::new(seed);
        let protos: Vec<f32> = (0..k * d)
            .map(|_| (rng.next_f64() as f32 * 2.0 - 1.0) * 5.0)
            .collect();
        let mut x = vec![0f32; n * d];
        let mut truth = vec![0usize; n];
        let mut sign = vec![1f32; n];
        for i in 0..n {
            let c = i % k;
            truth[i] = c;
            sign[i] = if rng.next_u64() & 1 == 1 { -1.0 } else { 1.0 };
            for j in 0..d {
                x[i * d + j] = sign[i] * protos[c * d + j] + 0.3 * gauss(&mut rng) as f32;
            }
        }
        (x, truth, sign)
    }

    fn si_params(k: usize) -> KMeansParams {
        KMeansParams {
            k,
            n_init: 3,
            sign_invariant: true,
            ..params(k)
        }
    }

    #[test]
    fn sign_invariant_recovers_signed_copies() {
        let (n, d, k) = (900, 24, 6);
        let (x, truth, sign) = signed_copies(n, d, k, 17);
        let r = kmeans(&x, n, d, &si_params(k), None).unwrap();
        assert_eq!(r.signs.len(), n);
        assert!(r.signs.iter().all(|&s| s == 1.0 || s == -1.0));
        // One cluster per prototype, and within a cluster the found sign times the true sign
        // is constant (the members are all flipped into one orientation).
        let mut map: Vec<Option<(i64, f32)>> = vec![None; k];
        for i in 0..n {
            let got = (r.labels[i], r.signs[i] * sign[i]);
            assert_eq!(*map[truth[i]].get_or_insert(got), got, "point {i}");
        }
        let mut used: Vec<i64> = map.iter().map(|m| m.unwrap().0).collect();
        used.sort();
        used.dedup();
        assert_eq!(used.len(), k);
        // Centres are the oriented prototypes; inertia ≈ noise only (0.09 per coordinate).
        assert!(
            r.inertia < 1.3 * 0.09 * (n * d) as f64,
            "inertia {}",
            r.inertia
        );
        // Euclidean k-means cannot see it that way: ± copies land apart.
        let e = kmeans(&x, n, d, &params(k), None).unwrap();
        assert!(e.signs.iter().all(|&s| s == 1.0));
        assert!(e.inertia > 2.0 * r.inertia);
    }

    #[test]
    fn sign_invariant_equals_euclidean_on_oriented_data() {
        // All coordinates positive: every x·c > 0, so |x·c| = x·c and the arithmetic is the same.
        let (n, d, k) = (1200, 10, 5);
        let (mut x, _) = blobs(n, d, k, 20.0, 8);
        for v in x.iter_mut() {
            *v += 100.0;
        }
        for init in [false, true] {
            let e = KMeansParams {
                n_init: 2,
                ..params(k)
            };
            let s = KMeansParams {
                sign_invariant: true,
                ..e.clone()
            };
            let c0 = x[..k * d].to_vec();
            let init = init.then_some(&c0[..]);
            let a = kmeans(&x, n, d, &e, init).unwrap();
            let b = kmeans(&x, n, d, &s, init).unwrap();
            assert!(b.signs.iter().all(|&v| v == 1.0));
            assert_eq!(a, b);
        }
    }

    #[test]
    fn sign_invariant_same_bytes_at_one_and_two_threads() {
        let (n, d, k) = (5000, 40, 8);
        let (x, _, _) = signed_copies(n, d, k, 23);
        let p = KMeansParams {
            max_iter: 20,
            tol: 0.0,
            seed: 42,
            ..si_params(k)
        };
        let a = in_pool(1, || kmeans(&x, n, d, &p, None).unwrap());
        let b = in_pool(2, || kmeans(&x, n, d, &p, None).unwrap());
        assert_same_bytes(&a, &b);
        assert!(a.signs.contains(&-1.0));
    }

    #[test]
    fn sign_invariant_inertia_and_centres_match_a_plain_computation() {
        // One Lloyd step from given centres, checked against a direct f64 computation.
        let (n, d, k) = (300, 7, 3);
        let (x, _, _) = signed_copies(n, d, k, 5);
        let init = x[..k * d].to_vec();
        let p = KMeansParams {
            max_iter: 1,
            tol: 0.0,
            ..si_params(k)
        };
        let r = kmeans(&x, n, d, &p, Some(&init)).unwrap();
        // Plain: assign with |x·c|, then signed means.
        let row = |i: usize| &x[i * d..(i + 1) * d];
        let dot = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(&p, &q)| p as f64 * q as f64)
                .sum::<f64>()
        };
        let mut sums = vec![0f64; k * d];
        let mut counts = vec![0usize; k];
        for i in 0..n {
            let (mut best, mut bv) = (0, f64::INFINITY);
            for j in 0..k {
                let c = &init[j * d..(j + 1) * d];
                let v = dot(c, c) - 2.0 * dot(row(i), c).abs();
                if v < bv {
                    bv = v;
                    best = j;
                }
            }
            let s = if dot(row(i), &init[best * d..(best + 1) * d]) < 0.0 {
                -1.0
            } else {
                1.0
            };
            counts[best] += 1;
            for f in 0..d {
                sums[best * d + f] += s * row(i)[f] as f64;
            }
        }
        for j in 0..k {
            for f in 0..d {
                let want = sums[j * d + f] / counts[j] as f64;
                assert!(
                    (r.centroids[j * d + f] as f64 - want).abs() < 1e-4,
                    "centre {j}"
                );
            }
        }
        // Inertia of the returned labels/signs/centres.
        let mut inertia = 0.0;
        for i in 0..n {
            let l = r.labels[i] as usize;
            let c = &r.centroids[l * d..(l + 1) * d];
            inertia += naive_d2(
                row(i),
                &c.iter().map(|&v| r.signs[i] * v).collect::<Vec<_>>(),
            );
        }
        assert!(
            (r.inertia - inertia).abs() < 1e-9 * inertia,
            "{} vs {inertia}",
            r.inertia
        );
    }

    // ---- seeding ----------------------------------------------------------------------------

    /// scikit-learn's greedy k-means++, written plainly with exact distances and the same draws.
    fn naive_kmeans_pp(x: &[f32], d: usize, k: usize, rng: &mut Xoshiro256) -> Vec<usize> {
        let n = x.len() / d;
        let row = |i: usize| &x[i * d..(i + 1) * d];
        let trials = 2 + (k as f64).ln().floor() as usize;
        let first = rng.below(n);
        let mut chosen = vec![first];
        let mut closest: Vec<f64> = (0..n).map(|i| naive_d2(row(i), row(first))).collect();
        let mut pot: f64 = closest.iter().sum();
        for _ in 1..k {
            let mut cum = Vec::with_capacity(n);
            let mut acc = 0.0;
            for &v in &closest {
                acc += v;
                cum.push(acc);
            }
            let cands: Vec<usize> = (0..trials)
                .map(|_| {
                    let r = rng.next_f64() * pot;
                    cum.iter().position(|&c| c >= r).unwrap_or(n - 1)
                })
                .collect();
            let mut best: Option<(f64, usize, Vec<f64>)> = None;
            for &c in &cands {
                let dist: Vec<f64> = (0..n)
                    .map(|i| naive_d2(row(i), row(c)).min(closest[i]))
                    .collect();
                let p: f64 = dist.iter().sum();
                if best.as_ref().is_none_or(|b| p < b.0) {
                    best = Some((p, c, dist));
                }
            }
            let (p, c, dist) = best.unwrap();
            pot = p;
            closest = dist;
            chosen.push(c);
        }
        chosen
    }

    #[test]
    fn kmeans_pp_picks_the_same_points_as_the_reference() {
        let (n, d, k) = (700, 9, 7);
        let (x, _) = blobs(n, d, 7, 4.0, 21);
        let c = seed_kmeans_pp(
            &x,
            &mut exact_space(n, d, k),
            n,
            d,
            k,
            &mut Xoshiro256::new(5),
            false,
        )
        .unwrap();
        let idx = naive_kmeans_pp(&x, d, k, &mut Xoshiro256::new(5));
        let want: Vec<f32> = idx
            .iter()
            .flat_map(|&i| x[i * d..(i + 1) * d].to_vec())
            .collect();
        assert_eq!(c, want);
    }

    fn exact_space(n: usize, d: usize, k: usize) -> SeedSpace {
        SeedSpace::new(n, d, k, 1, false, &mut SplitMix64(0))
    }

    #[test]
    fn projected_seeding_is_used_for_wide_data_and_finds_the_blobs() {
        // d ≥ 4·p and k ≥ 16: seeding measures distances in the projection (of all points, and
        // of a subsample when n > 256·k); the seeds are points of x and, on separated blobs,
        // k-means still puts every blob in one cluster.
        let (d, k) = (1100, 16);
        let space = |n, d, k, n_init| SeedSpace::new(n, d, k, n_init, true, &mut SplitMix64(0));
        assert!(space(800, d, k, 1).r.is_some());
        assert!(space(800, d, 15, 1).r.is_none());
        assert!(space(800, 1023, k, 1).r.is_none());
        // Restarts whose subsamples together cover x share one projection of all of x, else
        // each restart projects its own subsample: both paths run below.
        let big = 256 * k + 400;
        assert!(space(800, d, k, 1).share_whole && space(big, d, k, 2).share_whole);
        assert!(!space(big, d, k, 1).share_whole);
        for (n, n_init) in [(800, 1), (big, 1), (big, 2)] {
            let (x, truth) = blobs(n, d, k, 20.0, 17);
            let mut sp = space(n, d, k, n_init);
            let c = seed_kmeans_pp(&x, &mut sp, n, d, k, &mut Xoshiro256::new(3), false).unwrap();
            for cj in c.chunks(d) {
                assert!(x.chunks(d).any(|r| r == cj));
            }
            assert_eq!(sp.whole.is_some(), sp.share_whole);
            for si in [false, true] {
                let p = KMeansParams {
                    n_init,
                    sign_invariant: si,
                    ..params(k)
                };
                let r = kmeans(&x, n, d, &p, None).unwrap();
                let exact = kmeans(
                    &x,
                    n,
                    d,
                    &KMeansParams {
                        seed_projection: false,
                        ..p
                    },
                    None,
                )
                .unwrap();
                let mut map = vec![None; k];
                for (i, &t) in truth.iter().enumerate() {
                    let l = r.labels[i];
                    assert_eq!(
                        *map[t].get_or_insert(l),
                        l,
                        "blob {t} split (n={n}, si={si})"
                    );
                }
                assert!(
                    r.inertia <= exact.inertia * 1.000_001,
                    "{} vs {}",
                    r.inertia,
                    exact.inertia
                );
            }
        }
    }

    #[test]
    fn kmeans_pp_finds_separated_blobs() {
        // With a subsample (n > 256·k) too.
        for &(n, k) in &[(400, 8), (5000, 8)] {
            let d = 12;
            let (x, truth) = blobs(n, d, k, 20.0, 13);
            let r = kmeans(&x, n, d, &params(k), None).unwrap();
            // Every blob is one cluster.
            let mut map = vec![None; k];
            for (i, &t) in truth.iter().enumerate() {
                let l = r.labels[i];
                assert_eq!(*map[t].get_or_insert(l), l, "blob {t} split");
            }
            // Inertia ≈ n·d (unit variance).
            assert!(r.inertia < 1.2 * (n * d) as f64, "inertia {}", r.inertia);
        }
    }

    #[test]
    fn subsample_is_used_for_large_n() {
        let (n, d, k) = (3000, 3, 2);
        let (x, _) = blobs(n, d, 2, 10.0, 1);
        let mut rng = Xoshiro256::new(1);
        let c = seed_kmeans_pp(&x, &mut exact_space(n, d, k), n, d, k, &mut rng, false).unwrap();
        // Centres are points of x.
        for cj in c.chunks(d) {
            assert!(x.chunks(d).any(|r| r == cj));
        }
    }

    #[test]
    fn edge_shapes() {
        // k = n: every point its own cluster, inertia 0.
        let (x, _) = blobs(20, 3, 20, 50.0, 4);
        let r = kmeans(&x, 20, 3, &params(20), None).unwrap();
        let mut l = r.labels.clone();
        l.sort();
        assert_eq!(l, (0..20).collect::<Vec<i64>>());
        assert_eq!(r.inertia, 0.0);
        // k = 1: the mean.
        let r = kmeans(&x, 20, 3, &params(1), None).unwrap();
        for f in 0..3 {
            let mu = (0..20).map(|i| x[i * 3 + f] as f64).sum::<f64>() / 20.0;
            assert!((r.centroids[f] as f64 - mu).abs() < 1e-4);
        }
        assert_eq!(r.n_iter, 2);
        // Identical points, k > distinct points.
        let x = vec![1.5f32; 10 * 4];
        let r = kmeans(&x, 10, 4, &params(3), None).unwrap();
        assert_eq!(r.inertia, 0.0);
        assert!(r.centroids.iter().all(|&v| v == 1.5));
        // One point.
        let r = kmeans(&[2.0, 3.0], 1, 2, &params(1), None).unwrap();
        assert_eq!(r.centroids, vec![2.0, 3.0]);
        assert_eq!(r.labels, vec![0]);
    }

    // ---- errors -----------------------------------------------------------------------------

    #[test]
    fn bad_arguments_are_errors() {
        let x = vec![0.0f32; 12];
        let msg = |r: Result<KMeansResult>| match r {
            Err(e @ Error::InvalidArgument { .. }) => e.to_string(),
            other => panic!("expected InvalidArgument, got {other:?}"),
        };
        let p = params(2);
        assert!(msg(kmeans(&x, 4, 3, &params(0), None)).contains("k must be at least 1"));
        assert_eq!(
            msg(kmeans(&x, 4, 3, &params(5), None)),
            "k=5 is larger than the n=4 points available"
        );
        assert!(msg(kmeans(&x, 5, 3, &p, None)).contains("expected n*d"));
        assert!(msg(kmeans(&x, usize::MAX, 3, &p, None)).contains("expected n*d"));
        assert!(msg(kmeans(&[], 0, 0, &p, None)).contains("d=0"));
        assert!(msg(kmeans(&x, 4, 3, &p, Some(&[0.0; 5]))).contains("init has 5 values"));
        let mut bad = x.clone();
        bad[7] = f32::NAN;
        assert!(msg(kmeans(&bad, 4, 3, &p, None)).contains("row 2, column 1"));
        bad[7] = f32::NEG_INFINITY;
        assert!(msg(kmeans(&bad, 4, 3, &p, None)).contains("non-finite"));
        let mut init = vec![0.0f32; 6];
        init[4] = f32::INFINITY;
        assert!(msg(kmeans(&x, 4, 3, &p, Some(&init))).contains("init has a non-finite"));
        let q = KMeansParams {
            n_init: 0,
            ..p.clone()
        };
        assert!(msg(kmeans(&x, 4, 3, &q, None)).contains("n_init"));
        let q = KMeansParams {
            max_iter: 0,
            ..p.clone()
        };
        assert!(msg(kmeans(&x, 4, 3, &q, None)).contains("max_iter"));
        for tol in [-1.0, f64::NAN, f64::INFINITY] {
            let q = KMeansParams { tol, ..p.clone() };
            assert!(msg(kmeans(&x, 4, 3, &q, None)).contains("tol"));
        }
    }

    #[test]
    fn first_non_finite_finds_the_first() {
        let mut v = vec![1.0f32; 200_000];
        assert_eq!(first_non_finite(&v), None);
        v[150_000] = f32::NAN;
        v[190_000] = f32::INFINITY;
        assert_eq!(first_non_finite(&v), Some(150_000));
        v[3] = f32::INFINITY;
        assert_eq!(first_non_finite(&v), Some(3));
    }

    #[test]
    fn kernels_agree_with_and_without_avx2() {
        let (x, _) = blobs(3, 37, 1, 3.0, 2);
        let (a, b) = (&x[..37], &x[37..74]);
        let plain = Simd {
            #[cfg(target_arch = "x86_64")]
            avx2: false,
        };
        let best = Simd::detect();
        assert_eq!(plain.sq_dist(a, b).to_bits(), best.sq_dist(a, b).to_bits());
        assert_eq!(plain.sq_norm(a).to_bits(), best.sq_norm(a).to_bits());
        assert!((plain.sq_dist(a, b) - naive_d2(a, b)).abs() < 1e-9 * naive_d2(a, b));
        // Fixed-point sums: exact, so equal whatever the kernel, and equal to the f64 sum.
        let (x, _) = blobs(9, 37, 3, 1e3, 4);
        let fx = FixedPoint::new(&column_abs_max_bits(&x, 9, 37), 9);
        let rows = [0u32, 3, 4, 8];
        let mut p = vec![7i64; 37];
        let mut q = p.clone();
        plain.fx_accumulate(&mut p, &x, 37, &rows, &fx.scale);
        best.fx_accumulate(&mut q, &x, 37, &rows, &fx.scale);
        assert_eq!(p, q);
        let bias = (MAGIC.to_bits() as i64).wrapping_mul(4);
        for f in 0..37 {
            let got = p[f].wrapping_sub(7).wrapping_sub(bias) as f64 * fx.inv_scale[f];
            let want: f64 = rows.iter().map(|&r| x[r as usize * 37 + f] as f64).sum();
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
    }

    // ---- timing harness (not a test): cargo test --release -- --ignored --nocapture timing ----

    /// Best-of-`reps` wall time of `f` and the CPU time of the whole process per call (all
    /// threads, from /proc): on a shared machine the CPU time / threads is the better guide.
    fn time_it(reps: usize, threads: usize, mut f: impl FnMut()) -> (f64, f64) {
        fn cpu() -> f64 {
            let mut ns = 0u64;
            if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
                for t in dir.flatten() {
                    let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
                    ns += s
                        .split_whitespace()
                        .next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                }
            }
            ns as f64 * 1e-9
        }
        let mut best = f64::INFINITY;
        let c0 = cpu();
        for _ in 0..reps {
            let t = std::time::Instant::now();
            f();
            best = best.min(t.elapsed().as_secs_f64());
        }
        (best, (cpu() - c0) / reps as f64 / threads as f64)
    }

    #[test]
    #[ignore]
    fn timing() {
        let threads: usize = std::env::var("KM_THREADS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2);
        let reps: usize = std::env::var("KM_REPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5);
        let shapes = [
            (8000usize, 2048usize, 16usize),
            (8000, 8192, 64),
            (2000, 1024, 16),
        ];
        let blocks: Vec<usize> = std::env::var("KM_BLOCKS")
            .map(|s| s.split(',').map(|v| v.parse().unwrap()).collect())
            .unwrap_or_else(|_| vec![0]);
        let only: Option<usize> = std::env::var("KM_SHAPE").ok().and_then(|s| s.parse().ok());
        for (si, &(n, d, k)) in shapes.iter().enumerate() {
            if only.is_some_and(|o| o != si) {
                continue;
            }
            for &bo in &blocks {
                BLOCK_OVERRIDE.store(bo, std::sync::atomic::Ordering::Relaxed);
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut rng = Xoshiro256::new(1);
                let x: Vec<f32> = (0..n * d).map(|_| rng.next_f64() as f32).collect();
                let init = x[..k * d].to_vec();
                let flop = 2.0 * (n * d * k) as f64;
                pool.install(|| {
                let mut labels = vec![0u32; n];
                let rows = block_rows(n, d);
                let mut dots = vec![0f32; n * k];
                let (tg, cg) = time_it(reps, threads, || {
                    dots.par_chunks_mut(rows * k).zip(x.par_chunks(rows * d)).for_each(|(o, xb)| {
                        gemm_xct(xb, xb.len() / d, d, &init, k, o)
                    })
                });
                let (ta, ca) = time_it(reps, threads, || {
                    labels.fill(NONE);
                    pass(&x, n, d, &init, None, None, &mut labels, false, None);
                });
                let fx = FixedPoint::new(&column_abs_max_bits(&x, n, d), n);
                let slots = Slots::new(k, d);
                let (tu, cu) = time_it(reps, threads, || {
                    let mut sums = ClusterSums::new(k, d);
                    labels.fill(NONE);
                    pass(&x, n, d, &init, None, None, &mut labels, false, Some((&fx, &slots)));
                    slots.drain_into(&mut sums);
                    let (sums, counts) = sums.to_f64(&fx);
                    std::hint::black_box(update_centres(&x, n, d, &init, &labels, sums, counts));
                });
                let p = KMeansParams { k, max_iter: 10, tol: 0.0, ..params(k) };
                let mut it = 0;
                let (tk, ck) = time_it(reps.min(3), threads, || {
                    it = kmeans(&x, n, d, &p, Some(&init)).unwrap().n_iter;
                });
                let pf = KMeansParams { distance_cache: false, ..p.clone() };
                let (tf, _) = time_it(reps.min(3), threads, || {
                    std::hint::black_box(kmeans(&x, n, d, &pf, Some(&init)).unwrap());
                });
                println!("  kmeans without distance cache {:6.1} ms per iter", tf / it as f64 * 1e3);
                let (ts, cs) = if std::env::var("KM_NOSEED").is_ok() { (0.0, 0.0) } else { time_it(1, threads, || {
                    let mut space = SeedSpace::new(n, d, k, 1, true, &mut SplitMix64(0));
                    std::hint::black_box(seed_kmeans_pp(&x, &mut space, n, d, k, &mut Xoshiro256::new(0), false).unwrap());
                }) };
                println!(
                    "({n},{d},{k}) t={threads} rows={rows}  [wall best / cpu per thread]\n  gemm   {:6.1} / {:6.1} ms  {:5.1} / {:5.1} GFLOP/s\n  assign {:6.1} / {:6.1} ms  {:5.1} / {:5.1} GFLOP/s\n  assign+update {:6.1} / {:6.1} ms\n  kmeans {it} iters {:6.1} / {:6.1} ms per iter  {:5.1} / {:5.1} GFLOP/s per iter\n  seeding {:.3} / {:.3} s",
                    tg * 1e3, cg * 1e3, flop / tg / 1e9, flop / cg / 1e9,
                    ta * 1e3, ca * 1e3, flop / ta / 1e9, flop / ca / 1e9,
                    tu * 1e3, cu * 1e3,
                    tk / it as f64 * 1e3, ck / it as f64 * 1e3, flop * it as f64 / tk / 1e9, flop * it as f64 / ck / 1e9,
                    ts, cs
                );
            });
            }
        }
        BLOCK_OVERRIDE.store(0, std::sync::atomic::Ordering::Relaxed);
    }
}
