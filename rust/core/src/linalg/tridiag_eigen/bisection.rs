//! The top eigenvalues of one unreduced tridiagonal block, by bisection on Sturm counts.
//!
//! Brackets are refined in rounds, and every round evaluates all brackets' trial points in one
//! pass over the block, `LANES` points side by side, so that the divisions of independent
//! Sturm sequences overlap. A bracket holding several eigenvalues is multisected. A bracket
//! holding one eigenvalue takes Laguerre steps on det(T − xI) (the same pass yields the
//! logarithmic derivatives) and falls back to bisection when they do not help. Every result is
//! bracketed by Sturm counts to the same tolerance as plain bisection, in far fewer passes
//! (about 8 per eigenvalue instead of 50).

use super::{TridiagEigenError, ULP};
use crate::simd::{Dispatch, Kernel, Lanes, Level};

/// Trial points evaluated together in one Sturm pass.
const LANES: usize = 8;
/// Refinement rounds of one block: bisection alone takes at most ~2100 (from the largest float
/// to the smallest), so this only keeps a bug from looping forever.
const MAX_ROUNDS: usize = 8192;
/// Laguerre steps on one isolated eigenvalue before multisection takes over (Laguerre
/// converges cubically, typically in 3 to 5 steps; more means rounding noise, near zero).
const MAX_LAGUERRE: u32 = 12;

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
pub(super) struct BisectWs {
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
pub(super) fn block_eigenvalues(
    d: &[f64],
    e: &[f64],
    e2: &[f64],
    pivmin: f64,
    m: usize,
    out: &mut Vec<f64>,
    ws: &mut BisectWs,
    level: Level,
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
        sturm_points(d, e2, pivmin, xs, counts, ders, level);

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
    level: Level,
) {
    counts.clear();
    ders.clear();
    for chunk in xs.chunks(LANES) {
        let mut x = [chunk.last().copied().unwrap_or(0.0); LANES];
        x[..chunk.len()].copy_from_slice(chunk);
        let (c, g, h) = sturm_lanes(d, e2, pivmin, &x, level);
        counts.extend_from_slice(&c[..chunk.len()]);
        ders.extend(g.iter().zip(&h).take(chunk.len()).map(|(&g, &h)| [g, h]));
    }
}

type SturmOut = ([usize; LANES], [f64; LANES], [f64; LANES]);

/// `sturm_lanes_impl` in the build of `level` (the token only picks the build).
fn sturm_lanes(d: &[f64], e2: &[f64], pivmin: f64, x: &[f64; LANES], level: Level) -> SturmOut {
    struct Sturm<'a>(&'a [f64], &'a [f64], f64, &'a [f64; LANES]);
    impl Kernel<f64> for Sturm<'_> {
        type Output = SturmOut;
        #[inline(always)]
        fn run<S: Lanes<f64>>(self, _: S) -> SturmOut {
            sturm_lanes_impl(self.0, self.1, self.2, self.3)
        }
    }
    f64::dispatch(level, Sturm(d, e2, pivmin, x))
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
