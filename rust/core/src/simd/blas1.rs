//! Vector-vector kernels over [`Lanes`]: dot products and axpy-like updates, one or several
//! columns at a time (a column loaded once serves all of its uses). Written once, monomorphized
//! per build; the tridiagonal reduction and its back-transformation are made of these.
//!
//! Reductions (the dot products) keep a fixed set of accumulators and combine them in a fixed
//! order, and every multiply-add is fused, so each kernel's bytes depend only on [`Lanes`]'s
//! lane layout, which every build shares.

use std::ops::Neg;

use super::Lanes;

/// Σ x_i·y_i over x's length, in four vector accumulators (a float reduction does not
/// vectorize as a plain loop: that would reorder the additions).
#[inline(always)]
pub fn dot<F: Copy, S: Lanes<F>>(s: S, x: &[F], y: &[F]) -> F {
    let len = x.len();
    let y = &y[..len];
    let w = S::W;
    let (mut a0, mut a1, mut a2, mut a3) = (s.zero(), s.zero(), s.zero(), s.zero());
    let mut r = 0;
    while r + 4 * w <= len {
        a0 = s.fmadd(s.load(x, r), s.load(y, r), a0);
        a1 = s.fmadd(s.load(x, r + w), s.load(y, r + w), a1);
        a2 = s.fmadd(s.load(x, r + 2 * w), s.load(y, r + 2 * w), a2);
        a3 = s.fmadd(s.load(x, r + 3 * w), s.load(y, r + 3 * w), a3);
        r += 4 * w;
    }
    while r + w <= len {
        a0 = s.fmadd(s.load(x, r), s.load(y, r), a0);
        r += w;
    }
    if r < len {
        let t = len - r;
        a1 = s.fmadd(s.load_part(x, r, t), s.load_part(y, r, t), a1);
    }
    s.hsum(s.add(s.add(a0, a1), s.add(a2, a3)))
}

/// y ← c·y.
#[inline(always)]
pub fn scale<F: Copy, S: Lanes<F>>(s: S, y: &mut [F], c: F) {
    let (len, w) = (y.len(), S::W);
    let (cv, zero) = (s.splat(c), s.zero());
    let mut r = 0;
    while r + w <= len {
        let v = s.fmadd(s.load(y, r), cv, zero);
        s.store(y, r, v);
        r += w;
    }
    if r < len {
        let v = s.fmadd(s.load_part(y, r, len - r), cv, zero);
        s.store_part(y, r, len - r, v);
    }
}

/// y += c·x over y's length.
#[inline(always)]
pub fn axpy<F: Copy, S: Lanes<F>>(s: S, y: &mut [F], c: F, x: &[F]) {
    let (len, w) = (y.len(), S::W);
    let x = &x[..len];
    let cv = s.splat(c);
    let mut r = 0;
    while r + w <= len {
        let v = s.fmadd(s.load(x, r), cv, s.load(y, r));
        s.store(y, r, v);
        r += w;
    }
    if r < len {
        let t = len - r;
        let v = s.fmadd(s.load_part(x, r, t), cv, s.load_part(y, r, t));
        s.store_part(y, r, t, v);
    }
}

/// y −= c1·x1 + c2·x2 over y's length.
#[inline(always)]
pub fn sub2<F: Copy + Neg<Output = F>, S: Lanes<F>>(
    s: S,
    y: &mut [F],
    x1: &[F],
    c1: F,
    x2: &[F],
    c2: F,
) {
    let (len, w) = (y.len(), S::W);
    let (x1, x2) = (&x1[..len], &x2[..len]);
    let (n1, n2) = (-c1, -c2);
    let (v1, v2) = (s.splat(n1), s.splat(n2));
    let mut r = 0;
    while r + w <= len {
        let v = s.fmadd(s.load(x2, r), v2, s.fmadd(s.load(x1, r), v1, s.load(y, r)));
        s.store(y, r, v);
        r += w;
    }
    if r < len {
        let t = len - r;
        let v = s.fmadd(s.load_part(x1, r, t), v1, s.load_part(y, r, t));
        s.store_part(y, r, t, s.fmadd(s.load_part(x2, r, t), v2, v));
    }
}

/// out_q = c_qᵀ·x for N columns as long as x: x is loaded once for all N.
#[inline(always)]
pub fn dotn<F: Copy, S: Lanes<F>, const N: usize>(s: S, c: [&[F]; N], x: &[F]) -> [F; N] {
    let (len, w) = (x.len(), S::W);
    let c = c.map(|c| &c[..len]);
    // Two sets of accumulators, so that N = 2 or 4 chains of fused adds do not wait on their
    // latency.
    let (mut a0, mut a1) = ([s.zero(); N], [s.zero(); N]);
    let mut r = 0;
    while r + 2 * w <= len {
        let (x0, x1) = (s.load(x, r), s.load(x, r + w));
        for q in 0..N {
            a0[q] = s.fmadd(s.load(c[q], r), x0, a0[q]);
            a1[q] = s.fmadd(s.load(c[q], r + w), x1, a1[q]);
        }
        r += 2 * w;
    }
    if r + w <= len {
        let x0 = s.load(x, r);
        for q in 0..N {
            a0[q] = s.fmadd(s.load(c[q], r), x0, a0[q]);
        }
        r += w;
    }
    if r < len {
        let t = len - r;
        let x1 = s.load_part(x, r, t);
        for q in 0..N {
            a1[q] = s.fmadd(s.load_part(c[q], r, t), x1, a1[q]);
        }
    }
    std::array::from_fn(|q| s.hsum(s.add(a0[q], a1[q])))
}

/// y += Σ_q k_q·c_q over y's length, for N columns: y is loaded and stored once for all N.
#[inline(always)]
pub fn axpyn<F: Copy, S: Lanes<F>, const N: usize>(s: S, y: &mut [F], c: [&[F]; N], k: [F; N]) {
    let (len, w) = (y.len(), S::W);
    let c = c.map(|c| &c[..len]);
    let kv = k.map(|k| s.splat(k));
    let mut r = 0;
    while r + w <= len {
        let mut v = s.load(y, r);
        for q in 0..N {
            v = s.fmadd(s.load(c[q], r), kv[q], v);
        }
        s.store(y, r, v);
        r += w;
    }
    if r < len {
        let t = len - r;
        let mut v = s.load_part(y, r, t);
        for q in 0..N {
            v = s.fmadd(s.load_part(c[q], r, t), kv[q], v);
        }
        s.store_part(y, r, t, v);
    }
}

/// y_q += k_q·x for N columns y_q as long as x: x is loaded once for all N.
#[inline(always)]
pub fn axpy_cols<F: Copy, S: Lanes<F>, const N: usize>(
    s: S,
    ys: [&mut [F]; N],
    k: [F; N],
    x: &[F],
) {
    let (len, w) = (x.len(), S::W);
    let ys = ys.map(|y| &mut y[..len]);
    let kv = k.map(|k| s.splat(k));
    let mut r = 0;
    while r + w <= len {
        let xv = s.load(x, r);
        for q in 0..N {
            let v = s.fmadd(xv, kv[q], s.load(ys[q], r));
            s.store(ys[q], r, v);
        }
        r += w;
    }
    if r < len {
        let t = len - r;
        let xv = s.load_part(x, r, t);
        for q in 0..N {
            let v = s.fmadd(xv, kv[q], s.load_part(ys[q], r, t));
            s.store_part(ys[q], r, t, v);
        }
    }
}
