//! Sums of squares of f32 vectors in f64: `Σ v²`, `‖a − b‖²` and `‖a + b‖²` (the k-means
//! distances, unit norms). Eight interleaved partial sums combined pairwise, plus the tail: a
//! fixed order and no FMA, so the AVX2 build (the same source compiled with AVX2, which
//! vectorizes the lanes) gives the scalar build's bytes.

use super::{by_level, Level};

/// `Σ v²`.
#[inline]
pub fn sq_norm(level: Level, a: &[f32]) -> f64 {
    by_level!(level, sq_norm(a))
}

/// `‖a − b‖²` over the shorter length.
#[inline]
pub fn sq_dist(level: Level, a: &[f32], b: &[f32]) -> f64 {
    by_level!(level, sq_dist(a, b))
}

/// `‖a + b‖²` over the shorter length.
#[inline]
pub fn sq_sum(level: Level, a: &[f32], b: &[f32]) -> f64 {
    by_level!(level, sq_sum(a, b))
}

/// `‖a − b‖²`, or `‖a + b‖²` when `neg` (the distance to `−b`).
#[inline]
pub fn sq_dist_signed(level: Level, a: &[f32], b: &[f32], neg: bool) -> f64 {
    if neg {
        sq_sum(level, a, b)
    } else {
        sq_dist(level, a, b)
    }
}

mod portable {
    /// Eight interleaved f64 partial sums, combined pairwise: a fixed order.
    #[inline(always)]
    fn sum8(acc: [f64; 8], tail: f64) -> f64 {
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
    }

    /// `Σ_l f(a_l, b_l)²` in the fixed order.
    #[inline(always)]
    fn sum_sq(a: &[f32], b: &[f32], f: impl Fn(f64, f64) -> f64) -> f64 {
        let mut acc = [0f64; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for l in 0..8 {
                let t = f(x[l] as f64, y[l] as f64);
                acc[l] += t * t;
            }
        }
        let mut tail = 0f64;
        for (&x, &y) in ra.iter().zip(rb) {
            let t = f(x as f64, y as f64);
            tail += t * t;
        }
        sum8(acc, tail)
    }

    #[inline(always)]
    pub fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
        sum_sq(a, b, |x, y| x - y)
    }

    #[inline(always)]
    pub fn sq_sum(a: &[f32], b: &[f32]) -> f64 {
        sum_sq(a, b, |x, y| x + y)
    }

    #[inline(always)]
    pub fn sq_norm(a: &[f32]) -> f64 {
        let mut acc = [0f64; 8];
        let ca = a.chunks_exact(8);
        let ra = ca.remainder();
        for x in ca {
            for l in 0..8 {
                let t = x[l] as f64;
                acc[l] += t * t;
            }
        }
        let mut tail = 0f64;
        for &x in ra {
            tail += x as f64 * x as f64;
        }
        sum8(acc, tail)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    /// # Safety
    /// The CPU must support AVX2 (all three below).
    #[target_feature(enable = "avx2")]
    pub unsafe fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
        super::portable::sq_dist(a, b)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn sq_sum(a: &[f32], b: &[f32]) -> f64 {
        super::portable::sq_sum(a, b)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn sq_norm(a: &[f32]) -> f64 {
        super::portable::sq_norm(a)
    }
}
