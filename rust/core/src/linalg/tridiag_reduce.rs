//! Blocked Householder reduction of a real symmetric matrix to tridiagonal form (the lower
//! variant of LAPACK's sytrd, panels as in latrd), and the product of its orthogonal factor
//! with a few vectors.
//!
//! Why blocked: the unblocked reduction updates the whole trailing triangle after every column
//! (a rank-2 update, read and write) and then multiplies it by the next reflector (a read), so
//! at a few hundred columns it is bound by cache bandwidth. Here a panel of `NB` columns is
//! reduced against the trailing matrix as it was when the panel began: each column costs one
//! read-only symmetric matrix-vector product plus small corrections from the earlier panel
//! columns (`V`, the reflectors, and `W`, their images), and the trailing triangle is updated
//! once per panel by the rank-2·NB product `A22 −= V·Wᵀ + W·Vᵀ` in faer's GEMM kernels
//! (`benches/tridiag_reduce.rs` measures the gain over faer's unblocked `tridiag_in_place`).
//!
//! The vector kernels are `crate::simd`'s (`blas1`, `symv`), written once over its `Lanes` and
//! dispatched once per call, so every build gives the same bytes. Sums are accumulated in the
//! working precision, like LAPACK; only the reflectors' norms, β and τ are formed in f64
//! (scaled, so that entries near the ends of the exponent range neither overflow nor
//! underflow).

use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
use faer::reborrow::ReborrowMut;
use faer::{Accum, MatMut, MatRef, Par};

use crate::scalar::Real;
use crate::simd::blas1::{axpy, axpy_cols, axpyn, dot, dotn, scale, sub2};
use crate::simd::symv::symv_lower;
use crate::simd::{Kernel, Lanes, Level};

/// Panel width: columns reduced between two updates of the trailing matrix. The per-column
/// corrections grow with it and the GEMM's efficiency with it (`benches/tridiag_reduce.rs`
/// tunes it): 8 to 20 within noise of each other, 24 and more slower.
pub const NB: usize = 16;
/// Trailing sizes up to this are reduced unblocked (n ≤ 64: all of it; 32 to 128 within noise).
pub const NX: usize = 64;

/// Reduces the symmetric n × n matrix `a` (column-major, leading dimension n; only the lower
/// triangle is read) to tridiagonal form Qᵀ·A·Q = T: writes diag (n) and off (n-1, the subdiagonal)
/// in f64, and leaves in `a` (below the subdiagonal) and `tau` (n-1) the Householder reflectors
/// H_i = I − tau_i·v_i·v_iᵀ with Q = H_0·H_1·…·H_{n−2} (v_i(i+1) = 1, v_i(i+2..) stored in a[i+2.., i]).
///
/// The diagonal and the subdiagonal of `a` are overwritten (with T's, rounded to `T`), the
/// strict upper triangle is left as it was. tau_i = 0 means H_i = I.
pub fn reduce<T: Real>(a: &mut [T], n: usize, diag: &mut [f64], off: &mut [f64], tau: &mut [T]) {
    assert_eq!(a.len(), n * n, "a must be n × n");
    assert_eq!(diag.len(), n, "diag must have n entries");
    assert_eq!(
        off.len(),
        n.saturating_sub(1),
        "off must have n − 1 entries"
    );
    assert_eq!(
        tau.len(),
        n.saturating_sub(1),
        "tau must have n − 1 entries"
    );
    reduce_with(Level::detect(), NB, NX, a, n, diag, off, tau);
}

/// Z ← Q·Z for the n × k column-major block `z` (leading dimension n), from `reduce`'s a and tau.
pub fn apply_q<T: Real>(a: &[T], n: usize, tau: &[T], z: &mut [T], k: usize) {
    assert_eq!(a.len(), n * n, "a must be n × n");
    assert_eq!(
        tau.len(),
        n.saturating_sub(1),
        "tau must have n − 1 entries"
    );
    assert_eq!(z.len(), n * k, "z must be n × k");
    apply_q_with(Level::detect(), a, n, tau, z, k);
}

