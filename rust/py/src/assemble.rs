//! `rankwise._core.cluster_means`: LEGO's centroids from its clustered units, GIL released.

use numpy::ndarray::Array2;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use crate::arrays::{c_order, invalid};
use crate::run::run;
use rankwise_core::assemble;

type Out<'py> = (
    Bound<'py, PyArray2<f64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
);

/// Per cluster of the rows of `x` (n × width, float32): the mean raw unit
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
    let xs = c_order(&x);
    let ls = c_order(&labels);
    let ss = c_order(&signs);
    let ps = part_norms.as_ref().map(c_order);
    let r = run(py, || {
        assemble::cluster_means(&xs, width, d_out, &ls, &ss, k, ps.as_deref())
    })?;
    let means = Array2::from_shape_vec((k, width), r.means).map_err(|e| invalid(e.to_string()))?;
    let counts: Vec<i64> = r.counts.iter().map(|&c| c as i64).collect();
    Ok((
        means.into_pyarray(py),
        PyArray1::from_vec(py, counts),
        PyArray1::from_vec(py, r.mean_norm_b),
        PyArray1::from_vec(py, r.mean_norm_a),
    ))
}
