//! One assignment of points to given centres, for a k-means whose points come in blocks
//! (`python/rankwise/streaming_kmeans.py`): the labels and signs of Lloyd's assignment pass,
//! each point's squared distance to its centre, and the per-cluster sums and counts of the
//! (oriented) points, so that the caller adds blocks' sums in block order. Same bytes at any
//! thread count: the pass has fixed GEMM blocks, and the sums run in row order on one thread
//! per column range.

use rayon::prelude::*;

use super::lloyd::{assigned_distances, pass, NONE};
use super::{cluster, is_neg, NEG};
use crate::error::{Error, Result};

/// Result of [`assign`].
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Nearest centre of each point, in `0..k` (ties to the lowest index).
    pub labels: Vec<i64>,
    /// `±1.0`: the point counts as `signs[i]·x_i` (all 1 unless sign-invariant).
    pub signs: Vec<f32>,
    /// `k × d` f64 sums of the oriented members of each cluster.
    pub sums: Vec<f64>,
    /// Members per cluster.
    pub counts: Vec<i64>,
    /// `‖x_i − s_i·c_{label_i}‖²` per point (f64).
    pub dist: Vec<f64>,
}

/// Columns per task of the sums.
const SUM_COLS: usize = 512;

/// Assigns the `n × d` rows of `x` to the nearest of `centres` (`k × d`), modulo sign with `si`.
pub fn assign(x: &[f32], n: usize, d: usize, centres: &[f32], si: bool) -> Result<Assignment> {
    if d == 0 || centres.is_empty() || !centres.len().is_multiple_of(d) {
        return Err(Error::InvalidArgument {
            reason: format!(
                "centres hold {} values, not a positive multiple of d = {d}",
                centres.len()
            ),
        });
    }
    if x.len() != n * d {
        return Err(Error::InvalidArgument {
            reason: format!("x holds {} values, expected n·d = {n}·{d}", x.len()),
        });
    }
    let k = centres.len() / d;
    if si && k >= NEG as usize {
        return Err(Error::InvalidArgument {
            reason: "k must be below 2^31 in sign-invariant mode".into(),
        });
    }
    let mut lab = vec![NONE; n];
    if n > 0 {
        pass(x, n, d, centres, None, None, &mut lab, si, None);
    }
    let dist = assigned_distances(x, n, d, centres, &lab);
    let mut counts = vec![0i64; k];
    for &l in &lab {
        counts[cluster(l)] += 1;
    }
    // Column ranges in parallel, rows in order within each: the bytes do not depend on threads.
    let mut sums = vec![0f64; k * d];
    let ranges: Vec<(usize, usize)> = (0..d)
        .step_by(SUM_COLS)
        .map(|o| (o, SUM_COLS.min(d - o)))
        .collect();
    let parts: Vec<Vec<f64>> = ranges
        .par_iter()
        .map(|&(off, w)| {
            let mut acc = vec![0f64; k * w];
            for (row, &l) in x.chunks_exact(d).zip(&lab) {
                let dst = &mut acc[cluster(l) * w..(cluster(l) + 1) * w];
                let src = &row[off..off + w];
                if is_neg(l) {
                    dst.iter_mut().zip(src).for_each(|(a, &v)| *a -= v as f64);
                } else {
                    dst.iter_mut().zip(src).for_each(|(a, &v)| *a += v as f64);
                }
            }
            acc
        })
        .collect();
    for ((off, w), acc) in ranges.iter().zip(parts) {
        for c in 0..k {
            sums[c * d + off..c * d + off + w].copy_from_slice(&acc[c * w..(c + 1) * w]);
        }
    }
    Ok(Assignment {
        labels: lab.iter().map(|&l| cluster(l) as i64).collect(),
        signs: lab
            .iter()
            .map(|&l| if is_neg(l) { -1.0 } else { 1.0 })
            .collect(),
        sums,
        counts,
        dist,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmeans::{kmeans, KMeansParams};

    fn data(n: usize, d: usize) -> Vec<f32> {
        let mut s = 12345u64;
        (0..n * d)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// At the centres a converged k-means returns, one assignment gives back its labels, signs
    /// and inertia, and its sums over counts are the centres.
    #[test]
    fn matches_a_converged_kmeans() {
        let (n, d, k) = (600, 24, 5);
        let x = data(n, d);
        for si in [false, true] {
            let p = KMeansParams {
                k,
                max_iter: 300,
                tol: 0.0,
                sign_invariant: si,
                ..Default::default()
            };
            let r = kmeans(&x, n, d, &p, None).unwrap();
            let a = assign(&x, n, d, &r.centroids, si).unwrap();
            assert_eq!(a.labels, r.labels);
            assert_eq!(a.signs, r.signs);
            let inertia: f64 = a.dist.iter().sum();
            assert!((inertia - r.inertia).abs() <= 1e-6 * r.inertia);
            for c in 0..k {
                for j in 0..d {
                    let mean = a.sums[c * d + j] / a.counts[c] as f64;
                    assert!((mean - r.centroids[c * d + j] as f64).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn same_bytes_at_any_thread_count() {
        let (n, d, k) = (3000, 1100, 7);
        let x = data(n, d);
        let c = data(k, d);
        let run = |t: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(|| assign(&x, n, d, &c, true).unwrap())
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(assign(&[0.0; 6], 2, 3, &[0.0; 4], false).is_err());
        assert!(assign(&[0.0; 5], 2, 3, &[0.0; 3], false).is_err());
    }
}
