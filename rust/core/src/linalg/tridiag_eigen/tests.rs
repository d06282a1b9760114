//! The solver against faer's dense one, closed forms and invariants (residuals, orthonormality),
//! on random and structured matrices that stress splitting, clustering and scaling.

use faer::Side;

use super::*;
// Test matrices from xorshift, a generator unrelated to the solver's start vectors (MMIX).
use crate::rng::XorShift64 as Rng;

fn random_tridiag(n: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut r = Rng::new(seed);
    let d = (0..n).map(|_| r.next_signed()).collect();
    let e = (0..n.saturating_sub(1)).map(|_| r.next_signed()).collect();
    (d, e)
}

/// max_i Σ_j |T_ij|
fn norm1(d: &[f64], e: &[f64]) -> f64 {
    (0..d.len())
        .map(|i| {
            let l = if i > 0 { e[i - 1].abs() } else { 0.0 };
            let r = e.get(i).map_or(0.0, |v| v.abs());
            d[i].abs() + l + r
        })
        .fold(0.0, f64::max)
}

/// Runs `top_k` and checks residuals ‖T v − λ v‖₂ and ‖VᵀV − I‖_max; returns (λ, V).
fn run_checked(d: &[f64], e: &[f64], k: usize) -> (Vec<f64>, Vec<f64>) {
    let n = d.len();
    let mut v = vec![f64::NAN; n * k];
    let lam = top_k(d, e, k, &mut v).unwrap();
    assert_eq!(lam.len(), k);
    for w in lam.windows(2) {
        assert!(w[0] >= w[1], "not descending: {lam:?}");
    }
    let tn = norm1(d, e);
    let nf = n as f64;
    for j in 0..k {
        let col = &v[j * n..(j + 1) * n];
        // Residual of T/‖T‖₁, scaled back (no overflow for entries near 1e308).
        let s = if tn > 0.0 { 1.0 / tn } else { 1.0 };
        let mut r2 = 0.0;
        for i in 0..n {
            let mut t = (d[i] * s) * col[i] - (lam[j] * s) * col[i];
            if i > 0 {
                t += (e[i - 1] * s) * col[i - 1];
            }
            if i + 1 < n {
                t += (e[i] * s) * col[i + 1];
            }
            r2 += t * t;
        }
        let res = r2.sqrt() / s;
        assert!(
            res <= 1e-12 * tn * nf.sqrt().max(1.0) + f64::MIN_POSITIVE,
            "n={n} k={k} j={j}: residual {res:e}, ‖T‖₁ {tn:e}"
        );
    }
    let mut worst = 0.0f64;
    for a in 0..k {
        for b in 0..=a {
            let g: f64 = (0..n).map(|i| v[a * n + i] * v[b * n + i]).sum();
            let t = if a == b { 1.0 } else { 0.0 };
            worst = worst.max((g - t).abs());
        }
    }
    assert!(worst <= 1e-12 * nf, "n={n} k={k}: |VᵀV − I| = {worst:e}");
    (lam, v)
}

/// Compares with faer's dense solver: eigenvalues, and the projector onto the top-k space
/// when the gap after the k-th eigenvalue is clear.
fn check_against_faer(d: &[f64], e: &[f64], ks: &[usize]) {
    let n = d.len();
    let a = dense(d, e);
    let evd = a.self_adjoint_eigen(Side::Lower).unwrap();
    let s = evd.S().column_vector();
    let u = evd.U();
    let tn = norm1(d, e).max(f64::MIN_POSITIVE);
    for &k in ks {
        let (lam, v) = run_checked(d, e, k);
        check_one(n, k, tn, &lam, &v, s, u);
    }
}

