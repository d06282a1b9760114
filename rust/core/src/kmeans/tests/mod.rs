//! k-means against an independent reference (a plain scikit-learn Lloyd and k-means++ in f64,
//! no GEMM, no threads), and its invariants: the same bytes at any thread count, with or
//! without the distance cache, and across restarts.

mod gram;
mod lloyd;
mod seeding;
mod sign_invariant;

use super::exact_sums::FixedPoint;
use super::lloyd::{pass, NONE};
use super::seeding::{seed_kmeans_pp, SeedSpace};
use super::*;
use crate::simd::MAGIC;

// ---- data -------------------------------------------------------------------------------

/// Gaussian blobs: `centres` random in [-scale, scale]^d, unit-variance points around them.
pub(super) fn blobs(
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

pub(super) fn gauss(rng: &mut Xoshiro256) -> f64 {
    let u1 = 1.0 - rng.next_f64();
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Labels, signs, iterations, inertia and centroids all equal to the bit.
pub(super) fn assert_same_bytes(a: &KMeansResult, b: &KMeansResult) {
    assert_eq!(a.labels, b.labels);
    assert_eq!(a.signs, b.signs);
    assert_eq!(a.n_iter, b.n_iter);
    assert_eq!(a.inertia.to_bits(), b.inertia.to_bits());
    let bits = |c: &[f32]| c.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(&a.centroids), bits(&b.centroids));
}

pub(super) fn params(k: usize) -> KMeansParams {
    KMeansParams {
        k,
        ..KMeansParams::default()
    }
}

pub(super) fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// `k` prototypes in [-scale, scale]^d; point i is `s_i·p_{i % k} + noise` with random s_i.
pub(super) fn signed_copies(
    n: usize,
    d: usize,
    k: usize,
    seed: u64,
) -> (Vec<f32>, Vec<usize>, Vec<f32>) {
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

pub(super) fn si_params(k: usize) -> KMeansParams {
    KMeansParams {
        k,
        n_init: 3,
        sign_invariant: true,
        ..params(k)
    }
}

// ---- the independent reference: plain scikit-learn Lloyd, no GEMM, no threads ------------

pub(super) struct Naive {
    pub(super) centres: Vec<f32>,
    pub(super) labels: Vec<usize>,
    pub(super) inertia: f64,
    pub(super) n_iter: usize,
    /// The smallest `assignment_margin` of its assignments.
    pub(super) margin: f64,
}

pub(super) fn naive_d2(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
        .sum()
}

pub(super) fn naive_assign(x: &[f32], d: usize, c: &[f32]) -> Vec<usize> {
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

/// Unit roundoff of f32 and the bound γ_d = d·u/(1 − d·u) on a d-term f32 dot product's
/// relative error (any order, fused or not: Higham, Accuracy and Stability, §3.1).
pub(super) fn gamma_f32(d: usize) -> f64 {
    let u = f32::EPSILON as f64 / 2.0;
    d as f64 * u / (1.0 - d as f64 * u)
}

/// How safely the GEMM path's assignment of `x` to `c` must agree with the exact one on any
/// host: the smallest, over the points, of the gap between the nearest and the second nearest
/// centre (exact) over the bound on the error of the f32 quantities the GEMM path compares
/// (`fl(‖c‖²) − 2·fl(x·c)`: 2γ_d‖x‖‖c‖ from the dot product, u‖c‖² and u·|value| from the
/// roundings). Above 1, no rounding of any CPU's GEMM kernels can flip a label.
pub(super) fn assignment_margin(x: &[f32], d: usize, c: &[f32]) -> f64 {
    let u = f32::EPSILON as f64 / 2.0;
    let g = gamma_f32(d);
    let nrm = |v: &[f32]| v.iter().map(|&t| t as f64 * t as f64).sum::<f64>();
    let mut margin = f64::INFINITY;
    for row in x.chunks(d) {
        let xn = nrm(row).sqrt();
        let mut dist: Vec<(f64, f64)> = c
            .chunks(d)
            .map(|cj| {
                let cn = nrm(cj);
                let v = naive_d2(row, cj) - xn * xn;
                (
                    naive_d2(row, cj),
                    2.0 * g * xn * cn.sqrt() + u * cn + u * v.abs(),
                )
            })
            .collect();
        if dist.len() < 2 {
            continue;
        }
        dist.sort_by(|a, b| a.0.total_cmp(&b.0));
        margin = margin.min((dist[1].0 - dist[0].0) / (dist[0].1 + dist[1].1));
    }
    margin
}

pub(super) fn naive_lloyd(x: &[f32], d: usize, init: &[f32], max_iter: usize, tol: f64) -> Naive {
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
    let mut margin = f64::INFINITY;
    for it in 0..max_iter {
        n_iter = it + 1;
        margin = margin.min(assignment_margin(x, d, &c));
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
        margin = margin.min(assignment_margin(x, d, &c));
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
        margin,
    }
}

/// The reference's decisions are far enough from ties that the GEMM path makes them on any
/// host (see `assignment_margin`): the exact label comparison below is then portable.
pub(super) fn assert_portable(nv: &Naive) {
    assert!(
        nv.margin > 1.0,
        "assignment margin {} ≤ 1: a label could flip on another CPU",
        nv.margin
    );
}

pub(super) fn assert_matches_naive(r: &KMeansResult, nv: &Naive, tol: f32) {
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
fn fixed_point_sums_are_exact() {
    // The fixed-point column sums of a few rows equal their f64 sums to the quantum of the
    // scheme (2^-51 of the column's largest magnitude per value).
    let (x, _) = blobs(9, 37, 3, 1e3, 4);
    let fx = FixedPoint::new(&column_abs_max_bits(&x, 9, 37), 9);
    let rows = [0u32, 3, 4, 8];
    let mut p = vec![7i64; 37];
    crate::simd::fx_accumulate(Level::detect(), &mut p, &x, 37, &rows, &fx.scale);
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
