//! The one runtime dispatch of the crate's hand-written kernels, and the rule they keep: **every
//! kernel gives the same bytes on every build this CPU (or any x86-64 CPU) can run.**
//!
//! A merge must not depend on the machine it ran on. So the kernels' arithmetic is fixed by the
//! source, never by the instruction set: no reassociation, a fixed lane layout per element type
//! whatever the register width, and FMA everywhere or nowhere within a kernel. There are two
//! builds ([`Level`]): the scalar one (baseline x86-64, or any other target) and AVX2 with
//! FMA, picked at run time (the wheel is built for baseline x86-64). AVX-512 CPUs run the AVX2
//! build: a 512-bit build would either change the lane layout (other bytes) or emulate the
//! 256-bit one (no faster). faer's GEMM, which the kmeans distances and the svd use, chooses its
//! own kernels by ISA and cache sizes; the rule covers what this crate writes.
//!
//! Kernels, by operation:
//! - [`sum_squares`]: `Σ v²`, `‖a − b‖²`, `‖a + b‖²` of f32 rows in f64, eight fixed lanes (no
//!   FMA): k-means distances, unit norms.
//! - [`abs_max`]: per-column largest magnitudes as bits (k-means' finite check and scales).
//! - [`fixed_point`]: exact fixed-point column sums of selected rows (k-means' centres).
//! - [`blas1`] and [`symv`]: dot products, axpy-like updates and the symmetric matrix-vector
//!   product of the tridiagonal reduction, over [`Lanes`] (one vector type per build and element
//!   type, 256 bits, FMA; the scalar build does the same lane by lane with `mul_add`).
//!
//! Whole computations generic over [`Lanes`] (the tridiagonal reduction, the tridiagonal
//! eigensolver) are dispatched once per call through [`Dispatch`]: the code they inline is then
//! compiled with the build's target features. The tests in `tests.rs` check the rule for every
//! kernel and every dispatched computation, on lengths across the lane and block edges.

pub mod abs_max;
pub mod blas1;
pub mod fixed_point;
pub mod lanes;
pub mod sum_squares;
pub mod symv;
#[cfg(test)]
mod tests;

#[cfg(target_arch = "x86_64")]
pub use lanes::Avx2;
pub use lanes::{Lanes, Scalar};

/// A build of the kernels that this CPU can run. Only [`Level::detect`] and
/// [`Level::available`] make levels above the scalar one, so holding one proves that the CPU
/// has its instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level(Isa);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

impl Level {
    /// The scalar build (no instruction beyond the target's baseline).
    pub const SCALAR: Level = Level(Isa::Scalar);

    /// The fastest build this CPU runs.
    pub fn detect() -> Level {
        #[cfg(target_arch = "x86_64")]
        if Avx2::new().is_some() {
            return Level(Isa::Avx2Fma);
        }
        Level::SCALAR
    }

    /// Every build this CPU runs, the scalar one first (for the tests of the rule).
    pub fn available() -> Vec<Level> {
        let mut all = vec![Level::SCALAR];
        if Level::detect() != Level::SCALAR {
            all.push(Level::detect());
        }
        all
    }

    pub fn name(self) -> &'static str {
        match self.0 {
            Isa::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => "avx2+fma",
        }
    }

    /// The AVX2 token, when this is the AVX2 build.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn avx2(self) -> Option<Avx2> {
        match self.0 {
            // A level above the scalar one is only made where the CPU has AVX2 and FMA.
            Isa::Avx2Fma => Some(lanes::avx2_token_unchecked()),
            Isa::Scalar => None,
        }
    }
}

/// A computation written once against the vector operations [`Lanes`], run by
/// [`Dispatch::dispatch`] with the build of a [`Level`]. `run` must be `#[inline(always)]`, and
/// so must everything it calls that should be compiled for the build.
pub trait Kernel<F: Copy> {
    type Output;
    fn run<S: Lanes<F>>(self, s: S) -> Self::Output;
}

/// The element types with kernel builds: f32 and f64.
pub trait Dispatch: Copy + Sized + 'static {
    /// Runs `k` with the build of `level`.
    fn dispatch<K: Kernel<Self>>(level: Level, k: K) -> K::Output;
}

macro_rules! impl_dispatch {
    ($f:ty) => {
        impl Dispatch for $f {
            #[inline]
            fn dispatch<K: Kernel<$f>>(level: Level, k: K) -> K::Output {
                #[cfg(target_arch = "x86_64")]
                if let Some(s) = level.avx2() {
                    // SAFETY: the token exists, so the CPU has AVX2 and FMA.
                    return unsafe { run_avx2::<$f, K>(s, k) };
                }
                let _ = level;
                k.run(Scalar)
            }
        }
    };
}
impl_dispatch!(f32);
impl_dispatch!(f64);

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<F: Copy, K: Kernel<F>>(s: Avx2, k: K) -> K::Output
where
    Avx2: Lanes<F>,
{
    k.run(s)
}

/// Calls `avx2::$f` where `$level` is the AVX2 build, else `portable::$f` (the two modules of a
/// kernel file, same signatures).
macro_rules! by_level {
    ($level:expr, $f:ident($($arg:expr),* $(,)?)) => {{
        #[cfg(target_arch = "x86_64")]
        if $level.avx2().is_some() {
            // SAFETY: a level with AVX2 exists only where the CPU has AVX2 and FMA.
            return unsafe { avx2::$f($($arg),*) };
        }
        let _ = $level;
        portable::$f($($arg),*)
    }};
}
pub(crate) use by_level;

pub use abs_max::abs_max_bits;
pub use fixed_point::{fx_accumulate, MAGIC};
pub use sum_squares::{sq_dist, sq_dist_signed, sq_norm, sq_sum};
