//! The crate's deterministic generators, written once: the core's results must be a pure
//! function of the input and the seed, on every CPU and thread count, so they never touch the
//! OS's randomness. The tests and the fuzzer draw their inputs from the same generators.
//!
//! - [`SplitMix64`]: Vigna's splitmix64, a seed stream (and a good mixer of nearby seeds).
//! - [`Xoshiro256`]: Vigna's xoshiro256**, seeded through splitmix64: k-means++ draws.
//! - [`Mmix`]: Knuth's MMIX linear congruential generator: inverse iteration's start vectors,
//!   where speed matters and statistical quality hardly does.
//! - [`XorShift64`]: Marsaglia's xorshift64 (13, 7, 17): test matrices.

/// `x`'s top 53 bits as a uniform number in [0, 1).
#[inline(always)]
pub fn unit_f64(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// splitmix64 (state advanced by the golden ratio, output finalized).
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        unit_f64(self.next_u64())
    }
}

/// xoshiro256**, its state the first four outputs of splitmix64 started at the seed.
#[derive(Clone, Debug)]
pub struct Xoshiro256([u64; 4]);

impl Xoshiro256 {
    pub fn new(seed: u64) -> Self {
        let mut sm = SplitMix64(seed);
        Xoshiro256([sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()])
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        unit_f64(self.next_u64())
    }

    /// Uniform in `0..n` (n ≥ 1), by multiply-shift (bias below 2⁻⁶⁴·n, irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// The 64-bit LCG with Knuth's MMIX constants; its output is the new state.
#[derive(Clone, Debug)]
pub struct Mmix(pub u64);

impl Mmix {
    /// Seeded with the first splitmix64 output of `seed`, so that nearby seeds start unrelated
    /// sequences.
    pub fn mixed(seed: u64) -> Self {
        Mmix(SplitMix64(seed).next_u64())
    }

    #[inline(always)]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        unit_f64(self.next_u64())
    }

    /// Uniform in [-1, 1).
    #[inline(always)]
    pub fn next_signed(&mut self) -> f64 {
        2.0 * unit_f64(self.next_u64()) - 1.0
    }
}

/// xorshift64 with shifts (13, 7, 17); the state must not be 0.
#[derive(Clone, Debug)]
pub struct XorShift64(pub u64);

impl XorShift64 {
    /// A nonzero state from any seed (0 too).
    pub fn new(seed: u64) -> Self {
        XorShift64(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1).
    pub fn next_signed(&mut self) -> f64 {
        2.0 * unit_f64(self.next_u64()) - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_outputs() {
        // Vigna's splitmix64.c started at 1234567.
        let mut g = SplitMix64(1_234_567);
        let want = [
            6_457_827_717_110_365_317u64,
            3_203_168_211_198_807_973,
            9_817_491_932_198_370_423,
            4_593_380_528_125_082_431,
            16_408_922_859_458_223_821,
        ];
        for w in want {
            assert_eq!(g.next_u64(), w);
        }
    }

    #[test]
    fn xoshiro256_matches_the_reference_recurrence() {
        // The published xoshiro256** step, written out from its definition.
        let mut sm = SplitMix64(42);
        let mut s = [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()];
        let mut g = Xoshiro256::new(42);
        for _ in 0..100 {
            let want = (s[1].wrapping_mul(5)).rotate_left(7).wrapping_mul(9);
            let t = s[1] << 17;
            s[2] ^= s[0];
            s[3] ^= s[1];
            s[1] ^= s[2];
            s[0] ^= s[3];
            s[2] ^= t;
            s[3] = s[3].rotate_left(45);
            assert_eq!(g.next_u64(), want);
        }
    }

    #[test]
    fn uniforms_stay_in_range() {
        let mut x = Xoshiro256::new(7);
        let mut m = Mmix::mixed(7);
        let mut s = XorShift64::new(0);
        for _ in 0..10_000 {
            assert!((0.0..1.0).contains(&x.next_f64()));
            assert!((-1.0..1.0).contains(&m.next_signed()));
            assert!((-1.0..1.0).contains(&s.next_signed()));
            assert!(x.below(3) < 3);
        }
        assert_eq!(unit_f64(u64::MAX), 1.0 - f64::EPSILON / 2.0);
    }
}
