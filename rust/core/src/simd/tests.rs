//! The rule of `simd`: every kernel, and every computation dispatched through [`Dispatch`],
//! gives the same bytes on every build this CPU runs ([`Level::available`]: the scalar build
//! and, on x86-64 with AVX2 and FMA, the AVX2 build; AVX-512 CPUs run the same two), on
//! lengths across the lane (4, 8) and block (16, 32) edges. Each kernel is also checked against
//! a plain f64 computation, so that agreeing builds are also right ones.

use std::ops::{AddAssign, Neg};

use super::blas1::{axpy, axpy_cols, axpyn, dot, dotn, scale, sub2};
use super::symv::symv_lower;
use super::*;
use crate::linalg::tridiag_eigen::top_k_with;
use crate::linalg::tridiag_reduce::{apply_q_with, reduce_with, NB, NX};
use crate::rng::Xoshiro256;
use crate::scalar::Real;

/// Lengths around every lane and block edge, and a few long ones.
fn lens() -> Vec<usize> {
    let mut v: Vec<usize> = (0..=70).collect();
    v.extend([127, 128, 129, 255, 256, 257, 1000, 1031]);
    v
}

/// Values of mixed sign over a few orders of magnitude, with exact zeros.
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut g = Xoshiro256::new(seed);
    (0..n)
        .map(|i| {
            let v = (g.next_f64() - 0.5) * 10f64.powi((i % 7) as i32 - 3);
            if i % 13 == 5 {
                0.0
            } else {
                v as f32
            }
        })
        .collect()
}

fn bits<F: Real>(v: &[F]) -> Vec<u64> {
    v.iter().map(|x| x.to_f64().to_bits()).collect()
}

/// `f` at every available level, asserting each level's output equals the scalar build's.
fn same_on_every_level<T: PartialEq + std::fmt::Debug>(what: &str, f: impl Fn(Level) -> T) {
    let want = f(Level::SCALAR);
    for level in Level::available() {
        assert_eq!(
            f(level),
            want,
            "{what}: {} differs from scalar",
            level.name()
        );
    }
}

#[test]
fn levels_are_ordered_and_named() {
    let all = Level::available();
    assert_eq!(all[0], Level::SCALAR);
    assert_eq!(*all.last().unwrap(), Level::detect());
    #[cfg(target_arch = "x86_64")]
    assert_eq!(
        all.len() == 2,
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    );
    assert!(all.iter().all(|l| !l.name().is_empty()));
}

#[test]
fn sums_of_squares() {
    for n in lens() {
        let (a, b) = (data(n, 1 + n as u64), data(n, 1000 + n as u64));
        same_on_every_level("sq_norm", |l| sq_norm(l, &a).to_bits());
        same_on_every_level("sq_dist", |l| sq_dist(l, &a, &b).to_bits());
        same_on_every_level("sq_sum", |l| sq_sum(l, &a, &b).to_bits());
        // Against the plain sum: f64 sums of n terms, relative error ≤ n·ε.
        let plain: f64 = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
            .sum();
        let got = sq_dist(Level::detect(), &a, &b);
        assert!(
            (got - plain).abs() <= n as f64 * f64::EPSILON * plain,
            "n={n}"
        );
        assert_eq!(
            sq_dist_signed(Level::detect(), &a, &b, true).to_bits(),
            sq_sum(Level::detect(), &a, &b).to_bits()
        );
    }
}

#[test]
fn column_magnitudes() {
    for n in lens() {
        let mut row = data(n, 7 + n as u64);
        if n > 3 {
            row[3] = f32::NAN;
        }
        same_on_every_level("abs_max_bits", |l| {
            let mut m = vec![0x0040_0000u32; n];
            abs_max_bits(l, &mut m, &row);
            m
        });
        let mut m = vec![0u32; n];
        abs_max_bits(Level::detect(), &mut m, &row);
        for (j, (&got, &v)) in m.iter().zip(&row).enumerate() {
            assert_eq!(got, v.abs().to_bits(), "column {j}");
        }
    }
}

