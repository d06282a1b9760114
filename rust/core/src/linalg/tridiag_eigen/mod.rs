//! The k largest eigenpairs of a real symmetric tridiagonal matrix in O(n·k): bisection on
//! Sturm counts for the eigenvalues (LAPACK dstebz / dlaebz, [`bisection`]) and inverse
//! iteration for the eigenvectors (LAPACK dstein, with dlagtf / dlagts's pivoted tridiagonal
//! LU, [`inverse_iteration`]). The low-rank svd calls it after the tridiagonal reduction, when
//! only the top k of n eigenpairs are wanted.
//!
//! The matrix splits where an off-diagonal entry is negligible; each block is searched for its
//! own top min(k, n_b) eigenvalues and the k largest of them all win; then each block's vectors
//! are found for its winners.
//!
//! The output is a pure function of the input: one thread, a fixed-seed generator for the
//! start vectors, and the AVX2 build of the loops does the same operations in the same order
//! as the scalar one (no FMA contraction, no reassociation), hence gives the same bytes.

mod bisection;
mod inverse_iteration;
#[cfg(test)]
mod tests;

use crate::simd::Level;
use bisection::{block_eigenvalues, BisectWs};
use inverse_iteration::{block_vectors, Workspace};

/// Unit roundoff times 2 (LAPACK's dlamch('P')).
const ULP: f64 = f64::EPSILON;
/// Smallest positive normal number (dlamch('S')).
const SAFMIN: f64 = f64::MIN_POSITIVE;

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
pub fn top_k(
    d: &[f64],
    e: &[f64],
    k: usize,
    vecs: &mut [f64],
) -> Result<Vec<f64>, TridiagEigenError> {
    top_k_with(d, e, k, vecs, Level::detect())
}

/// `top_k` with the loops built for `level` (for the tests and benches of the builds).
pub fn top_k_with(
    d: &[f64],
    e: &[f64],
    k: usize,
    vecs: &mut [f64],
    level: Level,
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
            block_eigenvalues(
                db,
                eb,
                e2b,
                pivmin,
                k.min(t - s),
                &mut vals,
                &mut bws,
                level,
            )?;
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
        block_vectors(db, eb, &lams, &cols, n, s, vecs, &mut ws, level)?;
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
