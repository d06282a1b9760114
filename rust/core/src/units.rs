//! Rank units of one module across a pool of adapters.
//!
//! Unit i of an adapter with factors A (r × d_in) and B (d_out × r) is the row
//! `[s·b_i ; a_i]` of length d_out + d_in, where b_i is column i of B, a_i row i of A and s the
//! adapter's scaling times its pool weight. Stacking every adapter's units gives the unit matrix
//! `U[n_units, d_out + d_in]`; `Σ_i b_i a_iᵀ` over its rows is the (weighted) sum of the deltas.

use rayon::prelude::*;

use crate::error::{catch_panic, Error, Result};
use crate::limits::{self, MAX_RANK};
use crate::linalg::lowrank_svd::FactorSource;
use crate::safetensors_io::{nonfinite_name, MappedFile};
use crate::scalar::Real;
use crate::simd::{sq_norm, Level};

/// Where one adapter's factors for the module live, and the factor folded into its b's.
pub struct UnitSource<'a> {
    pub file: &'a MappedFile,
    pub key_a: &'a str,
    pub key_b: &'a str,
    pub b_scale: f32,
}

pub struct UnitMatrix {
    /// Row-major `[n_units, d_out + d_in]`.
    pub data: Vec<f32>,
    pub n_units: usize,
    pub d_out: usize,
    pub d_in: usize,
    /// The rank each source contributed, in order.
    pub ranks: Vec<usize>,
    /// With `normalized`: per unit, the norms `[‖b‖, ‖a‖]` its parts had before they were
    /// scaled to unit length (`n_units × 2`); the unit is `[‖b‖·row_b ; ‖a‖·row_a]`.
    pub part_norms: Option<Vec<f32>>,
}

/// Checks the factor shapes of one source: returns (rank, d_out, d_in).
///
/// Conv LoRA (LoCon) factors are units too: lora_A `(r, in, kh, kw)` is read as
/// `(r, in·kh·kw)` (its row-major bytes already are), lora_B `(out, r, 1, 1)` as `(out, r)`.
pub fn factor_dims(src: &UnitSource) -> Result<(usize, usize, usize)> {
    let path = src.file.path();
    let a = src.file.info(src.key_a)?;
    let b = src.file.info(src.key_b)?;
    if a.shape.len() < 2 {
        return Err(Error::tensor(
            path,
            src.key_a,
            format!(
                "lora_A must be 2-D (rank × in_features) or a conv kernel (rank × in × kh × kw), got shape {:?}",
                a.shape
            ),
        ));
    }
    if b.shape.len() < 2 || b.shape[2..].iter().any(|&d| d != 1) {
        return Err(Error::tensor(
            path,
            src.key_b,
            format!(
                "lora_B must be 2-D (out_features × rank) or a 1×1 conv (out × rank × 1 × 1), got shape {:?}",
                b.shape
            ),
        ));
    }
    if a.shape[0] != b.shape[1] {
        return Err(Error::tensor(
            path,
            src.key_b,
            format!(
                "rank mismatch: lora_B has shape {:?} but lora_A ('{}') has rank {}",
                b.shape, src.key_a, a.shape[0]
            ),
        ));
    }
    // A conv down kernel (r, in, kh, kw) is a row of in·kh·kw per unit (LoCon).
    let Some(d_in) = a.shape[1..]
        .iter()
        .try_fold(1usize, |acc, &x| acc.checked_mul(x))
    else {
        return Err(Error::tensor(
            path,
            src.key_a,
            format!("shape {:?}: its unit width overflows", a.shape),
        ));
    };
    let (r, d_out) = (a.shape[0], b.shape[0]);
    if r > MAX_RANK {
        return Err(Error::tensor(
            path,
            src.key_a,
            format!("rank {r} is above the limit of {MAX_RANK}"),
        ));
    }
    if d_out == 0 || d_in == 0 {
        return Err(Error::tensor(
            path,
            src.key_b,
            format!(
                "the module has out_features {d_out} and in_features {d_in}: an empty \
                 module has nothing to merge"
            ),
        ));
    }
    Ok((r, d_out, d_in))
}

