//! The k largest eigenpairs of a real symmetric tridiagonal matrix in O(n·k): bisection on
//! Sturm counts for the eigenvalues (LAPACK dstebz / dlaebz) and inverse iteration for the
//! eigenvectors (LAPACK dstein, with dlagtf / dlagts's pivoted tridiagonal LU). `lowrank_svd`
//! calls it after faer's `tridiag_in_place` when only the top k of n eigenpairs are wanted.
//!
//! Eigenvalues: the matrix splits where an off-diagonal entry is negligible, and each block is
//! searched for its own top min(k, n_b) eigenvalues; the k largest of them all win. Within a
//! block, brackets are refined in rounds, and every round evaluates all brackets' trial points
//! in one pass over the block, `LANES` points side by side, so that the divisions of
//! independent Sturm sequences overlap. A bracket holding several eigenvalues is multisected.
//! A bracket holding one eigenvalue takes Laguerre steps on det(T − xI) (the same pass yields
//! the logarithmic derivatives) and falls back to bisection when they do not help. Every
//! result is bracketed by Sturm counts to the same tolerance as plain bisection, in far fewer
//! passes (about 8 per eigenvalue instead of 50).
//!
//! Eigenvectors: `G` shifts at a time, so that their factorizations and solves interleave,
//! with dstein's clustering, shift separation, scaling, growth test and reorthogonalization.
//!
//! The output is a pure function of the input: one thread, a fixed-seed generator for the
//! start vectors, and the AVX2 build of the loops does the same operations in the same order
//! as the baseline one (no FMA contraction, no reassociation), hence gives the same bytes.

/// Unit roundoff times 2 (LAPACK's dlamch('P')).
const ULP: f64 = f64::EPSILON;
/// Smallest positive normal number (dlamch('S')).
const SAFMIN: f64 = f64::MIN_POSITIVE;
/// Trial points evaluated together in one Sturm pass.
const LANES: usize = 8;
/// Refinement rounds of one block: bisection alone takes at most ~2100 (from the largest float
/// to the smallest), so this only keeps a bug from looping forever.
const MAX_ROUNDS: usize = 8192;
/// Laguerre steps on one isolated eigenvalue before multisection takes over (Laguerre
/// converges cubically, typically in 3 to 5 steps; more means rounding noise, near zero).
const MAX_LAGUERRE: u32 = 12;
/// Eigenvectors computed together by inverse iteration.
const G: usize = 8;
/// Solves per vector at most (dstein's MAXITS).
const MAX_ITS: usize = 5;
/// Solves after the growth test has passed (dstein's EXTRA is 2; with shifts accurate to a few
/// ulps one is enough: residuals stay near ε·‖T‖, see the tests).
const EXTRA_ITS: usize = 1;
/// An inverse-iteration entry beyond this rescales its vector (dlagts guards overflow alike).
const GROWTH_LIMIT: f64 = 1e100;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TridiagEigenError {
    #[error("tridiagonal eigensolver: {what} has length {got}, expected {expected}")]
    BadLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("tridiagonal eigensolver: k = {k} exceeds the matrix order n = {n}")]
    KTooLarge { k: usize, n: usize },
    #[error("tridiagonal eigensolver: {what}[{index}] is not finite")]
    NonFinite { what: &'static str, index: usize },
    #[error("tridiagonal eigensolver: eigenvalue {index} (descending) overflows float64")]
    Overflow { index: usize },
    #[error("tridiagonal eigensolver: bisection did not converge")]
    BisectionNoConvergence,
    #[error(
        "tridiagonal eigensolver: inverse iteration did not converge for eigenvector {index} \
         (descending)"
    )]
    InverseIterationNoConvergence { index: usize },
}

/// The k largest eigenvalues, descending, of the symmetric tridiagonal matrix with diagonal `d`
/// (length n) and off-diagonal `e` (length n - 1, e[i] = T[i+1][i]), and their eigenvectors:
/// `vecs` (length n * k, column-major n × k) gets column j = unit eigenvector of the j-th largest.
///
/// Repeated eigenvalues are returned repeatedly, with orthonormal vectors. Each vector's
/// largest-magnitude entry is positive (the first one on ties).
pub(crate) fn top_k(
    d: &[f64],
    e: &[f64],
    k: usize,
    vecs: &mut [f64],
) -> Result<Vec<f64>, TridiagEigenError> {
    top_k_with(d, e, k, vecs, Simd::detect())
}

