//! Clustering modulo sign: recovery of signed copies, equality with the Euclidean mode on
//! oriented data, and a plain computation of one step.

use super::*;

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
