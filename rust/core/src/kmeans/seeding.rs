//! k-means++ seeding: scikit-learn's greedy k-means++ (`n_local_trials = 2 + floor(ln k)`),
//! driven by xoshiro256** seeded through splitmix64, the candidates' distances one GEMM per
//! block of rows.
//!
//! When `n > 256·k`, seeding runs on a uniform subsample of `256·k` points (without
//! replacement), as faiss does with its `max_points_per_centroid = 256`: k-means++ only needs
//! enough points to see every cluster's mass, and its cost is k passes over the points (each
//! against 2 + ln k candidates), which would otherwise dwarf a few Lloyd iterations for large
//! n. For wide data (d ≥ 1024, k ≥ 16) the dot products are taken in a random projection to
//! [`SEED_PROJECTION_DIM`] dimensions (see `projects_for_seeding`): the projection matrix is
//! drawn once per call; all of x is projected once when the restarts' subsamples together
//! cover at least n rows, else each restart projects its own subsample.

use rayon::prelude::*;

use super::{block_rows, gemm_xct};
use crate::error::Result;
use crate::rng::{SplitMix64, Xoshiro256};
use crate::simd::{sq_norm, Level};
use crate::threads::check_cancelled;

/// Points per centre kept for k-means++ seeding (faiss's `max_points_per_centroid`).
pub const SEED_POINTS_PER_CENTRE: usize = 256;

/// Where k-means++ seeding measures distances: the points themselves or, for wide data (see
/// `projects_for_seeding`), their random projection `R·x` (R drawn once per call, shared by the
/// restarts). What is projected is what costs least: all of x once for every restart (`whole`,
/// made by the first restart) when the restarts' subsamples together cover at least n rows, else
/// each restart's own subsample.
pub(crate) struct SeedSpace {
    /// R (p × d), when projecting.
    pub(crate) r: Option<Vec<f32>>,
    /// Seed every restart from `whole` (all of x), not from its own subsample's projection.
    pub(crate) share_whole: bool,
    pub(crate) whole: Option<SeedPoints>,
}

/// Rows as seeding sees them: their projection (None: the rows themselves) and their exact
/// squared norms.
pub(crate) struct SeedPoints {
    y: Option<Vec<f32>>,
    norms: Vec<f64>,
}

impl SeedSpace {
    pub(crate) fn new(
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
    let level = Level::detect();
    let norms = rows.par_chunks(d).map(|v| sq_norm(level, v)).collect();
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
pub(crate) fn seed_kmeans_pp(
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
            None => kmeans_pp(&SeedRows { s: all, m: n, w }, &pts.norms, k, rng, si)?,
            Some(idx) => {
                let norms: Vec<f64> = idx.iter().map(|&i| pts.norms[i]).collect();
                let sub = gather_rows(all, w, idx);
                let local = kmeans_pp(&SeedRows { s: &sub, m, w }, &norms, k, rng, si)?;
                local.into_iter().map(|i| idx[i]).collect()
            }
        }
    } else {
        // Only when m < n (share_whole holds for m = n).
        let idx = idx.unwrap_or_default();
        let sample = gather_rows(x, d, &idx);
        let pts = seed_points(&sample, m, d, space.r.as_deref());
        let s = pts.y.as_deref().unwrap_or(&sample);
        let local = kmeans_pp(&SeedRows { s, m, w }, &pts.norms, k, rng, si)?;
        local.into_iter().map(|i| idx[i]).collect()
    };
    let mut centres = Vec::with_capacity(k * d);
    for i in chosen {
        centres.extend_from_slice(&x[i * d..(i + 1) * d]);
    }
    Ok(centres)
}

/// Dimensions of the random projection that k-means++ seeding runs in for wide data. Projecting
/// costs n·d·p, p/k Lloyd iterations' worth: 256 made seeding cost ~4 iterations at k = 64 and
/// most of a "seeding + a few iterations" run (issue 17's profile, benches/RESULTS.md); 128
/// halves that, with the final inertia within ±0.02% of 256's (same runs).
pub const SEED_PROJECTION_DIM: usize = 128;

/// Narrowest data seeded in the projection.
const SEED_PROJECTION_MIN_D: usize = 1024;

