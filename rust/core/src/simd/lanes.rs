//! The vector operations the tridiagonal reduction's kernels are written against, one
//! implementation per build. Implementors are zero-sized tokens that exist only where the CPU
//! has the instructions, so that the methods can be safe.
//!
//! The lane layout is the AVX2 one on every build: 8 f32 or 4 f64 lanes, every multiply-add
//! fused, horizontal sums in lane order. [`Scalar`] does exactly that lane by lane (`mul_add`:
//! a hardware FMA where the target has one, else the libm routine, which rounds the same), so
//! its results are the AVX2 build's bytes.

/// The vector operations of one build on one element type.
pub trait Lanes<F: Copy>: Copy {
    type V: Copy;
    /// Lanes per vector.
    const W: usize;
    fn zero(self) -> Self::V;
    fn splat(self, x: F) -> Self::V;
    /// s[i..i + W].
    fn load(self, s: &[F], i: usize) -> Self::V;
    /// s[i..i + W] = v.
    fn store(self, s: &mut [F], i: usize, v: Self::V);
    /// Lanes lo..hi (lo ≤ hi ≤ W) of s[i..i + W], zeros elsewhere; s[i..i + lo] is not read
    /// and need not exist. Masked loads serve the kernels' ends, which scalar code would make
    /// as slow as their bodies at a few hundred rows.
    fn load_range(self, s: &[F], i: usize, lo: usize, hi: usize) -> Self::V;
    /// s[i..i + len], len ≤ W, in the low lanes.
    #[inline(always)]
    fn load_part(self, s: &[F], i: usize, len: usize) -> Self::V {
        self.load_range(s, i, 0, len)
    }
    /// s[i..i + len] = the low len lanes of v, for len ≤ W.
    fn store_part(self, s: &mut [F], i: usize, len: usize, v: Self::V);
    /// a·b + c, fused.
    fn fmadd(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// The lanes' sum, in lane order.
    fn hsum(self, v: Self::V) -> F;
    /// The scalar a·b + c, fused.
    fn madd(self, a: F, b: F, c: F) -> F;
}

/// The portable build: the AVX2 lane layout in arrays, lane by lane.
#[derive(Clone, Copy, Debug)]
pub struct Scalar;

macro_rules! scalar_impl {
    ($f:ty, $w:literal) => {
        impl Lanes<$f> for Scalar {
            type V = [$f; $w];
            const W: usize = $w;
            #[inline(always)]
            fn zero(self) -> Self::V {
                [0.0; $w]
            }
            #[inline(always)]
            fn splat(self, x: $f) -> Self::V {
                [x; $w]
            }
            #[inline(always)]
            fn load(self, s: &[$f], i: usize) -> Self::V {
                let mut v = [0.0; $w];
                v.copy_from_slice(&s[i..i + $w]);
                v
            }
            #[inline(always)]
            fn store(self, s: &mut [$f], i: usize, v: Self::V) {
                s[i..i + $w].copy_from_slice(&v);
            }
            #[inline(always)]
            fn load_range(self, s: &[$f], i: usize, lo: usize, hi: usize) -> Self::V {
                let mut v = [0.0; $w];
                v[lo..hi].copy_from_slice(&s[i + lo..i + hi]);
                v
            }
            #[inline(always)]
            fn store_part(self, s: &mut [$f], i: usize, len: usize, v: Self::V) {
                s[i..i + len].copy_from_slice(&v[..len]);
            }
            #[inline(always)]
            fn fmadd(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
                std::array::from_fn(|l| a[l].mul_add(b[l], c[l]))
            }
            #[inline(always)]
            fn add(self, a: Self::V, b: Self::V) -> Self::V {
                std::array::from_fn(|l| a[l] + b[l])
            }
            #[inline(always)]
            fn hsum(self, v: Self::V) -> $f {
                // The AVX2 build's order (its vector stored, then summed like this).
                v.iter().sum::<$f>()
            }
            #[inline(always)]
            fn madd(self, a: $f, b: $f, c: $f) -> $f {
                a.mul_add(b, c)
            }
        }
    };
}
scalar_impl!(f32, 8);
scalar_impl!(f64, 4);

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::avx2_token_unchecked;
#[cfg(target_arch = "x86_64")]
pub use x86::Avx2;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Lanes;

    /// AVX2 and FMA.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx2(());