/// `reduce` with the kernels of `level`, panel width `nb` and crossover `nx` (parameters so
/// that the tests and the benches can vary them).
#[allow(clippy::too_many_arguments)]
pub fn reduce_with<F: Real>(
    level: Level,
    nb: usize,
    nx: usize,
    a: &mut [F],
    n: usize,
    diag: &mut [f64],
    off: &mut [f64],
    tau: &mut [F],
) {
    struct Reduce<'a, F> {
        nb: usize,
        nx: usize,
        a: &'a mut [F],
        n: usize,
        diag: &'a mut [f64],
        off: &'a mut [f64],
        tau: &'a mut [F],
    }
    impl<F: Real> Kernel<F> for Reduce<'_, F> {
        type Output = ();
        #[inline(always)]
        fn run<S: Lanes<F>>(self, s: S) {
            let Reduce {
                nb,
                nx,
                a,
                n,
                diag,
                off,
                tau,
            } = self;
            reduce_impl(s, nb, nx, a, n, diag, off, tau)
        }
    }
    F::dispatch(
        level,
        Reduce {
            nb,
            nx,
            a,
            n,
            diag,
            off,
            tau,
        },
    )
}

/// `apply_q` with the kernels of `level`.
pub fn apply_q_with<F: Real>(level: Level, a: &[F], n: usize, tau: &[F], z: &mut [F], k: usize) {
    struct ApplyQ<'a, F> {
        a: &'a [F],
        n: usize,
        tau: &'a [F],
        z: &'a mut [F],
        k: usize,
    }
    impl<F: Real> Kernel<F> for ApplyQ<'_, F> {
        type Output = ();
        #[inline(always)]
        fn run<S: Lanes<F>>(self, s: S) {
            let ApplyQ { a, n, tau, z, k } = self;
            apply_reflectors(s, a, n, tau, z, k, 0..n.saturating_sub(1))
        }
    }
    F::dispatch(level, ApplyQ { a, n, tau, z, k })
}

/// Panels of `nb` columns while more than `max(nx, nb)` columns remain, then the rest unblocked.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn reduce_impl<F: Real, S: Lanes<F>>(
    s: S,
    nb: usize,
    nx: usize,
    a: &mut [F],
    n: usize,
    diag: &mut [f64],
    off: &mut [f64],
    tau: &mut [F],
) {
    let nb = nb.max(1);
    let nx = nx.max(nb);
    let mut k0 = 0;
    if n > nx {
        // W: column i holds panel column i's image (rows below it); the row index is absolute.
        let mut w = vec![F::ZERO; n * nb];
        let mut t = vec![F::ZERO; 2 * nb];
        while n - k0 > nx {
            panel(s, a, n, k0, nb, &mut w, &mut t, diag, off, tau);
            rank2k_update(a, n, k0, nb, &w);
            for c in k0..k0 + nb {
                a[c * n + c + 1] = F::from_f64(off[c]);
            }
            k0 += nb;
        }
    }
    unblocked(s, a, n, k0, diag, off, tau);
}

