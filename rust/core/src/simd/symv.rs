//! The symmetric matrix-vector product `y += A·x` from A's lower triangle, in one pass over
//! it (each column serves both its own rows and, transposed, the upper triangle): the
//! memory-bound half of the tridiagonal reduction. Over [`Lanes`], like [`super::blas1`].

use std::ops::AddAssign;

use super::blas1::{axpy, dot};
use super::Lanes;

/// Columns per pass of `symv_lower`.
pub const SYMV_COLS: usize = 4;

/// y += A·x for the symmetric m × m matrix whose lower triangle is at `a` (leading dimension
/// lda). One pass over the triangle, `N` columns at a time: each column adds A[j+1.., j]·x_j
/// into y below it and takes the dot product A[j+1.., j]ᵀ·x for y_j (the upper triangle).
#[inline(always)]
pub fn symv_lower<F: Copy + AddAssign, S: Lanes<F>>(
    s: S,
    a: &[F],
    lda: usize,
    m: usize,
    x: &[F],
    y: &mut [F],
) {
    symv_lower_n::<F, S, SYMV_COLS>(s, a, lda, m, x, y)
}

#[inline(always)]
pub fn symv_lower_n<F: Copy + AddAssign, S: Lanes<F>, const N: usize>(
    s: S,
    a: &[F],
    lda: usize,
    m: usize,
    x: &[F],
    y: &mut [F],
) {
    let x = &x[..m];
    let y = &mut y[..m];
    let mut j = 0;
    while j + N <= m && N <= S::W {
        // Columns j..j+N from row j: the kernel skips what is on or above the diagonal.
        let cols: [&[F]; N] = std::array::from_fn(|q| &a[(j + q) * lda + j..(j + q) * lda + m]);
        let xs: [F; N] = std::array::from_fn(|q| x[j + q]);
        let d = dot_axpyn(s, cols, &x[j..], &mut y[j..], xs);
        for q in 0..N {
            y[j + q] += s.madd(cols[q][q], xs[q], d[q]);
        }
        j += N;
    }
    while j < m {
        let col = &a[j * lda..j * lda + m];
        let (y_hi, y_lo) = y.split_at_mut(j + 1);
        let d = dot(s, &col[j + 1..], &x[j + 1..]);
        axpy(s, y_lo, x[j], &col[j + 1..]);
        y_hi[j] += s.madd(col[j], x[j], d);
        j += 1;
    }
}

/// For N ≤ W columns c_q as long as x, of which rows 0..=q are not read (taken as zero): y += Σ_q
/// k_q·c_q, and returns c_qᵀ·x. One pass, so x and y are loaded and y stored once for N
/// columns. The sum into y runs in two chains (even and odd q), which halves its latency.
#[inline(always)]
pub fn dot_axpyn<F: Copy, S: Lanes<F>, const N: usize>(
    s: S,
    c: [&[F]; N],
    x: &[F],
    y: &mut [F],
    k: [F; N],
) -> [F; N] {
    let (len, w) = (x.len(), S::W);
    let y = &mut y[..len];
    let c = c.map(|c| &c[..len]);
    let kv = k.map(|k| s.splat(k));
    let mut acc = [s.zero(); N];
    // The first W rows: column q from row q + 1.
    let t = len.min(w);
    let xv = s.load_part(x, 0, t);
    let mut yv = s.load_part(y, 0, t);
    for q in 0..N {
        let v = s.load_range(c[q], 0, (q + 1).min(t), t);
        yv = s.fmadd(v, kv[q], yv);
        acc[q] = s.fmadd(v, xv, acc[q]);
    }
    s.store_part(y, 0, t, yv);
    let mut r = t;
    while r + w <= len {
        let xv = s.load(x, r);
        let (mut ya, mut yb) = (s.load(y, r), s.zero());
        for q in 0..N {
            let v = s.load(c[q], r);
            if q % 2 == 0 {
                ya = s.fmadd(v, kv[q], ya);
            } else {
                yb = s.fmadd(v, kv[q], yb);
            }
            acc[q] = s.fmadd(v, xv, acc[q]);
        }
        s.store(y, r, s.add(ya, yb));
        r += w;
    }
    if r < len {
        let t = len - r;
        let xv = s.load_part(x, r, t);
        let mut yv = s.load_part(y, r, t);
        for q in 0..N {
            let v = s.load_part(c[q], r, t);
            yv = s.fmadd(v, kv[q], yv);
            acc[q] = s.fmadd(v, xv, acc[q]);
        }
        s.store_part(y, r, t, yv);
    }
    acc.map(|a| s.hsum(a))
}
