//! k-means from the points' Gram matrix `G = X·Xᵀ` (n × n) instead of the points: the same
//! seeding and Lloyd loop as [`super::kmeans`] with `seed_projection = false`, equal in exact
//! arithmetic (docs/ALGORITHMS.md §1.2).
//!
//! Every centre is a combination of points (a seed point, the signed mean of its members, or
//! the mean of all points), so its dot products with the points are sums of Gram entries:
//! `x_i·c = Σ_{j∈c} s_j·G_ij / n_c`, one pass over G per iteration (n² additions whatever k
//! is), and `‖c‖² = Σ_{j∈c} s_j·(x_j·c) / n_c`. Centre shifts come from the same sums. Where n
//! is small next to the width d, a pass costs n² instead of n·k·d: LoRA-LEGO's modules, whose
//! unit Grams its `projection-norm` assembly forms anyway for the target norm, cluster for
//! almost nothing more. k-means++ seeds from all n points (G holds every distance; no
//! subsample, no projection).
//!
//! Differences from the row path, all float rounding: centres are exact combinations (the row
//! path rounds them to f32), G itself is f32, and the distances `G_ii + ‖c‖² − 2·x_i·c` are
//! formed in f64. Rows are processed in fixed blocks and each row's sums in index order, so the
//! bytes never depend on the thread count.

use rayon::prelude::*;

use super::lloyd::NONE;
use super::seeding::{kmeans_pp, SeedDots};
use super::{
    cluster, first_non_finite, is_neg, public_labels, signs_of, validate_params, KMeansParams, NEG,
};
use crate::error::{catch_panic, Error, Result};
use crate::rng::{SplitMix64, Xoshiro256};
use crate::threads::check_cancelled;

/// Result of [`kmeans_gram`]: [`super::KMeansResult`] without centroids (they are
/// combinations of points the caller forms from the labels).
#[derive(Debug, Clone, PartialEq)]
pub struct GramKMeansResult {
    pub labels: Vec<i64>,
    pub inertia: f64,
    pub n_iter: usize,
    pub signs: Vec<f32>,
}

/// Rows of G per parallel block (a function of n only).
fn gram_block_rows(n: usize) -> usize {
    n.div_ceil(16).clamp(16, 256)
}

/// k-means of n points of width `d` given their Gram matrix `g` (n × n, row-major, symmetric):
/// [`super::kmeans`]'s seeding and Lloyd loop (`params.seed_projection` and
/// `params.distance_cache` do not apply), on the current rayon pool.
pub fn kmeans_gram(
    g: &[f32],
    n: usize,
    d: usize,
    params: &KMeansParams,
) -> Result<GramKMeansResult> {
    if n.checked_mul(n) != Some(g.len()) {
        return Err(Error::invalid(format!(
            "the Gram matrix has {} values, expected n*n = {n}*{n}",
            g.len()
        )));
    }
    if d < 1 {
        return Err(Error::invalid("k-means needs at least one feature (d=0)"));
    }
    validate_params(n, params)?;
    if let Some(pos) = first_non_finite(g) {
        return Err(Error::invalid(format!(
            "the Gram matrix has a non-finite value ({}) at row {}, column {}",
            g[pos],
            pos / n,
            pos % n
        )));
    }
    catch_panic("k-means from a Gram matrix", || {
        let gm = Gram::new(g, n);
        let tol_abs = if params.tol > 0.0 {
            params.tol * gm.mean_variance(d)
        } else {
            0.0
        };
        // The row path's stream: no projection matrix is drawn without a projection.
        let mut seeds = SplitMix64(params.seed);
        let mut best: Option<GramKMeansResult> = None;
        for _ in 0..params.n_init {
            let mut rng = Xoshiro256::new(seeds.next_u64());
            let chosen = kmeans_pp(&gm, &gm.diag, params.k, &mut rng, params.sign_invariant)?;
            let init = chosen.into_iter().map(Centre::Point).collect();
            let r = lloyd_gram(&gm, init, params.max_iter, tol_abs, params.sign_invariant)?;
            if best.as_ref().is_none_or(|b| r.inertia < b.inertia) {
                best = Some(r);
            }
        }
        best.ok_or_else(|| Error::invalid("n_init must be at least 1"))
    })
}

/// G with what every pass reuses: its diagonal ‖x_i‖² and row means x_i·x̄ (f64).
struct Gram<'a> {
    g: &'a [f32],
    n: usize,
    diag: Vec<f64>,
    row_mean: Vec<f64>,
}