fn top_k_with(
    d: &[f64],
    e: &[f64],
    k: usize,
    vecs: &mut [f64],
    simd: Simd,
) -> Result<Vec<f64>, TridiagEigenError> {
    let n = d.len();
    let e_len = n.saturating_sub(1);
    if e.len() != e_len {
        return Err(TridiagEigenError::BadLength {
            what: "e",
            expected: e_len,
            got: e.len(),
        });
    }
    if k > n {
        return Err(TridiagEigenError::KTooLarge { k, n });
    }
    let nk = n.saturating_mul(k);
    if vecs.len() != nk {
        return Err(TridiagEigenError::BadLength {
            what: "vecs",
            expected: nk,
            got: vecs.len(),
        });
    }
    for (what, v) in [("d", d), ("e", e)] {
        if let Some(index) = v.iter().position(|x| !x.is_finite()) {
            return Err(TridiagEigenError::NonFinite { what, index });
        }
    }
    if n == 0 || k == 0 {
        return Ok(Vec::new());
    }

    // Scale by a power of two (exact) to max |entry| in [1/2, 1), so that squares of e neither
    // overflow nor underflow (dsterf / dstebz scale for the same reason).
    let anorm = d.iter().chain(e).fold(0.0f64, |m, &v| m.max(v.abs()));
    let ex = exponent(anorm);
    let ds: Vec<f64> = d.iter().map(|&v| scale_pow2(v, -ex)).collect();
    let es: Vec<f64> = e.iter().map(|&v| scale_pow2(v, -ex)).collect();

    // Split where e[i]² < ulp²·|d[i]·d[i+1]| + safmin (dstebz's test); e² is 0 there.
    let mut e2 = vec![0.0; e_len];
    let mut blocks: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    let mut e2max = 1.0f64;
    for (i, ((&ei, e2i), dd)) in es.iter().zip(e2.iter_mut()).zip(ds.windows(2)).enumerate() {
        let t = ei * ei;
        if t < ULP * ULP * (dd[0] * dd[1]).abs() + SAFMIN {
            blocks.push((start, i + 1));
            start = i + 1;
        } else {
            *e2i = t;
            e2max = e2max.max(t);
        }
    }
    blocks.push((start, n));
    // Smallest pivot magnitude of the Sturm recurrence (dstebz's PIVMIN).
    let pivmin = SAFMIN * e2max;

    // The top min(k, n_b) eigenvalues of every block, then the k largest of all. The sort is
    // stable: ties go to the earlier block, and each block keeps its descending order.
    let mut cands: Vec<(f64, usize)> = Vec::new();
    let mut vals = Vec::new();
    let mut bws = BisectWs::default();
    for (b, &(s, t)) in blocks.iter().enumerate() {
        vals.clear();
        if t - s == 1 {
            vals.push(ds[s]);
        } else {
            let (db, eb, e2b) = (&ds[s..t], &es[s..t - 1], &e2[s..t - 1]);
            block_eigenvalues(db, eb, e2b, pivmin, k.min(t - s), &mut vals, &mut bws, simd)?;
        }
        cands.extend(vals.iter().map(|&v| (v, b)));
    }
    cands.sort_by(|a, b| b.0.total_cmp(&a.0));
    cands.truncate(k);

    // Vectors block by block: (block, column) pairs sorted by block; within a block the
    // columns ascend, i.e. its eigenvalues descend.
    let mut order: Vec<(usize, usize)> = cands.iter().enumerate().map(|(j, c)| (c.1, j)).collect();
    order.sort_by_key(|&(b, _)| b);
    vecs.fill(0.0);
    let mut ws = Workspace::default();
    let mut cols = Vec::new();
    let mut lams = Vec::new();
    for group in order.chunk_by(|a, b| a.0 == b.0) {
        let Some(&(s, t)) = group.first().and_then(|&(b, _)| blocks.get(b)) else {
            continue;
        };
        cols.clear();
        lams.clear();
        for &(_, j) in group {
            cols.push(j);
            lams.push(cands.get(j).map_or(0.0, |c| c.0));
        }
        let (db, eb) = (&ds[s..t], &es[s..t - 1]);
        block_vectors(db, eb, &lams, &cols, n, s, vecs, &mut ws, simd)?;
    }

    let mut out = Vec::with_capacity(k);
    for (j, c) in cands.iter().enumerate() {
        let v = scale_pow2(c.0, ex);
        if !v.is_finite() {
            return Err(TridiagEigenError::Overflow { index: j });
        }
        out.push(v);
    }
    Ok(out)
}

