//! The reduction against its definition: Q·T·Qᵀ = A, QᵀQ = I and T's eigenvalues A's (faer's
//! dense solver), for sizes across panel boundaries, every build and several blockings.

use faer::{Mat, Side};

use super::*;
use crate::rng::XorShift64;

/// A random symmetric n × n matrix, column-major.
fn random_sym(n: usize, seed: u64) -> Vec<f64> {
    let mut r = XorShift64::new(seed);
    let mut a = vec![0.0; n * n];
    for j in 0..n {
        for i in j..n {
            let v = r.next_signed();
            a[j * n + i] = v;
            a[i * n + j] = v;
        }
    }
    a
}

/// Errors of one reduction, in units of ε·max|A| (reconstruction), ε (orthogonality) and
/// ε·max|λ| (eigenvalues).
struct Errors {
    rec: f64,
    orth: f64,
    eig: f64,
}

/// What one reduction gave (in f64), for the checks.
struct Reduced {
    diag: Vec<f64>,
    off: Vec<f64>,
    tau: Vec<f64>,
    /// Q built by `apply_q` on the identity.
    q: Mat<f64>,
    /// The input as rounded to F.
    a: Mat<f64>,
}

/// Reduces the symmetric `a` (f64, full) in precision F with the given build and blocking.
/// The strict upper triangle is NaN, so that reading it would show in the results, and is
/// checked to be left as it was.
fn run<F: Real>(a: &[f64], n: usize, isa: Level, nb: usize, nx: usize) -> Reduced {
    let mut af: Vec<F> = a.iter().map(|&v| F::from_f64(v)).collect();
    let a_rounded = Mat::from_fn(n, n, |i, j| af[j * n + i].to_f64());
    for j in 0..n {
        for i in 0..j {
            af[j * n + i] = F::from_f64(f64::NAN);
        }
    }
    let mut diag = vec![f64::NAN; n];
    let mut off = vec![f64::NAN; n.saturating_sub(1)];
    let mut tau = vec![F::from_f64(f64::NAN); n.saturating_sub(1)];
    reduce_with(isa, nb, nx, &mut af, n, &mut diag, &mut off, &mut tau);
    for j in 0..n {
        for i in 0..j {
            assert!(af[j * n + i].to_f64().is_nan(), "upper triangle written");
        }
    }
    let mut z: Vec<F> = (0..n * n)
        .map(|p| F::from_f64(if p % (n + 1) == 0 { 1.0 } else { 0.0 }))
        .collect();
    apply_q_with(isa, &af, n, &tau, &mut z, n);
    Reduced {
        diag,
        off,
        tau: tau.iter().map(|t| t.to_f64()).collect(),
        q: Mat::from_fn(n, n, |i, j| z[j * n + i].to_f64()),
        a: a_rounded,
    }
}

fn max_abs(m: &Mat<f64>) -> f64 {
    let mut v = 0.0f64;
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            v = v.max(m[(i, j)].abs());
        }
    }
    v
}

fn errors<F: Real>(r: &Reduced) -> Errors {
    let n = r.diag.len();
    let eps = F::EPS.to_f64();
    assert!(r
        .diag
        .iter()
        .chain(&r.off)
        .chain(&r.tau)
        .all(|v| v.is_finite()));
    if n == 0 {
        return Errors {
            rec: 0.0,
            orth: 0.0,
            eig: 0.0,
        };
    }
    let t = crate::linalg::tridiag_eigen::dense(&r.diag, &r.off);
    let scale = max_abs(&r.a);
    let rec = &r.q * &t * r.q.transpose() - &r.a;
    let orth = r.q.transpose() * &r.q - Mat::<f64>::identity(n, n);
    let lt = t.self_adjoint_eigenvalues(Side::Lower).unwrap();
    let la = r.a.self_adjoint_eigenvalues(Side::Lower).unwrap();
    let lmax = la.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let eig = lt
        .iter()
        .zip(&la)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    let unit = |s: f64| if s > 0.0 { s * eps } else { 1.0 };
    Errors {
        rec: max_abs(&rec) / unit(scale),
        orth: max_abs(&orth) / eps,
        eig: eig / unit(lmax),
    }
}

