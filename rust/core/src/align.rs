//! Alignment of one adapter's rank units onto a reference adapter's, per module.
//!
//! A LoRA's units (b_i, a_i) have no order (permutation invariance), no sign (−b_i, −a_i) and no
//! scale (c·b_i, a_i/c): two adapters trained from the same start, or copies of one adapter, can
//! hold the same units in a different order with different signs and scales. Aligning `other`
//! onto `reference` finds the permutation `perm` (reference unit i ↔ other unit `perm[i]`) and
//! the signs that make matched units agree, by an exact maximum-weight matching (Hungarian
//! algorithm, O(r³)) on a similarity of units that ignores sign and scale.
//!
//! Similarity of reference unit (b, a) and other unit (b', a'), with cos_b = cos(b, b') and
//! cos_a = cos(a, a') (0 where a vector is zero); both depend only on the *canonical* units (see
//! `crate::units::canonicalize`), never on the arbitrary scale of a unit:
//! - [`Similarity::Delta`] (default): cos_b · cos_a, the cosine between the rank-one updates
//!   b·aᵀ and b'·a'ᵀ (Frobenius inner product over norms). Invariant to sign flips, and it pairs
//!   units by what they add to ΔW: a pair whose b's agree but whose a's are orthogonal scores 0.
//! - [`Similarity::Units`]: |cos_b + cos_a| / 2, the absolute cosine between the canonical units
//!   `[b̃ ; ã]` (‖b̃‖ = ‖ã‖): what LEGO's Euclidean k-means over canonical units sees.
//!
//! The sign of a matched pair is the sign of cos_b + cos_a (the dot product of the canonical
//! units; +1 on a tie): flipping other's unit by it makes the two canonical units point the same
//! way. The factors are read in place, in either layout ([`UnitsView::from_units`] for rows
//! `[b ; a]` of a unit matrix, [`UnitsView::from_factors`] for PEFT's A (r × d_in) and
//! B (d_out × r)); the only O(r·d) work is two r × r Gram matrices per pair, one GEMM each
//! (`matrixmultiply`, runtime-dispatched SIMD, f32 products; the similarities and everything
//! after are f64).

use rayon::prelude::*;

use crate::error::{catch_panic, Error, Result};

/// `count` vectors of length `len` inside `data`: element k of vector i is
/// `data[i * vec_stride + k * elem_stride]`. Every such index is checked to be in bounds when
/// the set is made, which is what makes the GEMM call below sound.
#[derive(Clone, Copy, Debug)]
pub struct VecSet<'a> {
    data: &'a [f32],
    count: usize,
    len: usize,
    vec_stride: usize,
    elem_stride: usize,
}

impl<'a> VecSet<'a> {
    pub fn new(
        data: &'a [f32],
        count: usize,
        len: usize,
        vec_stride: usize,
        elem_stride: usize,
    ) -> Result<Self> {
        if count > 0 && len > 0 {
            let last = (count - 1).checked_mul(vec_stride).and_then(|x| {
                (len - 1)
                    .checked_mul(elem_stride)
                    .and_then(|y| x.checked_add(y))
            });
            match last {
                Some(l) if l < data.len() => {}
                _ => {
                    return Err(Error::invalid(format!(
                        "{count} vectors of length {len} with strides ({vec_stride}, \
                         {elem_stride}) do not fit in {} values",
                        data.len()
                    )))
                }
            }
        }
        // Strides of an axis of length ≤ 1 are never used; keep them small for the GEMM's isize.
        Ok(VecSet {
            data,
            count,
            len,
            vec_stride: if count > 1 { vec_stride } else { 1 },
            elem_stride: if len > 1 { elem_stride } else { 1 },
        })
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0 || self.len == 0
    }