/// Which build of the hot loops runs: AVX2 where the CPU has it (runtime detection, as in
/// `kmeans`), else the baseline.
#[derive(Clone, Copy, Debug)]
struct Simd {
    avx2: bool,
}

impl Simd {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        Simd { avx2 }
    }
}

/// `p` with 2^(p-1) <= |x| < 2^p, for finite nonzero x (subnormals included; 0 for 0).
fn exponent(x: f64) -> i32 {
    let biased = (x.abs().to_bits() >> 52) as i32;
    if x == 0.0 {
        0
    } else if biased == 0 {
        exponent(x * pow2(64)) - 64
    } else {
        biased - 1022
    }
}

/// 2^p for -1022 <= p <= 1023 (clamped to that range).
fn pow2(p: i32) -> f64 {
    f64::from_bits(((p.clamp(-1022, 1023) + 1023) as u64) << 52)
}

/// x · 2^p in two exact steps, so that |p| up to ~2000 is fine.
fn scale_pow2(x: f64, p: i32) -> f64 {
    let h = p / 2;
    x * pow2(h) * pow2(p - h)
}

/// Bracket width at which an eigenvalue is final: dstebz's relative tolerance 2·ulp of the
/// endpoints plus pivmin as the absolute one (dlaebz's stopping rule).
fn tolerance(lo: f64, hi: f64, pivmin: f64) -> f64 {
    2.0 * ULP * lo.abs().max(hi.abs()) + pivmin
}

/// A bracket [lo, hi) with `clo` = number of eigenvalues < lo and `chi` = number < hi (Sturm
/// counts), and [G, H] (see `sturm_lanes`) at both ends for Laguerre steps (NaN: unknown).
#[derive(Clone, Copy, Debug)]
struct Interval {
    lo: f64,
    hi: f64,
    clo: usize,
    chi: usize,
    dlo: [f64; 2],
    dhi: [f64; 2],
    /// Widths before the last and the second-to-last update (bisection safeguard).
    w1: f64,
    w2: f64,
    /// Consecutive updates of the same end, and updates since the eigenvalue was isolated.
    lo_streak: u32,
    hi_streak: u32,
    steps: u32,
}

impl Interval {
    fn new(lo: f64, hi: f64, clo: usize, chi: usize, dlo: [f64; 2], dhi: [f64; 2]) -> Self {
        Interval {
            lo,
            hi,
            clo,
            chi,
            dlo,
            dhi,
            w1: f64::INFINITY,
            w2: f64::INFINITY,
            lo_streak: 0,
            hi_streak: 0,
            steps: 0,
        }
    }

    fn midpoint(&self) -> f64 {
        self.lo + 0.5 * (self.hi - self.lo)
    }

    /// The next trial point of a bracket holding exactly one eigenvalue λ.
    ///
    /// det(T − xI) is a polynomial of degree `nb` with real roots, so Laguerre's iteration
    /// moves from either end of the bracket towards λ without passing it (in exact arithmetic)
    /// and converges cubically; unlike Newton it is not slowed down by many eigenvalues
    /// crowding one side. The step from the end closer to λ is taken. To close the bracket it
    /// is lengthened by tol/4, and by a growing fraction when the same end moved twice in a row
    /// (rounding keeps the computed steps from crossing λ). The midpoint instead when no step
    /// lands inside or when a two-sided bracket did not halve in two updates; after
    /// `MAX_LAGUERRE` steps the caller multisects. The counts keep λ bracketed whatever the
    /// steps do.
    fn next_point(&self, nb: usize, pivmin: f64) -> f64 {
        let (lo, hi) = (self.lo, self.hi);
        let w = hi - lo;
        let two_sided = self.lo_streak < self.steps && self.hi_streak < self.steps;
        if two_sided && w > 0.5 * self.w2 {
            return self.midpoint();
        }
        let nf = nb as f64;
        // Distance from an end to the Laguerre point on the bracket's side:
        // n / (G ± sqrt((n−1)(n·H − G²))).
        let laguerre = |[g, h]: [f64; 2], down: bool| -> Option<f64> {
            let sq = ((nf - 1.0) * (nf * h - g * g)).max(0.0).sqrt();
            let dist = if down { nf / (g + sq) } else { -nf / (g - sq) };
            (dist > 0.0 && dist < w).then_some(dist)
        };
        let (down, dist) = match (laguerre(self.dlo, false), laguerre(self.dhi, true)) {
            (Some(a), Some(b)) if b < a => (true, b),
            (Some(a), _) => (false, a),
            (None, Some(b)) => (true, b),
            (None, None) => return self.midpoint(),
        };
        let streak = if down { self.hi_streak } else { self.lo_streak };
        let extra = if streak >= 2 {
            dist * (0.0625 * 4f64.powi(streak.min(40) as i32 - 2))
        } else {
            0.0
        };
        let step = dist + extra.max(0.25 * tolerance(lo, hi, pivmin));
        let x = if down { hi - step } else { lo + step };
        if x > lo && x < hi {
            x
        } else {
            self.midpoint()
        }
    }

