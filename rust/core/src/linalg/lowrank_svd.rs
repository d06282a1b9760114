//! The top-k singular triplets of a sum of low-rank updates, `ΔW = B_w·A` (B_w: d_out × R, A:
//! R × d_in, R = Σ ranks < min(d_out, d_in)), without forming ΔW: the `svd` merge baseline.
//!
//! With `A·Aᵀ = L·Lᵀ` (Cholesky), `(B_w·L)ᵀ(B_w·L) = M = Lᵀ·(B_wᵀ·B_w)·L` is R × R and
//! `(B_w·L)(B_w·L)ᵀ = ΔW·ΔWᵀ`, so the top-k eigenpairs `M·W = W·Λ` give `U_k·S_k = B_w·L·W` and
//! `Vh_k = S_k⁻²·(U_k·S_k)ᵀ·B_w·A`. Steps: two Gram matrices (d·R² flops each), the Cholesky
//! factor and `M` (≈ 1.7·R³), the tridiagonal form of M (4/3·R³, blocked Householder:
//! `tridiag_reduce`), its k largest eigenpairs (bisection and inverse iteration, O(R·k):
//! `tridiag_eigen`) and the k vectors carried back through the Householder reflectors
//! (2·R²·k). LAPACK's syevr takes the same route; doing it here keeps the GIL released, so a
//! merge runs modules on all cores at once.
//!
//! Precision. The work is generic over the working precision `T`; `top_k_of` takes float32 when
//! the caller allows it and the result is provably close, else float64. In float32 the result
//! is the exact truncation of ΔW + E with ‖E‖ ≈ c·ε₃₂·‖A‖₂²·‖B_w‖₂²/σ_1 (the Gram matrices
//! square the factors; measured c ≈ 5): fine for adapters that add up (‖A‖₂‖B_w‖₂ ≈ σ_1), not
//! for sums that cancel (weights ±1 on near-copies, where ‖A‖₂‖B_w‖₂ ≫ σ_1). So float32 is
//! kept only when `ρ² = ‖A‖₂²‖B_w‖₂²/σ_1² ≤ F32_MAX_RHO_SQ` (‖E‖ ≲ 1e-5·σ_1, far below the
//! 5e-4 rounding of the float16 factors it is written to) and σ_k ≥ `F32_MIN_RATIO`·σ_1; the
//! 2-norms come from a few power iterations on the Gram matrices (cheap: R² per step).
//!
//! `None` means "this path does not apply": the Cholesky factor does not exist (A·Aᵀ singular
//! in floating point: the same adapter twice, a zero row) or σ_k ≤ `MIN_RATIO`·σ_1 (Vh divides
//! by σ_k²; ‖A‖₂‖B_w‖₂ stands in for σ_1 when larger, so that a sum cancelling to ~0 is not
//! taken for a well-resolved one). The caller then takes a QR path, exact for any rank.

use std::cell::RefCell;

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure as Bs};
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};
use memmap2::MmapMut;

use super::{tridiag_eigen, tridiag_reduce};
use crate::error::{catch_panic, Error, Result};
use crate::scalar::Real;

/// σ_k / max(σ_1, ‖A‖₂‖B_w‖₂) below which a float64 result is declined (see the module
/// comment): Vh's rows are then accurate to about ε·σ_1/σ_k only.
pub const MIN_RATIO: f64 = 1e-4;
/// The same bound for float32 results (ε₃₂·σ_1²/σ_k² ≤ 6e-4 on Vh's last row).
pub const F32_MIN_RATIO: f64 = 1e-2;
/// Largest `‖A‖₂²‖B_w‖₂²/σ_1²` a float32 result is kept for (see the module comment).
pub const F32_MAX_RHO_SQ: f64 = 32.0;
/// Power iterations estimating a Gram matrix's largest eigenvalue (from below; the estimate
/// only needs to be within a small factor, which `F32_MAX_RHO_SQ` leaves room for).
const POWER_STEPS: usize = 6;