    /// Euclidean norm of each vector, accumulated in f64.
    pub fn norms(&self) -> Vec<f64> {
        if self.count > 1 && self.vec_stride < self.elem_stride {
            // Vectors interleaved (columns of a row-major matrix): walk memory in order.
            let mut acc = vec![0f64; self.count];
            for k in 0..self.len {
                let base = k * self.elem_stride;
                for (i, s) in acc.iter_mut().enumerate() {
                    let v = self.data[base + i * self.vec_stride] as f64;
                    *s += v * v;
                }
            }
            return acc.into_iter().map(f64::sqrt).collect();
        }
        (0..self.count)
            .map(|i| {
                let base = i * self.vec_stride;
                (0..self.len)
                    .map(|k| {
                        let v = self.data[base + k * self.elem_stride] as f64;
                        v * v
                    })
                    .sum::<f64>()
                    .sqrt()
            })
            .collect()
    }
}

/// `G[i, j] = p_i · q_j` (row-major `p.count × q.count`), one f32 GEMM.
pub fn gram(p: &VecSet, q: &VecSet) -> Result<Vec<f32>> {
    if p.len != q.len {
        return Err(Error::invalid(format!(
            "Gram of vectors of different lengths ({} and {})",
            p.len, q.len
        )));
    }
    let (m, k, n) = (p.count, p.len, q.count);
    let mut c = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return Ok(c);
    }
    let is = |s: usize| {
        isize::try_from(s).map_err(|_| Error::invalid(format!("stride {s} is too large")))
    };
    let (p_vs, p_es, q_vs, q_es, ldc) = (
        is(p.vec_stride)?,
        is(p.elem_stride)?,
        is(q.vec_stride)?,
        is(q.elem_stride)?,
        is(n)?,
    );
    // SAFETY: `VecSet::new` checked that every index i·vec_stride + k·elem_stride (i < count,
    // k < len) lies inside its slice, so the GEMM reads only memory of `p.data` and `q.data`;
    // C is m × n row-major and `c` holds exactly m·n values. A = P (m × k), B = Qᵀ (k × n).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            p.data.as_ptr(),
            p_vs,
            p_es,
            q.data.as_ptr(),
            q_es,
            q_vs,
            0.0,
            c.as_mut_ptr(),
            ldc,
            1,
        );
    }
    Ok(c)
}

/// The units of one module of one adapter: b_i (length d_out) and a_i (length d_in), i < r.
#[derive(Clone, Copy, Debug)]
pub struct UnitsView<'a> {
    pub b: VecSet<'a>,
    pub a: VecSet<'a>,
}

impl<'a> UnitsView<'a> {
    pub fn new(b: VecSet<'a>, a: VecSet<'a>) -> Result<Self> {
        if b.count != a.count {
            return Err(Error::invalid(format!(
                "{} b vectors but {} a vectors",
                b.count, a.count
            )));
        }
        Ok(UnitsView { b, a })
    }

    /// Rows `[b_i ; a_i]` of a row-major unit matrix `r × (d_out + d_in)`.
    pub fn from_units(data: &'a [f32], r: usize, d_out: usize, d_in: usize) -> Result<Self> {
        let width = d_out
            .checked_add(d_in)
            .ok_or_else(|| Error::invalid("unit width overflows"))?;
        if r.checked_mul(width) != Some(data.len()) {
            return Err(Error::invalid(format!(
                "a unit matrix of {r} units of width {d_out} + {d_in} needs {} values, got {}",
                r.saturating_mul(width),
                data.len()
            )));
        }
        let b = VecSet::new(data, r, d_out, width, 1)?;
        let a = VecSet::new(&data[d_out.min(data.len())..], r, d_in, width, 1)?;
        UnitsView::new(b, a)
    }

    /// PEFT's factors: A row-major `r × d_in`, B row-major `d_out × r` (b_i is column i of B).
    pub fn from_factors(
        a: &'a [f32],
        b: &'a [f32],
        r: usize,
        d_out: usize,
        d_in: usize,
    ) -> Result<Self> {
        if r.checked_mul(d_in) != Some(a.len()) {
            return Err(Error::invalid(format!(
                "A must hold {r} × {d_in} values, got {}",
                a.len()
            )));
        }
        if d_out.checked_mul(r) != Some(b.len()) {
            return Err(Error::invalid(format!(
                "B must hold {d_out} × {r} values, got {}",
                b.len()
            )));
        }
        UnitsView::new(
            VecSet::new(b, r, d_out, 1, r)?,
            VecSet::new(a, r, d_in, d_in, 1)?,
        )
    }

