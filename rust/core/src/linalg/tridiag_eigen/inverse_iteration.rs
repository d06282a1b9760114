//! Eigenvectors of one unreduced tridiagonal block by inverse iteration (LAPACK dstein), `G`
//! shifts at a time, so that their factorizations and solves interleave, with dstein's
//! clustering, shift separation, scaling, growth test and reorthogonalization.

use super::{exponent, scale_pow2, TridiagEigenError, ULP};
use crate::rng::Mmix;
use crate::simd::{Dispatch, Kernel, Lanes, Level};

/// Eigenvectors computed together by inverse iteration.
const G: usize = 8;
/// Solves per vector at most (dstein's MAXITS).
const MAX_ITS: usize = 5;
/// Solves after the growth test has passed (dstein's EXTRA is 2; with shifts accurate to a few
/// ulps one is enough: residuals stay near ε·‖T‖, see the tests).
const EXTRA_ITS: usize = 1;
/// An inverse-iteration entry beyond this rescales its vector (dlagts guards overflow alike).
const GROWTH_LIMIT: f64 = 1e100;

/// `if c { a } else { b }` without a branch (bit masks): the pivoting pattern is
/// data-dependent, and a branch there mispredicts about every other row.
#[inline(always)]
fn select(c: bool, a: f64, b: f64) -> f64 {
    let m = (c as u64).wrapping_neg();
    f64::from_bits((a.to_bits() & m) | (b.to_bits() & !m))
}

/// Row k of the LU factorization of P·(T − σI) for `G` shifts (dlagtf's layout): 1/U[k][k]
/// (after tiny-pivot replacement), U[k][k+1], U[k][k+2], L's multiplier and whether rows k and
/// k+1 were swapped at step k (1.0 or 0.0).
#[derive(Clone, Copy, Default)]
struct LuRow {
    inv: [f64; G],
    u1: [f64; G],
    u2: [f64; G],
    l: [f64; G],
    sw: [f64; G],
}

/// Buffers of inverse iteration, sized to the largest block and reused for every group.
#[derive(Default)]
pub(super) struct Workspace {
    d: Vec<f64>,
    e: Vec<f64>,
    lu: Vec<LuRow>,
    /// The `G` iterates, row-interleaved: x[i][lane].
    x: Vec<[f64; G]>,
}

impl Workspace {
    /// Factors T − σ_l·I (T: diagonal `self.d`, off-diagonal `self.e`, order >= 2) with
    /// partial pivoting for every lane; pivots below ulp·‖T‖₁ are replaced by ±ulp·‖T‖₁ so that
    /// the solves stay finite (dlagts with job −1). Returns |U[n−1][n−1]| before replacement.
    #[inline(always)]
    fn factor(&mut self, sigma: &[f64; G], onenrm: f64) -> [f64; G] {
        // Every row is rewritten below; only the size changes here.
        self.lu.resize(self.d.len(), LuRow::default());
        let (Some(&d0), Some(&e0)) = (self.d.first(), self.e.first()) else {
            return [0.0; G];
        };
        let mut alpha = sigma.map(|s| d0 - s);
        let mut beta = [e0; G];
        // Step k eliminates T[k+1][k]: the pending row (alpha, beta) in columns k, k+1 against
        // row k+1 = (gamma, a1, delta) in columns k, k+1, k+2, pivoting on the larger. gamma is
        // an off-diagonal entry of an unreduced block, never 0, so no pivot is 0.
        let rows = self
            .d
            .iter()
            .skip(1)
            .zip(&self.e)
            .zip(self.e.iter().skip(1).chain(std::iter::once(&0.0)));
        for (row, ((&d1, &gamma), &delta)) in self.lu.iter_mut().zip(rows) {
            for l in 0..G {
                let a1 = d1 - sigma[l];
                let sw = gamma.abs() > alpha[l].abs();
                let p0 = select(sw, gamma, alpha[l]);
                let p1 = select(sw, a1, beta[l]);
                let p2 = select(sw, delta, 0.0);
                let b0 = select(sw, alpha[l], gamma);
                let b1 = select(sw, beta[l], a1);
                let b2 = select(sw, 0.0, delta);
                let m = b0 / p0;
                row.inv[l] = p0;
                row.u1[l] = p1;
                row.u2[l] = p2;
                row.l[l] = m;
                row.sw[l] = select(sw, 1.0, 0.0);
                alpha[l] = b1 - m * p1;
                beta[l] = b2 - m * p2;
            }
        }
        if let Some(last) = self.lu.last_mut() {
            *last = LuRow {
                inv: alpha,
                ..LuRow::default()
            };
        }
        let ptol = ULP * onenrm;
        for row in &mut self.lu {
            for u in &mut row.inv {
                let v = if u.abs() < ptol {
                    ptol.copysign(*u)
                } else {
                    *u
                };
                *u = 1.0 / v;
            }
        }
        alpha.map(f64::abs)
    }