#[test]
fn fixed_point_sums() {
    // d across the 16-column blocks of the AVX2 build; rows repeated and out of order.
    for d in (0..=40).chain([63, 64, 65, 257]) {
        let x = data(9 * d, 11 + d as u64);
        let scale: Vec<f64> = (0..d).map(|j| (2.0f64).powi(40 + (j % 5) as i32)).collect();
        for rows in [
            vec![],
            vec![4u32],
            vec![0, 3, 4, 8, 3],
            (0..9).rev().collect(),
        ] {
            same_on_every_level("fx_accumulate", |l| {
                let mut acc: Vec<i64> = (0..d as i64).map(|j| j * 1_000_003).collect();
                fx_accumulate(l, &mut acc, &x, d, &rows, &scale);
                acc
            });
        }
    }
}

/// Every level-1 kernel on one input, outputs concatenated.
struct Blas1<'a, F> {
    x: &'a [F],
    y: &'a [F],
    z: &'a [F],
    c: [F; 4],
}

impl<F: Copy + Neg<Output = F> + AddAssign + PartialEq> Kernel<F> for Blas1<'_, F> {
    type Output = Vec<F>;
    #[inline(always)]
    fn run<S: Lanes<F>>(self, s: S) -> Vec<F> {
        let Blas1 { x, y, z, c } = self;
        let mut out = vec![dot(s, x, y), dot(s, x, x)];
        out.extend(dotn(s, [y, z], x));
        out.extend(dotn(s, [y, z, x, y], x));
        let mut w = y.to_vec();
        scale(s, &mut w, c[0]);
        axpy(s, &mut w, c[1], x);
        sub2(s, &mut w, x, c[2], z, c[3]);
        axpyn(s, &mut w, [x, z], [c[0], c[3]]);
        axpyn(s, &mut w, [x, z, y, x], c);
        out.extend_from_slice(&w);
        let (mut p, mut q, mut r, mut t) = (x.to_vec(), y.to_vec(), z.to_vec(), w.clone());
        axpy_cols(s, [&mut p, &mut q, &mut r, &mut t], c, z);
        for v in [p, q, r, t] {
            out.extend(v);
        }
        out
    }
}

fn blas1_case<F: Real>(n: usize) {
    let v = |seed| -> Vec<F> {
        data(n, seed)
            .iter()
            .map(|&t| F::from_f64(t as f64))
            .collect()
    };
    let (x, y, z) = (v(3 * n as u64), v(3 * n as u64 + 1), v(3 * n as u64 + 2));
    let c = [0.7, -1.3, 2.5, -0.1].map(F::from_f64);
    same_on_every_level("blas1", |l| {
        bits(&F::dispatch(
            l,
            Blas1 {
                x: &x,
                y: &y,
                z: &z,
                c,
            },
        ))
    });
    // dot against f64: |error| ≤ n·ε_F·Σ|x_i y_i| (any order, fused or not).
    let got = F::dispatch(
        Level::detect(),
        Blas1 {
            x: &x,
            y: &y,
            z: &z,
            c,
        },
    )[0]
    .to_f64();
    let exact: f64 = x.iter().zip(&y).map(|(a, b)| a.to_f64() * b.to_f64()).sum();
    let mag: f64 = x
        .iter()
        .zip(&y)
        .map(|(a, b)| (a.to_f64() * b.to_f64()).abs())
        .sum();
    assert!(
        (got - exact).abs() <= n as f64 * F::EPS.to_f64() * mag,
        "n={n}"
    );
}

#[test]
fn level1_kernels() {
    for n in lens() {
        blas1_case::<f32>(n);
        blas1_case::<f64>(n);
    }
}

struct Symv<'a, F> {
    a: &'a [F],
    lda: usize,
    m: usize,
    x: &'a [F],
    y: Vec<F>,
}

impl<F: Copy + AddAssign> Kernel<F> for Symv<'_, F> {
    type Output = Vec<F>;
    #[inline(always)]
    fn run<S: Lanes<F>>(mut self, s: S) -> Vec<F> {
        symv_lower(s, self.a, self.lda, self.m, self.x, &mut self.y);
        self.y
    }
}