fn check_one(
    n: usize,
    k: usize,
    tn: f64,
    lam: &[f64],
    v: &[f64],
    s: faer::ColRef<'_, f64>,
    u: faer::MatRef<'_, f64>,
) {
    for j in 0..k {
        let r = s[n - 1 - j];
        assert!(
            (lam[j] - r).abs() <= 1e-12 * tn,
            "n={n} k={k} j={j}: {} vs faer {r}",
            lam[j]
        );
    }
    // With a clear gap after the k-th eigenvalue the top-k subspace is well defined:
    // ‖V·Vᵀ − U·Uᵀ‖₂ = ‖sin Θ‖₂ <= ‖U − V·(Vᵀ·U)‖_F (U: faer's top-k vectors). For k = n
    // both projectors are the identity.
    if k == n || s[n - k] - s[n - k - 1] <= 1e-6 * tn {
        return;
    }
    let gap = s[n - k] - s[n - k - 1];
    let uk: Vec<f64> = (0..k)
        .flat_map(|b| (0..n).map(move |i| u[(i, n - 1 - b)]))
        .collect();
    let dotp = |x: &[f64], y: &[f64]| -> f64 { x.iter().zip(y).map(|(a, b)| a * b).sum() };
    let mut w2 = 0.0;
    for b in 0..k {
        let ub = &uk[b * n..(b + 1) * n];
        let mut r = ub.to_vec();
        for a in 0..k {
            let va = &v[a * n..(a + 1) * n];
            let c = dotp(va, ub);
            for (ri, vi) in r.iter_mut().zip(va) {
                *ri -= c * vi;
            }
        }
        w2 += dotp(&r, &r);
    }
    let worst = w2.sqrt();
    let bound = 1e-13 * n as f64 * tn / gap.min(tn) + 1e-13;
    assert!(
        worst <= bound,
        "n={n} k={k}: subspace distance {worst:e} > {bound:e}"
    );
}

/// Structured matrices of assorted sizes: residuals and orthonormality only.
fn structured(kind: usize, n: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let (mut d, mut e) = random_tridiag(n, seed);
    match kind {
        // Free Laplacian (eigenvalue 0 exactly for odd n).
        1 => {
            d.fill(0.0);
            e.fill(1.0);
        }
        // Positive semidefinite second-difference matrix.
        2 => {
            d.fill(2.0);
            e.fill(-1.0);
        }
        // Many exact splits.
        3 => e.iter_mut().step_by(7).for_each(|x| *x = 0.0),
        // Three huge clusters at 0, 1, 2 (spread ~1e-18), unresolvable by the solves: the
        // case that needs shift separation near zero.
        4 => {
            d.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = (i % 3) as f64);
            e.iter_mut().for_each(|x| *x *= 1e-9);
        }
        // Periodically graded: clusters of tiny eigenvalues.
        5 => {
            for (i, x) in d.iter_mut().enumerate() {
                *x = 2f64.powi(-((i % 60) as i32));
            }
            for (i, x) in e.iter_mut().enumerate() {
                *x = 2f64.powi(-((i % 60) as i32) - 3);
            }
        }
        // Off-diagonals far below the diagonal: splits everywhere.
        6 => e.iter_mut().for_each(|x| *x *= 1e-200),
        // Integer entries, e in {0, 1}.
        7 => {
            d.iter_mut().for_each(|x| *x = x.round());
            e.iter_mut()
                .for_each(|x| *x = if *x > 0.0 { 1.0 } else { 0.0 });
        }
        // Glued Wilkinson W21+ copies.
        8 => {
            for (i, x) in d.iter_mut().enumerate() {
                *x = (10.0 - (i % 21) as f64).abs();
            }
            for (i, x) in e.iter_mut().enumerate() {
                *x = if i % 21 == 20 { 1e-12 } else { 1.0 };
            }
        }
        _ => {}
    }
    (d, e)
}

#[test]
fn structured_matrices() {
    let mut r = Rng(0x1234_5678_9abc_def1);
    for case in 0..90 {
        let n = 1 + (r.next_signed().abs() * 150.0) as usize;
        let (d, e) = structured(case % 9, n, case as u64 + 100);
        let k = [1, n.min(37), n][case % 3];
        run_checked(&d, &e, k);
    }
    // The zero cluster at full size.
    let (d, e) = structured(4, 300, 7);
    run_checked(&d, &e, 300);
}

/// `cargo test --release -p rankwise-core tridiag_eigen::tests::stress -- --ignored`
#[test]
#[ignore]
fn stress() {
    let mut r = Rng(0x0fed_cba9_8765_4321);
    for case in 0..900 {
        let n = 1 + (r.next_signed().abs() * 700.0) as usize;
        let (d, e) = structured(case % 9, n, case as u64 + 1000);
        let k = [1, n.min(37), n][case % 3];
        run_checked(&d, &e, k);
    }
}

#[test]
fn random_matrices_match_faer() {
    for (seed, &n) in [1usize, 2, 3, 10, 100, 513].iter().enumerate() {
        let (d, e) = random_tridiag(n, seed as u64 + 1);
        let mut ks = vec![1, n.min(16), n];
        ks.dedup();
        check_against_faer(&d, &e, &ks);
    }
}