impl<'a> Gram<'a> {
    fn new(g: &'a [f32], n: usize) -> Self {
        let diag = (0..n).map(|i| g[i * n + i] as f64).collect();
        let row_mean = g
            .par_chunks(n)
            .map(|r| r.iter().map(|&v| v as f64).sum::<f64>() / n as f64)
            .collect();
        Gram {
            g,
            n,
            diag,
            row_mean,
        }
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.g[i * self.n..(i + 1) * self.n]
    }

    /// scikit-learn's tolerance base, mean over the d features of their variance:
    /// (tr G / n − ‖x̄‖²) / d, with ‖x̄‖² the mean of the row means.
    fn mean_variance(&self, d: usize) -> f64 {
        let n = self.n as f64;
        let mean_sq = self.row_mean.iter().sum::<f64>() / n;
        ((self.diag.iter().sum::<f64>() / n - mean_sq) / d as f64).max(0.0)
    }
}

impl SeedDots for Gram<'_> {
    fn block_rows(&self) -> usize {
        gram_block_rows(self.n)
    }
    fn pack(&self, _cand: &[usize]) -> Vec<f32> {
        Vec::new()
    }
    fn dots(&self, r0: usize, mb: usize, cand: &[usize], _packed: &[f32], out: &mut [f32]) {
        let t = cand.len();
        for (i, o) in out[..mb * t].chunks_exact_mut(t).enumerate() {
            let row = self.row(r0 + i);
            for (v, &c) in o.iter_mut().zip(cand) {
                *v = row[c];
            }
        }
    }
}

/// A centre as a combination of points.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Centre {
    /// The point itself (a k-means++ seed, or a point given to an empty cluster).
    Point(usize),
    /// The signed mean of the points whose `owner` is this centre.
    Members,
    /// The mean of all points (a cluster emptied by giving away its only point, as
    /// scikit-learn leaves it).
    MeanOfAll,
}

/// The centres and, per point, the centre whose `Members` mean it is part of, with its weight.
struct Centres {
    kind: Vec<Centre>,
    owner: Vec<u32>,
    coef: Vec<f64>,
}

/// `x_i·c` for every centre and point (k × n, centre-major, f64) and the centres' squared norms.
struct Dots {
    d: Vec<f64>,
    cn: Vec<f64>,
}

impl Centres {
    fn new(kind: Vec<Centre>, n: usize) -> Self {
        Centres {
            kind,
            owner: vec![NONE; n],
            coef: vec![0.0; n],
        }
    }

    fn k(&self) -> usize {
        self.kind.len()
    }

    /// Centre c's dots are `Σ_{j∈c} w_j·G_j` (G symmetric: row j holds x_j's dots with every
    /// point), one contiguous axpy per member, members in index order; centres in parallel.
    fn dots(&self, gm: &Gram<'_>) -> Dots {
        let n = gm.n;
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); self.k()];
        for (j, &own) in self.owner.iter().enumerate() {
            if own != NONE {
                members[own as usize].push(j);
            }
        }
        let mut d = vec![0f64; self.k() * n];
        d.par_chunks_mut(n)
            .zip(self.kind.par_iter().zip(&members))
            .for_each(|(out, (kind, mem))| match *kind {
                Centre::Point(p) => {
                    for (o, &v) in out.iter_mut().zip(gm.row(p)) {
                        *o = v as f64;
                    }
                }
                Centre::MeanOfAll => out.copy_from_slice(&gm.row_mean),
                Centre::Members => {
                    for &j in mem {
                        let w = self.coef[j];
                        for (o, &v) in out.iter_mut().zip(gm.row(j)) {
                            *o += w * v as f64;
                        }
                    }
                }
            });
        let cn = self.cross(&d, gm);
        Dots { d, cn }
    }

    /// `c·e_c` for every centre c of self and the vectors e_c whose dot products with the
    /// points are the rows of `d` (k × n): with `d` this set's own dots, the squared norms.
    fn cross(&self, d: &[f64], gm: &Gram<'_>) -> Vec<f64> {
        let n = gm.n;
        let mut out = vec![0f64; self.k()];
        for (j, (&own, &w)) in self.owner.iter().zip(&self.coef).enumerate() {
            if own != NONE {
                out[own as usize] += w * d[own as usize * n + j];
            }
        }
        for (c, kind) in self.kind.iter().enumerate() {
            let row = &d[c * n..(c + 1) * n];
            match *kind {
                Centre::Point(p) => out[c] = row[p],
                Centre::MeanOfAll => out[c] = row.iter().sum::<f64>() / n as f64,
                Centre::Members => {}
            }
        }
        out
    }
}