    /// Solves (T − σ_l·I)·y = scl_l·x_l in place for every lane. An entry growing past
    /// `GROWTH_LIMIT` rescales its lane (the system is linear: the direction is unchanged), as
    /// dlagts guards against overflow.
    #[inline(always)]
    fn solve(&mut self, scl: &[f64; G]) {
        let x = &mut self.x;
        let Some(&first) = x.first() else {
            return;
        };
        let nb = x.len();
        // y = L⁻¹·P·(scl·x)
        let mut cur: [f64; G] = std::array::from_fn(|l| first[l] * scl[l]);
        for k in 0..nb - 1 {
            let (row, nxt) = (&self.lu[k], x[k + 1]);
            let mut out = [0.0; G];
            for l in 0..G {
                let nxt = nxt[l] * scl[l];
                let sw = row.sw[l] != 0.0;
                let (a, b) = (select(sw, nxt, cur[l]), select(sw, cur[l], nxt));
                out[l] = a;
                cur[l] = b - row.l[l] * a;
            }
            x[k] = out;
        }
        x[nb - 1] = cur;
        // U·y' = y
        let mut x1 = [0.0; G]; // y'[k+1]
        let mut x2 = [0.0; G]; // y'[k+2]
        for k in (0..nb).rev() {
            let row = &self.lu[k];
            let mut v = [0.0; G];
            for l in 0..G {
                v[l] = (x[k][l] - row.u1[l] * x1[l] - row.u2[l] * x2[l]) * row.inv[l];
            }
            if v.iter().any(|t| t.abs() > GROWTH_LIMIT) {
                for l in 0..G {
                    // s = 0 for an infinite entry: that lane restarts in `block_vectors`.
                    let s = 1.0 / v[l].abs();
                    if v[l].abs() <= GROWTH_LIMIT || s == 0.0 {
                        continue;
                    }
                    for y in x.iter_mut() {
                        y[l] *= s;
                    }
                    x1[l] *= s;
                    x2[l] *= s;
                    v[l] *= s;
                }
            }
            x[k] = v;
            x2 = x1;
            x1 = v;
        }
    }

    #[inline(always)]
    fn max_abs(&self) -> [f64; G] {
        let mut m = [0.0f64; G];
        for r in &self.x {
            for l in 0..G {
                m[l] = m[l].max(r[l].abs());
            }
        }
        m
    }

