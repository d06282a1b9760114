//! Cluster centroids of rank units: what LoRA-LEGO builds its merged units from.
//!
//! Given the rows LEGO clustered (raw units, or unit-length parts with their norms), the labels
//! and orientations k-means returned, one pass computes per cluster the mean of its members'
//! raw units (each member counted as `sign·[b ; a]`), the member count, and the mean norm of the
//! members' b and a parts (for LEGO's parameter reweighting). Sums are f64 over members in row
//! order, by column chunks in parallel: the bytes do not depend on the thread count.

use rayon::prelude::*;

use crate::error::{catch_panic, Error, Result};

/// Per cluster statistics of [`cluster_means`].
pub struct ClusterMeans {
    /// `k × width` row-major: the mean raw unit of each cluster (zero for an empty cluster).
    pub means: Vec<f64>,
    /// Members per cluster.
    pub counts: Vec<usize>,
    /// Mean norm of the members' b parts (first `d_out` entries), and of their a parts.
    pub mean_norm_b: Vec<f64>,
    pub mean_norm_a: Vec<f64>,
}

/// Columns summed by one task: `k` accumulators of this many f64 stay in L2.
const COLS: usize = 512;

/// Statistics of the k clusters of the `n × width` rows of `x`. `labels[i]` in `0..k`;
/// `signs[i] = ±1` (the member counts as `signs[i]·x_i`); `part_norms` (`n × 2`, optional):
/// row i's parts were divided by `[‖b‖, ‖a‖]`, which the means multiply back.
pub fn cluster_means(
    x: &[f32],
    width: usize,
    d_out: usize,
    labels: &[i64],
    signs: &[f32],
    k: usize,
    part_norms: Option<&[f32]>,
) -> Result<ClusterMeans> {
    let n = labels.len();
    if x.len() != n * width || signs.len() != n || d_out > width {
        return Err(Error::invalid(format!(
            "cluster_means: x has {} values, labels {n}, signs {}, width {width}, d_out {d_out}",
            x.len(),
            signs.len()
        )));
    }
    if let Some(p) = part_norms {
        if p.len() != 2 * n {
            return Err(Error::invalid(format!(
                "cluster_means: part_norms has {} values, expected 2·n = {}",
                p.len(),
                2 * n
            )));
        }
    }
    if let Some(i) = labels.iter().position(|&l| l < 0 || l as usize >= k) {
        return Err(Error::invalid(format!(
            "cluster_means: label {} of row {i} is not in 0..{k}",
            labels[i]
        )));
    }
    catch_panic("cluster_means", || {
        let label: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
        let mut counts = vec![0usize; k];
        for &l in &label {
            counts[l] += 1;
        }
        // The members' part norms: given, or measured on the raw rows.
        let level = crate::simd::Level::detect();
        let norms: Vec<[f64; 2]> = match part_norms {
            Some(p) => p
                .chunks_exact(2)
                .map(|v| [v[0] as f64, v[1] as f64])
                .collect(),
            None => x
                .par_chunks(width)
                .map(|row| {
                    let norm = |v: &[f32]| crate::simd::sq_norm(level, v).sqrt();
                    [norm(&row[..d_out]), norm(&row[d_out..])]
                })
                .collect(),
        };
        let mut nb = vec![0f64; k];
        let mut na = vec![0f64; k];
        for (&l, nrm) in label.iter().zip(&norms) {
            nb[l] += nrm[0];
            na[l] += nrm[1];
        }
        for j in 0..k {
            let c = counts[j].max(1) as f64;
            nb[j] /= c;
            na[j] /= c;
        }
        // Column chunks never straddle b and a, so each chunk has one scale per row.
        let mut chunks = Vec::new();
        for (lo, hi, part) in [(0, d_out, 0usize), (d_out, width, 1)] {
            let mut c0 = lo;
            while c0 < hi {
                let c1 = (c0 + COLS).min(hi);
                chunks.push((c0, c1, part));
                c0 = c1;
            }
        }
        let parts: Vec<Vec<f64>> = chunks
            .par_iter()
            .map(|&(c0, c1, part)| {
                let w = c1 - c0;
                let mut acc = vec![0f64; k * w];
                for (i, row) in x.chunks_exact(width).enumerate() {
                    let mut s = signs[i] as f64;
                    if part_norms.is_some() {
                        s *= norms[i][part];
                    }
                    let dst = &mut acc[label[i] * w..(label[i] + 1) * w];
                    for (a, &v) in dst.iter_mut().zip(&row[c0..c1]) {
                        *a += s * v as f64;
                    }
                }
                acc
            })
            .collect();
        let mut means = vec![0f64; k * width];
        for (&(c0, c1, _), acc) in chunks.iter().zip(&parts) {
            let w = c1 - c0;
            for j in 0..k {
                let inv = if counts[j] > 0 {
                    1.0 / counts[j] as f64
                } else {
                    0.0
                };
                for (m, &a) in means[j * width + c0..j * width + c1]
                    .iter_mut()
                    .zip(&acc[j * w..(j + 1) * w])
                {
                    *m = a * inv;
                }
            }
        }
        Ok(ClusterMeans {
            means,
            counts,
            mean_norm_b: nb,
            mean_norm_a: na,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain reference: per cluster, sum the oriented raw rows and their part norms.
    fn reference(
        raw: &[f32],
        width: usize,
        d_out: usize,
        labels: &[i64],
        signs: &[f32],
        k: usize,
    ) -> ClusterMeans {
        let mut means = vec![0f64; k * width];
        let (mut counts, mut nb, mut na) = (vec![0usize; k], vec![0f64; k], vec![0f64; k]);
        for (i, row) in raw.chunks_exact(width).enumerate() {
            let l = labels[i] as usize;
            counts[l] += 1;
            for (j, &v) in row.iter().enumerate() {
                means[l * width + j] += signs[i] as f64 * v as f64;
            }
            nb[l] += row[..d_out]
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            na[l] += row[d_out..]
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
                .sqrt();
        }
        for l in 0..k {
            let c = counts[l].max(1) as f64;
            means[l * width..(l + 1) * width]
                .iter_mut()
                .for_each(|m| *m /= c);
            nb[l] /= c;
            na[l] /= c;
        }
        ClusterMeans {
            means,
            counts,
            mean_norm_b: nb,
            mean_norm_a: na,
        }
    }

    #[test]
    fn means_match_the_reference_raw_and_normalized() {
        let (n, d_out, d_in, k) = (301, 700, 333, 6);
        let width = d_out + d_in;
        let raw: Vec<f32> = (0..n * width)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
            .collect();
        let labels: Vec<i64> = (0..n).map(|i| ((i * 31) % (k - 1)) as i64).collect(); // cluster k-1 empty
        let signs: Vec<f32> = (0..n)
            .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let want = reference(&raw, width, d_out, &labels, &signs, k);
        // Normalized rows and their part norms.
        let mut x = raw.clone();
        let mut norms = vec![0f32; 2 * n];
        for (row, nrm) in x.chunks_exact_mut(width).zip(norms.chunks_exact_mut(2)) {
            let (b, a) = row.split_at_mut(d_out);
            for (v, slot) in [(b, 0), (a, 1)] {
                let s = v.iter().map(|&t| t as f64 * t as f64).sum::<f64>().sqrt();
                v.iter_mut().for_each(|t| *t = (*t as f64 / s) as f32);
                nrm[slot] = s as f32;
            }
        }
        for got in [
            cluster_means(&raw, width, d_out, &labels, &signs, k, None).unwrap(),
            cluster_means(&x, width, d_out, &labels, &signs, k, Some(&norms)).unwrap(),
        ] {
            assert_eq!(got.counts, want.counts);
            // Entries are ~0.3 (f32 rounding of a normalized part ~2e-8); means are small.
            for (g, w) in got.means.iter().zip(&want.means) {
                assert!((g - w).abs() <= 1e-6 * w.abs() + 1e-7, "{g} vs {w}");
            }
            for (g, w) in got
                .mean_norm_b
                .iter()
                .chain(&got.mean_norm_a)
                .zip(want.mean_norm_b.iter().chain(&want.mean_norm_a))
            {
                assert!((g - w).abs() <= 1e-6 * w.abs().max(1e-3), "{g} vs {w}");
            }
            assert!(got.means[(k - 1) * width..].iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn same_bytes_at_one_and_two_threads() {
        let (n, width, d_out, k) = (500, 1300, 600, 7);
        let x: Vec<f32> = (0..n * width)
            .map(|i| ((i * 104729 % 997) as f32).sin())
            .collect();
        let labels: Vec<i64> = (0..n).map(|i| (i % k) as i64).collect();
        let signs = vec![1f32; n];
        let run = |t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(|| {
                    cluster_means(&x, width, d_out, &labels, &signs, k, None)
                        .unwrap()
                        .means
                })
        };
        let (one, two) = (run(1), run(2));
        assert!(one
            .iter()
            .zip(&two)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn bad_input_is_an_error() {
        let x = vec![0f32; 12];
        let msg = |r: Result<ClusterMeans>| r.err().map(|e| e.to_string()).unwrap_or_default();
        let cases: [(Result<ClusterMeans>, &str); 3] = [
            (
                cluster_means(&x, 4, 2, &[0, 1, 3], &[1.0; 3], 3, None),
                "label 3 of row 2 is not in 0..3",
            ),
            (
                cluster_means(&x, 4, 2, &[0, 1], &[1.0; 2], 3, None),
                "x has 12 values, labels 2",
            ),
            (
                cluster_means(&x, 4, 2, &[0, 1, 2], &[1.0; 3], 3, Some(&[1.0; 4])),
                "part_norms has 4 values, expected 2·n = 6",
            ),
        ];
        for (r, want) in cases {
            let got = msg(r);
            assert!(got.contains(want), "{got:?} should contain {want:?}");
        }
    }
}
