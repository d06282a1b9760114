//! Exact cluster sums in 64-bit fixed point, which make the centres the same bytes whatever the
//! thread count, the slot a block lands in or the order of the blocks.
//!
//! Each value is rounded once to at least f32 precision of its column's largest magnitude and
//! the sums are exact integers, converted once to f64 (one rounding) for the means: the same
//! centres as f64 summation to ~1e-15 relative. Integer addition is associative, so updating
//! the sums by the rows that changed cluster gives the bytes of summing every member afresh,
//! and each worker can accumulate into its own slot in any order.

use rayon::prelude::*;

use crate::simd::MAGIC;

/// Exact cluster sums in 64-bit fixed point. Column j is scaled by `2^e_j`, chosen so that every
/// `|x_ij|·2^e_j < 2^P` with `P = min(51, 62 − ⌈log2(n+1)⌉)`: each value is rounded once (to
/// `2^-P` of the column's largest magnitude, finer than an f32 ulp of it for any n below
/// 2^38), and no sum of up to n of them can overflow. Integer addition is associative, so the
/// sums are the same bytes whatever the block, worker or order in which rows are added or
/// removed: this is what lets the update run inside the assignment pass, on rows still in
/// cache, with one accumulator per worker and no ordering between them, and what lets the sums
/// be updated by the points that changed cluster only, with the same bytes as summing afresh.
/// The sums are converted to f64 once, exactly rounded, before the means are taken.
pub(crate) struct FixedPoint {
    pub(crate) scale: Vec<f64>,
    pub(crate) inv_scale: Vec<f64>,
}

/// `2^e` for an exponent within the normal f64 range.
fn pow2(e: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&e));
    f64::from_bits(((e + 1023) as u64) << 52)
}

impl FixedPoint {
    /// Scales from the per-column largest magnitudes (as bits, all finite) of n rows.
    pub(crate) fn new(max_bits: &[u32], n: usize) -> Self {
        let p = 51.min(62 - (usize::BITS - n.leading_zeros()) as i32);
        let scale: Vec<f64> = max_bits
            .iter()
            .map(|&b| {
                let m = f32::from_bits(b) as f64;
                if m == 0.0 {
                    1.0
                } else {
                    // m < 2^ex (f64 holds f32 subnormals as normals, so this is exact).
                    let ex = (m.to_bits() >> 52) as i32 - 1023 + 1;
                    pow2(p - ex)
                }
            })
            .collect();
        let inv_scale = scale.iter().map(|&s| 1.0 / s).collect();
        FixedPoint { scale, inv_scale }
    }
}

/// Exact sums (fixed point, without bias) and member counts of the clusters' current members.
pub(crate) struct ClusterSums {
    d: usize,
    fx: Vec<i64>,
    counts: Vec<i64>,
}

impl ClusterSums {
    pub(crate) fn new(k: usize, d: usize) -> Self {
        ClusterSums {
            d,
            fx: vec![0; k * d],
            counts: vec![0; k],
        }
    }

    /// The sums as f64 (one rounding each) and the counts.
    pub(crate) fn to_f64(&self, fp: &FixedPoint) -> (Vec<f64>, Vec<usize>) {
        let mut out = vec![0f64; self.fx.len()];
        out.par_chunks_mut(self.d)
            .zip(self.fx.par_chunks(self.d))
            .for_each(|(o, s)| {
                for ((o, &s), &inv) in o.iter_mut().zip(s).zip(&fp.inv_scale) {
                    *o = s as f64 * inv;
                }
            });
        (out, self.counts.iter().map(|&c| c as usize).collect())
    }
}

/// A worker's pending changes to the cluster sums: fixed-point sums of the rows added with
/// sign + (`pos`) and with sign − (`neg`), each value biased by `bits(MAGIC)` (see
/// [`crate::simd::fx_accumulate`]), how many rows each got (to remove the bias), and the change in
/// the member counts.
pub(crate) struct Slot {
    pub(crate) pos: Vec<i64>,
    pub(crate) neg: Vec<i64>,
    pub(crate) n_pos: Vec<i64>,
    pub(crate) n_neg: Vec<i64>,
    pub(crate) members: Vec<i64>,
}

/// Per-worker accumulators (at most [`SLOT_BYTES`] in all, at least one). A worker uses slot
/// `thread index % slots`; the lock is uncontended when there is one slot per thread.
pub(crate) struct Slots(Vec<std::sync::Mutex<Slot>>);

/// Memory budget of the per-worker fixed-point accumulators.
const SLOT_BYTES: usize = 256 << 20;

impl Slots {
    pub(crate) fn new(k: usize, d: usize) -> Self {
        let per = 2 * (k * d * 8) + 3 * k * 8;
        let count = rayon::current_num_threads().min(SLOT_BYTES / per).max(1);
        Slots(
            (0..count)
                .map(|_| {
                    std::sync::Mutex::new(Slot {
                        pos: vec![0; k * d],
                        neg: vec![0; k * d],
                        n_pos: vec![0; k],
                        n_neg: vec![0; k],
                        members: vec![0; k],
                    })
                })
                .collect(),
        )
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        let i = rayon::current_thread_index().unwrap_or(0) % self.0.len();
        // A poisoned slot means a worker panicked; that panic is already on its way up.
        self.0[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the pending changes of every slot to `sums` (exact, any order) and clears them;
    /// only the clusters that got changes are touched.
    pub(crate) fn drain_into(&self, sums: &mut ClusterSums) {
        let d = sums.d;
        let magic = MAGIC.to_bits() as i64;
        {
            let slots: Vec<_> = self
                .0
                .iter()
                .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()))
                .collect();
            for s in &slots {
                for (c, &m) in sums.counts.iter_mut().zip(&s.members) {
                    *c += m;
                }
            }
            sums.fx.par_chunks_mut(d).enumerate().for_each(|(j, row)| {
                for s in &slots {
                    if s.n_pos[j] > 0 {
                        let bias = magic.wrapping_mul(s.n_pos[j]);
                        for (a, &t) in row.iter_mut().zip(&s.pos[j * d..(j + 1) * d]) {
                            *a = a.wrapping_add(t.wrapping_sub(bias));
                        }
                    }
                    if s.n_neg[j] > 0 {
                        let bias = magic.wrapping_mul(s.n_neg[j]);
                        for (a, &t) in row.iter_mut().zip(&s.neg[j * d..(j + 1) * d]) {
                            *a = a.wrapping_sub(t.wrapping_sub(bias));
                        }
                    }
                }
            });
        }
        self.0.par_iter().for_each(|s| {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            let s = &mut *s;
            for j in 0..s.members.len() {
                if s.n_pos[j] > 0 {
                    s.pos[j * d..(j + 1) * d].fill(0);
                    s.n_pos[j] = 0;
                }
                if s.n_neg[j] > 0 {
                    s.neg[j * d..(j + 1) * d].fill(0);
                    s.n_neg[j] = 0;
                }
                s.members[j] = 0;
            }
        });
    }
}