/// Assigns every point to its nearest centre (`‖c‖² − 2·x·c`, with `si` modulo sign, ties to the
/// lowest index) into `labels`; returns how many labels changed.
fn assign(dots: &Dots, labels: &mut [u32], si: bool) -> usize {
    let n = labels.len();
    labels
        .par_chunks_mut(256)
        .enumerate()
        .map(|(b, lab)| {
            let mut changed = 0;
            for (r, l) in lab.iter_mut().enumerate() {
                let i = b * 256 + r;
                let (mut best, mut best_v) = (0usize, f64::INFINITY);
                for (j, &c) in dots.cn.iter().enumerate() {
                    let p = dots.d[j * n + i];
                    let v = c - 2.0 * if si { p.abs() } else { p };
                    if v < best_v {
                        best_v = v;
                        best = j;
                    }
                }
                let new = if si && dots.d[best * n + i] < 0.0 {
                    best as u32 | NEG
                } else {
                    best as u32
                };
                changed += (new != *l) as usize;
                *l = new;
            }
            changed
        })
        .sum()
}

/// ‖x_i − s_i·c_{label_i}‖² of every point (≥ 0).
fn assigned_distances(gm: &Gram<'_>, dots: &Dots, labels: &[u32]) -> Vec<f64> {
    labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let c = cluster(l);
            let p = dots.d[c * labels.len() + i];
            let s = if is_neg(l) { -1.0 } else { 1.0 };
            (gm.diag[i] + dots.cn[c] - 2.0 * s * p).max(0.0)
        })
        .collect()
}

/// The centres of `labels`: signed member means, with scikit-learn's relocation (each empty
/// cluster, in increasing order, takes one of the points farthest from their centre, farthest
/// first, lowest index on ties; the point leaves its old cluster's mean but keeps its label).
fn update(gm: &Gram<'_>, dots: &Dots, k: usize, labels: &[u32]) -> Centres {
    let n = gm.n;
    let mut counts = vec![0usize; k];
    for &l in labels {
        counts[cluster(l)] += 1;
    }
    let mut kind = vec![Centre::Members; k];
    let mut moved_out = vec![false; n];
    let empty: Vec<usize> = (0..k).filter(|&j| counts[j] == 0).collect();
    if !empty.is_empty() {
        let dist = assigned_distances(gm, dots, labels);
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_unstable_by(|a, b| dist[*b].total_cmp(&dist[*a]).then(a.cmp(b)));
        for (&j, &i) in empty.iter().zip(&idx) {
            kind[j] = Centre::Point(i);
            moved_out[i] = true;
            counts[cluster(labels[i])] -= 1;
        }
        for (j, kd) in kind.iter_mut().enumerate() {
            if counts[j] == 0 && *kd == Centre::Members {
                *kd = Centre::MeanOfAll;
            }
        }
    }
    let mut c = Centres::new(kind, n);
    for (i, &l) in labels.iter().enumerate() {
        let j = cluster(l);
        if !moved_out[i] && c.kind[j] == Centre::Members {
            c.owner[i] = j as u32;
            let s = if is_neg(l) { -1.0 } else { 1.0 };
            c.coef[i] = s / counts[j] as f64;
        }
    }
    c
}

fn lloyd_gram(
    gm: &Gram<'_>,
    init: Vec<Centre>,
    max_iter: usize,
    tol_abs: f64,
    si: bool,
) -> Result<GramKMeansResult> {
    let (n, k) = (gm.n, init.len());
    let mut dots = Centres::new(init, n).dots(gm);
    let mut labels = vec![NONE; n];
    let (mut strict, mut n_iter) = (false, 0);
    for it in 0..max_iter {
        check_cancelled()?;
        n_iter = it + 1;
        let changed = assign(&dots, &mut labels, si);
        let new = update(gm, &dots, k, &labels);
        let new_dots = new.dots(gm);
        // Σ_c ‖new_c − old_c‖² = Σ_c ‖new_c‖² + ‖old_c‖² − 2·new_c·old_c.
        let cross = new.cross(&dots.d, gm);
        let shift: f64 = (0..k)
            .map(|c| (new_dots.cn[c] + dots.cn[c] - 2.0 * cross[c]).max(0.0))
            .sum();
        dots = new_dots;
        if changed == 0 {
            strict = true;
            break;
        }
        if shift <= tol_abs {
            break;
        }
    }
    if !strict {
        assign(&dots, &mut labels, si);
    }
    let inertia = assigned_distances(gm, &dots, &labels).iter().sum();
    Ok(GramKMeansResult {
        labels: public_labels(&labels),
        inertia,
        n_iter,
        signs: signs_of(&labels),
    })
}
