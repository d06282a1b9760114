//! Unit alignment (Hungarian matching) and the delta Gram matrix, as seen from Python.
//!
//! Arrays in any layout (`crate::arrays`). Factors follow PEFT: A is `r × d_in`, B is
//! `d_out × r`.

use std::borrow::Cow;

use numpy::ndarray::{Array1, Array2};
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyReadonlyArray2, PyReadonlyArray3, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use rankwise_core::align::{self, Alignment, Similarity, UnitsView};
use rankwise_core::Error;

use crate::arrays::{c_order, invalid as err};
use crate::errors::to_pyerr;
use crate::run::{run, run_quick};

/// One adapter's factors of one module, in C order: (A, B, r, d_out, d_in).
struct Factors<'a> {
    a: Cow<'a, [f32]>,
    b: Cow<'a, [f32]>,
    r: usize,
    d_out: usize,
    d_in: usize,
}

impl<'a> Factors<'a> {
    fn new(
        a: &'a PyReadonlyArray2<'_, f32>,
        b: &'a PyReadonlyArray2<'_, f32>,
        what: &str,
    ) -> PyResult<Self> {
        let (sa, sb) = (a.shape(), b.shape());
        if sa[0] != sb[1] {
            return Err(err(format!(
                "{what}: A has shape {sa:?} (rank × in) but B has shape {sb:?} (out × rank)"
            )));
        }
        let (a, b) = (c_order(a), c_order(b));
        for (name, v) in [("A", &a), ("B", &b)] {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(err(format!(
                    "{what}: {name} has a non-finite value ({}) at flat index {i}",
                    rankwise_core::safetensors_io::nonfinite_name(v[i])
                )));
            }
        }
        Ok(Factors {
            a,
            b,
            r: sa[0],
            d_out: sb[0],
            d_in: sa[1],
        })
    }

    fn view(&self, what: &str) -> PyResult<UnitsView<'_>> {
        UnitsView::from_factors(&self.a, &self.b, self.r, self.d_out, self.d_in)
            .map_err(|e| err(format!("{what}: {e}")))
    }
}

fn parse_similarity(name: &str) -> PyResult<Similarity> {
    Similarity::parse(name).map_err(to_pyerr)
}

/// Exact minimum-cost assignment of a square cost matrix: `assign[i]` is row i's column.
#[pyfunction]
pub fn hungarian<'py>(
    py: Python<'py>,
    cost: PyReadonlyArray2<'py, f64>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let shape = cost.shape();
    if shape[0] != shape[1] {
        return Err(err(format!(
            "the cost matrix must be square, got shape {shape:?}"
        )));
    }
    let n = shape[0];
    let data = c_order(&cost);
    let assign = run_quick(py, || align::hungarian(&data, n))?;
    Ok(Array1::from_iter(assign.into_iter().map(|j| j as i64)).into_pyarray(py))
}

/// Aligns pairs of one module's factors: `pairs` lists `(A_ref, B_ref, A_other, B_other)`.
/// Returns, per pair, `(perm, signs, score)`: other's unit `perm[i]` times `signs[i]` matches
/// reference unit i; `score` is the mean similarity of the matched units. Parallel over pairs.
#[pyfunction]
#[pyo3(signature = (pairs, similarity="delta"))]
#[allow(clippy::type_complexity)]
pub fn align_factors<'py>(
    py: Python<'py>,
    pairs: Vec<(
        PyReadonlyArray2<'py, f32>,
        PyReadonlyArray2<'py, f32>,
        PyReadonlyArray2<'py, f32>,
        PyReadonlyArray2<'py, f32>,
    )>,
    similarity: &str,
) -> PyResult<Vec<(Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<f32>>, f64)>> {
    let sim = parse_similarity(similarity)?;
    let mut owned = Vec::with_capacity(pairs.len());
    for (i, (ar, br, ao, bo)) in pairs.iter().enumerate() {
        owned.push((
            Factors::new(ar, br, &format!("pair {i}, reference"))?,
            Factors::new(ao, bo, &format!("pair {i}, other"))?,
        ));
    }
    let mut views = Vec::with_capacity(owned.len());
    for (i, (fr, fo)) in owned.iter().enumerate() {
        views.push((
            fr.view(&format!("pair {i}, reference"))?,
            fo.view(&format!("pair {i}, other"))?,
        ));
    }
    let out = run(py, || align::align_many(&views, sim))?;
    Ok(out
        .into_iter()
        .map(|Alignment { perm, signs, score }| {
            (
                Array1::from_iter(perm.into_iter().map(|j| j as i64)).into_pyarray(py),
                Array1::from(signs).into_pyarray(py),
                score,
            )
        })
        .collect())
}