    /// Moves the end of the bracket that lies on x's side of λ (count c) to x.
    fn update(&mut self, x: f64, c: usize, der: [f64; 2]) {
        let c = c.clamp(self.clo, self.chi);
        self.w2 = self.w1;
        self.w1 = self.hi - self.lo;
        if c <= self.clo {
            self.lo = x;
            self.dlo = der;
            self.lo_streak += 1;
            self.hi_streak = 0;
        } else {
            self.hi = x;
            self.dhi = der;
            self.hi_streak += 1;
            self.lo_streak = 0;
        }
        self.steps += 1;
    }
}

/// Buffers of the bisection, reused across blocks.
#[derive(Default)]
struct BisectWs {
    active: Vec<Interval>,
    next: Vec<Interval>,
    done: Vec<(f64, usize)>,
    xs: Vec<f64>,
    spans: Vec<(usize, usize)>,
    counts: Vec<usize>,
    ders: Vec<[f64; 2]>,
}

/// The `m` largest eigenvalues (descending, with multiplicity) of the unreduced block with
/// diagonal `d` (length >= 2), off-diagonal `e` and its squares `e2`, appended to `out`.
#[allow(clippy::too_many_arguments)]
fn block_eigenvalues(
    d: &[f64],
    e: &[f64],
    e2: &[f64],
    pivmin: f64,
    m: usize,
    out: &mut Vec<f64>,
    ws: &mut BisectWs,
    simd: Simd,
) -> Result<(), TridiagEigenError> {
    let nb = d.len();
    if m == 0 {
        return Ok(());
    }
    // Gershgorin interval, widened as dstebz does so that the counts at its ends are 0 and nb.
    let mut gl = f64::INFINITY;
    let mut gu = f64::NEG_INFINITY;
    for (i, &di) in d.iter().enumerate() {
        let left = i
            .checked_sub(1)
            .and_then(|j| e.get(j))
            .map_or(0.0, |v| v.abs());
        let right = e.get(i).map_or(0.0, |v| v.abs());
        gl = gl.min(di - left - right);
        gu = gu.max(di + left + right);
    }
    let tnorm = gl.abs().max(gu.abs());
    let pad = 2.1 * (ULP * tnorm * nb as f64 + 2.0 * pivmin);

    // Eigenvalues with ascending indices want..nb are wanted.
    let want = nb - m;
    let unknown = [f64::NAN; 2];
    let BisectWs {
        active,
        next,
        done,
        xs,
        spans,
        counts,
        ders,
    } = ws;
    active.clear();
    active.push(Interval::new(gl - pad, gu + pad, 0, nb, unknown, unknown));
    done.clear();
    let finish = |iv: Interval, next: &mut Vec<Interval>, done: &mut Vec<(f64, usize)>| {
        if iv.hi - iv.lo <= tolerance(iv.lo, iv.hi, pivmin) {
            done.push((iv.midpoint(), iv.chi.saturating_sub(iv.clo.max(want))));
        } else {
            next.push(iv);
        }
    };

    let mut rounds = 0;
    while !active.is_empty() {
        rounds += 1;
        if rounds > MAX_ROUNDS {
            return Err(TridiagEigenError::BisectionNoConvergence);
        }
        // Trial points: one per eigenvalue taking Laguerre steps; the other lanes are shared
        // among the brackets to multisect (several eigenvalues, or one whose Laguerre steps
        // ran out: rounding noise near zero), rather than left idle.
        let laguerre = |iv: &Interval| iv.chi - iv.clo == 1 && iv.steps < MAX_LAGUERRE;
        let n_lag = active.iter().filter(|iv| laguerre(iv)).count();
        let per = LANES
            .saturating_sub(n_lag)
            .checked_div(active.len() - n_lag)
            .map_or(1, |p| p.max(1));
        xs.clear();
        spans.clear();
        for iv in active.iter() {
            let first = xs.len();
            if laguerre(iv) {
                let x = iv.next_point(nb, pivmin);
                if x > iv.lo && x < iv.hi {
                    xs.push(x);
                }
            } else {
                let w = iv.hi - iv.lo;
                let mut last = iv.lo;
                for j in 1..=per {
                    let x = iv.lo + w * (j as f64 / (per + 1) as f64);
                    if x > last && x < iv.hi {
                        xs.push(x);
                        last = x;
                    }
                }
            }
            spans.push((first, xs.len()));
        }
        sturm_points(d, e2, pivmin, xs, counts, ders, simd);

        next.clear();
        for (iv, &(first, end)) in active.iter().zip(spans.iter()) {
            let (Some(px), Some(pc), Some(pd)) = (
                xs.get(first..end),
                counts.get(first..end),
                ders.get(first..end),
            ) else {
                continue;
            };
            if px.is_empty() {
                // No float strictly inside: as narrow as it gets.
                done.push((iv.midpoint(), iv.chi.saturating_sub(iv.clo.max(want))));
            } else if iv.chi - iv.clo == 1 {
                // Ascending points: each one inside the bracket so far moves one end.
                let mut upd = *iv;
                for ((&x, &c), &der) in px.iter().zip(pc).zip(pd) {
                    if x > upd.lo && x < upd.hi {
                        upd.update(x, c, der);
                    }
                }
                finish(upd, next, done);
            } else {
                // Counts are clamped to be nondecreasing (float Sturm counts almost always are;
                // dlaebz clamps alike), so that the pieces' counts add up.
                let mut prev = (iv.lo, iv.clo, iv.dlo);
                let pieces = px
                    .iter()
                    .zip(pc)
                    .zip(pd)
                    .map(|((&x, &c), &der)| (x, c, der))
                    .chain(std::iter::once((iv.hi, iv.chi, iv.dhi)));
                for (x, c, der) in pieces {
                    let c = c.clamp(prev.1, iv.chi);
                    if c > prev.1 && c > want {
                        let piece = Interval::new(prev.0, x, prev.1, c, prev.2, der);
                        finish(piece, next, done);
                    }
                    prev = (x, c, der);
                }
            }
        }
        std::mem::swap(active, next);
    }

    done.sort_by(|a, b| b.0.total_cmp(&a.0));
    let before = out.len();
    for &(v, mult) in done.iter() {
        out.extend(std::iter::repeat_n(v, mult));
    }
    if out.len() - before != m {
        // The clamped counts add up to exactly m; anything else is a bug.
        return Err(TridiagEigenError::BisectionNoConvergence);
    }
    Ok(())
}

