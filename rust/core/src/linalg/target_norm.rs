//! `‖Σ_i p_i·b_i·a_iᵀ‖_F²` from the rows `[b_i ; a_i]` of a unit matrix, as `pᵀ(G_b ∘ G_a)p`
//! with the two n × n Gram matrices of the parts (n²·(d_out + d_in) flops, never the
//! d_out × d_in sum): the target norm of LEGO's `projection-norm` assembly. The two Grams are
//! formed at once on the rayon pool (float32, faer's triangular GEMM), the sum in float64.
//! [`unit_grams`] gives the Grams themselves: LEGO clusters from their sum when it forms them
//! (`crate::kmeans::kmeans_gram`).

use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure as Bs};
use faer::{Accum, MatMut, MatRef, Par};

use crate::error::{catch_panic, Error, Result};

/// `Σ_ij p_i·p_j·(b_i·b_j)·(a_i·a_j)` for the `n × (d_out + d_in)` row-major `x` (≥ 0).
pub fn units_sq_norm(x: &[f32], n: usize, d_out: usize, p: &[f64]) -> Result<f64> {
    if n == 0 {
        return Ok(0.0);
    }
    if p.len() != n {
        return Err(Error::invalid(format!(
            "units hold {n} rows, {} row scales",
            p.len()
        )));
    }
    let (gb, ga) = unit_grams(x, n, d_out, false)?;
    grams_sq_norm(&gb, &ga, n, p)
}

/// The Gram matrices `(G_b, G_a)` (n × n, f32, column-major) of the b parts (the first `d_out`
/// columns) and the a parts of the `n × width` row-major `x`, formed at once on the rayon pool;
/// only the lower triangles unless `full` (then symmetric, and row-major as well).
pub fn unit_grams(x: &[f32], n: usize, d_out: usize, full: bool) -> Result<(Vec<f32>, Vec<f32>)> {
    let width = x.len().checked_div(n).unwrap_or(0);
    if width * n != x.len() || d_out > width {
        return Err(Error::invalid(format!(
            "units hold {} values for {n} rows, d_out = {d_out}",
            x.len()
        )));
    }
    let cells = n
        .checked_mul(n)
        .ok_or_else(|| Error::invalid(format!("{n} units: their Gram matrix is too large")))?;
    let alloc = || -> Result<Vec<f32>> {
        let mut v = Vec::new();
        v.try_reserve_exact(cells).map_err(|_| {
            Error::invalid(format!(
                "{n} units: cannot allocate their {n} × {n} Gram matrix"
            ))
        })?;
        v.resize(cells, 0.0);
        Ok(v)
    };
    let (mut gb, mut ga) = (alloc()?, alloc()?);
    if n == 0 {
        return Ok((gb, ga));
    }
    catch_panic("the unit Grams", || {
        let all = MatRef::from_row_major_slice(x, n, width);
        let (xb, xa) = (all.subcols(0, d_out), all.subcols(d_out, width - d_out));
        let gram = |g: &mut [f32], part: MatRef<'_, f32>| {
            tri_matmul(
                MatMut::from_column_major_slice_mut(g, n, n),
                Bs::TriangularLower,
                Accum::Replace,
                part,
                Bs::Rectangular,
                part.transpose(),
                Bs::Rectangular,
                1.0f32,
                Par::Seq,
            );
            if full {
                mirror_lower(g, n);
            }
        };
        rayon::join(|| gram(&mut gb, xb), || gram(&mut ga, xa));
        Ok(())
    })?;
    Ok((gb, ga))
}

/// Copies the lower triangle of the column-major n × n `g` onto its upper one, in tiles (the
/// transposed reads stay in cache).
fn mirror_lower(g: &mut [f32], n: usize) {
    const T: usize = 64;
    for j0 in (0..n).step_by(T) {
        for i0 in (j0..n).step_by(T) {
            for j in j0..(j0 + T).min(n) {
                for i in i0.max(j + 1)..(i0 + T).min(n) {
                    g[i * n + j] = g[j * n + i];
                }
            }
        }
    }
}

/// `pᵀ(G_b ∘ G_a)p` in f64 from the lower triangles of the two column-major Grams (≥ 0).
pub fn grams_sq_norm(gb: &[f32], ga: &[f32], n: usize, p: &[f64]) -> Result<f64> {
    if gb.len() != n * n || ga.len() != n * n || p.len() != n {
        return Err(Error::invalid(format!(
            "Grams of {} and {} values, {} row scales, for {n} units",
            gb.len(),
            ga.len(),
            p.len()
        )));
    }
    // Lower triangles, column j from row j down (column-major): diagonal once, the rest twice.
    let mut total = 0.0f64;
    for j in 0..n {
        let (cb, ca) = (&gb[j * n..(j + 1) * n], &ga[j * n..(j + 1) * n]);
        let mut col = 0.0f64;
        for i in j + 1..n {
            col += p[i] * (cb[i] as f64) * (ca[i] as f64);
        }
        total += p[j] * (2.0 * col + p[j] * (cb[j] as f64) * (ca[j] as f64));
    }
    Ok(total.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_dense_sum() {
        let (n, d_out, d_in) = (37, 11, 7);
        let w = d_out + d_in;
        let x: Vec<f32> = (0..n * w)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5)
            .collect();
        let p: Vec<f64> = (0..n).map(|i| 0.5 + (i % 5) as f64 * 0.3 - 0.6).collect();
        let mut t = vec![0f64; d_out * d_in];
        for r in 0..n {
            let row = &x[r * w..(r + 1) * w];
            for o in 0..d_out {
                for c in 0..d_in {
                    t[o * d_in + c] += p[r] * row[o] as f64 * row[d_out + c] as f64;
                }
            }
        }
        let want: f64 = t.iter().map(|v| v * v).sum();
        let got = units_sq_norm(&x, n, d_out, &p).unwrap();
        assert!((got - want).abs() <= 1e-5 * want, "{got} vs {want}");
        assert_eq!(units_sq_norm(&[], 0, 3, &[]).unwrap(), 0.0);
        assert!(units_sq_norm(&x, n, d_out, &p[1..]).is_err());
        assert!(units_sq_norm(&x, n, w + 1, &p).is_err());
    }
}
