//! Lloyd against the reference, the distance cache and the restarts.

use super::*;

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
        assert_portable(&nv);
        assert_matches_naive(&r, &nv, 1e-5);
    }
}

#[test]
fn lloyd_matches_reference_when_not_converged() {
    // Overlapping data, few iterations: exercises the final assignment pass and tol. Seed 8:
    // every assignment at least 9 times farther from a tie than any CPU's rounding could move
    // it (seed 7 had a point at 0.05 of that bound: exact here, not portable).
    let (n, d, k) = (2000, 16, 10);
    let (x, _) = blobs(n, d, 3, 1.0, 8);
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
        assert_portable(&nv);
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
    assert_portable(&nv);
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