/// Builds the unit matrix of one module. All sources must share d_out and d_in; ranks may differ.
/// With `canonical`, each unit is put in canonical form (see `canonicalize`). With `normalized`,
/// each part is then divided by its norm (zero parts stay zero) and the norms are returned in
/// `part_norms`: the features LoRA-LEGO clusters (`cat(b/‖b‖, a/‖a‖)`) and what it needs to
/// average the raw units, in one matrix, written while each row is in cache.
pub fn unit_matrix(
    sources: &[UnitSource],
    canonical: bool,
    normalized: bool,
) -> Result<UnitMatrix> {
    let layout = unit_layout(sources)?;
    let mut data = limits::zeroed_f32(layout.values()?, "the unit matrix")?;
    let part_norms = fill_unit_matrix(sources, &layout, canonical, normalized, &mut data)?;
    let UnitLayout {
        n_units,
        d_out,
        d_in,
        ranks,
    } = layout;
    Ok(UnitMatrix {
        data,
        n_units,
        d_out,
        d_in,
        ranks,
        part_norms,
    })
}

/// The shape of a module's unit matrix across `sources`, checked: every source has 2-D factors
/// of matching rank, and all share d_out and d_in.
pub struct UnitLayout {
    pub n_units: usize,
    pub d_out: usize,
    pub d_in: usize,
    pub ranks: Vec<usize>,
}

impl UnitLayout {
    /// `n_units × (d_out + d_in)`, checked.
    pub fn values(&self) -> Result<usize> {
        self.n_units
            .checked_mul(self.d_out + self.d_in)
            .ok_or_else(|| {
                Error::invalid(format!("{} units overflow the address space", self.n_units))
            })
    }
}

pub fn unit_layout(sources: &[UnitSource]) -> Result<UnitLayout> {
    if sources.is_empty() {
        return Err(Error::invalid("no adapters given for the module"));
    }
    let dims = sources
        .iter()
        .map(factor_dims)
        .collect::<Result<Vec<_>>>()?;
    let (_, d_out, d_in) = dims[0];
    for (src, &(_, o, i)) in sources.iter().zip(&dims).skip(1) {
        if (o, i) != (d_out, d_in) {
            return Err(Error::incompatible(format!(
                "{}: module of '{}' is {o}×{i} (out × in) but {}: '{}' is {d_out}×{d_in}",
                src.file.path().display(),
                src.key_b,
                sources[0].file.path().display(),
                sources[0].key_b
            )));
        }
    }
    let ranks: Vec<usize> = dims.iter().map(|d| d.0).collect();
    Ok(UnitLayout {
        n_units: ranks.iter().sum(),
        d_out,
        d_in,
        ranks,
    })
}

/// [`unit_matrix`] into a caller's buffer of exactly `n_units × (d_out + d_in)` values (every
/// value is written): a merge reuses one buffer across modules instead of faulting in fresh
/// pages for each. Returns the part norms when `normalized`.
pub fn fill_unit_matrix(
    sources: &[UnitSource],
    layout: &UnitLayout,
    canonical: bool,
    normalized: bool,
    out: &mut [f32],
) -> Result<Option<Vec<f32>>> {
    let (d_out, d_in) = (layout.d_out, layout.d_in);
    let width = d_out + d_in;
    if out.len() != layout.n_units * width || layout.ranks.len() != sources.len() {
        return Err(Error::invalid(format!(
            "unit matrix buffer has {} values, expected {} units × {width}",
            out.len(),
            layout.n_units
        )));
    }
    let mut norms = limits::zeroed_f32(
        if normalized { 2 * layout.n_units } else { 0 },
        "the unit norms",
    )?;

    // Split the output into one disjoint block of rows per source, then fill them in parallel.
    let mut blocks: Vec<(&mut [f32], &mut [f32])> = Vec::with_capacity(sources.len());
    let (mut rest, mut rest_n) = (out, norms.as_mut_slice());
    for &r in &layout.ranks {
        let (head, tail) = rest.split_at_mut(r * width);
        let (head_n, tail_n) = rest_n.split_at_mut(if normalized { 2 * r } else { 0 });
        blocks.push((head, head_n));
        (rest, rest_n) = (tail, tail_n);
    }
    blocks
        .into_par_iter()
        .zip(sources.par_iter())
        .zip(layout.ranks.par_iter())
        .try_for_each(|(((block, block_n), src), &r)| {
            catch_panic("building the unit matrix", || {
                fill_units(src, r, d_out, d_in, block)?;
                if canonical || normalized {
                    for (u, row) in block.chunks_exact_mut(width).enumerate() {
                        let nrm = finish_unit(row, d_out, canonical, normalized);
                        if normalized {
                            block_n[2 * u..2 * u + 2].copy_from_slice(&nrm);
                        }
                    }
                }
                Ok(())
            })
        })?;
    Ok(normalized.then_some(norms))
}