    impl Avx2 {
        /// The token, where the CPU has AVX2 and FMA.
        pub fn new() -> Option<Self> {
            let yes = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            yes.then_some(Avx2(()))
        }
    }

    /// The token without the check, for a caller that holds the proof (a [`super::super::Level`]
    /// made by detection).
    #[inline(always)]
    pub(crate) fn avx2_token_unchecked() -> Avx2 {
        Avx2(())
    }

    macro_rules! avx2_impl {
        ($f:ty, $v:ty, $w:literal, $zero:ident, $set1:ident, $loadu:ident, $storeu:ident,
         $fmadd:ident, $add:ident, $load_range:expr, $store_part:expr) => {
            // SAFETY (every unsafe block): a token exists only where the CPU has AVX2 and FMA,
            // and `load`/`store` take in-bounds subslices of W elements.
            impl Lanes<$f> for Avx2 {
                type V = $v;
                const W: usize = $w;
                #[inline(always)]
                fn zero(self) -> $v {
                    unsafe { $zero() }
                }
                #[inline(always)]
                fn splat(self, x: $f) -> $v {
                    unsafe { $set1(x) }
                }
                #[inline(always)]
                fn load(self, s: &[$f], i: usize) -> $v {
                    let s = &s[i..i + $w];
                    unsafe { $loadu(s.as_ptr()) }
                }
                #[inline(always)]
                fn store(self, s: &mut [$f], i: usize, v: $v) {
                    let s = &mut s[i..i + $w];
                    unsafe { $storeu(s.as_mut_ptr(), v) }
                }
                #[inline(always)]
                fn load_range(self, s: &[$f], i: usize, lo: usize, hi: usize) -> $v {
                    assert!(lo <= hi && hi <= $w && i + hi <= s.len());
                    // Only lanes lo..hi are read: inside s.
                    unsafe { $load_range(s.as_ptr().add(i), lo, hi) }
                }
                #[inline(always)]
                fn store_part(self, s: &mut [$f], i: usize, len: usize, v: $v) {
                    debug_assert!(len <= $w);
                    let s = &mut s[i..i + len];
                    unsafe { $store_part(s.as_mut_ptr(), len, v) }
                }
                #[inline(always)]
                fn fmadd(self, a: $v, b: $v, c: $v) -> $v {
                    unsafe { $fmadd(a, b, c) }
                }
                #[inline(always)]
                fn add(self, a: $v, b: $v) -> $v {
                    unsafe { $add(a, b) }
                }
                #[inline(always)]
                fn hsum(self, v: $v) -> $f {
                    // Through memory (once per kernel call), in lane order like `Scalar`.
                    let mut a = [0.0 as $f; $w];
                    self.store(&mut a, 0, v);
                    a.iter().sum::<$f>()
                }
                #[inline(always)]
                fn madd(self, a: $f, b: $f, c: $f) -> $f {
                    a.mul_add(b, c)
                }
            }
        };
    }

    /// The AVX2 mask of 32-bit lanes lo..hi.
    #[inline(always)]
    unsafe fn mask32(lo: usize, hi: usize) -> __m256i {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_and_si256(
            _mm256_cmpgt_epi32(_mm256_set1_epi32(hi as i32), lane),
            _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(lo as i32 - 1)),
        )
    }

    /// The AVX2 mask of 64-bit lanes lo..hi.
    #[inline(always)]
    unsafe fn mask64(lo: usize, hi: usize) -> __m256i {
        let lane = _mm256_setr_epi64x(0, 1, 2, 3);
        _mm256_and_si256(
            _mm256_cmpgt_epi64(_mm256_set1_epi64x(hi as i64), lane),
            _mm256_cmpgt_epi64(lane, _mm256_set1_epi64x(lo as i64 - 1)),
        )
    }

    avx2_impl!(
        f32,
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        |p, lo: usize, hi: usize| _mm256_maskload_ps(p, mask32(lo, hi)),
        |p, len: usize, v| _mm256_maskstore_ps(p, mask32(0, len), v)
    );
    avx2_impl!(
        f64,
        __m256d,
        4,
        _mm256_setzero_pd,
        _mm256_set1_pd,
        _mm256_loadu_pd,
        _mm256_storeu_pd,
        _mm256_fmadd_pd,
        _mm256_add_pd,
        |p, lo: usize, hi: usize| _mm256_maskload_pd(p, mask64(lo, hi)),
        |p, len: usize, v| _mm256_maskstore_pd(p, mask64(0, len), v)
    );
}
