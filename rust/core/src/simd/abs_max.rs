//! Per-column largest magnitudes, as bits: `m[j] = max(m[j], bits(row[j]) & 0x7fff_ffff)`.
//! On finite values these bits order like the magnitudes, and they are at least the bits of
//! +inf exactly for inf and NaN, so one pass gives both k-means' finite check and its
//! fixed-point scales. Integer max is exact: every build gives the same bytes.

use super::{by_level, Level};

#[inline]
pub fn abs_max_bits(level: Level, m: &mut [u32], row: &[f32]) {
    by_level!(level, abs_max_bits(m, row))
}

mod portable {
    #[inline(always)]
    pub fn abs_max_bits(m: &mut [u32], row: &[f32]) {
        for (a, &v) in m.iter_mut().zip(row) {
            *a = (*a).max(v.to_bits() & 0x7fff_ffff);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn abs_max_bits(m: &mut [u32], row: &[f32]) {
        super::portable::abs_max_bits(m, row)
    }
}