/// Aligns each of `others[m, r, D]` (unit matrices, rows `[b ; a]`, D = d_out + d_in) onto
/// `reference[r, D]`. Returns `(perms int64[m, r], signs float32[m, r], scores float64[m])`.
#[pyfunction]
#[pyo3(signature = (reference, others, d_out, similarity="delta"))]
#[allow(clippy::type_complexity)]
pub fn align_units<'py>(
    py: Python<'py>,
    reference: PyReadonlyArray2<'py, f32>,
    others: PyReadonlyArray3<'py, f32>,
    d_out: usize,
    similarity: &str,
) -> PyResult<(
    Bound<'py, PyArray2<i64>>,
    Bound<'py, PyArray2<f32>>,
    Bound<'py, PyArray1<f64>>,
)> {
    let sim = parse_similarity(similarity)?;
    let (rs, os) = (reference.shape().to_vec(), others.shape().to_vec());
    let (r, width) = (rs[0], rs[1]);
    if os[1..] != rs[..] {
        return Err(to_pyerr(Error::incompatible(format!(
            "others have shape {os:?} but the reference has shape {rs:?}: alignment needs \
             equal ranks and module shapes"
        ))));
    }
    if d_out > width {
        return Err(err(format!(
            "d_out = {d_out} exceeds the unit width {width}"
        )));
    }
    let d_in = width - d_out;
    let ref_data = c_order(&reference);
    let oth_data = c_order(&others);
    let m = os[0];
    let rv = UnitsView::from_units(&ref_data, r, d_out, d_in).map_err(to_pyerr)?;
    let block = r * width;
    let mut pairs = Vec::with_capacity(m);
    for j in 0..m {
        let ov = UnitsView::from_units(&oth_data[j * block..(j + 1) * block], r, d_out, d_in)
            .map_err(to_pyerr)?;
        pairs.push((rv, ov));
    }
    let out = run(py, || align::align_many(&pairs, sim))?;
    let mut perms = Array2::<i64>::zeros((m, r));
    let mut signs = Array2::<f32>::zeros((m, r));
    let mut scores = Array1::<f64>::zeros(m);
    for (j, al) in out.into_iter().enumerate() {
        for i in 0..r {
            perms[[j, i]] = al.perm[i] as i64;
            signs[[j, i]] = al.signs[i];
        }
        scores[j] = al.score;
    }
    Ok((
        perms.into_pyarray(py),
        signs.into_pyarray(py),
        scores.into_pyarray(py),
    ))
}

/// `G[i, j] = ⟨ΔW_i, ΔW_j⟩_F` of one module across adapters, from their factors `(A, B)`
/// (ΔW = B @ A; ranks may differ), without forming any ΔW. float64 `[n, n]`.
#[pyfunction]
pub fn delta_gram<'py>(
    py: Python<'py>,
    factors: Vec<(PyReadonlyArray2<'py, f32>, PyReadonlyArray2<'py, f32>)>,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let owned = factors
        .iter()
        .enumerate()
        .map(|(i, (a, b))| Factors::new(a, b, &format!("adapter {i}")))
        .collect::<PyResult<Vec<_>>>()?;
    let views = owned
        .iter()
        .enumerate()
        .map(|(i, f)| f.view(&format!("adapter {i}")))
        .collect::<PyResult<Vec<_>>>()?;
    let n = views.len();
    let g = run(py, || align::delta_gram(&views))?;
    let arr = Array2::from_shape_vec((n, n), g).map_err(|e| err(e.to_string()))?;
    Ok(arr.into_pyarray(py))
}