/// Reduces columns k0..k0+nb of `a` against the trailing matrix as it was before the panel,
/// filling W (n × nb) so that the trailing matrix after the panel's reflectors is
/// A22 − V·Wᵀ − W·Vᵀ. On return the panel's v_i(i+1) = 1 are stored in `a` (for the update).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn panel<F: Real, S: Lanes<F>>(
    s: S,
    a: &mut [F],
    n: usize,
    k0: usize,
    nb: usize,
    w: &mut [F],
    t: &mut [F],
    diag: &mut [f64],
    off: &mut [f64],
    tau: &mut [F],
) {
    let (t1, t2) = t.split_at_mut(nb);
    for i in 0..nb {
        let c = k0 + i;
        let (left, rest) = a.split_at_mut(c * n);
        let (col, right) = rest.split_at_mut(n);
        let (w_prev, w_rest) = w.split_at_mut(i * n);
        // V's and W's column j from row r0.
        let vcol = |j: usize, r0: usize| &left[(k0 + j) * n + r0..(k0 + j + 1) * n];
        let wcol = |j: usize, r0: usize| &w_prev[j * n + r0..(j + 1) * n];
        // Column c (rows c..) with the panel's earlier reflectors applied from both sides:
        // A[c.., c] −= V[c.., :]·W[c, :]ᵀ + W[c.., :]·V[c, :]ᵀ, two columns of each at a time.
        let mut j = 0;
        while j + 2 <= i {
            let cols = [vcol(j, c), wcol(j, c), vcol(j + 1, c), wcol(j + 1, c)];
            let k = [-cols[1][0], -cols[0][0], -cols[3][0], -cols[2][0]];
            axpyn(s, &mut col[c..], cols, k);
            j += 2;
        }
        if j < i {
            let cols = [vcol(j, c), wcol(j, c)];
            axpyn(s, &mut col[c..], cols, [-cols[1][0], -cols[0][0]]);
        }
        diag[c] = col[c].to_f64();
        let (alpha, x) = col[c + 1..]
            .split_first_mut()
            .expect("the panel ends before n − 1");
        let (beta, tc) = reflector(s, *alpha, x);
        off[c] = beta;
        tau[c] = tc;
        *alpha = F::ONE;
        let v = &col[c + 1..];
        let wc = &mut w_rest[c + 1..n];
        wc.fill(F::ZERO);
        if tc == F::ZERO {
            continue;
        }
        // wc = (A22 − V·Wᵀ − W·Vᵀ)·v, A22 as before the panel.
        symv_lower(s, &right[c + 1..], n, n - c - 1, v, wc);
        // t1 = Wᵀ·v, t2 = Vᵀ·v; wc −= V·t1 + W·t2.
        let r0 = c + 1;
        let mut j = 0;
        while j + 2 <= i {
            let cols = [wcol(j, r0), vcol(j, r0), wcol(j + 1, r0), vcol(j + 1, r0)];
            [t1[j], t2[j], t1[j + 1], t2[j + 1]] = dotn(s, cols, v);
            j += 2;
        }
        if j < i {
            [t1[j], t2[j]] = dotn(s, [wcol(j, r0), vcol(j, r0)], v);
        }
        let mut j = 0;
        while j + 2 <= i {
            let cols = [vcol(j, r0), wcol(j, r0), vcol(j + 1, r0), wcol(j + 1, r0)];
            axpyn(s, wc, cols, [-t1[j], -t2[j], -t1[j + 1], -t2[j + 1]]);
            j += 2;
        }
        if j < i {
            axpyn(s, wc, [vcol(j, r0), wcol(j, r0)], [-t1[j], -t2[j]]);
        }
        // w = τ·p − ½τ²(pᵀv)·v, which makes the two-sided update A − v·wᵀ − w·vᵀ.
        scale(s, wc, tc);
        let half = F::from_f64(-0.5) * tc * dot(s, wc, v);
        axpy(s, wc, half, v);
    }
}

/// Trailing lower triangle after the panel at k0: A22 −= V·Wᵀ + W·Vᵀ (faer's GEMM).
fn rank2k_update<F: Real>(a: &mut [F], n: usize, k0: usize, nb: usize, w: &[F]) {
    let s = k0 + nb;
    let m = n - s;
    let (left, right) = a.split_at_mut(s * n);
    let v = MatRef::from_column_major_slice_with_stride(&left[k0 * n + s..], m, nb, n);
    let w = MatRef::from_column_major_slice_with_stride(&w[s..], m, nb, n);
    let mut dst = MatMut::from_column_major_slice_with_stride_mut(&mut right[s..], m, m, n);
    let minus_one = F::from_f64(-1.0);
    for (l, r) in [(v, w), (w, v)] {
        tri_matmul(
            dst.rb_mut(),
            BlockStructure::TriangularLower,
            Accum::Add,
            l,
            BlockStructure::Rectangular,
            r.transpose(),
            BlockStructure::Rectangular,
            minus_one,
            Par::Seq,
        );
    }
}

/// Columns k0.. one at a time: reflector, w = τ·A22·v − ½τ²(vᵀA22v)·v, A22 −= v·wᵀ + w·vᵀ.
#[inline(always)]
fn unblocked<F: Real, S: Lanes<F>>(
    s: S,
    a: &mut [F],
    n: usize,
    k0: usize,
    diag: &mut [f64],
    off: &mut [f64],
    tau: &mut [F],
) {
    if n == 0 {
        return;
    }
    let mut y = vec![F::ZERO; n];
    for c in k0..n - 1 {
        let (col, right) = a[c * n..].split_at_mut(n);
        diag[c] = col[c].to_f64();
        let (alpha, x) = col[c + 1..].split_first_mut().expect("c < n − 1");
        let (beta, tc) = reflector(s, *alpha, x);
        off[c] = beta;
        tau[c] = tc;
        if tc != F::ZERO {
            *alpha = F::ONE;
            let v = &col[c + 1..];
            let m = n - c - 1;
            let y = &mut y[..m];
            y.fill(F::ZERO);
            let a22 = &mut right[c + 1..];
            symv_lower(s, a22, n, m, v, y);
            scale(s, y, tc);
            let half = F::from_f64(-0.5) * tc * dot(s, y, v);
            axpy(s, y, half, v);
            for j in 0..m {
                let cj = &mut a22[j * n + j..j * n + m];
                sub2(s, cj, &v[j..], y[j], &y[j..], v[j]);
            }
        }
        col[c + 1] = F::from_f64(beta);
    }
    diag[n - 1] = a[n * n - 1].to_f64();
}