/// Sturm counts and [G, H] (see `sturm_lanes`) at every point of `xs`.
fn sturm_points(
    d: &[f64],
    e2: &[f64],
    pivmin: f64,
    xs: &[f64],
    counts: &mut Vec<usize>,
    ders: &mut Vec<[f64; 2]>,
    simd: Simd,
) {
    counts.clear();
    ders.clear();
    for chunk in xs.chunks(LANES) {
        let mut x = [chunk.last().copied().unwrap_or(0.0); LANES];
        x[..chunk.len()].copy_from_slice(chunk);
        let (c, g, h) = sturm_lanes(d, e2, pivmin, &x, simd);
        counts.extend_from_slice(&c[..chunk.len()]);
        ders.extend(g.iter().zip(&h).take(chunk.len()).map(|(&g, &h)| [g, h]));
    }
}

type SturmOut = ([usize; LANES], [f64; LANES], [f64; LANES]);

fn sturm_lanes(d: &[f64], e2: &[f64], pivmin: f64, x: &[f64; LANES], simd: Simd) -> SturmOut {
    #[cfg(target_arch = "x86_64")]
    if simd.avx2 {
        // SAFETY: AVX2 support was detected at run time (`Simd::detect`).
        return unsafe { sturm_lanes_avx2(d, e2, pivmin, x) };
    }
    let _ = simd;
    sturm_lanes_impl(d, e2, pivmin, x)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sturm_lanes_avx2(d: &[f64], e2: &[f64], pivmin: f64, x: &[f64; LANES]) -> SturmOut {
    sturm_lanes_impl(d, e2, pivmin, x)
}

/// One pass of the LDLᵀ recurrence of T − xI for `LANES` shifts at once:
/// p_0 = d_0 − x, p_i = d_i − x − e²_{i−1}/p_{i−1}; the number of negative pivots is the number
/// of eigenvalues below x. A pivot smaller than pivmin in magnitude is replaced by −pivmin
/// (dlaebz). Alongside, for Laguerre: det(T − xI) = Π p_i, and the differentiated recurrence
/// gives p_i', p_i'', hence G = Σ p_i'/p_i = Σ_j 1/(x − λ_j) and
/// H = Σ (p_i'/p_i)² − p_i''/p_i = Σ_j 1/(x − λ_j)². Overflow there (tiny pivots) only makes
/// G, H inf or NaN, which `next_point` rejects; the counts do not depend on them.
#[inline(always)]
fn sturm_lanes_impl(d: &[f64], e2: &[f64], pivmin: f64, x: &[f64; LANES]) -> SturmOut {
    let mut cnt = [0usize; LANES];
    let mut g = [0.0f64; LANES];
    let mut h = [0.0f64; LANES];
    let Some((&d0, rest)) = d.split_first() else {
        return (cnt, g, h);
    };
    let mut p = [0.0f64; LANES];
    let mut dp = [-1.0f64; LANES];
    let mut ddp = [0.0f64; LANES];
    for l in 0..LANES {
        let q = d0 - x[l];
        let q = if q.abs() < pivmin { -pivmin } else { q };
        cnt[l] += (q < 0.0) as usize;
        p[l] = q;
    }
    for (&di, &e2i) in rest.iter().zip(e2) {
        for l in 0..LANES {
            // r = 1/p_{i−1}, w = p'_{i−1}/p_{i−1}, z = p''_{i−1}/p_{i−1}, t = e²_{i−1}/p_{i−1}
            let r = 1.0 / p[l];
            let w = dp[l] * r;
            let z = ddp[l] * r;
            g[l] += w;
            h[l] += w * w - z;
            let t = e2i * r;
            dp[l] = t * w - 1.0;
            ddp[l] = t * (z - 2.0 * (w * w));
            let q = (di - x[l]) - t;
            let q = if q.abs() < pivmin { -pivmin } else { q };
            cnt[l] += (q < 0.0) as usize;
            p[l] = q;
        }
    }
    for l in 0..LANES {
        let r = 1.0 / p[l];
        let w = dp[l] * r;
        g[l] += w;
        h[l] += w * w - ddp[l] * r;
    }
    (cnt, g, h)
}

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
struct Workspace {
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

/// A fixed-seed 64-bit LCG (Knuth's MMIX constants) for inverse iteration's start vectors.
struct Lcg(u64);

impl Lcg {
    fn new(seed: u64) -> Self {
        // splitmix64's finalizer, so that nearby seeds start unrelated sequences.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Lcg(z ^ (z >> 31))
    }

    /// Uniform in [-1, 1).
    #[inline(always)]
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 11) as f64) * (2.0 / (1u64 << 53) as f64) - 1.0
    }
}