    /// Modified Gram–Schmidt inside the group, right-looking: for m = 0, 1, ... every later
    /// lane l with `same[l][m]` loses its component along lane m (final by then). Per lane
    /// these are the operations of left-looking MGS in the same order, but all lanes move
    /// together: one pass per m, which also subtracts the components along lane m − 1.
    #[inline(always)]
    fn project_lanes(&mut self, lanes: usize, same: &[[bool; G]; G]) {
        let mut prev: Option<(usize, [f64; G])> = None;
        for m in 0..lanes {
            let want: [bool; G] = std::array::from_fn(|l| l > m && l < lanes && same[l][m]);
            let any = want.iter().any(|&w| w);
            if !any && prev.is_none() {
                continue;
            }
            let mut acc = [[0.0f64; G]; 2];
            match (prev, any) {
                (Some((p, h)), true) => {
                    for (i, r) in self.x.iter_mut().enumerate() {
                        let pv = r[p];
                        for l in 0..G {
                            r[l] -= h[l] * pv;
                        }
                        let qv = r[m];
                        for l in 0..G {
                            acc[i & 1][l] += r[l] * qv;
                        }
                    }
                }
                (Some((p, h)), false) => subtract_lane(&mut self.x, p, &h),
                (None, true) => {
                    for (i, r) in self.x.iter().enumerate() {
                        let qv = r[m];
                        for l in 0..G {
                            acc[i & 1][l] += r[l] * qv;
                        }
                    }
                }
                (None, false) => {}
            }
            let dot: [f64; G] = std::array::from_fn(|l| acc[0][l] + acc[1][l]);
            // dot[m] is lane m's squared norm (lanes are not normalized between iterations).
            let nrm2 = dot[m];
            let h: [f64; G] = std::array::from_fn(|l| {
                if want[l] && nrm2 > 0.0 {
                    dot[l] / nrm2
                } else {
                    0.0
                }
            });
            prev = any.then_some((m, h));
        }
        if let Some((p, h)) = prev {
            subtract_lane(&mut self.x, p, &h);
        }
    }
}

/// x_l −= h_l · x_p for every lane l (h_p = 0).
#[inline(always)]
fn subtract_lane(x: &mut [[f64; G]], p: usize, h: &[f64; G]) {
    for r in x.iter_mut() {
        let pv = r[p];
        for l in 0..G {
            r[l] -= h[l] * pv;
        }
    }
}

/// One pass of the fused modified Gram–Schmidt against stored vectors, all lanes at once:
/// x_l −= h_l·p when `p = (p, h)` is given, then the inner products x_l·q when `q` is given.
#[inline(always)]
fn mgs_pass(x: &mut [[f64; G]], p: Option<(&[f64], &[f64; G])>, q: Option<&[f64]>) -> [f64; G] {
    let mut acc = [[0.0f64; G]; 2];
    match (p, q) {
        (Some((p, h)), Some(q)) => {
            for (i, ((r, &pv), &qv)) in x.iter_mut().zip(p).zip(q).enumerate() {
                for l in 0..G {
                    r[l] -= h[l] * pv;
                    acc[i & 1][l] += r[l] * qv;
                }
            }
        }
        (Some((p, h)), None) => {
            for (r, &pv) in x.iter_mut().zip(p) {
                for l in 0..G {
                    r[l] -= h[l] * pv;
                }
            }
        }
        (None, Some(q)) => {
            for (i, (r, &qv)) in x.iter().zip(q).enumerate() {
                for l in 0..G {
                    acc[i & 1][l] += r[l] * qv;
                }
            }
        }
        (None, None) => {}
    }
    std::array::from_fn(|l| acc[0][l] + acc[1][l])
}

/// Eigenvectors of one block (rows `start..start + d.len()` of the n × k output) for its
/// selected eigenvalues `lams` (descending), written to columns `cols`.
#[allow(clippy::too_many_arguments)]
pub(super) fn block_vectors(
    d: &[f64],
    e: &[f64],
    lams: &[f64],
    cols: &[usize],
    n: usize,
    start: usize,
    vecs: &mut [f64],
    ws: &mut Workspace,
    level: Level,
) -> Result<(), TridiagEigenError> {
    struct Vectors<'a> {
        d: &'a [f64],
        e: &'a [f64],
        lams: &'a [f64],
        cols: &'a [usize],
        n: usize,
        start: usize,
        vecs: &'a mut [f64],
        ws: &'a mut Workspace,
    }
    impl Kernel<f64> for Vectors<'_> {
        type Output = Result<(), TridiagEigenError>;
        // The token only picks the build.
        #[inline(always)]
        fn run<S: Lanes<f64>>(self, _: S) -> Self::Output {
            let Vectors {
                d,
                e,
                lams,
                cols,
                n,
                start,
                vecs,
                ws,
            } = self;
            block_vectors_impl(d, e, lams, cols, n, start, vecs, ws)
        }
    }
    let k = Vectors {
        d,
        e,
        lams,
        cols,
        n,
        start,
        vecs,
        ws,
    };
    f64::dispatch(level, k)
}