fn symv_case<F: Real>(m: usize) {
    let lda = m + 3;
    let f = |v: Vec<f32>| -> Vec<F> { v.iter().map(|&t| F::from_f64(t as f64)).collect() };
    let a = f(data(lda * m, 5 + m as u64));
    let x = f(data(m, 6 + m as u64));
    let y = f(data(m, 7 + m as u64));
    same_on_every_level("symv_lower", |l| {
        let k = Symv {
            a: &a,
            lda,
            m,
            x: &x,
            y: y.clone(),
        };
        bits(&F::dispatch(l, k))
    });
    // Against the plain product with the lower triangle mirrored.
    let k = Symv {
        a: &a,
        lda,
        m,
        x: &x,
        y: y.clone(),
    };
    let got = F::dispatch(Level::detect(), k);
    for i in 0..m {
        let (mut want, mut mag) = (y[i].to_f64(), y[i].to_f64().abs());
        for j in 0..m {
            let aij = if i >= j {
                a[j * lda + i]
            } else {
                a[i * lda + j]
            };
            want += aij.to_f64() * x[j].to_f64();
            mag += (aij.to_f64() * x[j].to_f64()).abs();
        }
        let tol = (m + 2) as f64 * F::EPS.to_f64() * mag;
        assert!((got[i].to_f64() - want).abs() <= tol, "m={m} row {i}");
    }
}

#[test]
fn symmetric_matrix_vector_product() {
    for m in (0..=70).chain([127, 128, 129, 200]) {
        symv_case::<f32>(m);
        symv_case::<f64>(m);
    }
}

/// A random symmetric n × n matrix in precision F, column-major.
fn sym<F: Real>(n: usize, seed: u64) -> Vec<F> {
    let v = data(n * n, seed);
    let mut a = vec![F::ZERO; n * n];
    for j in 0..n {
        for i in j..n {
            a[j * n + i] = F::from_f64(v[j * n + i] as f64);
            a[i * n + j] = a[j * n + i];
        }
    }
    a
}

fn reduction_case<F: Real>(n: usize, nb: usize, nx: usize) {
    same_on_every_level("tridiagonal reduction", |l| {
        let mut a = sym::<F>(n, 40 + n as u64);
        let (mut d, mut e) = (vec![0.0; n], vec![0.0; n.saturating_sub(1)]);
        let mut tau = vec![F::ZERO; n.saturating_sub(1)];
        reduce_with(l, nb, nx, &mut a, n, &mut d, &mut e, &mut tau);
        let k = 5;
        let mut z: Vec<F> = data(n * k, 9)
            .iter()
            .map(|&t| F::from_f64(t as f64))
            .collect();
        apply_q_with(l, &a, n, &tau, &mut z, k);
        let f64_bits = |v: &[f64]| v.iter().map(|t| t.to_bits()).collect::<Vec<_>>();
        (bits(&a), f64_bits(&d), f64_bits(&e), bits(&tau), bits(&z))
    });
}

#[test]
fn tridiagonal_reduction_and_back_transformation() {
    for n in [0, 1, 2, 3, 5, 8, 9, 16, 17, 31, 33, 64, 65, 100, 130] {
        for (nb, nx) in [(NB, NX), (4, 4), (16, 16)] {
            reduction_case::<f32>(n, nb, nx);
            reduction_case::<f64>(n, nb, nx);
        }
    }
}

#[test]
fn tridiagonal_eigenpairs() {
    // Wilkinson's W21+ (close pairs) and a random matrix, few and all vectors.
    let m = 10;
    let dw: Vec<f64> = (0..2 * m + 1)
        .map(|i| (m as f64 - i as f64).abs())
        .collect();
    let ew = vec![1.0; 2 * m];
    let dr: Vec<f64> = data(300, 21).iter().map(|&v| v as f64).collect();
    let er: Vec<f64> = data(299, 22).iter().map(|&v| v as f64).collect();
    for (d, e, k) in [(&dw, &ew, 7), (&dr, &er, 40), (&dr, &er, 300)] {
        same_on_every_level("tridiagonal eigensolver", |l| {
            let mut v = vec![0.0; d.len() * k];
            let lam = top_k_with(d, e, k, &mut v, l).unwrap();
            let b = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            (b(&lam), b(&v))
        });
    }
}
