//! k-means++ against the reference with the same draws, the subsample and the projection.

use super::*;

/// scikit-learn's greedy k-means++, written plainly with exact distances and the same draws.
/// Also returns its margin: the smallest distance of a draw from the edge of the point it
/// picks, and of the best candidate's potential from the next one, over the bound on how far
/// the GEMM path's sums of distances can be from these exact ones on any CPU (each distance
/// `‖x‖² + ‖c‖² − 2·fl(x·c)` within 2γ_d‖x‖‖c‖ and f64 rounding). Above 1, the GEMM path
/// picks the same points whatever its kernels' rounding.
fn naive_kmeans_pp(x: &[f32], d: usize, k: usize, rng: &mut Xoshiro256) -> (Vec<usize>, f64) {
    let n = x.len() / d;
    let row = |i: usize| &x[i * d..(i + 1) * d];
    let norm = |i: usize| row(i).iter().map(|&t| t as f64 * t as f64).sum::<f64>();
    let max_norm = (0..n).map(norm).fold(0.0, f64::max);
    let slack: f64 = (0..n)
        .map(|i| 2.0 * gamma_f32(d) * (norm(i) * max_norm).sqrt() + 1e-14 * (norm(i) + max_norm))
        .sum::<f64>()
        * 2.0;
    let mut margin = f64::INFINITY;
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
                let p = cum.iter().position(|&c| c >= r).unwrap_or(n - 1);
                let below = if p > 0 { cum[p - 1] } else { f64::NEG_INFINITY };
                margin = margin.min((r - below).min(cum[p] - r) / slack);
                p
            })
            .collect();
        let mut pots = Vec::new();
        let mut best: Option<(f64, usize, Vec<f64>)> = None;
        for &c in &cands {
            let dist: Vec<f64> = (0..n)
                .map(|i| naive_d2(row(i), row(c)).min(closest[i]))
                .collect();
            let p: f64 = dist.iter().sum();
            pots.push(p);
            if best.as_ref().is_none_or(|b| p < b.0) {
                best = Some((p, c, dist));
            }
        }
        let (p, c, dist) = best.unwrap();
        // The runner-up (another point: the same point drawn twice ties with itself).
        for (&q, &ci) in pots.iter().zip(&cands) {
            if ci != c {
                margin = margin.min((q - p).abs() / slack);
            }
        }
        pot = p;
        closest = dist;
        chosen.push(c);
    }
    (chosen, margin)
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
    let (idx, margin) = naive_kmeans_pp(&x, d, k, &mut Xoshiro256::new(5));
    assert!(
        margin > 1.0,
        "margin {margin}: a draw could pick another point on another CPU"
    );
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