fn fill_units(
    src: &UnitSource,
    r: usize,
    d_out: usize,
    d_in: usize,
    block: &mut [f32],
) -> Result<()> {
    let width = d_out + d_in;
    let mut b = Vec::new(); // d_out × r, small next to the block
    let factors = AdapterFactors::open(src, d_in, &mut b)?;
    for (u, row) in block.chunks_exact_mut(width).enumerate() {
        for o in 0..d_out {
            row[o] = src.b_scale * b[o * r + u];
        }
        if let Some(o) = first_nonfinite(&row[..d_out]) {
            return Err(fold_overflow(
                src,
                o * r + u,
                b[o * r + u],
                src.b_scale as f64,
            ));
        }
    }
    // A's rows are contiguous: convert each straight into its place in the unit row.
    for (u, row) in block.chunks_exact_mut(width).enumerate() {
        factors.a_row(u, &mut row[d_out..])?;
    }
    Ok(())
}

/// One adapter's factors of a module, read from its mapped file with the finite checks: lora_B
/// whole (d_out × r, row-major, float32: small), lora_A row by row into the caller's buffer.
pub(crate) struct AdapterFactors<'a> {
    src: &'a UnitSource<'a>,
    a_bytes: &'a [u8],
    a_dtype: crate::dtype::DType,
    d_in: usize,
}

impl<'a> AdapterFactors<'a> {
    /// Opens `src`'s factors and reads lora_B (d_out × r, row-major) into `b`, reusing its
    /// allocation.
    pub(crate) fn open(src: &'a UnitSource<'a>, d_in: usize, b: &mut Vec<f32>) -> Result<Self> {
        let n = src.file.info(src.key_b)?.numel();
        b.resize(n, 0.0);
        src.file.read_into(src.key_b, b)?;
        if let Some(i) = first_nonfinite(b) {
            return Err(nonfinite(src, src.key_b, i, b[i]));
        }
        let (a_bytes, a_dtype, _) = src.file.bytes(src.key_a)?;
        Ok(Self {
            src,
            a_bytes,
            a_dtype,
            d_in,
        })
    }

    /// Row `u` of lora_A, converted to float32 into `out` (d_in values).
    pub(crate) fn a_row(&self, u: usize, out: &mut [f32]) -> Result<()> {
        let stride = self.d_in * self.a_dtype.size();
        crate::dtype::to_f32(
            self.a_dtype,
            &self.a_bytes[u * stride..(u + 1) * stride],
            out,
        );
        match first_nonfinite(out) {
            Some(i) => Err(nonfinite(
                self.src,
                self.src.key_a,
                u * self.d_in + i,
                out[i],
            )),
            None => Ok(()),
        }
    }
}

/// The index of the first NaN or Inf.
fn first_nonfinite(x: &[f32]) -> Option<usize> {
    crate::safetensors_io::first_where(x, |v| !v.is_finite())
}