/// Workspaces up to this size stay with their thread for the next call (a merge calls once
/// per module: fresh pages for every call cost more than the small-module work itself, and
/// two threads faulting in pages contend on the process's memory map).
const RETAIN_BYTES: usize = 32 << 20;

/// Workspaces from this size on are anonymous maps in whole transparent huge pages.
const HUGE_PAGE: usize = 2 << 20;

thread_local! {
    /// This thread's workspace, shared by both precisions (a call tries float32, then float64,
    /// one after the other).
    static WORKSPACE: RefCell<Option<MmapMut>> = const { RefCell::new(None) };
}

/// Fresh zeroed anonymous memory of at least `bytes`. From `HUGE_PAGE` on, the length is
/// rounded up to whole huge pages (Linux aligns such maps to them) and the kernel is asked to
/// back it with transparent huge pages: a workspace of a few MB then faults in as a few huge
/// pages instead of thousands of small ones, a visible share of a thread's first module.
fn anonymous(bytes: usize) -> std::io::Result<MmapMut> {
    if bytes < HUGE_PAGE {
        return MmapMut::map_anon(bytes.max(1));
    }
    let map = MmapMut::map_anon(bytes.div_ceil(HUGE_PAGE) * HUGE_PAGE)?;
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage); // advisory: 4 KiB pages otherwise
    Ok(map)
}

/// Runs `f` on `len` elements of this thread's workspace (contents unspecified), kept for the
/// next call when at most `RETAIN_BYTES`.
fn with_workspace<T: Real, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    let bytes = len * std::mem::size_of::<T>();
    WORKSPACE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut ws) => {
            if ws.as_ref().is_none_or(|m| m.len() < bytes) {
                *ws = None; // the old map is released before the new one is made
                *ws = anonymous(bytes).ok();
            }
            let out = match ws.as_mut() {
                // Page-aligned, so aligned for T.
                Some(map) => f(bytemuck::cast_slice_mut(&mut map[..bytes])),
                None => f(&mut vec![T::from_f64(0.0); len]), // no map: the heap
            };
            if ws.as_ref().is_some_and(|m| m.len() > RETAIN_BYTES) {
                *ws = None;
            }
            out
        }
        // Re-entered on this thread: with `parallel`, a thread waiting in rayon::join may run
        // another call's job meanwhile. That call gets a buffer of its own.
        Err(_) => f(&mut vec![T::from_f64(0.0); len]),
    })
}

/// Where the stacked factors come from: writes column j of B_w (`fold_j·b_j`, d_out values)
/// and of Aᵀ (`a_j`, d_in values) into the matrices the Gram path works on.
pub trait FactorSource: Sync {
    /// Fills `bw` (d_out × R) and `at` (d_in × R), column-major, in precision `T`;
    /// R = `fold.len()`.
    fn fill<T: Real>(&self, bw: &mut [T], at: &mut [T], fold: &[f64]) -> Result<()>;
}

/// Rows `[b_i ; a_i]` of a row-major R × (d_out + d_in) slice (a unit matrix, or any stack).
pub struct UnitRows<'a, U> {
    pub units: &'a [U],
    pub d_out: usize,
}

impl<U: Copy + Into<f64> + Sync> FactorSource for UnitRows<'_, U> {
    fn fill<T: Real>(&self, bw: &mut [T], at: &mut [T], fold: &[f64]) -> Result<()> {
        let d_in = at.len() / fold.len();
        let width = self.d_out + d_in;
        columns(bw, self.units, width, 0, self.d_out, Some(fold));
        columns(at, self.units, width, self.d_out, d_in, None);
        Ok(())
    }
}

/// `U_k·S_k` (d_out × k) and `Vh_k` (k × d_in), row-major, singular values descending.
#[derive(Debug, Clone)]
pub struct TopK {
    pub us: Vec<f64>,
    pub vh: Vec<f64>,
}

