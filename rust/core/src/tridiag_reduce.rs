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
//! once per panel by the rank-2·NB product `A22 −= V·Wᵀ + W·Vᵀ` in faer's GEMM kernels.
//!
//! The vector kernels are written with independent accumulators so that they vectorize, and
//! compiled three times: for AVX-512, for AVX2 with FMA and for the baseline, picked at run
//! time (the crate is built for baseline x86-64). Sums are accumulated in the working precision,
//! like LAPACK; only the reflectors' norms, β and τ are formed in f64 (scaled, so that entries
//! near the ends of the exponent range neither overflow nor underflow).

use std::any::TypeId;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
use faer::reborrow::ReborrowMut;
use faer::{Accum, MatMut, MatRef, Par};

use crate::lowrank_svd::Real;

/// Panel width: columns reduced between two updates of the trailing matrix. The per-column
/// corrections grow with it and the GEMM's efficiency with it: measured (n = 128..1024, Zen 5)
/// 8 to 20 within noise of each other, 24 and more slower.
const NB: usize = 16;
/// Trailing sizes up to this are reduced unblocked (n ≤ 64: all of it; 32 to 128 measured
/// within noise).
const NX: usize = 64;

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
    let isa = Isa::detect();
    if let (Some(a), Some(tau)) = (cast_mut::<T, f32>(a), cast_mut::<T, f32>(tau)) {
        reduce_with(isa, NB, NX, a, n, diag, off, tau);
    } else if let (Some(a), Some(tau)) = (cast_mut::<T, f64>(a), cast_mut::<T, f64>(tau)) {
        reduce_with(isa, NB, NX, a, n, diag, off, tau);
    } else {
        unreachable!("Real is implemented for f32 and f64 only");
    }
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
    let isa = Isa::detect();
    if let (Some(a), Some(tau), Some(z)) = (
        cast_ref::<T, f32>(a),
        cast_ref::<T, f32>(tau),
        cast_mut::<T, f32>(z),
    ) {
        apply_q_with(isa, a, n, tau, z, k);
    } else if let (Some(a), Some(tau), Some(z)) = (
        cast_ref::<T, f64>(a),
        cast_ref::<T, f64>(tau),
        cast_mut::<T, f64>(z),
    ) {
        apply_q_with(isa, a, n, tau, z, k);
    } else {
        unreachable!("Real is implemented for f32 and f64 only");
    }
}

/// `s` as a slice of `U` when `T` is `U` (how the generic entry points reach the concrete
/// kernels: `Real` has no arithmetic of its own that the SIMD builds could use).
fn cast_mut<T: 'static, U: 'static>(s: &mut [T]) -> Option<&mut [U]> {
    if TypeId::of::<T>() == TypeId::of::<U>() {
        // SAFETY: T and U are the same type, so the layout and the lifetime carry over.
        Some(unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<U>(), s.len()) })
    } else {
        None
    }
}

/// `cast_mut` for shared slices.
fn cast_ref<T: 'static, U: 'static>(s: &[T]) -> Option<&[U]> {
    if TypeId::of::<T>() == TypeId::of::<U>() {
        // SAFETY: T and U are the same type.
        Some(unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<U>(), s.len()) })
    } else {
        None
    }
}

/// The element types of the kernels: f32 and f64 with the operations they need.
trait Elem:
    faer::traits::ComplexField
    + Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Send
    + Sync
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// Smallest positive normal number.
    const TINY: Self;
    /// Machine epsilon.
    const EPS: Self;
    /// The AVX-512 and the AVX2 kernels for this type.
    #[cfg(target_arch = "x86_64")]
    type Avx512: Simd<Self>;
    #[cfg(target_arch = "x86_64")]
    type Avx2: Simd<Self>;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn finite(self) -> bool;
    /// a·b + c, fused.
    fn fused(a: Self, b: Self, c: Self) -> Self;
}