/// Puts one unit `[b ; a]` in canonical form and/or scales its parts to unit length, from one
/// measurement of the part norms (each row is 2-3 passes in L1, not 4-6). Returns the norms
/// `[‖b‖, ‖a‖]` the parts had before the normalization (of the canonical unit, if `canonical`).
/// Canonical then normalized is `[σ·b/‖b‖ ; σ·a/‖a‖]` with norms both `√(‖b‖·‖a‖)`.
fn finish_unit(row: &mut [f32], d_out: usize, canonical: bool, normalized: bool) -> [f32; 2] {
    let (b, a) = row.split_at_mut(d_out);
    let level = Level::detect();
    let nb = sq_norm(level, b).sqrt();
    let na = sq_norm(level, a).sqrt();
    if canonical && nb > 0.0 && na > 0.0 {
        let sign = canonical_sign(a);
        let (cb, ca, norm) = if normalized {
            (sign / nb, sign / na, (nb * na).sqrt())
        } else {
            let c = (na / nb).sqrt();
            (sign * c, sign / c, 0.0)
        };
        scale_part(b, cb);
        scale_part(a, ca);
        return [norm as f32; 2];
    }
    if normalized {
        for (part, n) in [(b, nb), (a, na)] {
            if n > 0.0 {
                scale_part(part, 1.0 / n);
            }
        }
    }
    [nb as f32, na as f32]
}

/// `part *= c`. The factor of a part of subnormal values exceeds f32's range although every
/// product fits (its entries are at most 1 in magnitude): then each product is taken in f64.
fn scale_part(part: &mut [f32], c: f64) {
    let c32 = c as f32;
    if c32.is_finite() {
        part.iter_mut().for_each(|v| *v *= c32);
    } else {
        part.iter_mut().for_each(|v| *v = (*v as f64 * c) as f32);
    }
}

/// +1, or −1 when the entry of `a` with the largest magnitude (the first on ties) is negative.
fn canonical_sign(a: &[f32]) -> f64 {
    let mut pivot = 0usize;
    for (j, v) in a.iter().enumerate() {
        if v.abs() > a[pivot].abs() {
            pivot = j;
        }
    }
    if a[pivot] < 0.0 {
        -1.0
    } else {
        1.0
    }
}

/// A value read as NaN or inf. The file's own values were checked at load (see
/// `MappedFile::check_finite`), so this is a value changed since, or read unchecked.
fn nonfinite(src: &UnitSource, key: &str, index: usize, value: f32) -> Error {
    Error::tensor(
        src.file.path(),
        key,
        format!(
            "contains {} (first at flat index {index}); weights must be finite",
            nonfinite_name(value)
        ),
    )
}

/// Stage "fold": lora_B's value at `index` times the adapter's scaling × weight is beyond
/// float32's range.
fn fold_overflow(src: &UnitSource, index: usize, value: f32, scale: f64) -> Error {
    Error::tensor(
        src.file.path(),
        src.key_b,
        format!(
            "fold: lora_B value {value:e} (flat index {index}) times the scaling × weight \
             {scale:e} overflows float32; lower lora_alpha or the weight"
        ),
    )
}

/// Canonical form of one unit `[b ; a]` (b the first `d_out` entries): rescale so that
/// ‖b‖ = ‖a‖ (the product b·aᵀ is unchanged), then flip both signs so that the entry of `a`
/// with the largest magnitude is positive (first such entry on ties). Zero units stay zero.
pub fn canonicalize(row: &mut [f32], d_out: usize) {
    finish_unit(row, d_out, true, false);
}

/// Rows of an adapter's B transposed into B_w at a time (see `MappedFactors::fill`).
const TILE_ROWS: usize = 64;

/// The module's units across the pool as the low-rank svd's `B_w` and `Aᵀ`, read from the
/// mapped safetensors files (no unit matrix in between).
pub struct MappedFactors<'a> {
    pub sources: &'a [UnitSource<'a>],
    pub layout: &'a UnitLayout,
    /// Whether the pool streams: its pages were dropped after the load's finite check, so
    /// each adapter's pages of the module are mapped in one call before they are read (not
    /// page by page), and dropped once read (a parallel merge reads other modules meanwhile,
    /// so only this module's pages go). Else they are mapped already and stay.
    pub stream: bool,
}