/// An estimate (from below) of the largest eigenvalue of the symmetric PSD matrix `g`, of
/// which only the lower triangle is read: the Rayleigh quotient after a few power iterations.
fn largest_eigenvalue<T: Real>(g: MatRef<'_, T>) -> f64 {
    let r = g.nrows();
    // A start with no structure a Gram matrix could be orthogonal to by accident.
    let mut x = Mat::<T>::from_fn(r, 1, |i, _| {
        T::from_f64(1.0 + ((i * 7919) % 97) as f64 / 97.0)
    });
    let mut y = Mat::<T>::zeros(r, 1);
    let mut lam = 0.0;
    for _ in 0..POWER_STEPS {
        let norm = x
            .col(0)
            .iter()
            .map(|v| v.to_f64() * v.to_f64())
            .sum::<f64>()
            .sqrt();
        if norm.is_nan() || norm <= 0.0 {
            return 0.0;
        }
        let inv = T::from_f64(1.0 / norm);
        x.col_mut(0).iter_mut().for_each(|v| *v *= inv);
        // y = tril(g)·x + stril(g)ᵀ·x: one read of the lower triangle, no mirror needed.
        tri_matmul(
            y.as_mut(),
            Bs::Rectangular,
            Accum::Replace,
            g,
            Bs::TriangularLower,
            x.as_ref(),
            Bs::Rectangular,
            T::from_f64(1.0),
            Par::Seq,
        );
        tri_matmul(
            y.as_mut(),
            Bs::Rectangular,
            Accum::Add,
            g.transpose(),
            Bs::StrictTriangularUpper,
            x.as_ref(),
            Bs::Rectangular,
            T::from_f64(1.0),
            Par::Seq,
        );
        lam = x
            .col(0)
            .iter()
            .zip(y.col(0).iter())
            .map(|(a, b)| a.to_f64() * b.to_f64())
            .sum();
        std::mem::swap(&mut x, &mut y);
    }
    lam
}

/// Fills `out` (`len` × R, column-major): column j is `units[j·width + start ..][..len]`,
/// times `fold[j]` when given.
fn columns<T: Real, U: Copy + Into<f64>>(
    out: &mut [T],
    units: &[U],
    width: usize,
    start: usize,
    len: usize,
    fold: Option<&[f64]>,
) {
    for (j, (col, row)) in out
        .chunks_exact_mut(len)
        .zip(units.chunks_exact(width))
        .enumerate()
    {
        let f = fold.map_or(1.0, |f| f[j]);
        col.iter_mut()
            .zip(&row[start..start + len])
            .for_each(|(o, &v)| *o = T::from_f64(v.into() * f));
    }
}

/// Copies the lower triangle of the square `g` (n × n, column-major) onto its upper
/// triangle, through 16 × 16 tiles: entry by entry, the writes along a row are 4·n bytes apart
/// and fall into one or two L1 sets (n = 512), evicting each other.
fn mirror_lower<T: Real>(mut g: MatMut<'_, T>) {
    const TILE: usize = 16;
    let n = g.nrows();
    let mut tile = [[T::from_f64(0.0); TILE]; TILE];
    for j0 in (0..n).step_by(TILE) {
        let cols = TILE.min(n - j0);
        for i0 in (j0..n).step_by(TILE) {
            let rows = TILE.min(n - i0);
            // Lower block (rows i0.., cols j0..) in, column by column, as tile[row][col]; out
            // as the upper block (rows j0.., cols i0..), column by column. On the diagonal
            // block only entries below the diagonal move.
            for (c, j) in (j0..j0 + cols).enumerate() {
                let col = g.rb().col(j).subrows(i0, rows);
                for (t, &v) in tile.iter_mut().zip(col.iter()) {
                    t[c] = v;
                }
            }
            for (r, t) in tile.iter().enumerate().take(rows) {
                let dst = g.rb_mut().col_mut(i0 + r).subrows_mut(j0, cols);
                for (c, (d, &v)) in dst.iter_mut().zip(t.iter()).enumerate() {
                    if i0 != j0 || r > c {
                        *d = v;
                    }
                }
            }
        }
    }
}