/// Eigenvectors of one block (rows `start..start + d.len()` of the n × k output) for its
/// selected eigenvalues `lams` (descending), written to columns `cols`.
#[allow(clippy::too_many_arguments)]
fn block_vectors(
    d: &[f64],
    e: &[f64],
    lams: &[f64],
    cols: &[usize],
    n: usize,
    start: usize,
    vecs: &mut [f64],
    ws: &mut Workspace,
    simd: Simd,
) -> Result<(), TridiagEigenError> {
    #[cfg(target_arch = "x86_64")]
    if simd.avx2 {
        // SAFETY: AVX2 support was detected at run time (`Simd::detect`).
        return unsafe { block_vectors_avx2(d, e, lams, cols, n, start, vecs, ws) };
    }
    let _ = simd;
    block_vectors_impl(d, e, lams, cols, n, start, vecs, ws)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_vectors_avx2(
    d: &[f64],
    e: &[f64],
    lams: &[f64],
    cols: &[usize],
    n: usize,
    start: usize,
    vecs: &mut [f64],
    ws: &mut Workspace,
) -> Result<(), TridiagEigenError> {
    block_vectors_impl(d, e, lams, cols, n, start, vecs, ws)
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
        let mut rngs: [Lcg; G] =
            std::array::from_fn(|l| Lcg::new(((start as u64) << 32) ^ (g0 + l) as u64));
        for r in ws.x.iter_mut() {
            for (v, rng) in r.iter_mut().zip(rngs.iter_mut()) {
                *v = rng.next();
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
                        r[l] = rng.next();
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

/// The symmetric tridiagonal matrix with diagonal `d` and off-diagonal `e`, dense (tests).
#[cfg(test)]
pub(crate) fn dense(d: &[f64], e: &[f64]) -> faer::Mat<f64> {
    let n = d.len();
    faer::Mat::from_fn(n, n, |i, j| {
        if i == j {
            d[i]
        } else if i == j + 1 {
            e[j]
        } else if j == i + 1 {
            e[i]
        } else {
            0.0
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Side;

    /// Deterministic uniform numbers in [-1, 1) for test matrices (independent of `Lcg`'s
    /// seeding so that the tests do not share the solver's start vectors).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 11) as f64) / (1u64 << 52) as f64 - 1.0
        }
    }

    fn random_tridiag(n: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let mut r = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
        let d = (0..n).map(|_| r.next()).collect();
        let e = (0..n.saturating_sub(1)).map(|_| r.next()).collect();
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
            let n = 1 + (r.next().abs() * 150.0) as usize;
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
            let n = 1 + (r.next().abs() * 700.0) as usize;
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

    #[test]
    fn simd_builds_agree_bitwise() {
        // The AVX2 build must do the same operations in the same order as the baseline.
        let simd = Simd::detect();
        if !simd.avx2 {
            return;
        }
        let (dw, ew) = wilkinson_plus(10);
        let (dr, er) = random_tridiag(300, 21);
        for (d, e, k) in [(&dw, &ew, 7), (&dr, &er, 40), (&dr, &er, 300)] {
            let n = d.len();
            let mut v1 = vec![0.0; n * k];
            let mut v2 = vec![0.0; n * k];
            let l1 = top_k_with(d, e, k, &mut v1, Simd { avx2: false }).unwrap();
            let l2 = top_k_with(d, e, k, &mut v2, simd).unwrap();
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&l1), bits(&l2));
            assert_eq!(bits(&v1), bits(&v2));
        }
    }

    /// `cargo test --release -p rankwise-core tridiag_eigen::tests::timing -- --ignored
    /// --nocapture`
    #[test]
    #[ignore]
    fn timing() {
        for (n, k) in [(512usize, 16usize), (4096, 64)] {
            let (d, e) = random_tridiag(n, 9);
            // A decaying spectrum like a Gram matrix's (eigenvalues near 1/j): its top
            // eigenvalues chain into one dstein cluster, the expensive case.
            let dg: Vec<f64> = (0..n).map(|i| 1.0 / (1.0 + i as f64)).collect();
            let eg: Vec<f64> = (0..n - 1).map(|i| 0.3 / (1.0 + i as f64)).collect();
            for (name, d, e) in [("random", &d, &e), ("decaying", &dg, &eg)] {
                for simd in [Simd { avx2: false }, Simd::detect()] {
                    let mut v = vec![0.0; n * k];
                    let reps = if n <= 512 { 400 } else { 40 };
                    let _ = top_k_with(d, e, k, &mut v, simd).unwrap();
                    let t0 = std::time::Instant::now();
                    for _ in 0..reps {
                        let _ = top_k_with(d, e, k, &mut v, simd).unwrap();
                    }
                    let dt = t0.elapsed().as_secs_f64() / reps as f64;
                    println!(
                        "{name:>9} n={n:5} k={k:3} avx2={:5}: {:7.3} ms",
                        simd.avx2,
                        dt * 1e3
                    );
                }
            }
        }
    }
}