#[test]
fn free_laplacian_closed_form() {
    // d = 0, e = 1: eigenvalues 2·cos(πj/(n+1)), independent of any solver.
    for n in [2usize, 7, 64, 300] {
        let d = vec![0.0; n];
        let e = vec![1.0; n - 1];
        let k = n.min(10);
        let (lam, _) = run_checked(&d, &e, k);
        for (j, &l) in lam.iter().enumerate() {
            let r = 2.0 * (std::f64::consts::PI * (j + 1) as f64 / (n + 1) as f64).cos();
            assert!(
                (l - r).abs() <= 4.0 * f64::EPSILON * 2.0,
                "n={n} j={j}: {l} vs {r}"
            );
        }
    }
}

#[test]
fn identity_and_repeated_diagonal() {
    let (lam, v) = run_checked(&[1.0; 6], &[0.0; 5], 4);
    assert_eq!(lam, vec![1.0; 4]);
    // Every vector is a unit basis vector (1 × 1 blocks).
    for j in 0..4 {
        let col = &v[j * 6..(j + 1) * 6];
        assert_eq!(col.iter().filter(|&&x| x == 0.0).count(), 5);
    }
    let (lam, _) = run_checked(&[1.0; 5], &[0.0; 4], 3);
    assert_eq!(lam, vec![1.0; 3]);

    let d = [3.0, 1.0, 3.0, 2.0, 3.0, 1.0, -4.0];
    let (lam, v) = run_checked(&d, &[0.0; 6], 7);
    assert_eq!(lam, vec![3.0, 3.0, 3.0, 2.0, 1.0, 1.0, -4.0]);
    for j in 0..7 {
        let col = &v[j * 7..(j + 1) * 7];
        let i = col.iter().position(|&x| x == 1.0).unwrap();
        assert_eq!(d[i], lam[j]);
    }
    check_against_faer(&d, &[0.0; 6], &[4]);
}

#[test]
fn two_equal_blocks_double_every_eigenvalue() {
    for nb in [1usize, 2, 5, 40] {
        let (db, eb) = random_tridiag(nb, 77 + nb as u64);
        let mut d = db.clone();
        d.extend_from_slice(&db);
        let mut e = eb.clone();
        e.push(0.0);
        e.extend_from_slice(&eb);
        let n = 2 * nb;
        for k in [2.min(n), n.min(9), n] {
            let (lam, v) = run_checked(&d, &e, k);
            // Each value appears twice (up to a tail pair cut by k).
            for pair in lam.chunks_exact(2) {
                assert_eq!(pair[0], pair[1], "{lam:?}");
            }
            // Each vector lives in one block.
            for j in 0..k {
                let col = &v[j * n..(j + 1) * n];
                let top = col[..nb].iter().any(|&x| x != 0.0);
                let bot = col[nb..].iter().any(|&x| x != 0.0);
                assert!(top != bot, "vector {j} spans both blocks");
            }
            check_against_faer(&d, &e, &[k]);
        }
    }
}

fn wilkinson_plus(m: usize) -> (Vec<f64>, Vec<f64>) {
    let d = (0..2 * m + 1)
        .map(|i| (m as f64 - i as f64).abs())
        .collect();
    (d, vec![1.0; 2 * m])
}

#[test]
fn wilkinson_w21_clustered_pairs() {
    let (d, e) = wilkinson_plus(10);
    let (lam, _) = run_checked(&d, &e, 6);
    // The top pairs agree to ~1e-14 and must not be merged into one value twice.
    assert!(lam[0] > lam[1] && lam[0] - lam[1] < 1e-12, "{lam:?}");
    check_against_faer(&d, &e, &[6, 21]);
}

#[test]
fn glued_wilkinson_clusters() {
    // Copies of W21+ glued by tiny off-diagonals: clusters of 5 almost equal eigenvalues,
    // the classic hard case for inverse iteration's reorthogonalization.
    for glue in [1e-14, 1e-10, 1e-6] {
        let (dw, ew) = wilkinson_plus(10);
        let mut d = Vec::new();
        let mut e = Vec::new();
        for c in 0..5 {
            if c > 0 {
                e.push(glue);
            }
            d.extend_from_slice(&dw);
            e.extend_from_slice(&ew);
        }
        check_against_faer(&d, &e, &[5, 12, 40]);
    }
}