/// Whether seeding measures distances in a random projection: for d ≥ 1024 and k ≥ 16
/// (p = [`SEED_PROJECTION_DIM`]). Each of the k seeding steps streams every sampled point once
/// against 2 + ln k candidates (a skinny, memory-bound GEMM), so on the units of a 7B model's
/// module (d = 8192, k = 64) seeding cost as much as dozens of Lloyd iterations; projecting costs
/// one wide, compute-bound GEMM, after which the steps are p/d as large. The squared distance
/// `‖x‖² + ‖c‖² − 2·x·c` keeps the exact norms and takes the dot product in the projection
/// (`x·c ≈ Rx·Rc`, error ~‖x‖‖c‖/√p): the error of a projected norm would be shared by every
/// distance to the same candidate and bias the greedy choice between candidates. k-means++
/// only needs D² sampling and that choice; the seeds are still points of x, and Lloyd runs on
/// x itself. bench_kmeans (benches/RESULTS.md) compares it with exact seeding.
fn projects_for_seeding(d: usize, k: usize) -> bool {
    d >= SEED_PROJECTION_MIN_D && k >= 16
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

/// The dot products k-means++ needs: between the seeding points and a few candidates among
/// them, by fixed blocks of points (so the bytes never depend on the threads).
pub(crate) trait SeedDots: Sync {
    /// Points per block.
    fn block_rows(&self) -> usize;
    /// What [`SeedDots::dots`] reads of the candidates (`cand`: point indices), built once per
    /// seeding step.
    fn pack(&self, cand: &[usize]) -> Vec<f32>;
    /// `out[i·t + j] = p_{r0+i} · p_{cand[j]}` for the `mb` points from `r0` (`t = cand.len()`).
    fn dots(&self, r0: usize, mb: usize, cand: &[usize], packed: &[f32], out: &mut [f32]);
}

/// Points as rows (m × w, row-major): one GEMM per block against the packed candidate rows.
pub(crate) struct SeedRows<'a> {
    pub(crate) s: &'a [f32],
    pub(crate) m: usize,
    pub(crate) w: usize,
}

impl SeedDots for SeedRows<'_> {
    fn block_rows(&self) -> usize {
        block_rows(self.m, self.w)
    }
    fn pack(&self, cand: &[usize]) -> Vec<f32> {
        gather_rows(self.s, self.w, cand)
    }
    fn dots(&self, r0: usize, mb: usize, cand: &[usize], packed: &[f32], out: &mut [f32]) {
        let w = self.w;
        gemm_xct(
            &self.s[r0 * w..(r0 + mb) * w],
            mb,
            w,
            packed,
            cand.len(),
            out,
        );
    }
}

/// Greedy k-means++ (scikit-learn's) over the m points of `pts` whose squared norms are `sn`
/// (the exact norms, also when the dot products come from a projection): the indices of the k
/// chosen points.
pub(crate) fn kmeans_pp(
    pts: &impl SeedDots,
    sn: &[f64],
    k: usize,
    rng: &mut Xoshiro256,
    si: bool,
) -> Result<Vec<usize>> {
    let m = sn.len();
    let trials = 2 + (k as f64).ln().floor() as usize;
    let mut chosen = Vec::with_capacity(k);
    let first = rng.below(m);
    chosen.push(first);
    let (mut closest, pots) = candidate_distances(pts, sn, &[first], None, si);
    let mut pot = pots[0];
    let mut cumsum = vec![0f64; m];
    let mut ids = vec![0usize; trials];
    for _ in 1..k {
        check_cancelled()?;
        let mut acc = 0f64;
        for (cs, &v) in cumsum.iter_mut().zip(&closest) {
            acc += v;
            *cs = acc;
        }
        for id in ids.iter_mut() {
            let r = rng.next_f64() * pot;
            *id = cumsum.partition_point(|&v| v < r).min(m - 1);
        }
        let (dist, pots) = candidate_distances(pts, sn, &ids, Some(&closest), si);
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

/// For candidate points `cand`: `dist[i·t + j] = min(closest[i], sn_i + sn_{cand_j} −
/// 2·p_i·p_{cand_j})` (clamped ≥ 0; without the min when `closest` is None) and each
/// candidate's potential `Σ_i dist[i·t + j]`, reduced over blocks in a fixed order. With `si`,
/// the dot product's absolute value.
fn candidate_distances(
    pts: &impl SeedDots,
    sn: &[f64],
    cand: &[usize],
    closest: Option<&[f64]>,
    si: bool,
) -> (Vec<f64>, Vec<f64>) {
    let (m, t) = (sn.len(), cand.len());
    let cn: Vec<f64> = cand.iter().map(|&c| sn[c]).collect();
    let packed = pts.pack(cand);
    let rows = pts.block_rows();
    let mut dist = vec![0f64; m * t];
    let partial: Vec<Vec<f64>> = dist
        .par_chunks_mut(rows * t)
        .enumerate()
        .map_init(Vec::new, |dots: &mut Vec<f32>, (b, out)| {
            let r0 = b * rows;
            let mb = out.len() / t;
            dots.resize(mb * t, 0.0);
            pts.dots(r0, mb, cand, &packed, dots);
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
