//! Exact column sums of selected rows in 64-bit fixed point (k-means' centres, see
//! `kmeans::exact_sums` for the scheme): `acc[f] += Σ_{r in rows} fixed(xb[r·d + f]·scale[f])`,
//! wrapping. Each value is scaled by a power of two (exact), rounded once to an integer by the
//! magic-number addition below, and its bits added as an i64: integer addition is associative,
//! so the sums are the same bytes in any order, on any build.

use super::{by_level, Level};

/// `1.5·2^52`: for |v| < 2^51, the bits of `v + MAGIC` are `bits(MAGIC) + round(v)`.
pub const MAGIC: f64 = 6_755_399_441_055_744.0;

/// `acc[f] += Σ_{r in rows} bits(xb[r·d + f]·scale[f] + MAGIC)`, wrapping, for f < d.
///
/// # Panics
/// Unless `acc` and `scale` have length d and every row `r` lies inside `xb`.
#[inline]
pub fn fx_accumulate(
    level: Level,
    acc: &mut [i64],
    xb: &[f32],
    d: usize,
    rows: &[u32],
    scale: &[f64],
) {
    assert!(acc.len() == d && scale.len() == d);
    assert!(rows.iter().all(|&r| (r as usize + 1) * d <= xb.len()));
    by_level!(level, fx_accumulate(acc, xb, d, rows, scale))
}

mod portable {
    use super::MAGIC;

    #[inline(always)]
    pub fn fx_accumulate(acc: &mut [i64], xb: &[f32], d: usize, rows: &[u32], scale: &[f64]) {
        columns(acc, xb, d, rows, scale, 0)
    }

    /// Columns `from..d` of [`super::fx_accumulate`].
    #[inline(always)]
    pub fn columns(
        acc: &mut [i64],
        xb: &[f32],
        d: usize,
        rows: &[u32],
        scale: &[f64],
        from: usize,
    ) {
        for f in from..d {
            let mut t = 0i64;
            for &r in rows {
                let v = xb[r as usize * d + f] as f64 * scale[f] + MAGIC;
                t = t.wrapping_add(v.to_bits() as i64);
            }
            acc[f] = acc[f].wrapping_add(t);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::MAGIC;
    use std::arch::x86_64::*;

    /// 16 columns at a time: 4×4 f64 lanes of scale and of running sums stay in registers
    /// while the cluster's rows stream by. Same arithmetic as the portable build (the product
    /// by a power of two is exact, so mul-then-add rounds once, like the scalar code).
    ///
    /// # Safety
    /// AVX2 must be available; `acc` and `scale` have length d and every `(r+1)·d <= xb.len()`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn fx_accumulate(
        acc: &mut [i64],
        xb: &[f32],
        d: usize,
        rows: &[u32],
        scale: &[f64],
    ) {
        let magic = _mm256_set1_pd(MAGIC);
        let d16 = d / 16 * 16;
        let (xp, sp, ap) = (xb.as_ptr(), scale.as_ptr(), acc.as_mut_ptr());
        let mut c = 0;
        while c < d16 {
            let s0 = _mm256_loadu_pd(sp.add(c));
            let s1 = _mm256_loadu_pd(sp.add(c + 4));
            let s2 = _mm256_loadu_pd(sp.add(c + 8));
            let s3 = _mm256_loadu_pd(sp.add(c + 12));
            let mut a0 = _mm256_setzero_si256();
            let mut a1 = _mm256_setzero_si256();
            let mut a2 = _mm256_setzero_si256();
            let mut a3 = _mm256_setzero_si256();
            for &r in rows {
                let p = xp.add(r as usize * d + c);
                let y0 = _mm256_add_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(p)), s0), magic);
                let y1 = _mm256_add_pd(
                    _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(p.add(4))), s1),
                    magic,
                );
                let y2 = _mm256_add_pd(
                    _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(p.add(8))), s2),
                    magic,
                );
                let y3 = _mm256_add_pd(
                    _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(p.add(12))), s3),
                    magic,
                );
                a0 = _mm256_add_epi64(a0, _mm256_castpd_si256(y0));
                a1 = _mm256_add_epi64(a1, _mm256_castpd_si256(y1));
                a2 = _mm256_add_epi64(a2, _mm256_castpd_si256(y2));
                a3 = _mm256_add_epi64(a3, _mm256_castpd_si256(y3));
            }
            let q = ap.add(c) as *mut __m256i;
            _mm256_storeu_si256(q, _mm256_add_epi64(_mm256_loadu_si256(q), a0));
            _mm256_storeu_si256(q.add(1), _mm256_add_epi64(_mm256_loadu_si256(q.add(1)), a1));
            _mm256_storeu_si256(q.add(2), _mm256_add_epi64(_mm256_loadu_si256(q.add(2)), a2));
            _mm256_storeu_si256(q.add(3), _mm256_add_epi64(_mm256_loadu_si256(q.add(3)), a3));
            c += 16;
        }
        super::portable::columns(acc, xb, d, rows, scale, d16)
    }
}