/// dstein's inverse iteration, `G` vectors at a time: `block_vectors`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_vectors_impl(
    d: &[f64],
    e: &[f64],
    lams: &[f64],
    cols: &[usize],
    n: usize,
    start: usize,
    vecs: &mut [f64],
    ws: &mut Workspace,
) -> Result<(), TridiagEigenError> {
    let nb = d.len();
    if nb == 1 {
        // A 1 × 1 block has one eigenvalue, hence at most one column.
        if let Some(v) = cols.first().and_then(|&c| vecs.get_mut(c * n + start)) {
            *v = 1.0;
        }
        return Ok(());
    }
    // Work on the block scaled to max |entry| in [1/2, 1) (by a power of two: exact), which
    // bounds the growth of the solves whatever the block's magnitude.
    let bmax = d.iter().chain(e).fold(0.0f64, |m, &v| m.max(v.abs()));
    let bex = exponent(bmax);
    ws.d.clear();
    ws.d.extend(d.iter().map(|&v| scale_pow2(v, -bex)));
    ws.e.clear();
    ws.e.extend(e.iter().map(|&v| scale_pow2(v, -bex)));
    let mut onenrm = 0.0f64;
    for (i, &di) in ws.d.iter().enumerate() {
        let left = i
            .checked_sub(1)
            .and_then(|j| ws.e.get(j))
            .map_or(0.0, |v| v.abs());
        let right = ws.e.get(i).map_or(0.0, |v| v.abs());
        onenrm = onenrm.max(di.abs() + left + right);
    }
    // dstein: eigenvalues closer than ortol form a cluster, whose vectors are reorthogonalized;
    // the iterate passes the growth test when ‖y‖∞ >= sqrt(0.1/n) (right-hand side scaled as
    // below).
    let ortol = 1e-3 * onenrm;
    let dtpcrt = (0.1 / nb as f64).sqrt();

    // Shifts and cluster starts (dstein, in descending order). Nearly equal shifts are pulled
    // apart by 10·ulp·‖T‖₁, so that their factorizations, hence their vectors, differ, and no
    // shift sits much closer to an eigenvalue already found than to its own: then the solve
    // would amplify the found vector far above the new one, and reorthogonalization would
    // leave ulp·(that ratio) of it behind. dstein's 10·ulp·|λ| vanishes near zero, where the
    // computed eigenvalues of a cluster are only accurate to ~ulp·‖T‖ and fall anywhere
    // inside it.
    let pertol = 10.0 * ULP * onenrm;
    let mut shifts = Vec::with_capacity(lams.len());
    let mut gps = Vec::with_capacity(lams.len());
    let mut gp = 0;
    for (j, &lam) in lams.iter().enumerate() {
        let mut xj = scale_pow2(lam, -bex);
        if let Some(&xjm) = shifts.last() {
            if xjm - xj < pertol {
                xj = xjm - pertol;
            }
            if xjm - xj > ortol {
                gp = j;
            }
        }
        shifts.push(xj);
        gps.push(gp);
    }

    let mut g0 = 0;
    while g0 < lams.len() {
        let lanes = (lams.len() - g0).min(G);
        // Unused lanes repeat the group's last shift; their results are dropped.
        let last = g0 + lanes - 1;
        let sigma: [f64; G] = std::array::from_fn(|l| shifts[(g0 + l).min(last)]);
        let gp_l: [usize; G] = std::array::from_fn(|l| gps[(g0 + l).min(last)]);
        let last_pivot = ws.factor(&sigma, onenrm);

        ws.x.resize(nb, [0.0; G]);
        let mut rngs: [Mmix; G] =
            std::array::from_fn(|l| Mmix::mixed(((start as u64) << 32) ^ (g0 + l) as u64));
        for r in ws.x.iter_mut() {
            for (v, rng) in r.iter_mut().zip(rngs.iter_mut()) {
                *v = rng.next_signed();
            }
        }
        let mut xmax = ws.max_abs();
        let mut passed = [0usize; G];
        let mut converged = false;
        for _ in 0..MAX_ITS {
            // dstein's scaling: ‖b‖∞ = n·‖T‖₁·max(ulp, |U[n−1][n−1]|), so that ‖y‖∞ reaching
            // sqrt(0.1/n) means a growth only a vector close to the eigenspace can have.
            let mut scl = [0.0; G];
            for (l, rng) in rngs.iter_mut().enumerate() {
                if !(xmax[l] > 0.0 && xmax[l].is_finite()) {
                    // Reorthogonalization removed everything (or something overflowed).
                    for r in ws.x.iter_mut() {
                        r[l] = rng.next_signed();
                    }
                    xmax[l] = ws.x.iter().fold(0.0f64, |m, r| m.max(r[l].abs()));
                }
                scl[l] = nb as f64 * onenrm * ULP.max(last_pivot[l]) / xmax[l];
            }
            ws.solve(&scl);

            // Modified Gram–Schmidt against the cluster's earlier vectors in every iteration:
            // first the finished ones of earlier groups, all lanes at once, one pass per
            // column (subtracting the previous column's component while summing the next
            // one's), ...
            let first_gp = gp_l[..lanes].iter().copied().min().unwrap_or(g0);
            let mut prev: Option<(&[f64], [f64; G])> = None;
            for c in first_gp..=g0 {
                let next = if c < g0 {
                    cols.get(c)
                        .and_then(|&col| vecs.get(col * n + start..col * n + start + nb))
                } else {
                    None
                };
                if prev.is_none() && next.is_none() {
                    continue;
                }
                let mut h = mgs_pass(&mut ws.x, prev.as_ref().map(|(p, h)| (*p, h)), next);
                for (l, hl) in h.iter_mut().enumerate() {
                    if l >= lanes || gp_l[l] > c {
                        *hl = 0.0;
                    }
                }
                prev = next.map(|q| (q, h));
            }
            // ... then this group's earlier lanes of the same cluster.
            let same: [[bool; G]; G] =
                std::array::from_fn(|l| std::array::from_fn(|m| gp_l[l] <= g0 + m));
            ws.project_lanes(lanes, &same);

            xmax = ws.max_abs();
            let mut all = true;
            for l in 0..lanes {
                if xmax[l] >= dtpcrt {
                    passed[l] += 1;
                }
                all &= passed[l] > EXTRA_ITS;
            }
            if all {
                converged = true;
                break;
            }
        }

        // Unit 2-norms, largest-magnitude entry positive (the first one on ties). The largest
        // entry of a converged lane lies between sqrt(0.1/n) and ~1e100 (`GROWTH_LIMIT`), so
        // the plain sum of squares cannot overflow or underflow.
        let mut xm = [0.0f64; G];
        let mut sign = [1.0f64; G];
        let mut ss = [[0.0f64; G]; 2];
        for (i, r) in ws.x.iter().enumerate() {
            for l in 0..G {
                let a = r[l].abs();
                let bigger = a > xm[l];
                xm[l] = select(bigger, a, xm[l]);
                sign[l] = select(bigger, select(r[l] < 0.0, -1.0, 1.0), sign[l]);
                ss[i & 1][l] += r[l] * r[l];
            }
        }
        for l in 0..lanes {
            let col = cols.get(g0 + l).copied().unwrap_or(0);
            if !converged || passed[l] <= EXTRA_ITS {
                return Err(TridiagEigenError::InverseIterationNoConvergence { index: col });
            }
            let s = sign[l] / (ss[0][l] + ss[1][l]).sqrt();
            let Some(out) = vecs.get_mut(col * n + start..col * n + start + nb) else {
                return Err(TridiagEigenError::InverseIterationNoConvergence { index: col });
            };
            for (o, r) in out.iter_mut().zip(&ws.x) {
                *o = s * r[l];
            }
            if !out.iter().all(|v| v.is_finite()) {
                return Err(TridiagEigenError::InverseIterationNoConvergence { index: col });
            }
        }
        g0 += lanes;
    }
    Ok(())
}