    pub fn rank(&self) -> usize {
        self.a.count
    }

    pub fn d_out(&self) -> usize {
        self.b.len
    }

    pub fn d_in(&self) -> usize {
        self.a.len
    }
}

/// How units are compared (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Similarity {
    /// cos_b · cos_a: the cosine between the rank-one updates b·aᵀ.
    #[default]
    Delta,
    /// |cos_b + cos_a| / 2: the absolute cosine between the canonical units.
    Units,
}

impl Similarity {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "delta" => Ok(Similarity::Delta),
            "units" => Ok(Similarity::Units),
            _ => Err(Error::invalid(format!(
                "similarity must be 'delta' or 'units', got '{name}'"
            ))),
        }
    }
}

/// Other's unit `perm[i]`, multiplied by `signs[i]` (both b and a), matches reference unit i.
#[derive(Clone, Debug, PartialEq)]
pub struct Alignment {
    pub perm: Vec<usize>,
    pub signs: Vec<f32>,
    /// Mean similarity of the matched pairs (1 for an exact permuted, flipped, rescaled copy).
    pub score: f64,
}

/// Exact minimum-cost assignment of a square `n × n` cost matrix (row-major): returns `assign`
/// with row i assigned to column `assign[i]`, Σ cost[i, assign[i]] minimal. Shortest augmenting
/// paths with potentials (Kuhn–Munkres in the Jonker–Volgenant form), O(n³), deterministic:
/// among equal-cost columns the lowest index wins. Costs must be finite.
pub fn hungarian(cost: &[f64], n: usize) -> Result<Vec<usize>> {
    if n.checked_mul(n) != Some(cost.len()) {
        return Err(Error::invalid(format!(
            "the cost matrix must be square: {} values for n = {n}",
            cost.len()
        )));
    }
    if let Some(i) = cost.iter().position(|c| !c.is_finite()) {
        return Err(Error::invalid(format!(
            "the cost matrix must be finite; entry ({}, {}) is {}",
            i / n,
            i % n,
            cost[i]
        )));
    }
    // 1-based rows and columns; index 0 is the virtual start of each augmenting path.
    let mut u = vec![0f64; n + 1];
    let mut v = vec![0f64; n + 1];
    let mut p = vec![0usize; n + 1]; // p[j]: the row matched to column j (0: none)
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        let mut minv = vec![f64::INFINITY; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let row = &cost[(i0 - 1) * n..i0 * n];
            let mut delta = f64::INFINITY;
            let mut j1 = 0usize;
            for j in 1..=n {
                if !used[j] {
                    let cur = row[j - 1] - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            if j1 == 0 {
                // Only reachable if the potentials stopped being finite.
                return Err(Error::Panic {
                    context: "hungarian".into(),
                    message: "no augmenting path (non-finite potentials)".into(),
                });
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut assign = vec![0usize; n];
    for j in 1..=n {
        assign[p[j] - 1] = j - 1;
    }
    Ok(assign)
}

fn check_same_module(reference: &UnitsView, other: &UnitsView) -> Result<()> {
    if (reference.d_out(), reference.d_in()) != (other.d_out(), other.d_in()) {
        return Err(Error::incompatible(format!(
            "cannot align a {}×{} module onto a {}×{} one (out × in)",
            other.d_out(),
            other.d_in(),
            reference.d_out(),
            reference.d_in()
        )));
    }
    Ok(())
}

/// cos(p_i, q_j) for all i, j (0 where either vector is zero), clamped to [−1, 1].
fn cosines(p: &VecSet, q: &VecSet) -> Result<Vec<f64>> {
    let g = gram(p, q)?;
    let (np, nq) = (p.norms(), q.norms());
    let n = q.count;
    Ok(g.iter()
        .enumerate()
        .map(|(ij, &g)| {
            let d = np[ij / n] * nq[ij % n];
            if d > 0.0 {
                (g as f64 / d).clamp(-1.0, 1.0)
            } else {
                0.0
            }
        })
        .collect())
}

/// Aligns `other`'s units onto `reference`'s (same module shape, same rank).
pub fn align(
    reference: &UnitsView,
    other: &UnitsView,
    similarity: Similarity,
) -> Result<Alignment> {
    check_same_module(reference, other)?;
    let r = reference.rank();
    if other.rank() != r {
        return Err(Error::incompatible(format!(
            "cannot align rank-{} units onto rank-{r} units: alignment needs equal ranks",
            other.rank()
        )));
    }
    let cb = cosines(&reference.b, &other.b)?;
    let ca = cosines(&reference.a, &other.a)?;
    let sim: Vec<f64> = cb
        .iter()
        .zip(&ca)
        .map(|(&b, &a)| match similarity {
            Similarity::Delta => b * a,
            Similarity::Units => (b + a).abs() / 2.0,
        })
        .collect();
    let cost: Vec<f64> = sim.iter().map(|s| -s).collect();
    let perm = hungarian(&cost, r)?;
    let mut signs = Vec::with_capacity(r);
    let mut total = 0f64;
    for (i, &j) in perm.iter().enumerate() {
        let ij = i * r + j;
        signs.push(if cb[ij] + ca[ij] < 0.0 { -1.0 } else { 1.0 });
        total += sim[ij];
    }
    let score = if r > 0 { total / r as f64 } else { 1.0 };
    Ok(Alignment { perm, signs, score })
}

/// Aligns many `(reference, other)` pairs (modules and/or adapters) in parallel; results in the
/// order of `pairs`.
pub fn align_many(
    pairs: &[(UnitsView, UnitsView)],
    similarity: Similarity,
) -> Result<Vec<Alignment>> {
    pairs
        .par_iter()
        .enumerate()
        .map(|(i, (reference, other))| {
            catch_panic("aligning units", || {
                crate::threads::check_cancelled()?;
                align(reference, other, similarity).map_err(|e| match e {
                    Error::Incompatible { reason } => {
                        Error::incompatible(format!("pair {i}: {reason}"))
                    }
                    Error::InvalidArgument { reason } => {
                        Error::invalid(format!("pair {i}: {reason}"))
                    }
                    e => e,
                })
            })
        })
        .collect()
}

/// ⟨ΔW_i, ΔW_j⟩_F for every pair of adapters' units of one module (row-major n × n, symmetric),
/// with ΔW = Σ_k b_k·a_kᵀ, never forming ΔW: ⟨ΔW, ΔW'⟩ = Σ_{k,l} (b_k·b'_l)(a_k·a'_l), two
/// r × r' Gram matrices. Ranks may differ. Pairs are computed in parallel.
/// ‖ΔW_i − ΔW_j‖² = G_ii + G_jj − 2·G_ij (what the medoid reference is chosen by).
pub fn delta_gram(views: &[UnitsView]) -> Result<Vec<f64>> {
    let n = views.len();
    if let Some(first) = views.first() {
        for v in &views[1..] {
            check_same_module(first, v)?;
        }
    }
    let pairs: Vec<(usize, usize)> = (0..n).flat_map(|i| (i..n).map(move |j| (i, j))).collect();
    let vals = pairs
        .par_iter()
        .map(|&(i, j)| {
            catch_panic("delta Gram matrix", || {
                crate::threads::check_cancelled()?;
                let gb = gram(&views[i].b, &views[j].b)?;
                let ga = gram(&views[i].a, &views[j].a)?;
                Ok(gb
                    .iter()
                    .zip(&ga)
                    .map(|(&b, &a)| b as f64 * a as f64)
                    .sum::<f64>())
            })
        })
        .collect::<Result<Vec<f64>>>()?;
    let mut g = vec![0f64; n * n];
    for (&(i, j), v) in pairs.iter().zip(vals) {
        g[i * n + j] = v;
        g[j * n + i] = v;
    }
    Ok(g)
}

#[cfg(test)]
mod tests;