macro_rules! impl_elem {
    ($f:ident) => {
        impl Elem for $f {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const TINY: Self = $f::MIN_POSITIVE;
            const EPS: Self = $f::EPSILON;
            #[cfg(target_arch = "x86_64")]
            type Avx512 = x86::Avx512;
            #[cfg(target_arch = "x86_64")]
            type Avx2 = x86::Avx2;
            fn from_f64(x: f64) -> Self {
                x as $f
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn finite(self) -> bool {
                self.is_finite()
            }
            #[inline(always)]
            fn fused(a: Self, b: Self, c: Self) -> Self {
                a.mul_add(b, c)
            }
        }
    };
}
impl_elem!(f32);
impl_elem!(f64);

/// The vector operations of one instruction set on one element type. Implementors are
/// zero-sized tokens that exist only where the CPU has the instructions (`detect`), so that
/// the methods can be safe; the kernels below are written once against this trait and
/// compiled into functions with the matching `target_feature`s.
trait Simd<F: Copy>: Copy {
    type V: Copy;
    /// Lanes per vector.
    const W: usize;
    /// Whether the scalar a·b + c (`madd`) is fused.
    const FMA: bool;
    fn detect() -> Option<Self>;
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
    /// a·b + c.
    fn fmadd(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn hsum(self, v: Self::V) -> F;
}

/// Scalar a·b + c: fused where the build has FMA (`mul_add` without it is a slow library call,
/// and Rust never contracts a·b + c by itself).
#[inline(always)]
fn madd<F: Elem, S: Simd<F>>(a: F, b: F, c: F) -> F {
    if S::FMA {
        F::fused(a, b, c)
    } else {
        a * b + c
    }
}

/// The portable build: four lanes in an array (SSE2 after autovectorization).
#[derive(Clone, Copy)]
struct Scalar;

impl<F: Elem> Simd<F> for Scalar {
    type V = [F; 4];
    const W: usize = 4;
    const FMA: bool = false;
    fn detect() -> Option<Self> {
        Some(Scalar)
    }
    #[inline(always)]
    fn zero(self) -> [F; 4] {
        [F::ZERO; 4]
    }
    #[inline(always)]
    fn splat(self, x: F) -> [F; 4] {
        [x; 4]
    }
    #[inline(always)]
    fn load(self, s: &[F], i: usize) -> [F; 4] {
        s[i..i + 4].try_into().unwrap()
    }
    #[inline(always)]
    fn store(self, s: &mut [F], i: usize, v: [F; 4]) {
        s[i..i + 4].copy_from_slice(&v);
    }
    #[inline(always)]
    fn load_range(self, s: &[F], i: usize, lo: usize, hi: usize) -> [F; 4] {
        let mut v = [F::ZERO; 4];
        v[lo..hi].copy_from_slice(&s[i + lo..i + hi]);
        v
    }
    #[inline(always)]
    fn store_part(self, s: &mut [F], i: usize, len: usize, v: [F; 4]) {
        s[i..i + len].copy_from_slice(&v[..len]);
    }
    #[inline(always)]
    fn fmadd(self, a: [F; 4], b: [F; 4], c: [F; 4]) -> [F; 4] {
        [0, 1, 2, 3].map(|l| a[l] * b[l] + c[l])
    }
    #[inline(always)]
    fn add(self, a: [F; 4], b: [F; 4]) -> [F; 4] {
        [0, 1, 2, 3].map(|l| a[l] + b[l])
    }
    #[inline(always)]
    fn hsum(self, v: [F; 4]) -> F {
        (v[0] + v[2]) + (v[1] + v[3])
    }
}

// The AVX-512 intrinsics (and `target_feature(enable = "avx512f")`) are stable since Rust
// 1.89, the workspace's rust-version.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Simd;

    /// AVX-512F (with AVX2 and FMA for the scalar code around the kernels).
    #[derive(Clone, Copy)]
    pub(super) struct Avx512(());
    /// AVX2 and FMA.
    #[derive(Clone, Copy)]
    pub(super) struct Avx2(());

    macro_rules! simd_impl {
        ($tok:ident, $feat:literal, $f:ty, $v:ty, $w:literal, $zero:ident, $set1:ident,
         $loadu:ident, $storeu:ident, $fmadd:ident, $add:ident, $hsum:expr,
         $load_range:expr, $store_part:expr) => {
            // SAFETY (every unsafe block): a token exists only where `detect` found the
            // features, and `load`/`store` take in-bounds subslices of W elements.
            impl Simd<$f> for $tok {
                type V = $v;
                const W: usize = $w;
                const FMA: bool = true;
                fn detect() -> Option<Self> {
                    let yes = std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                        && ($feat == "avx2" || std::arch::is_x86_feature_detected!("avx512f"));
                    yes.then_some($tok(()))
                }
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
                    unsafe { $hsum(v) }
                }
            }
        };
    }

    /// The AVX-512 mask of lanes lo..hi (hi ≤ 16).
    #[inline(always)]
    fn mask512(lo: usize, hi: usize) -> u32 {
        ((1u32 << hi) - 1) & !((1u32 << lo) - 1)
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

    /// Sum of the lanes of a 256-bit vector (through memory: only once per kernel call).
    macro_rules! hsum256 {
        ($f:ty, $n:literal, $storeu:ident) => {
            |v| {
                let mut a = [0.0 as $f; $n];
                $storeu(a.as_mut_ptr(), v);
                a.iter().sum::<$f>()
            }
        };
    }

    simd_impl!(
        Avx512,
        "avx512f",
        f32,
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_reduce_add_ps,
        |p, lo: usize, hi: usize| _mm512_maskz_loadu_ps(mask512(lo, hi) as __mmask16, p),
        |p, len: usize, v| _mm512_mask_storeu_ps(p, ((1u32 << len) - 1) as __mmask16, v)
    );
    simd_impl!(
        Avx512,
        "avx512f",
        f64,
        __m512d,
        8,
        _mm512_setzero_pd,
        _mm512_set1_pd,
        _mm512_loadu_pd,
        _mm512_storeu_pd,
        _mm512_fmadd_pd,
        _mm512_add_pd,
        _mm512_reduce_add_pd,
        |p, lo: usize, hi: usize| _mm512_maskz_loadu_pd(mask512(lo, hi) as __mmask8, p),
        |p, len: usize, v| _mm512_mask_storeu_pd(p, ((1u32 << len) - 1) as __mmask8, v)
    );
    simd_impl!(
        Avx2,
        "avx2",
        f32,
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        hsum256!(f32, 8, _mm256_storeu_ps),
        |p, lo: usize, hi: usize| _mm256_maskload_ps(p, mask32(lo, hi)),
        |p, len: usize, v| _mm256_maskstore_ps(p, mask32(0, len), v)
    );
    simd_impl!(
        Avx2,
        "avx2",
        f64,
        __m256d,
        4,
        _mm256_setzero_pd,
        _mm256_set1_pd,
        _mm256_loadu_pd,
        _mm256_storeu_pd,
        _mm256_fmadd_pd,
        _mm256_add_pd,
        hsum256!(f64, 4, _mm256_storeu_pd),
        |p, lo: usize, hi: usize| _mm256_maskload_pd(p, mask64(lo, hi)),
        |p, len: usize, v| _mm256_maskstore_pd(p, mask64(0, len), v)
    );
}

/// Which build of the kernels runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Base,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if <x86::Avx512 as Simd<f32>>::detect().is_some() {
                return Isa::Avx512;
            }
            if <x86::Avx2 as Simd<f32>>::detect().is_some() {
                return Isa::Avx2;
            }
        }
        Isa::Base
    }
}