/// The lower triangle of `xᵀ·x` (x: d × R, column-major) into `g` (R × R).
fn gram_lower<T: Real>(g: MatMut<'_, T>, x: MatRef<'_, T>) {
    tri_matmul(
        g,
        Bs::TriangularLower,
        Accum::Replace,
        x.transpose(),
        Bs::Rectangular,
        x,
        Bs::Rectangular,
        T::from_f64(1.0),
        Par::Seq,
    );
}

/// The top-k singular triplets of `Σ_i fold_i·b_i·a_iᵀ` where row i of `units`
/// (R × (d_out + d_in), row-major) is `[b_i ; a_i]`: [`top_k_of`] on [`UnitRows`].
pub fn top_k<U: Copy + Into<f64> + Sync>(
    units: &[U],
    d_out: usize,
    d_in: usize,
    fold: &[f64],
    k: usize,
    allow_single: bool,
    parallel: bool,
) -> Result<Option<TopK>> {
    let width = d_out + d_in;
    if units.len() != fold.len() * width {
        return Err(Error::invalid(format!(
            "units hold {} values, expected {} rows of {width}",
            units.len(),
            fold.len()
        )));
    }
    let src = UnitRows { units, d_out };
    top_k_of(&src, d_out, d_in, fold, k, allow_single, parallel)
}

/// The top-k singular triplets of `ΔW = B_w·A` (R = `fold.len()` units from `src`), in
/// float32 where `allow_single` and the float32 checks pass (see the module comment), else in
/// float64. With `parallel`, the two Gram matrices (half the flops) are formed at once on the
/// current rayon pool; the rest is sequential: the tridiagonal reduction is memory-bound, and
/// a merge gets more from running modules at once. `None`: the Gram path does not apply.
pub fn top_k_of<F: FactorSource>(
    src: &F,
    d_out: usize,
    d_in: usize,
    fold: &[f64],
    k: usize,
    allow_single: bool,
    parallel: bool,
) -> Result<Option<TopK>> {
    catch_panic("svd of the stacked factors", || {
        if allow_single {
            if let Some(res) = gram_top_k::<f32, F>(src, d_out, d_in, fold, k, parallel)? {
                return Ok(Some(res));
            }
        }
        gram_top_k::<f64, F>(src, d_out, d_in, fold, k, parallel)
    })
}

/// `top_k_of` in precision `T` (None also where a float32 result fails its checks).
pub fn gram_top_k<T: Real, F: FactorSource>(
    src: &F,
    d_out: usize,
    d_in: usize,
    fold: &[f64],
    k: usize,
    parallel: bool,
) -> Result<Option<TopK>> {
    let r = fold.len();
    if k == 0 || k > r || r >= d_out.min(d_in) {
        return Err(Error::invalid(format!(
            "need 1 <= k <= R < min(d_out, d_in), got k = {k}, R = {r}, shape {d_out} x {d_in}"
        )));
    }
    if let Some(i) = fold.iter().position(|f| !f.is_finite()) {
        return Err(Error::invalid(format!("fold[{i}] is not finite")));
    }
    with_workspace::<T, _>((d_out + d_in + 3 * r) * r, |ws| {
        gram_top_k_in(ws, src, d_out, d_in, fold, k, parallel)
    })
}

