//! k-means from a Gram matrix against the row path with exact seeding (the same algorithm in
//! exact arithmetic): labels, signs and iterations equal, inertia to rounding.

use super::*;
use crate::kmeans::{kmeans_gram, GramKMeansResult};

fn gram_of(x: &[f32], n: usize, d: usize) -> Vec<f32> {
    let mut g = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            let (a, b) = (&x[i * d..(i + 1) * d], &x[j * d..(j + 1) * d]);
            g[i * n + j] = a
                .iter()
                .zip(b)
                .map(|(&p, &q)| p as f64 * q as f64)
                .sum::<f64>() as f32;
        }
    }
    g
}

fn exact_rows(p: &KMeansParams) -> KMeansParams {
    KMeansParams {
        seed_projection: false,
        ..p.clone()
    }
}

fn assert_matches(g: &GramKMeansResult, r: &KMeansResult) {
    assert_eq!(g.labels, r.labels);
    assert_eq!(g.signs, r.signs);
    assert_eq!(g.n_iter, r.n_iter);
    assert!(
        (g.inertia - r.inertia).abs() <= 1e-5 * r.inertia.max(1.0),
        "{} vs {}",
        g.inertia,
        r.inertia
    );
}

#[test]
fn equals_the_row_path_on_blobs() {
    let (n, d, k) = (300, 40, 5);
    let (x, _) = blobs(n, d, k, 4.0, 11);
    let g = gram_of(&x, n, d);
    for seed in 0..3 {
        let p = KMeansParams {
            n_init: 3,
            seed,
            ..params(k)
        };
        let want = kmeans(&x, n, d, &exact_rows(&p), None).unwrap();
        let got = kmeans_gram(&g, n, d, &p).unwrap();
        assert_matches(&got, &want);
    }
}

#[test]
fn equals_the_row_path_modulo_sign() {
    let (n, d, k) = (240, 32, 4);
    let (x, _, _) = signed_copies(n, d, k, 7);
    let g = gram_of(&x, n, d);
    let p = si_params(k);
    let want = kmeans(&x, n, d, &exact_rows(&p), None).unwrap();
    let got = kmeans_gram(&g, n, d, &p).unwrap();
    assert_matches(&got, &want);
    assert!(got.signs.iter().any(|&s| s < 0.0));
}

#[test]
fn relocates_empty_clusters_as_the_row_path() {
    // Small integers (every dot product exact in f32) with many duplicates: k-means++ picks
    // coinciding seeds, clusters empty out and take the farthest points.
    let (n, d, k) = (24, 3, 6);
    let x: Vec<f32> = (0..n * d)
        .map(|i| ((i / d) % 3 * (1 + i % d)) as f32)
        .collect();
    let g = gram_of(&x, n, d);
    for si in [false, true] {
        for seed in 0..8 {
            let p = KMeansParams {
                k,
                seed,
                sign_invariant: si,
                tol: 0.0,
                ..params(k)
            };
            let want = kmeans(&x, n, d, &exact_rows(&p), None).unwrap();
            let got = kmeans_gram(&g, n, d, &p).unwrap();
            assert_matches(&got, &want);
        }
    }
}

#[test]
fn same_bytes_at_any_thread_count() {
    let (n, d, k) = (700, 24, 9);
    let (x, _) = blobs(n, d, k, 3.0, 5);
    let g = gram_of(&x, n, d);
    let p = si_params(k);
    let one = in_pool(1, || kmeans_gram(&g, n, d, &p).unwrap());
    let three = in_pool(3, || kmeans_gram(&g, n, d, &p).unwrap());
    assert_eq!(one.labels, three.labels);
    assert_eq!(one.signs, three.signs);
    assert_eq!(one.inertia.to_bits(), three.inertia.to_bits());
}

#[test]
fn rejects_bad_input() {
    let g = vec![1f32; 9];
    assert!(kmeans_gram(&g[..8], 3, 2, &params(2)).is_err());
    assert!(kmeans_gram(&g, 3, 2, &params(4)).is_err());
    let mut bad = g.clone();
    bad[4] = f32::NAN;
    let e = kmeans_gram(&bad, 3, 2, &params(2)).unwrap_err();
    assert!(e.to_string().contains("row 1, column 1"), "{e}");
}