impl FactorSource for MappedFactors<'_> {
    fn fill<T: Real>(&self, bw: &mut [T], at: &mut [T], fold: &[f64]) -> Result<()> {
        let layout = self.layout;
        if fold.len() != layout.n_units {
            return Err(Error::invalid(format!(
                "{} folds for {} units",
                fold.len(),
                layout.n_units
            )));
        }
        let (d_out, d_in) = (layout.d_out, layout.d_in);
        let mut b = Vec::new();
        let mut row = vec![0f32; d_in];
        let mut first = 0;
        for (src, &r) in self.sources.iter().zip(&layout.ranks) {
            if self.stream {
                src.file.populate_pair(src.key_a, src.key_b);
            }
            let factors = AdapterFactors::open(src, d_in, &mut b)?;
            // B (d_out × r, row-major) into columns first.. of B_w, each times its fold: the
            // product in float64, rounded once (the same values as UnitRows). In tiles of
            // rows, each column written contiguously: row by row, the r writes 4·d_out bytes
            // apart fall into one L1 set and evict each other.
            let cols = &mut bw[first * d_out..(first + r) * d_out];
            for i0 in (0..d_out).step_by(TILE_ROWS) {
                let rows = TILE_ROWS.min(d_out - i0);
                let tile = &b[i0 * r..(i0 + rows) * r];
                for (u, col) in cols.chunks_exact_mut(d_out).enumerate() {
                    let f = fold[first + u];
                    let mut ok = true;
                    for (o, &v) in col[i0..i0 + rows]
                        .iter_mut()
                        .zip(tile[u..].iter().step_by(r))
                    {
                        *o = T::from_f64(v as f64 * f);
                        ok &= o.finite();
                    }
                    if !ok {
                        let o = (i0..i0 + rows)
                            .find(|&o| !T::from_f64(b[o * r + u] as f64 * f).finite())
                            .unwrap_or(i0);
                        return Err(fold_overflow(src, o * r + u, b[o * r + u], f));
                    }
                }
            }
            // A's rows are Aᵀ's columns: converted in place (float32) or through `row`.
            for (u, col) in at[first * d_in..(first + r) * d_in]
                .chunks_exact_mut(d_in)
                .enumerate()
            {
                match T::as_f32_mut(col) {
                    Some(col) => factors.a_row(u, col)?,
                    None => {
                        factors.a_row(u, &mut row)?;
                        col.iter_mut()
                            .zip(&row)
                            .for_each(|(o, &v)| *o = T::from_f64(v as f64));
                    }
                }
            }
            if self.stream {
                src.file.release_pair(src.key_a, src.key_b);
            }
            first += r;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::safetensors_io::{write, TensorOut};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn adapter(
        dir: &std::path::Path,
        name: &str,
        r: usize,
        d_out: usize,
        d_in: usize,
        seed: f32,
    ) -> PathBuf {
        let a: Vec<f32> = (0..r * d_in)
            .map(|i| (i as f32 * 0.37 + seed).sin())
            .collect();
        let b: Vec<f32> = (0..d_out * r)
            .map(|i| (i as f32 * 0.11 - seed).cos())
            .collect();
        let path = dir.join(name);
        write(
            &path,
            &[
                TensorOut {
                    name: "m.lora_A.weight",
                    dtype: DType::F32,
                    shape: &[r, d_in],
                    data: &a,
                },
                TensorOut {
                    name: "m.lora_B.weight",
                    dtype: DType::F32,
                    shape: &[d_out, r],
                    data: &b,
                },
            ],
            &BTreeMap::new(),
        )
        .unwrap();
        path
    }

    fn delta_from_units(u: &UnitMatrix) -> Vec<f64> {
        let w = u.d_out + u.d_in;
        let mut d = vec![0f64; u.d_out * u.d_in];
        for row in u.data.chunks_exact(w) {
            for o in 0..u.d_out {
                for i in 0..u.d_in {
                    d[o * u.d_in + i] += row[o] as f64 * row[u.d_out + i] as f64;
                }
            }
        }
        d
    }

    #[test]
    fn units_sum_to_weighted_deltas_and_canonical_form_keeps_them() {
        let dir = std::env::temp_dir().join(format!("rw-units-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (d_out, d_in) = (5, 7);
        let files: Vec<MappedFile> = [(2usize, 0.3f32), (4, 1.7)]
            .iter()
            .enumerate()
            .map(|(j, &(r, s))| {
                MappedFile::open(&adapter(&dir, &format!("{j}.st"), r, d_out, d_in, s)).unwrap()
            })
            .collect();
        let srcs: Vec<UnitSource> = files
            .iter()
            .zip([0.5f32, 2.0])
            .map(|(f, s)| UnitSource {
                file: f,
                key_a: "m.lora_A.weight",
                key_b: "m.lora_B.weight",
                b_scale: s,
            })
            .collect();
        let raw = unit_matrix(&srcs, false, false).unwrap();
        assert_eq!((raw.n_units, raw.ranks.clone()), (6, vec![2, 4]));
        // Reference: Σ_j s_j · B_j A_j computed directly from the factors.
        let mut want = vec![0f64; d_out * d_in];
        for (f, s) in files.iter().zip([0.5f64, 2.0]) {
            let a = f.read("m.lora_A.weight").unwrap();
            let b = f.read("m.lora_B.weight").unwrap();
            let r = a.len() / d_in;
            for o in 0..d_out {
                for i in 0..d_in {
                    let dot: f64 = (0..r)
                        .map(|k| b[o * r + k] as f64 * a[k * d_in + i] as f64)
                        .sum();
                    want[o * d_in + i] += s * dot;
                }
            }
        }
        let canon = unit_matrix(&srcs, true, false).unwrap();
        for u in [&raw, &canon] {
            for (g, w) in delta_from_units(u).iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "{g} vs {w}");
            }
        }
        // Normalized: unit-length parts whose norms restore the (canonical) units.
        for (canonical, reference) in [(false, &raw), (true, &canon)] {
            let nz = unit_matrix(&srcs, canonical, true).unwrap();
            let norms = nz.part_norms.as_ref().unwrap();
            let w = d_out + d_in;
            for ((row, want), nrm) in nz
                .data
                .chunks_exact(w)
                .zip(reference.data.chunks_exact(w))
                .zip(norms.chunks_exact(2))
            {
                for (j, (&v, &u)) in row.iter().zip(want).enumerate() {
                    let back = v * nrm[usize::from(j >= d_out)];
                    assert!((back - u).abs() <= 1e-5 * u.abs().max(1.0), "{back} vs {u}");
                }
                for part in [&row[..d_out], &row[d_out..]] {
                    let n: f64 = part
                        .iter()
                        .map(|&v| v as f64 * v as f64)
                        .sum::<f64>()
                        .sqrt();
                    assert!((n - 1.0).abs() < 1e-6, "part norm {n}");
                }
            }
        }
        assert!(raw.part_norms.is_none());
        for row in canon.data.chunks_exact(d_out + d_in) {
            let nb: f32 = row[..d_out].iter().map(|v| v * v).sum::<f32>().sqrt();
            let na: f32 = row[d_out..].iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((nb - na).abs() < 1e-4 * na);
            let piv =
                row[d_out..]
                    .iter()
                    .cloned()
                    .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
            assert!(piv > 0.0);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn subnormal_parts_normalize_to_finite_unit_length() {
        let mut row = vec![1e-42f32, -1e-42, 3e-41, 1e-44];
        let norms = finish_unit(&mut row, 2, false, true);
        assert!(row.iter().all(|v| v.is_finite()), "{row:?}");
        for part in [&row[..2], &row[2..]] {
            let n: f64 = part.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            assert!((n - 1.0).abs() < 1e-6, "{row:?}");
        }
        assert!(norms[0] > 0.0 && norms[1] > 0.0);
        let mut canon = vec![1e-42f32, -1e-42, 3e-41, 1e-44];
        finish_unit(&mut canon, 2, true, true);
        assert!(canon.iter().all(|v| v.is_finite()), "{canon:?}");
    }

    #[test]
    fn fold_overflow_and_empty_modules_are_errors() {
        let dir = std::env::temp_dir().join(format!("rw-units-fold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.st");
        let (a, b) = (vec![1f32; 2 * 7], vec![1e10f32; 5 * 2]);
        let t = |name, shape, data| TensorOut {
            name,
            dtype: DType::F32,
            shape,
            data,
        };
        let (sa, sb) = ([2, 7], [5, 2]);
        let outs = [
            t("m.lora_A.weight", &sa[..], &a),
            t("m.lora_B.weight", &sb[..], &b),
        ];
        write(&path, &outs, &BTreeMap::new()).unwrap();
        let f = MappedFile::open(&path).unwrap();
        let src = UnitSource {
            file: &f,
            key_a: "m.lora_A.weight",
            key_b: "m.lora_B.weight",
            b_scale: 1e30,
        };
        let e = unit_matrix(&[src], false, false).err().unwrap().to_string();
        assert!(
            e.contains("a.st")
                && e.contains("m.lora_B.weight")
                && e.contains("fold:")
                && e.contains("overflows"),
            "{e}"
        );
        let empty = MappedFile::open(&adapter(&dir, "e.st", 2, 0, 7, 0.0)).unwrap();
        let src = UnitSource {
            file: &empty,
            key_a: "m.lora_A.weight",
            key_b: "m.lora_B.weight",
            b_scale: 1.0,
        };
        let e = unit_matrix(&[src], false, false).err().unwrap().to_string();
        assert!(e.contains("e.st") && e.contains("out_features 0"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn canonical_form_is_invariant_to_scale_and_sign() {
        let mut u1 = vec![1.0f32, -2.0, 3.0, 0.5, -4.0];
        let mut u2: Vec<f32> = u1
            .iter()
            .enumerate()
            .map(|(i, v)| if i < 2 { -3.0 * v } else { -v / 3.0 })
            .collect();
        canonicalize(&mut u1, 2);
        canonicalize(&mut u2, 2);
        for (a, b) in u1.iter().zip(&u2) {
            assert!((a - b).abs() < 1e-5, "{u1:?} {u2:?}");
        }
    }

    #[test]
    fn mismatched_dims_and_ranks_are_reported() {
        let dir = std::env::temp_dir().join(format!("rw-units-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f1 = MappedFile::open(&adapter(&dir, "a.st", 2, 5, 7, 0.0)).unwrap();
        let f2 = MappedFile::open(&adapter(&dir, "b.st", 2, 6, 7, 0.0)).unwrap();
        let src = |f| UnitSource {
            file: f,
            key_a: "m.lora_A.weight",
            key_b: "m.lora_B.weight",
            b_scale: 1.0,
        };
        let e = unit_matrix(&[src(&f1), src(&f2)], false, false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("6×7") && e.contains("5×7") && e.contains("b.st"),
            "{e}"
        );
        let bad = UnitSource {
            file: &f1,
            key_a: "m.lora_A.weight",
            key_b: "m.lora_A.weight",
            b_scale: 1.0,
        };
        assert!(unit_matrix(&[bad], false, false)
            .err()
            .unwrap()
            .to_string()
            .contains("rank mismatch"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Conv LoRA factors, A (r, in, kh, kw) and B (out, r, 1, 1), give the units of the same
    /// values read as 2-D (r, in·kh·kw) and (out, r); a B with a kernel is refused.
    #[test]
    fn conv_factors_are_flattened_kernels() {
        let dir = std::env::temp_dir().join(format!("rw-units-conv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (r, d_out, c_in, kh, kw) = (2usize, 3usize, 4usize, 3usize, 2usize);
        let d_in = c_in * kh * kw;
        let a: Vec<f32> = (0..r * d_in).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..d_out * r).map(|i| (i as f32 * 0.11).cos()).collect();
        let conv = dir.join("conv.st");
        fn t<'a>(name: &'a str, shape: &'a [usize], data: &'a [f32]) -> TensorOut<'a> {
            TensorOut {
                name,
                dtype: DType::F32,
                shape,
                data,
            }
        }
        write(
            &conv,
            &[
                t("m.lora_A.weight", &[r, c_in, kh, kw], &a),
                t("m.lora_B.weight", &[d_out, r, 1, 1], &b),
                t("k.lora_A.weight", &[r, c_in, kh, kw], &a),
                t("k.lora_B.weight", &[d_out, r, 3, 1], &[0.0; 18]),
            ],
            &BTreeMap::new(),
        )
        .unwrap();
        let flat = dir.join("flat.st");
        write(
            &flat,
            &[
                t("m.lora_A.weight", &[r, d_in], &a),
                t("m.lora_B.weight", &[d_out, r], &b),
            ],
            &BTreeMap::new(),
        )
        .unwrap();
        let (fc, ff) = (
            MappedFile::open(&conv).unwrap(),
            MappedFile::open(&flat).unwrap(),
        );
        let src = |file, key_a, key_b| UnitSource {
            file,
            key_a,
            key_b,
            b_scale: 0.5,
        };
        let u_conv = unit_matrix(
            &[src(&fc, "m.lora_A.weight", "m.lora_B.weight")],
            false,
            false,
        )
        .unwrap();
        let u_flat = unit_matrix(
            &[src(&ff, "m.lora_A.weight", "m.lora_B.weight")],
            false,
            false,
        )
        .unwrap();
        assert_eq!((u_conv.d_out, u_conv.d_in), (d_out, d_in));
        assert_eq!(u_conv.data, u_flat.data);
        let e = unit_matrix(
            &[src(&fc, "k.lora_A.weight", "k.lora_B.weight")],
            false,
            false,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("1×1 conv") && e.contains("k.lora_B.weight"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// MappedFactors (straight from files: f16 and f32, mixed ranks, B in several row tiles)
    /// fills the same B_w and Aᵀ as UnitRows on the values read back, streaming or not.
    #[test]
    fn mapped_factors_fill_like_unit_rows() {
        use crate::linalg::lowrank_svd::UnitRows;
        use crate::rng::Mmix;
        use crate::scalar::Real;
        let (d_out, d_in) = (133, 70); // B in three row tiles of TILE_ROWS = 64
        let dir = std::env::temp_dir().join(format!("rw-mf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut g = Mmix(7);
        let mut files = Vec::new();
        for (i, (r, dtype)) in [(3, DType::F16), (5, DType::F32)].into_iter().enumerate() {
            let a: Vec<f32> = (0..r * d_in).map(|_| (g.next_f64() - 0.5) as f32).collect();
            let b: Vec<f32> = (0..d_out * r)
                .map(|_| (g.next_f64() - 0.5) as f32)
                .collect();
            let path = dir.join(format!("{i}.safetensors"));
            let (sa, sb) = ([r, d_in], [d_out, r]);
            let t = |name, shape, data| TensorOut {
                name,
                dtype,
                shape,
                data,
            };
            write(
                &path,
                &[t("m.A", &sa, &a), t("m.B", &sb, &b)],
                &Default::default(),
            )
            .unwrap();
            files.push(MappedFile::open(&path).unwrap());
        }
        let sources: Vec<UnitSource> = files
            .iter()
            .map(|file| UnitSource {
                file,
                key_a: "m.A",
                key_b: "m.B",
                b_scale: 1.0,
            })
            .collect();
        let layout = unit_layout(&sources).unwrap();
        let r = layout.n_units;
        let fold: Vec<f64> = (0..r).map(|i| 0.3 + i as f64 * 0.17).collect();
        // Unit rows from the values as read back (f16 rounding included).
        let mut units = Vec::new();
        for (src, &ri) in sources.iter().zip(&layout.ranks) {
            let (a, b) = (src.file.read("m.A").unwrap(), src.file.read("m.B").unwrap());
            for u in 0..ri {
                units.extend((0..d_out).map(|o| b[o * ri + u]));
                units.extend_from_slice(&a[u * d_in..(u + 1) * d_in]);
            }
        }
        fn both<T: Real>(src: &impl FactorSource, n: usize, d: usize, fold: &[f64]) -> Vec<T> {
            let mut out = vec![T::from_f64(f64::NAN); n * fold.len() + d * fold.len()];
            let (bw, at) = out.split_at_mut(n * fold.len());
            src.fill(bw, at, fold).unwrap();
            out
        }
        let rows = UnitRows {
            units: &units,
            d_out,
        };
        let want32 = both::<f32>(&rows, d_out, d_in, &fold);
        let want64 = both::<f64>(&rows, d_out, d_in, &fold);
        for stream in [false, true] {
            let mapped = MappedFactors {
                sources: &sources,
                layout: &layout,
                stream,
            };
            assert_eq!(both::<f32>(&mapped, d_out, d_in, &fold), want32);
            assert_eq!(both::<f64>(&mapped, d_out, d_in, &fold), want64);
        }
        drop(files);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