/// A Householder reflector H = I − τ·u·uᵀ, u = (1, x/(α − β)), with H·(α, x) = (β, 0):
/// β = −sign(α)·‖(α, x)‖ (the sign that avoids cancellation in α − β), τ = (β − α)/β. Scales
/// `x` in place into u's tail and returns (β, τ); τ = 0 (H = I, β = α) when x = 0.
#[inline(always)]
fn reflector<F: Real, S: Lanes<F>>(s: S, alpha: F, x: &mut [F]) -> (f64, F) {
    let xn = norm(s, x);
    let alpha = alpha.to_f64();
    if xn == 0.0 {
        return (alpha, F::ZERO);
    }
    let beta = -alpha.hypot(xn).copysign(alpha);
    let tau = (beta - alpha) / beta;
    let d = alpha - beta; // |d| ≥ |β| ≥ ‖x‖ > 0, so each x_k/d is at most 1 in magnitude.
    let r = F::from_f64(1.0 / d);
    if r.finite() && r.to_f64().abs() >= F::TINY.to_f64() {
        scale(s, x, r);
    } else {
        for e in x.iter_mut() {
            *e = F::from_f64(e.to_f64() / d);
        }
    }
    (beta, F::from_f64(tau))
}

/// ‖x‖₂ in f64: the plain sum of squares when it neither overflowed nor lost anything to
/// underflow, else a scaled sum (as dnrm2 would, in two passes: this is rare).
#[inline(always)]
fn norm<F: Real, S: Lanes<F>>(s: S, x: &[F]) -> f64 {
    let sq = dot(s, x, x);
    if sq.finite() && sq >= F::TINY / F::EPS {
        return sq.to_f64().sqrt();
    }
    let big = x.iter().fold(0.0f64, |m, e| m.max(e.to_f64().abs()));
    if big == 0.0 || !big.is_finite() {
        return big;
    }
    let sum: f64 = x.iter().map(|e| (e.to_f64() / big).powi(2)).sum();
    big * sum.sqrt()
}

/// The reflectors `range` one at a time, the last first (`apply_q`: H_{n−2} first, H_0 last;
/// with k ≈ 16 columns the blocked WY form, tried with faer's GEMM for VᵀZ and V·Y, was
/// slower): each touches rows i+1.. of every column of Z, four columns at a time (so that v is
/// loaded once for four dot products and four updates).
#[inline(always)]
fn apply_reflectors<F: Real, S: Lanes<F>>(
    s: S,
    a: &[F],
    n: usize,
    tau: &[F],
    z: &mut [F],
    k: usize,
    range: std::ops::Range<usize>,
) {
    for i in range.rev() {
        let t = tau[i];
        if t == F::ZERO {
            continue;
        }
        let v = &a[i * n + i + 2..(i + 1) * n];
        let mut cols = z.chunks_exact_mut(n).take(k);
        for _ in 0..k / 4 {
            let g: [&mut [F]; 4] =
                std::array::from_fn(|_| &mut cols.next().expect("k columns")[i + 1..]);
            let d = dotn(s, g.each_ref().map(|c| &c[1..]), v);
            let c: [F; 4] = std::array::from_fn(|q| t * (g[q][0] + d[q]));
            let tails = g.map(|col| {
                let (z1, zr) = col.split_first_mut().expect("i + 1 < n");
                (z1, zr)
            });
            let mut rest: [&mut [F]; 4] = [&mut [], &mut [], &mut [], &mut []];
            for (q, (z1, zr)) in tails.into_iter().enumerate() {
                *z1 -= c[q];
                rest[q] = zr;
            }
            axpy_cols(s, rest, c.map(|c| -c), v);
        }
        for zc in cols {
            let (z1, zr) = zc[i + 1..].split_first_mut().expect("i + 1 < n");
            let c = t * (*z1 + dot(s, v, zr));
            *z1 -= c;
            axpy(s, zr, -c, v);
        }
    }
}

#[cfg(test)]
mod tests;