#[test]
fn scaled_matrices_scale_eigenvalues() {
    let (d, e) = random_tridiag(60, 5);
    let (lam, v) = run_checked(&d, &e, 8);
    for s in [1e-300, 1e-150, 1e150, 1e300] {
        let ds: Vec<f64> = d.iter().map(|x| x * s).collect();
        let es: Vec<f64> = e.iter().map(|x| x * s).collect();
        let (ls, vs) = run_checked(&ds, &es, 8);
        for (a, b) in lam.iter().zip(&ls) {
            assert!(
                (a * s - b).abs() <= 1e-12 * s * 3.0,
                "scale {s:e}: {a} vs {b}"
            );
        }
        // Power-of-two scalings are exact, and these nearly are: same vectors.
        for (a, b) in v.iter().zip(&vs) {
            assert!((a - b).abs() <= 1e-10, "scale {s:e}");
        }
    }
    // Entries near the top of the float range: eigenvalues up to ~3e307.
    let ds: Vec<f64> = d.iter().map(|x| x * 1e307).collect();
    let es: Vec<f64> = e.iter().map(|x| x * 1e307).collect();
    let mut v = vec![0.0; 60 * 3];
    let l = top_k(&ds, &es, 3, &mut v).unwrap();
    assert!(l.iter().all(|x| x.is_finite()));
    // Subnormal entries only.
    let ds: Vec<f64> = d.iter().map(|x| x * 1e-310).collect();
    let es: Vec<f64> = e.iter().map(|x| x * 1e-310).collect();
    let l = top_k(&ds, &es, 3, &mut v).unwrap();
    assert!(l.iter().all(|x| x.is_finite() && *x != 0.0));
}

#[test]
fn graded_and_nearly_split() {
    // Strongly graded diagonal: splitting by the relative test, eigenvalues spanning 1e-30.
    let n: i32 = 31;
    let d: Vec<f64> = (0..n).map(|i| 10f64.powi(-i)).collect();
    let e: Vec<f64> = (0..n - 1).map(|i| 10f64.powi(-i) * 1e-3).collect();
    check_against_faer(&d, &e, &[10]);
    // Off-diagonals just above / below the splitting threshold.
    let (mut d, mut e) = random_tridiag(50, 11);
    d[20] = 1.0;
    d[21] = 1.0;
    for f in [0.5, 2.0, 1e3] {
        e[20] = f * f64::EPSILON;
        check_against_faer(&d, &e, &[50]);
    }
    // A zero matrix and a matrix with a zero block.
    run_checked(&[0.0; 4], &[0.0; 3], 4);
    check_against_faer(&[0.0, 0.0, 0.0, 2.0], &[0.0, 0.0, 1.0], &[4]);
}

#[test]
fn deterministic() {
    let (d, e) = random_tridiag(200, 3);
    let mut v1 = vec![0.0; 200 * 16];
    let mut v2 = vec![1.0; 200 * 16];
    let l1 = top_k(&d, &e, 16, &mut v1).unwrap();
    let l2 = top_k(&d, &e, 16, &mut v2).unwrap();
    assert_eq!(
        l1.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        l2.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(
        v1.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        v2.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn bad_input_is_an_error() {
    let d = [1.0, 2.0, 3.0];
    let e = [0.5, 0.5];
    let mut v = vec![0.0; 12];
    assert_eq!(
        top_k(&d, &e, 4, &mut v),
        Err(TridiagEigenError::KTooLarge { k: 4, n: 3 })
    );
    assert!(matches!(
        top_k(&d, &[0.5], 1, &mut v[..3]),
        Err(TridiagEigenError::BadLength { what: "e", .. })
    ));
    assert!(matches!(
        top_k(&d, &[0.5, 0.5, 0.5], 1, &mut v[..3]),
        Err(TridiagEigenError::BadLength { what: "e", .. })
    ));
    assert!(matches!(
        top_k(&d, &e, 2, &mut v[..5]),
        Err(TridiagEigenError::BadLength { what: "vecs", .. })
    ));
    assert!(matches!(
        top_k(&[], &[1.0], 0, &mut []),
        Err(TridiagEigenError::BadLength { what: "e", .. })
    ));
    assert_eq!(
        top_k(&[1.0, f64::NAN, 3.0], &e, 1, &mut v[..3]),
        Err(TridiagEigenError::NonFinite {
            what: "d",
            index: 1
        })
    );
    assert_eq!(
        top_k(&d, &[0.5, f64::INFINITY], 1, &mut v[..3]),
        Err(TridiagEigenError::NonFinite {
            what: "e",
            index: 1
        })
    );
    assert_eq!(top_k(&[], &[], 0, &mut []), Ok(vec![]));
    assert_eq!(top_k(&d, &e, 0, &mut []), Ok(vec![]));
    let err = top_k(&d, &e, 4, &mut v).unwrap_err().to_string();
    assert!(err.contains("k = 4"), "{err}");
}