/// `reduce` on a concrete type, with the kernels of `isa` (the fastest the CPU has at most),
/// panel width `nb` and crossover `nx` (parameters so that the tests and the tuning can vary
/// them).
#[allow(clippy::too_many_arguments)]
fn reduce_with<F: Elem>(
    isa: Isa,
    nb: usize,
    nx: usize,
    a: &mut [F],
    n: usize,
    diag: &mut [f64],
    off: &mut [f64],
    tau: &mut [F],
) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 => {
            let s = F::Avx512::detect().expect("AVX-512F");
            // SAFETY: the token exists, so the CPU has the features.
            return unsafe { reduce_avx512(s, nb, nx, a, n, diag, off, tau) };
        }
        Isa::Avx2 => {
            let s = F::Avx2::detect().expect("AVX2 and FMA");
            // SAFETY: as above.
            return unsafe { reduce_avx2(s, nb, nx, a, n, diag, off, tau) };
        }
        Isa::Base => {}
    }
    let _ = isa;
    reduce_impl(Scalar, nb, nx, a, n, diag, off, tau)
}

/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn reduce_avx512<F: Elem>(
    s: F::Avx512,
    nb: usize,
    nx: usize,
    a: &mut [F],
    n: usize,
    diag: &mut [f64],
    off: &mut [f64],
    tau: &mut [F],
) {
    reduce_impl(s, nb, nx, a, n, diag, off, tau)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn reduce_avx2<F: Elem>(
    s: F::Avx2,
    nb: usize,
    nx: usize,
    a: &mut [F],
    n: usize,
    diag: &mut [f64],
    off: &mut [f64],
    tau: &mut [F],
) {
    reduce_impl(s, nb, nx, a, n, diag, off, tau)
}

/// Panels of `nb` columns while more than `max(nx, nb)` columns remain, then the rest unblocked.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn reduce_impl<F: Elem, S: Simd<F>>(
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
fn panel<F: Elem, S: Simd<F>>(
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
fn rank2k_update<F: Elem>(a: &mut [F], n: usize, k0: usize, nb: usize, w: &[F]) {
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
fn unblocked<F: Elem, S: Simd<F>>(
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
fn reflector<F: Elem, S: Simd<F>>(s: S, alpha: F, x: &mut [F]) -> (f64, F) {
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
fn norm<F: Elem, S: Simd<F>>(s: S, x: &[F]) -> f64 {
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

/// Σ x_i·y_i over x's length, in four vector accumulators (a float reduction does not
/// vectorize as a plain loop: that would reorder the additions).
#[inline(always)]
fn dot<F: Elem, S: Simd<F>>(s: S, x: &[F], y: &[F]) -> F {
    let len = x.len();
    let y = &y[..len];
    let w = S::W;
    let (mut a0, mut a1, mut a2, mut a3) = (s.zero(), s.zero(), s.zero(), s.zero());
    let mut r = 0;
    while r + 4 * w <= len {
        a0 = s.fmadd(s.load(x, r), s.load(y, r), a0);
        a1 = s.fmadd(s.load(x, r + w), s.load(y, r + w), a1);
        a2 = s.fmadd(s.load(x, r + 2 * w), s.load(y, r + 2 * w), a2);
        a3 = s.fmadd(s.load(x, r + 3 * w), s.load(y, r + 3 * w), a3);
        r += 4 * w;
    }
    while r + w <= len {
        a0 = s.fmadd(s.load(x, r), s.load(y, r), a0);
        r += w;
    }
    if r < len {
        let t = len - r;
        a1 = s.fmadd(s.load_part(x, r, t), s.load_part(y, r, t), a1);
    }
    s.hsum(s.add(s.add(a0, a1), s.add(a2, a3)))
}

/// y ← c·y.
#[inline(always)]
fn scale<F: Elem, S: Simd<F>>(s: S, y: &mut [F], c: F) {
    let (len, w) = (y.len(), S::W);
    let (cv, zero) = (s.splat(c), s.zero());
    let mut r = 0;
    while r + w <= len {
        let v = s.fmadd(s.load(y, r), cv, zero);
        s.store(y, r, v);
        r += w;
    }
    if r < len {
        let v = s.fmadd(s.load_part(y, r, len - r), cv, zero);
        s.store_part(y, r, len - r, v);
    }
}

/// y += c·x over y's length.
#[inline(always)]
fn axpy<F: Elem, S: Simd<F>>(s: S, y: &mut [F], c: F, x: &[F]) {
    let (len, w) = (y.len(), S::W);
    let x = &x[..len];
    let cv = s.splat(c);
    let mut r = 0;
    while r + w <= len {
        let v = s.fmadd(s.load(x, r), cv, s.load(y, r));
        s.store(y, r, v);
        r += w;
    }
    if r < len {
        let t = len - r;
        let v = s.fmadd(s.load_part(x, r, t), cv, s.load_part(y, r, t));
        s.store_part(y, r, t, v);
    }
}

/// y −= c1·x1 + c2·x2 over y's length.
#[inline(always)]
fn sub2<F: Elem, S: Simd<F>>(s: S, y: &mut [F], x1: &[F], c1: F, x2: &[F], c2: F) {
    let (len, w) = (y.len(), S::W);
    let (x1, x2) = (&x1[..len], &x2[..len]);
    let (n1, n2) = (-c1, -c2);
    let (v1, v2) = (s.splat(n1), s.splat(n2));
    let mut r = 0;
    while r + w <= len {
        let v = s.fmadd(s.load(x2, r), v2, s.fmadd(s.load(x1, r), v1, s.load(y, r)));
        s.store(y, r, v);
        r += w;
    }
    if r < len {
        let t = len - r;
        let v = s.fmadd(s.load_part(x1, r, t), v1, s.load_part(y, r, t));
        s.store_part(y, r, t, s.fmadd(s.load_part(x2, r, t), v2, v));
    }
}

/// out_q = c_qᵀ·x for N columns as long as x: x is loaded once for all N.
#[inline(always)]
fn dotn<F: Elem, S: Simd<F>, const N: usize>(s: S, c: [&[F]; N], x: &[F]) -> [F; N] {
    let (len, w) = (x.len(), S::W);
    let c = c.map(|c| &c[..len]);
    // Two sets of accumulators, so that N = 2 or 4 chains of fused adds do not wait on their
    // latency.
    let (mut a0, mut a1) = ([s.zero(); N], [s.zero(); N]);
    let mut r = 0;
    while r + 2 * w <= len {
        let (x0, x1) = (s.load(x, r), s.load(x, r + w));
        for q in 0..N {
            a0[q] = s.fmadd(s.load(c[q], r), x0, a0[q]);
            a1[q] = s.fmadd(s.load(c[q], r + w), x1, a1[q]);
        }
        r += 2 * w;
    }
    if r + w <= len {
        let x0 = s.load(x, r);
        for q in 0..N {
            a0[q] = s.fmadd(s.load(c[q], r), x0, a0[q]);
        }
        r += w;
    }
    if r < len {
        let t = len - r;
        let x1 = s.load_part(x, r, t);
        for q in 0..N {
            a1[q] = s.fmadd(s.load_part(c[q], r, t), x1, a1[q]);
        }
    }
    let mut out = [0; N].map(|_| F::ZERO);
    for q in 0..N {
        out[q] = s.hsum(s.add(a0[q], a1[q]));
    }
    out
}

/// y += Σ_q k_q·c_q over y's length, for N columns: y is loaded and stored once for all N.
#[inline(always)]
fn axpyn<F: Elem, S: Simd<F>, const N: usize>(s: S, y: &mut [F], c: [&[F]; N], k: [F; N]) {
    let (len, w) = (y.len(), S::W);
    let c = c.map(|c| &c[..len]);
    let kv = k.map(|k| s.splat(k));
    let mut r = 0;
    while r + w <= len {
        let mut v = s.load(y, r);
        for q in 0..N {
            v = s.fmadd(s.load(c[q], r), kv[q], v);
        }
        s.store(y, r, v);
        r += w;
    }
    if r < len {
        let t = len - r;
        let mut v = s.load_part(y, r, t);
        for q in 0..N {
            v = s.fmadd(s.load_part(c[q], r, t), kv[q], v);
        }
        s.store_part(y, r, t, v);
    }
}

/// Columns per pass of `symv_lower`.
const SYMV_COLS: usize = 4;

/// y += A·x for the symmetric m × m matrix whose lower triangle is at `a` (leading dimension
/// lda). One pass over the triangle, `N` columns at a time: each column adds A[j+1.., j]·x_j
/// into y below it and takes the dot product A[j+1.., j]ᵀ·x for y_j (the upper triangle).
#[inline(always)]
fn symv_lower<F: Elem, S: Simd<F>>(s: S, a: &[F], lda: usize, m: usize, x: &[F], y: &mut [F]) {
    symv_lower_n::<F, S, SYMV_COLS>(s, a, lda, m, x, y)
}

#[inline(always)]
fn symv_lower_n<F: Elem, S: Simd<F>, const N: usize>(
    s: S,
    a: &[F],
    lda: usize,
    m: usize,
    x: &[F],
    y: &mut [F],
) {
    let x = &x[..m];
    let y = &mut y[..m];
    let mut j = 0;
    while j + N <= m && N <= S::W {
        // Columns j..j+N from row j: the kernel skips what is on or above the diagonal.
        let cols: [&[F]; N] = std::array::from_fn(|q| &a[(j + q) * lda + j..(j + q) * lda + m]);
        let xs: [F; N] = std::array::from_fn(|q| x[j + q]);
        let d = dot_axpyn(s, cols, &x[j..], &mut y[j..], xs);
        for q in 0..N {
            y[j + q] += madd::<F, S>(cols[q][q], xs[q], d[q]);
        }
        j += N;
    }
    while j < m {
        let col = &a[j * lda..j * lda + m];
        let (y_hi, y_lo) = y.split_at_mut(j + 1);
        let d = dot(s, &col[j + 1..], &x[j + 1..]);
        axpy(s, y_lo, x[j], &col[j + 1..]);
        y_hi[j] += madd::<F, S>(col[j], x[j], d);
        j += 1;
    }
}

/// For N ≤ W columns c_q as long as x, of which rows 0..=q are not read (taken as zero): y += Σ_q
/// k_q·c_q, and returns c_qᵀ·x. One pass, so x and y are loaded and y stored once for N
/// columns. The sum into y runs in two chains (even and odd q), which halves its latency.
#[inline(always)]
fn dot_axpyn<F: Elem, S: Simd<F>, const N: usize>(
    s: S,
    c: [&[F]; N],
    x: &[F],
    y: &mut [F],
    k: [F; N],
) -> [F; N] {
    let (len, w) = (x.len(), S::W);
    let y = &mut y[..len];
    let c = c.map(|c| &c[..len]);
    let kv = k.map(|k| s.splat(k));
    let mut acc = [s.zero(); N];
    // The first W rows: column q from row q + 1.
    let t = len.min(w);
    let xv = s.load_part(x, 0, t);
    let mut yv = s.load_part(y, 0, t);
    for q in 0..N {
        let v = s.load_range(c[q], 0, (q + 1).min(t), t);
        yv = s.fmadd(v, kv[q], yv);
        acc[q] = s.fmadd(v, xv, acc[q]);
    }
    s.store_part(y, 0, t, yv);
    let mut r = t;
    while r + w <= len {
        let xv = s.load(x, r);
        let (mut ya, mut yb) = (s.load(y, r), s.zero());
        for q in 0..N {
            let v = s.load(c[q], r);
            if q % 2 == 0 {
                ya = s.fmadd(v, kv[q], ya);
            } else {
                yb = s.fmadd(v, kv[q], yb);
            }
            acc[q] = s.fmadd(v, xv, acc[q]);
        }
        s.store(y, r, s.add(ya, yb));
        r += w;
    }
    if r < len {
        let t = len - r;
        let xv = s.load_part(x, r, t);
        let mut yv = s.load_part(y, r, t);
        for q in 0..N {
            let v = s.load_part(c[q], r, t);
            yv = s.fmadd(v, kv[q], yv);
            acc[q] = s.fmadd(v, xv, acc[q]);
        }
        s.store_part(y, r, t, yv);
    }
    acc.map(|a| s.hsum(a))
}

/// `apply_q` on a concrete type with the kernels of `isa`.
fn apply_q_with<F: Elem>(isa: Isa, a: &[F], n: usize, tau: &[F], z: &mut [F], k: usize) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 => {
            let s = F::Avx512::detect().expect("AVX-512F");
            // SAFETY: the token exists, so the CPU has the features.
            return unsafe { apply_q_avx512(s, a, n, tau, z, k) };
        }
        Isa::Avx2 => {
            let s = F::Avx2::detect().expect("AVX2 and FMA");
            // SAFETY: as above.
            return unsafe { apply_q_avx2(s, a, n, tau, z, k) };
        }
        Isa::Base => {}
    }
    let _ = isa;
    apply_q_impl(Scalar, a, n, tau, z, k)
}

/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn apply_q_avx512<F: Elem>(
    s: F::Avx512,
    a: &[F],
    n: usize,
    tau: &[F],
    z: &mut [F],
    k: usize,
) {
    apply_q_impl(s, a, n, tau, z, k)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply_q_avx2<F: Elem>(s: F::Avx2, a: &[F], n: usize, tau: &[F], z: &mut [F], k: usize) {
    apply_q_impl(s, a, n, tau, z, k)
}

/// H_{n−2} first, H_0 last (one at a time: with k ≈ 16 columns the blocked WY form, tried
/// with faer's GEMM for VᵀZ and V·Y, measured slower).
#[inline(always)]
fn apply_q_impl<F: Elem, S: Simd<F>>(s: S, a: &[F], n: usize, tau: &[F], z: &mut [F], k: usize) {
    apply_reflectors(s, a, n, tau, z, k, 0..n.saturating_sub(1))
}

/// The reflectors `range` one at a time, the last first: each touches rows i+1.. of every
/// column of Z, four columns at a time (so that v is loaded once for four dot products and
/// four updates).
#[inline(always)]
fn apply_reflectors<F: Elem, S: Simd<F>>(
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

/// y_q += k_q·x for N columns y_q as long as x: x is loaded once for all N.
#[inline(always)]
fn axpy_cols<F: Elem, S: Simd<F>, const N: usize>(s: S, ys: [&mut [F]; N], k: [F; N], x: &[F]) {
    let (len, w) = (x.len(), S::W);
    let ys = ys.map(|y| &mut y[..len]);
    let kv = k.map(|k| s.splat(k));
    let mut r = 0;
    while r + w <= len {
        let xv = s.load(x, r);
        for q in 0..N {
            let v = s.fmadd(xv, kv[q], s.load(ys[q], r));
            s.store(ys[q], r, v);
        }
        r += w;
    }
    if r < len {
        let t = len - r;
        let xv = s.load_part(x, r, t);
        for q in 0..N {
            let v = s.fmadd(xv, kv[q], s.load_part(ys[q], r, t));
            s.store_part(ys[q], r, t, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
    use faer::linalg::evd::tridiag::{tridiag_in_place, tridiag_in_place_scratch};
    use faer::linalg::householder::{
        apply_block_householder_sequence_on_the_left_in_place_scratch,
        apply_block_householder_sequence_on_the_left_in_place_with_conj,
    };
    use faer::linalg::qr::no_pivoting::factor::recommended_block_size;
    use faer::{Conj, Mat, Side};

    use super::*;

    /// Deterministic uniform numbers in [-1, 1).
    struct Rng(u64);
    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1)
        }
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 11) as f64) / (1u64 << 52) as f64 - 1.0
        }
    }

    /// A random symmetric n × n matrix, column-major.
    fn random_sym(n: usize, seed: u64) -> Vec<f64> {
        let mut r = Rng::new(seed);
        let mut a = vec![0.0; n * n];
        for j in 0..n {
            for i in j..n {
                let v = r.next();
                a[j * n + i] = v;
                a[i * n + j] = v;
            }
        }
        a
    }

    /// The kernels' builds this CPU can run.
    fn isas() -> Vec<Isa> {
        match Isa::detect() {
            Isa::Avx512 => vec![Isa::Avx512, Isa::Avx2, Isa::Base],
            Isa::Avx2 => vec![Isa::Avx2, Isa::Base],
            Isa::Base => vec![Isa::Base],
        }
    }

    /// Errors of one reduction, in units of ε·max|A| (reconstruction), ε (orthogonality) and
    /// ε·max|λ| (eigenvalues).
    struct Errors {
        rec: f64,
        orth: f64,
        eig: f64,
    }

    /// What one reduction gave (in f64), for the checks.
    struct Reduced {
        diag: Vec<f64>,
        off: Vec<f64>,
        tau: Vec<f64>,
        /// Q built by `apply_q` on the identity.
        q: Mat<f64>,
        /// The input as rounded to F.
        a: Mat<f64>,
    }

    /// Reduces the symmetric `a` (f64, full) in precision F with the given build and blocking.
    /// The strict upper triangle is NaN, so that reading it would show in the results, and is
    /// checked to be left as it was.
    fn run<F: Elem + Real>(a: &[f64], n: usize, isa: Isa, nb: usize, nx: usize) -> Reduced {
        let mut af: Vec<F> = a.iter().map(|&v| F::of(v)).collect();
        let a_rounded = Mat::from_fn(n, n, |i, j| af[j * n + i].get());
        for j in 0..n {
            for i in 0..j {
                af[j * n + i] = F::of(f64::NAN);
            }
        }
        let mut diag = vec![f64::NAN; n];
        let mut off = vec![f64::NAN; n.saturating_sub(1)];
        let mut tau = vec![F::of(f64::NAN); n.saturating_sub(1)];
        reduce_with(isa, nb, nx, &mut af, n, &mut diag, &mut off, &mut tau);
        for j in 0..n {
            for i in 0..j {
                assert!(af[j * n + i].get().is_nan(), "upper triangle written");
            }
        }
        let mut z: Vec<F> = (0..n * n)
            .map(|p| F::of(if p % (n + 1) == 0 { 1.0 } else { 0.0 }))
            .collect();
        apply_q_with(isa, &af, n, &tau, &mut z, n);
        Reduced {
            diag,
            off,
            tau: tau.iter().map(|t| t.get()).collect(),
            q: Mat::from_fn(n, n, |i, j| z[j * n + i].get()),
            a: a_rounded,
        }
    }

    fn max_abs(m: &Mat<f64>) -> f64 {
        let mut v = 0.0f64;
        for j in 0..m.ncols() {
            for i in 0..m.nrows() {
                v = v.max(m[(i, j)].abs());
            }
        }
        v
    }

    fn errors<F: Elem>(r: &Reduced) -> Errors {
        let n = r.diag.len();
        let eps = F::EPS.to_f64();
        assert!(r
            .diag
            .iter()
            .chain(&r.off)
            .chain(&r.tau)
            .all(|v| v.is_finite()));
        if n == 0 {
            return Errors {
                rec: 0.0,
                orth: 0.0,
                eig: 0.0,
            };
        }
        let t = crate::tridiag_eigen::dense(&r.diag, &r.off);
        let scale = max_abs(&r.a);
        let rec = &r.q * &t * r.q.transpose() - &r.a;
        let orth = r.q.transpose() * &r.q - Mat::<f64>::identity(n, n);
        let lt = t.self_adjoint_eigenvalues(Side::Lower).unwrap();
        let la = r.a.self_adjoint_eigenvalues(Side::Lower).unwrap();
        let lmax = la.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let eig = lt
            .iter()
            .zip(&la)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        let unit = |s: f64| if s > 0.0 { s * eps } else { 1.0 };
        Errors {
            rec: max_abs(&rec) / unit(scale),
            orth: max_abs(&orth) / eps,
            eig: eig / unit(lmax),
        }
    }

    /// The bound on all three errors, in units of ε: Householder tridiagonalization is
    /// backward stable with ‖Q·T·Qᵀ − A‖ ≤ c·n·ε·‖A‖ in the worst case (and so the
    /// eigenvalues by Weyl, and QᵀQ − I), c a small constant; rounding errors that behave
    /// like random ones grow like √n instead (measured here: reconstruction ≤ 1.3·√n,
    /// orthogonality ≤ 0.6·√n, eigenvalues ≤ 5.5·√n with faer's solver's own error; at most a
    /// quarter of the bound, at n = 5). 4·n follows the worst case's shape with room, and is
    /// still far below the O(1) errors of a wrong reflector or a missed update.
    fn bound(n: usize) -> f64 {
        4.0 * n.max(4) as f64
    }

    fn check<F: Elem + Real>(a: &[f64], n: usize, isa: Isa, nb: usize, nx: usize) -> Reduced {
        let r = run::<F>(a, n, isa, nb, nx);
        let e = errors::<F>(&r);
        let b = bound(n);
        assert!(
            e.rec <= b && e.orth <= b && e.eig <= b,
            "n = {n}, {isa:?}, nb = {nb}, nx = {nx}, single = {}: rec {:.1} orth {:.1} eig {:.1} \
             (ε units, bound {b})",
            F::SINGLE,
            e.rec,
            e.orth,
            e.eig
        );
        r
    }

    const SIZES: [usize; 14] = [0, 1, 2, 3, 5, 16, 31, 32, 33, 64, 65, 100, 257, 512];

    #[test]
    fn random_matrices_default_blocking() {
        for (s, &n) in SIZES.iter().enumerate() {
            let a = random_sym(n, s as u64 + 1);
            check::<f64>(&a, n, Isa::detect(), NB, NX);
            check::<f32>(&a, n, Isa::detect(), NB, NX);
        }
    }

    #[test]
    fn random_matrices_all_builds_and_blockings() {
        // Panel widths and crossovers that put panel boundaries and the unblocked tail at
        // different places (nx ≤ nb means "blocked down to nb columns").
        let blockings = [(1, 0), (4, 4), (16, 16), (16, 40), (48, 48), (64, 0)];
        for isa in isas() {
            for (s, &n) in SIZES.iter().enumerate().filter(|(_, &n)| n <= 100) {
                let a = random_sym(n, 100 + s as u64);
                for &(nb, nx) in &blockings {
                    check::<f64>(&a, n, isa, nb, nx);
                    check::<f32>(&a, n, isa, nb, nx);
                }
            }
        }
    }

    #[test]
    fn public_api_matches_internal() {
        let n = 100;
        let a = random_sym(n, 7);
        fn via_api<T: Real>(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
            let mut af: Vec<T> = a.iter().map(|&v| T::of(v)).collect();
            let mut d = vec![0.0; n];
            let mut e = vec![0.0; n - 1];
            let mut tau = vec![T::of(0.0); n - 1];
            reduce(&mut af, n, &mut d, &mut e, &mut tau);
            let mut z: Vec<T> = (0..n * 3).map(|p| T::of(p as f64)).collect();
            apply_q(&af, n, &tau, &mut z, 3);
            (d, e, z.iter().map(|v| v.get()).collect())
        }
        fn via_internal<F: Elem + Real>(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
            let mut af: Vec<F> = a.iter().map(|&v| F::of(v)).collect();
            let mut d = vec![0.0; n];
            let mut e = vec![0.0; n - 1];
            let mut tau = vec![F::of(0.0); n - 1];
            reduce_with(Isa::detect(), NB, NX, &mut af, n, &mut d, &mut e, &mut tau);
            let mut z: Vec<F> = (0..n * 3).map(|p| F::of(p as f64)).collect();
            apply_q_with(Isa::detect(), &af, n, &tau, &mut z, 3);
            (d, e, z.iter().map(|v| v.get()).collect())
        }
        assert_eq!(via_api::<f64>(&a, n), via_internal::<f64>(&a, n));
        assert_eq!(via_api::<f32>(&a, n), via_internal::<f32>(&a, n));
    }

    /// Runs `check` for f64 and f32 with the default blocking and a small one.
    fn check_all(a: &[f64], n: usize) -> Vec<Reduced> {
        let mut out = Vec::new();
        for (nb, nx) in [(NB, NX), (8, 8)] {
            out.push(check::<f64>(a, n, Isa::detect(), nb, nx));
            out.push(check::<f32>(a, n, Isa::detect(), nb, nx));
        }
        out
    }

    #[test]
    fn zero_and_diagonal_matrices() {
        let n = 100;
        for r in check_all(&vec![0.0; n * n], n) {
            assert!(r.diag.iter().chain(&r.off).chain(&r.tau).all(|&v| v == 0.0));
        }
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            a[i * n + i] = i as f64 - 40.0;
        }
        for r in check_all(&a, n) {
            assert!(r.off.iter().chain(&r.tau).all(|&v| v == 0.0));
            assert!(r
                .diag
                .iter()
                .enumerate()
                .all(|(i, &d)| d == i as f64 - 40.0));
        }
    }

    #[test]
    fn column_zero_below_the_subdiagonal() {
        // Block diagonal: the reflectors of the first block touch rows < 10 only, so column 9
        // has nothing below its diagonal (τ = 0, off = 0), inside a panel; and column 0 of
        // the second block has only its subdiagonal entry (τ = 0 again, off ≠ 0).
        let n = 100;
        let b1 = random_sym(10, 3);
        let b2 = random_sym(90, 4);
        let mut a = vec![0.0; n * n];
        for j in 0..10 {
            for i in 0..10 {
                a[j * n + i] = b1[j * 10 + i];
            }
        }
        for j in 0..90 {
            for i in 0..90 {
                a[(j + 10) * n + i + 10] = b2[j * 90 + i];
            }
        }
        for i in 12..n {
            a[10 * n + i] = 0.0;
            a[i * n + 10] = 0.0;
        }
        for r in check_all(&a, n) {
            assert_eq!((r.tau[9], r.off[9]), (0.0, 0.0));
            assert_eq!(r.tau[10], 0.0);
            assert!(r.off[10] != 0.0);
        }
    }

    #[test]
    fn extreme_scales() {
        // Squares of 1e30 overflow f32 and squares of 1e-30 underflow it: the norms must not.
        let n = 100;
        let a = random_sym(n, 5);
        for s in [1e30, 1e-30] {
            let scaled: Vec<f64> = a.iter().map(|v| v * s).collect();
            check_all(&scaled, n);
        }
        // Graded: entries from 1e-30 to 1e30 in one matrix (D·A·D, D geometric).
        let d: Vec<f64> = (0..n)
            .map(|i| 10f64.powf(-15.0 + 30.0 * i as f64 / (n - 1) as f64))
            .collect();
        let graded: Vec<f64> = (0..n * n).map(|p| a[p] * d[p % n] * d[p / n]).collect();
        for r in check_all(&graded, n) {
            assert!(r.diag.iter().chain(&r.off).all(|v| v.is_finite()));
        }
    }

    #[test]
    fn clustered_and_repeated_eigenvalues() {
        // 3·I + u·uᵀ − w·wᵀ: eigenvalue 3 repeated n − 2 times, so the reduction meets columns
        // that are zero up to rounding below the subdiagonal.
        let n = 100;
        let mut r = Rng::new(9);
        let u: Vec<f64> = (0..n).map(|_| r.next()).collect();
        let w: Vec<f64> = (0..n).map(|_| r.next()).collect();
        let mut a = vec![0.0; n * n];
        for j in 0..n {
            for i in 0..n {
                a[j * n + i] = u[i] * u[j] - w[i] * w[j] + if i == j { 3.0 } else { 0.0 };
            }
        }
        check_all(&a, n);
        // Clusters: Q0·diag(λ)·Q0ᵀ with λ in three groups 1e-9 wide, Q0 random orthogonal.
        let q0 = Mat::from_fn(n, n, |i, j| random_sym(n, 11)[j * n + i])
            .qr()
            .compute_Q();
        let lam = Mat::from_fn(n, n, |i, j| {
            if i == j {
                [1.0, -2.0, 5.0][i % 3] + 1e-9 * (i / 3) as f64 / n as f64
            } else {
                0.0
            }
        });
        let m = &q0 * &lam * q0.transpose();
        let a: Vec<f64> = (0..n * n)
            .map(|p| 0.5 * (m[(p % n, p / n)] + m[(p / n, p % n)]))
            .collect();
        check_all(&a, n);
    }

    /// Best wall time of `reps` runs of `f` (each given a fresh `setup()`).
    fn best<S>(reps: usize, mut setup: impl FnMut() -> S, mut f: impl FnMut(S)) -> f64 {
        (0..reps)
            .map(|_| {
                let s = setup();
                let t = Instant::now();
                f(s);
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    }

    fn faer_tridiag<T: Elem + Real>(a: &[T], n: usize, h_block: usize) -> (Mat<T>, Mat<T>) {
        let mut m = Mat::from_fn(n, n, |i, j| a[j * n + i]);
        let mut h = Mat::<T>::zeros(h_block, n - 1);
        let mut buf = MemBuffer::new(tridiag_in_place_scratch::<T>(
            n,
            Par::Seq,
            Default::default(),
        ));
        tridiag_in_place(
            m.as_mut(),
            h.as_mut(),
            Par::Seq,
            MemStack::new(&mut buf),
            Default::default(),
        );
        (m, h)
    }

    fn bench<T: Elem + Real>(n: usize, reps: usize) {
        let a: Vec<T> = random_sym(n, 1).iter().map(|&v| T::of(v)).collect();
        let mut d = vec![0.0; n];
        let mut e = vec![0.0; n - 1];
        let mut tau = vec![T::of(0.0); n - 1];
        let ours = best(
            reps,
            || a.clone(),
            |mut x| reduce(&mut x, n, &mut d, &mut e, &mut tau),
        );
        let faer1 = best(reps, || (), |_| drop(faer_tridiag(&a, n, 1)));
        let hb = recommended_block_size::<T>(n, n);
        let faer_b = best(reps, || (), |_| drop(faer_tridiag(&a, n, hb)));
        // Q·Z for k = 16 columns.
        let k = 16;
        let mut ar = a.clone();
        reduce(&mut ar, n, &mut d, &mut e, &mut tau);
        let z0: Vec<T> = random_sym(n, 2)[..n * k]
            .iter()
            .map(|&v| T::of(v))
            .collect();
        let ours_q = best(
            reps,
            || z0.clone(),
            |mut z| apply_q(&ar, n, &tau, &mut z, k),
        );
        let (m, h) = faer_tridiag(&a, n, hb);
        let mut buf = MemBuffer::new(StackReq::any_of(&[
            apply_block_householder_sequence_on_the_left_in_place_scratch::<T>(n, hb, k),
        ]));
        let faer_q = best(
            reps,
            || Mat::from_fn(n, k, |i, j| z0[j * n + i]),
            |mut z| {
                apply_block_householder_sequence_on_the_left_in_place_with_conj(
                    m.as_ref().submatrix(1, 0, n - 1, n - 1),
                    h.as_ref(),
                    Conj::No,
                    z.as_mut().subrows_mut(1, n - 1),
                    Par::Seq,
                    MemStack::new(&mut buf),
                )
            },
        );
        println!(
            "{} n = {n:5}: reduce {:8.3} ms | faer tridiag {:8.3} ms (h block 1), {:8.3} ms \
             (h block {hb}) | speedup {:.2}× / {:.2}× | apply_q k=16 {:.3} ms vs faer {:.3} ms",
            if T::SINGLE { "f32" } else { "f64" },
            ours * 1e3,
            faer1 * 1e3,
            faer_b * 1e3,
            faer1 / ours,
            faer_b / ours,
            ours_q * 1e3,
            faer_q * 1e3,
        );
    }

    /// Times against faer (best of 20); `cargo test --release -p rankwise-core tridiag_reduce
    /// -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn speed_vs_faer() {
        println!("kernels: {:?}", Isa::detect());
        for n in [64, 128, 256, 512, 1024] {
            bench::<f32>(n, 20);
            bench::<f64>(n, 20);
        }
    }

    /// Panel width and crossover against time (best of 10), for tuning `NB` and `NX`.
    #[test]
    #[ignore]
    fn tune_blocking() {
        fn time<F: Elem + Real>(n: usize, nb: usize, nx: usize) -> f64 {
            let a: Vec<F> = random_sym(n, 1).iter().map(|&v| F::of(v)).collect();
            let mut d = vec![0.0; n];
            let mut e = vec![0.0; n - 1];
            let mut tau = vec![F::of(0.0); n - 1];
            let isa = Isa::detect();
            best(
                10,
                || a.clone(),
                |mut x| reduce_with(isa, nb, nx, &mut x, n, &mut d, &mut e, &mut tau),
            )
        }
        for n in [64, 128, 256, 512, 1024] {
            for nb in [8, 16, 24, 32, 48] {
                for nx in [32, 64] {
                    println!(
                        "n = {n:5} nb = {nb:3} nx = {nx:4}: f32 {:8.3} ms  f64 {:8.3} ms",
                        time::<f32>(n, nb, nx) * 1e3,
                        time::<f64>(n, nb, nx) * 1e3
                    );
                }
            }
        }
    }
}
