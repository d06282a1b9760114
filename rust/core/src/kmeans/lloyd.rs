//! Lloyd iterations: assignment passes by blocks of rows, the distance cache, the centre
//! update with scikit-learn's empty-cluster relocation, and the inertia.
//!
//! # Distances
//! `‖x‖² − 2·x·cᵀ + ‖c‖²` as one GEMM per block of rows; for the arg-min only `‖c‖² − 2·x·cᵀ`
//! matters.
//!
//! Distance cache: the `n × k` dot products are kept across iterations (when they fit in
//! `CACHE_BYTES`; else one `rows × k` block per worker), and an iteration recomputes only the
//! columns of the centres whose bytes changed (a centre whose members did not change is the same
//! mean). Late iterations move few centres, so they cost a fraction of a full GEMM. faer gives a
//! column the same bytes whatever other columns share the call, from two columns on (a single
//! column goes through its matrix-vector path, so one moved centre is padded with a second):
//! cached or not, the result is the same bytes (tested).
//!
//! The centre update is fused into the assignment pass: as soon as a block's labels are known,
//! the rows whose label changed (all of them in the first pass) are moved, while still in
//! cache, from their old cluster's sum to the new one's ([`super::exact_sums`]).

use rayon::prelude::*;

use super::exact_sums::{ClusterSums, FixedPoint, Slots};
use super::{
    block_rows, cluster, column_means, gemm_xct, is_neg, public_labels, signs_of, KMeansResult, NEG,
};
use crate::error::Result;
use crate::simd::{fx_accumulate, sq_dist_signed, sq_norm, Level};
use crate::threads::check_cancelled;

/// Largest dot-product cache (`n × k` f32) kept across Lloyd iterations; with more, every
/// iteration recomputes every distance.
const CACHE_BYTES: usize = 512 << 20;

/// Internal label of a point not yet assigned (before the first pass).
pub(crate) const NONE: u32 = u32::MAX;

#[allow(clippy::too_many_arguments)]
pub(super) fn lloyd(
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
        labels: public_labels(&labels),
        inertia,
        n_iter,
        signs: signs_of(&labels),
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
pub(crate) fn pass(
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
    let level = Level::detect();
    let cn: Vec<f32> = centres
        .chunks_exact(d)
        .map(|c| sq_norm(level, c) as f32)
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
                    move_members(s, lab, xb, d, fx, slots, level);
                }
                (changed, 0.0)
            }
            None => {
                let inertia = xb
                    .chunks_exact(d)
                    .zip(lab.iter())
                    .map(|(row, &l)| {
                        let c = cluster(l);
                        sq_dist_signed(level, row, &centres[c * d..(c + 1) * d], is_neg(l))
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
    level: Level,
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
        fx_accumulate(level, dst, xb, d, &s.rows[start..end], &fx.scale);
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

/// Squared distance of each point to the centre it is assigned to (`‖x − s·c‖²`, f64), points
/// in parallel.
pub(crate) fn assigned_distances(
    x: &[f32],
    n: usize,
    d: usize,
    centres: &[f32],
    labels: &[u32],
) -> Vec<f64> {
    let level = Level::detect();
    (0..n)
        .into_par_iter()
        .map(|i| {
            let (l, c) = (labels[i], cluster(labels[i]));
            sq_dist_signed(
                level,
                &x[i * d..(i + 1) * d],
                &centres[c * d..(c + 1) * d],
                is_neg(l),
            )
        })
        .collect()
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
    let dist = assigned_distances(x, n, d, centres, labels);
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
    let level = Level::detect();
    let rows = block_rows(n, d);
    let partial: Vec<f64> = x
        .par_chunks(rows * d)
        .zip(labels.par_chunks(rows))
        .map(|(xb, lab)| {
            xb.chunks_exact(d)
                .zip(lab)
                .map(|(row, &l)| {
                    let c = cluster(l);
                    sq_dist_signed(level, row, &centres[c * d..(c + 1) * d], is_neg(l))
                })
                .sum::<f64>()
        })
        .collect();
    partial.iter().sum()
}