/// The bound on all three errors, in units of ε: Householder tridiagonalization is
/// backward stable with ‖Q·T·Qᵀ − A‖ ≤ c·n·ε·‖A‖ in the worst case (and so the
/// eigenvalues by Weyl, and QᵀQ − I), c a small constant; rounding errors that behave
/// like random ones grow like √n instead (measured here: reconstruction ≤ 1.3·√n,
/// orthogonality ≤ 0.6·√n, eigenvalues ≤ 5.5·√n with faer's solver's own error; at most a
/// quarter of the bound, at n = 5). 4·n follows the worst case's shape with room, and is
/// still far below the O(1) errors of a wrong reflector or a missed update.
fn bound(n: usize) -> f64 {
    4.0 * n.max(4) as f64
}

fn check<F: Real>(a: &[f64], n: usize, isa: Level, nb: usize, nx: usize) -> Reduced {
    let r = run::<F>(a, n, isa, nb, nx);
    let e = errors::<F>(&r);
    let b = bound(n);
    assert!(
        e.rec <= b && e.orth <= b && e.eig <= b,
        "n = {n}, {}, nb = {nb}, nx = {nx}, single = {}: rec {:.1} orth {:.1} eig {:.1} \
         (ε units, bound {b})",
        isa.name(),
        F::SINGLE,
        e.rec,
        e.orth,
        e.eig
    );
    r
}

const SIZES: [usize; 14] = [0, 1, 2, 3, 5, 16, 31, 32, 33, 64, 65, 100, 257, 512];

#[test]
fn random_matrices_default_blocking() {
    for (s, &n) in SIZES.iter().enumerate() {
        let a = random_sym(n, s as u64 + 1);
        check::<f64>(&a, n, Level::detect(), NB, NX);
        check::<f32>(&a, n, Level::detect(), NB, NX);
    }
}

#[test]
fn random_matrices_all_builds_and_blockings() {
    // Panel widths and crossovers that put panel boundaries and the unblocked tail at
    // different places (nx ≤ nb means "blocked down to nb columns").
    let blockings = [(1, 0), (4, 4), (16, 16), (16, 40), (48, 48), (64, 0)];
    for isa in Level::available() {
        for (s, &n) in SIZES.iter().enumerate().filter(|(_, &n)| n <= 100) {
            let a = random_sym(n, 100 + s as u64);
            for &(nb, nx) in &blockings {
                check::<f64>(&a, n, isa, nb, nx);
                check::<f32>(&a, n, isa, nb, nx);
            }
        }
    }
}

#[test]
fn public_api_matches_internal() {
    let n = 100;
    let a = random_sym(n, 7);
    fn via_api<T: Real>(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut af: Vec<T> = a.iter().map(|&v| T::from_f64(v)).collect();
        let mut d = vec![0.0; n];
        let mut e = vec![0.0; n - 1];
        let mut tau = vec![T::from_f64(0.0); n - 1];
        reduce(&mut af, n, &mut d, &mut e, &mut tau);
        let mut z: Vec<T> = (0..n * 3).map(|p| T::from_f64(p as f64)).collect();
        apply_q(&af, n, &tau, &mut z, 3);
        (d, e, z.iter().map(|v| v.to_f64()).collect())
    }
    fn via_internal<F: Real>(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut af: Vec<F> = a.iter().map(|&v| F::from_f64(v)).collect();
        let mut d = vec![0.0; n];
        let mut e = vec![0.0; n - 1];
        let mut tau = vec![F::from_f64(0.0); n - 1];
        reduce_with(
            Level::detect(),
            NB,
            NX,
            &mut af,
            n,
            &mut d,
            &mut e,
            &mut tau,
        );
        let mut z: Vec<F> = (0..n * 3).map(|p| F::from_f64(p as f64)).collect();
        apply_q_with(Level::detect(), &af, n, &tau, &mut z, 3);
        (d, e, z.iter().map(|v| v.to_f64()).collect())
    }
    assert_eq!(via_api::<f64>(&a, n), via_internal::<f64>(&a, n));
    assert_eq!(via_api::<f32>(&a, n), via_internal::<f32>(&a, n));
}

/// Runs `check` for f64 and f32 with the default blocking and a small one.
fn check_all(a: &[f64], n: usize) -> Vec<Reduced> {
    let mut out = Vec::new();
    for (nb, nx) in [(NB, NX), (8, 8)] {
        out.push(check::<f64>(a, n, Level::detect(), nb, nx));
        out.push(check::<f32>(a, n, Level::detect(), nb, nx));
    }
    out
}

