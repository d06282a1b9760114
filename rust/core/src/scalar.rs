//! The working precisions of the linear algebra: one trait for f32 and f64.
//!
//! The low-rank svd runs in float32 where that is provably close and in float64 otherwise, so
//! everything under `linalg` is written once, generic over [`Real`]: faer's field operations,
//! plain arithmetic, the constants the reflectors and the checks need, and the SIMD builds of
//! the hand-written kernels ([`Dispatch`]).

use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

use crate::simd::Dispatch;

/// f32 or f64 (sealed: the kernels exist for these two only).
pub trait Real:
    faer::traits::RealField
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
    + bytemuck::Pod
    + Send
    + Sync
    + Dispatch
    + sealed::Sealed
    + 'static
{
    /// Whether this is float32 (its results get the float32 checks).
    const SINGLE: bool;
    const ZERO: Self;
    const ONE: Self;
    /// Smallest positive normal number.
    const TINY: Self;
    /// Machine epsilon.
    const EPS: Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn finite(self) -> bool;
    /// a·b + c with one rounding (hardware FMA where the build has it, else the libm routine:
    /// the same bytes either way).
    fn fused(a: Self, b: Self, c: Self) -> Self;
    /// The slice as float32, when this is float32 (values then convert in place).
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

macro_rules! impl_real {
    ($f:ident, $single:expr, $as_f32:expr) => {
        impl Real for $f {
            const SINGLE: bool = $single;
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const TINY: Self = $f::MIN_POSITIVE;
            const EPS: Self = $f::EPSILON;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $f
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn finite(self) -> bool {
                self.is_finite()
            }
            #[inline(always)]
            fn fused(a: Self, b: Self, c: Self) -> Self {
                a.mul_add(b, c)
            }
            #[inline(always)]
            fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]> {
                $as_f32(s)
            }
        }
    };
}
impl_real!(f32, true, Some);
impl_real!(f64, false, |_| None);