/// `gram_top_k` on the workspace `ws` ((d_out + d_in + 3·R)·R elements) for its large matrices.
fn gram_top_k_in<T: Real, F: FactorSource>(
    ws: &mut [T],
    src: &F,
    d_out: usize,
    d_in: usize,
    fold: &[f64],
    k: usize,
    parallel: bool,
) -> Result<Option<TopK>> {
    let r = fold.len();
    let (bw, ws) = ws.split_at_mut(d_out * r);
    let (at, ws) = ws.split_at_mut(d_in * r);
    let (m_s, ws) = ws.split_at_mut(r * r);
    let (l, x) = ws.split_at_mut(r * r);
    // B_w and Aᵀ, and their Gram matrices.
    src.fill(bw, at, fold)?;
    let bw = MatRef::from_column_major_slice(bw, d_out, r);
    let at = MatRef::from_column_major_slice(at, d_in, r);
    let mut m = MatMut::from_column_major_slice_mut(m_s, r, r);
    let mut l = MatMut::from_column_major_slice_mut(l, r, r);
    let mut x = MatMut::from_column_major_slice_mut(x, r, r);
    if parallel {
        rayon::join(|| gram_lower(m.rb_mut(), bw), || gram_lower(l.rb_mut(), at));
    } else {
        gram_lower(m.rb_mut(), bw);
        gram_lower(l.rb_mut(), at);
    }
    let one = T::from_f64(1.0);
    let par = Par::Seq;

    let mut buf = MemBuffer::new(cholesky_in_place_scratch::<T>(r, par, Default::default()));
    let stack = MemStack::new(&mut buf);

    // ‖A‖₂²·‖B_w‖₂² for the checks; G_B in full for the product below (G_A's upper triangle
    // is never read: the Cholesky factor and its uses read the lower one).
    let norms_sq = largest_eigenvalue(l.rb()) * largest_eigenvalue(m.rb());
    mirror_lower(m.rb_mut());

    // L: A·Aᵀ = L·Lᵀ, factored in place in the lower triangle (the upper is never read).
    match cholesky_in_place(
        l.rb_mut(),
        Default::default(),
        par,
        stack,
        Default::default(),
    ) {
        Ok(info) if info.dynamic_regularization_count == 0 => {}
        _ => return Ok(None),
    }

    // M = Lᵀ·G_B·L, lower triangle.
    tri_matmul(
        x.rb_mut(),
        Bs::Rectangular,
        Accum::Replace,
        m.rb(),
        Bs::Rectangular,
        l.rb(),
        Bs::TriangularLower,
        one,
        par,
    );
    tri_matmul(
        m.rb_mut(),
        Bs::TriangularLower,
        Accum::Replace,
        l.rb().transpose(),
        Bs::TriangularUpper,
        x.rb(),
        Bs::Rectangular,
        one,
        par,
    );

    // M = Q·T·Qᵀ (blocked Householder, M's lower triangle); the k largest eigenpairs of T;
    // W = Q·(their vectors).
    let (mut diag, mut off) = (vec![0.0; r], vec![0.0; r - 1]);
    let mut tau = vec![T::from_f64(0.0); r - 1];
    tridiag_reduce::reduce(m_s, r, &mut diag, &mut off, &mut tau);
    if diag.iter().chain(&off).any(|v| !v.is_finite()) {
        return Ok(None);
    }
    let mut vecs = vec![0.0; r * k];
    if tridiag_eigen::top_k(&diag, &off, k, &mut vecs).is_err() {
        return Ok(None);
    }
    let mut w: Vec<T> = vecs.iter().map(|&v| T::from_f64(v)).collect();
    tridiag_reduce::apply_q(m_s, r, &tau, &mut w, k);
    let w = MatRef::from_column_major_slice(&w, r, k);

    // U_k·S_k = B_w·(L·W); σ² from its columns; Vh = S⁻²·(Aᵀ·(B_wᵀ·U_k·S_k))ᵀ.
    let mut lw = Mat::<T>::zeros(r, k);
    tri_matmul(
        lw.as_mut(),
        Bs::Rectangular,
        Accum::Replace,
        l.rb(),
        Bs::TriangularLower,
        w.as_ref(),
        Bs::Rectangular,
        one,
        par,
    );
    let mut us = Mat::<T>::zeros(d_out, k);
    matmul(us.as_mut(), Accum::Replace, bw, lw.as_ref(), one, par);
    let s2: Vec<f64> = (0..k)
        .map(|j| us.col(j).iter().map(|v| v.to_f64() * v.to_f64()).sum())
        .collect();
    // σ_k against σ_1 and against ‖A‖₂‖B_w‖₂: a sum that cancels to ~0 (an adapter minus
    // itself) has singular values at rounding level, which the Gram path cannot resolve.
    let min_ratio = if T::SINGLE { F32_MIN_RATIO } else { MIN_RATIO };
    let resolved = s2[k - 1] > min_ratio * min_ratio * s2[0].max(norms_sq);
    if !resolved {
        return Ok(None); // also σ_1 = 0 and NaN
    }
    let close = norms_sq <= F32_MAX_RHO_SQ * s2[0];
    if T::SINGLE && !close {
        return Ok(None);
    }
    let mut y = Mat::<T>::zeros(r, k);
    matmul(
        y.as_mut(),
        Accum::Replace,
        bw.transpose(),
        us.as_ref(),
        one,
        par,
    );
    let mut z = Mat::<T>::zeros(d_in, k);
    matmul(z.as_mut(), Accum::Replace, at, y.as_ref(), one, par);

    let mut us_out = vec![0.0; d_out * k];
    for (i, row) in us_out.chunks_exact_mut(k).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = us[(i, j)].to_f64();
        }
    }
    let mut vh_out = vec![0.0; k * d_in];
    for (j, row) in vh_out.chunks_exact_mut(d_in).enumerate() {
        let inv = 1.0 / s2[j];
        for (i, v) in row.iter_mut().enumerate() {
            *v = z[(i, j)].to_f64() * inv;
        }
    }
    Ok(Some(TopK {
        us: us_out,
        vh: vh_out,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Mmix;

    /// Uniform in [-0.5, 0.5).
    fn centred(g: &mut Mmix) -> f64 {
        g.next_f64() - 0.5
    }

    /// `gram_top_k` in precision `T` on unit rows, sequential.
    fn gram<T: Real>(
        units: &[f32],
        fold: &[f64],
        d_out: usize,
        d_in: usize,
        k: usize,
    ) -> Option<TopK> {
        gram_top_k::<T, _>(&UnitRows { units, d_out }, d_out, d_in, fold, k, false).unwrap()
    }

    /// Units `[b_i ; a_i]` (R rows, float32 values) and folds for random factors.
    fn random_units(d_out: usize, d_in: usize, r: usize, seed: u64) -> (Vec<f32>, Vec<f64>) {
        let mut g = Mmix(seed);
        let units = (0..r * (d_out + d_in))
            .map(|_| centred(&mut g) as f32)
            .collect();
        let fold = (0..r).map(|i| [0.7, -1.3, 2.0][i % 3]).collect();
        (units, fold)
    }

    #[test]
    fn mirror_lower_copies_exactly_the_lower_triangle() {
        for n in [1usize, 2, 15, 16, 17, 40] {
            let mut g =
                Mat::<f32>::from_fn(
                    n,
                    n,
                    |i, j| {
                        if i >= j {
                            (i * 1000 + j) as f32
                        } else {
                            -1.0
                        }
                    },
                );
            mirror_lower(g.as_mut());
            for i in 0..n {
                for j in 0..n {
                    assert_eq!(g[(i, j)], (i.max(j) * 1000 + i.min(j)) as f32, "n {n}");
                }
            }
        }
    }

    /// The dense float64 ΔW = Σ fold_i·b_i·a_iᵀ.
    fn dense(units: &[f32], fold: &[f64], d_out: usize, d_in: usize) -> Mat<f64> {
        let w = d_out + d_in;
        Mat::from_fn(d_out, d_in, |o, i| {
            (0..fold.len())
                .map(|r| fold[r] * units[r * w + o] as f64 * units[r * w + d_out + i] as f64)
                .sum()
        })
    }

    /// The reference rank-k truncation (faer's dense SVD) and the singular values.
    fn truncated(d: &Mat<f64>, k: usize) -> (Mat<f64>, Vec<f64>) {
        let svd = d.thin_svd().unwrap();
        let (u, s, v) = (svd.U(), svd.S(), svd.V());
        let t = Mat::from_fn(d.nrows(), d.ncols(), |o, i| {
            (0..k).map(|c| u[(o, c)] * s[c] * v[(i, c)]).sum()
        });
        (t, (0..s.dim()).map(|c| s[c]).collect())
    }

    fn product(res: &TopK, d_out: usize, d_in: usize, k: usize) -> Mat<f64> {
        Mat::from_fn(d_out, d_in, |o, i| {
            (0..k)
                .map(|c| res.us[o * k + c] * res.vh[c * d_in + i])
                .sum()
        })
    }

    fn max_abs_diff(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
        let mut m: f64 = 0.0;
        for j in 0..a.ncols() {
            for i in 0..a.nrows() {
                m = m.max((a[(i, j)] - b[(i, j)]).abs());
            }
        }
        m
    }

    fn max_abs(a: &Mat<f64>) -> f64 {
        max_abs_diff(a, &Mat::zeros(a.nrows(), a.ncols()))
    }

    /// max |U_k·S_k·Vh_k − want| / max |want|.
    fn rel_err(res: &TopK, want: &Mat<f64>, k: usize) -> f64 {
        max_abs_diff(&product(res, want.nrows(), want.ncols(), k), want) / max_abs(want)
    }

    #[test]
    fn float64_equals_the_dense_svd() {
        for &(d_out, d_in, r) in &[(40, 60, 12), (60, 40, 12), (33, 35, 32)] {
            let (units, fold) = random_units(d_out, d_in, r, 1 + r as u64);
            let d = dense(&units, &fold, d_out, d_in);
            for k in [1, 5, r] {
                let res =
                    gram::<f64>(&units, &fold, d_out, d_in, k).expect("the Gram path applies");
                let (want, s) = truncated(&d, k);
                let err = rel_err(&res, &want, k);
                assert!(err < 1e-10, "{d_out}x{d_in} R {r} k {k}: {err:e}");
                for c in 0..k {
                    let norm = (0..d_out).map(|o| res.us[o * k + c].powi(2)).sum::<f64>();
                    assert!((norm.sqrt() - s[c]).abs() <= 1e-10 * s[0], "σ_{c}");
                    for c2 in 0..k {
                        let dot: f64 = (0..d_in)
                            .map(|i| res.vh[c * d_in + i] * res.vh[c2 * d_in + i])
                            .sum();
                        let want = if c == c2 { 1.0 } else { 0.0 };
                        assert!((dot - want).abs() < 1e-10, "Vh not orthonormal");
                    }
                }
            }
        }
    }

    #[test]
    fn float32_is_close_and_used_where_allowed() {
        let (d_out, d_in, r, k) = (200, 300, 48, 16);
        let (units, fold) = random_units(d_out, d_in, r, 7);
        let want = truncated(&dense(&units, &fold, d_out, d_in), k).0;
        let single = top_k(&units, d_out, d_in, &fold, k, true, false)
            .unwrap()
            .unwrap();
        let double = top_k(&units, d_out, d_in, &fold, k, false, false)
            .unwrap()
            .unwrap();
        let err = rel_err(&single, &want, k);
        assert!(err < 1e-5, "float32 error {err:e}");
        assert!(
            err > 1e-12,
            "the float32 result is float64-exact: float32 did not run"
        );
        let err64 = rel_err(&double, &want, k);
        assert!(err64 < 1e-11, "float64 error {err64:e}");
    }

    #[test]
    fn float32_declines_sums_that_cancel() {
        // Adapter pairs (x, x + 0.1·noise) with folds +1 and -1: ‖A‖‖B_w‖ ≈ 20·σ_1, where
        // float32 Gram matrices would lose ~1e-4 of the result. float64 runs instead.
        let (d_out, d_in, half) = (120, 150, 16);
        let (base, _) = random_units(d_out, d_in, half, 3);
        let mut g = Mmix(4);
        let mut units = base.clone();
        units.extend(base.iter().map(|&v| v + 0.1 * centred(&mut g) as f32));
        let fold: Vec<f64> = (0..2 * half)
            .map(|i| if i < half { 1.0 } else { -1.0 })
            .collect();
        let k = 8;
        assert!(gram::<f32>(&units, &fold, d_out, d_in, k).is_none());
        let double = gram::<f64>(&units, &fold, d_out, d_in, k).unwrap();
        let auto = top_k(&units, d_out, d_in, &fold, k, true, false)
            .unwrap()
            .unwrap();
        assert_eq!(auto.us, double.us);
        assert_eq!(auto.vh, double.vh);
        let want = truncated(&dense(&units, &fold, d_out, d_in), k).0;
        let err = rel_err(&double, &want, k);
        assert!(err < 1e-9, "float64 error {err:e}");
    }

    #[test]
    fn declines_singular_stacks_and_zero_sums() {
        let (d_out, d_in, r) = (30, 40, 6);
        let (base, _) = random_units(d_out, d_in, r, 5);
        // The same adapter twice, weights 1 and -1: ΔW = 0.
        let mut twice = base.clone();
        twice.extend_from_slice(&base);
        let fold: Vec<f64> = (0..2 * r).map(|i| if i < r { 1.0 } else { -1.0 }).collect();
        for single in [false, true] {
            let res = top_k(&twice, d_out, d_in, &fold, 3, single, false).unwrap();
            assert!(res.is_none(), "ΔW = 0 taken for a resolved sum");
        }
        // A zero row of A: rank R - 1, so σ_R = 0.
        let mut zero = base.clone();
        zero[(r - 1) * (d_out + d_in) + d_out..].fill(0.0);
        let fold = vec![1.0; r];
        assert!(top_k(&zero, d_out, d_in, &fold, r, false, false)
            .unwrap()
            .is_none());
        assert!(top_k(&zero, d_out, d_in, &fold, r - 1, false, false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn parallel_gives_the_same_bytes() {
        let (d_out, d_in, r, k) = (90, 110, 40, 10);
        let (units, fold) = random_units(d_out, d_in, r, 9);
        for single in [false, true] {
            let seq = top_k(&units, d_out, d_in, &fold, k, single, false)
                .unwrap()
                .unwrap();
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            let par = pool
                .install(|| top_k(&units, d_out, d_in, &fold, k, single, true))
                .unwrap()
                .unwrap();
            assert_eq!(seq.us, par.us);
            assert_eq!(seq.vh, par.vh);
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let (units, fold) = random_units(10, 12, 4, 1);
        let bad = |u: &[f32], f: &[f64], d_out: usize, d_in: usize, k: usize| {
            matches!(
                top_k(u, d_out, d_in, f, k, false, false),
                Err(Error::InvalidArgument { .. })
            )
        };
        assert!(bad(&units, &fold, 10, 12, 0)); // k = 0
        assert!(bad(&units, &fold, 10, 12, 5)); // k > R
        assert!(bad(&units, &fold, 10, 13, 2)); // lengths disagree
        assert!(bad(&units, &fold[..3], 10, 12, 2)); // fold too short
        assert!(bad(&units, &[1.0, f64::NAN, 1.0, 1.0], 10, 12, 2));
        let (units, fold) = random_units(4, 12, 4, 1);
        assert!(bad(&units, &fold, 4, 12, 2)); // R = min(d_out, d_in)
    }
}