#[test]
fn zero_and_diagonal_matrices() {
    let n = 100;
    for r in check_all(&vec![0.0; n * n], n) {
        assert!(r.diag.iter().chain(&r.off).chain(&r.tau).all(|&v| v == 0.0));
    }
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        a[i * n + i] = i as f64 - 40.0;
    }
    for r in check_all(&a, n) {
        assert!(r.off.iter().chain(&r.tau).all(|&v| v == 0.0));
        assert!(r
            .diag
            .iter()
            .enumerate()
            .all(|(i, &d)| d == i as f64 - 40.0));
    }
}

#[test]
fn column_zero_below_the_subdiagonal() {
    // Block diagonal: the reflectors of the first block touch rows < 10 only, so column 9
    // has nothing below its diagonal (τ = 0, off = 0), inside a panel; and column 0 of
    // the second block has only its subdiagonal entry (τ = 0 again, off ≠ 0).
    let n = 100;
    let b1 = random_sym(10, 3);
    let b2 = random_sym(90, 4);
    let mut a = vec![0.0; n * n];
    for j in 0..10 {
        for i in 0..10 {
            a[j * n + i] = b1[j * 10 + i];
        }
    }
    for j in 0..90 {
        for i in 0..90 {
            a[(j + 10) * n + i + 10] = b2[j * 90 + i];
        }
    }
    for i in 12..n {
        a[10 * n + i] = 0.0;
        a[i * n + 10] = 0.0;
    }
    for r in check_all(&a, n) {
        assert_eq!((r.tau[9], r.off[9]), (0.0, 0.0));
        assert_eq!(r.tau[10], 0.0);
        assert!(r.off[10] != 0.0);
    }
}

#[test]
fn extreme_scales() {
    // Squares of 1e30 overflow f32 and squares of 1e-30 underflow it: the norms must not.
    let n = 100;
    let a = random_sym(n, 5);
    for s in [1e30, 1e-30] {
        let scaled: Vec<f64> = a.iter().map(|v| v * s).collect();
        check_all(&scaled, n);
    }
    // Graded: entries from 1e-30 to 1e30 in one matrix (D·A·D, D geometric).
    let d: Vec<f64> = (0..n)
        .map(|i| 10f64.powf(-15.0 + 30.0 * i as f64 / (n - 1) as f64))
        .collect();
    let graded: Vec<f64> = (0..n * n).map(|p| a[p] * d[p % n] * d[p / n]).collect();
    for r in check_all(&graded, n) {
        assert!(r.diag.iter().chain(&r.off).all(|v| v.is_finite()));
    }
}

#[test]
fn clustered_and_repeated_eigenvalues() {
    // 3·I + u·uᵀ − w·wᵀ: eigenvalue 3 repeated n − 2 times, so the reduction meets columns
    // that are zero up to rounding below the subdiagonal.
    let n = 100;
    let mut r = XorShift64::new(9);
    let u: Vec<f64> = (0..n).map(|_| r.next_signed()).collect();
    let w: Vec<f64> = (0..n).map(|_| r.next_signed()).collect();
    let mut a = vec![0.0; n * n];
    for j in 0..n {
        for i in 0..n {
            a[j * n + i] = u[i] * u[j] - w[i] * w[j] + if i == j { 3.0 } else { 0.0 };
        }
    }
    check_all(&a, n);
    // Clusters: Q0·diag(λ)·Q0ᵀ with λ in three groups 1e-9 wide, Q0 random orthogonal.
    let q0 = Mat::from_fn(n, n, |i, j| random_sym(n, 11)[j * n + i])
        .qr()
        .compute_Q();
    let lam = Mat::from_fn(n, n, |i, j| {
        if i == j {
            [1.0, -2.0, 5.0][i % 3] + 1e-9 * (i / 3) as f64 / n as f64
        } else {
            0.0
        }
    });
    let m = &q0 * &lam * q0.transpose();
    let a: Vec<f64> = (0..n * n)
        .map(|p| 0.5 * (m[(p % n, p / n)] + m[(p / n, p % n)]))
        .collect();
    check_all(&a, n);
}
