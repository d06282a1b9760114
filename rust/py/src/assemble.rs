//! `rankwise._core.cluster_means`: LEGO's centroids from its clustered units, GIL released.

use numpy::ndarray::Array2;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use rankwise_core::assemble;
use rankwise_core::Error;

use crate::errors::to_pyerr;
use crate::run::run;

type Out<'py> = (
    Bound<'py, PyArray2<f64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
);

/// Per cluster of the rows of `x` (n × width, float32, C-contiguous): the mean raw unit
/// (`k × width` float64; members counted as `signs[i]·x[i]`, parts multiplied back by
/// `part_norms` when given, `n × 2`), the member counts, and the members' mean b-part and a-part
/// norms (b: the first `d_out` columns).
#[pyfunction]
#[pyo3(signature = (x, labels, signs, k, d_out, part_norms=None))]
pub fn cluster_means<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    labels: PyReadonlyArray1<'py, i64>,
    signs: PyReadonlyArray1<'py, f32>,
    k: usize,
    d_out: usize,
    part_norms: Option<PyReadonlyArray2<'py, f32>>,
) -> PyResult<Out<'py>> {
    let width = x.shape()[1];
    let contiguous = |what: &str| {
        to_pyerr(Error::invalid(format!(
            "{what} must be a C-contiguous array"
        )))
    };
    let xs = x.as_slice().map_err(|_| contiguous("x"))?;
    let ls = labels.as_slice().map_err(|_| contiguous("labels"))?;
    let ss = signs.as_slice().map_err(|_| contiguous("signs"))?;
    let ps = match &part_norms {
        Some(p) => Some(p.as_slice().map_err(|_| contiguous("part_norms"))?),
        None => None,
    };
    let r = run(py, || {
        assemble::cluster_means(xs, width, d_out, ls, ss, k, ps)
    })?;
    let means = Array2::from_shape_vec((k, width), r.means)
        .map_err(|e| to_pyerr(Error::invalid(e.to_string())))?;
    let counts: Vec<i64> = r.counts.iter().map(|&c| c as i64).collect();
    Ok((
        means.into_pyarray(py),
        PyArray1::from_vec(py, counts),
        PyArray1::from_vec(py, r.mean_norm_b),
        PyArray1::from_vec(py, r.mean_norm_a),
    ))
}
