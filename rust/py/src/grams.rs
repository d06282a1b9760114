//! `rankwise._core.unit_grams`, `grams_sq_norm`, `units_sq_norm`: the Gram matrices of a unit
//! matrix's parts and the target norm from them (rust/core/src/linalg/target_norm.rs).

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use rankwise_core::linalg::target_norm;

use crate::arrays::{c_order, invalid};
use crate::run::run_quick;

type Grams<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray2<f32>>);

/// `‖Σ_i p_i·b_i·a_iᵀ‖_F²` of the rows `[b_i ; a_i]` of `units` (R × (d_out + d_in), float32)
/// from the two R × R Gram matrices, GIL released.
#[pyfunction]
pub fn units_sq_norm<'py>(
    py: Python<'py>,
    units: PyReadonlyArray2<'py, f32>,
    d_out: usize,
    p: PyReadonlyArray1<'py, f64>,
) -> PyResult<f64> {
    let n = units.shape()[0];
    let (u, ps) = (c_order(&units), c_order(&p));
    run_quick(py, || target_norm::units_sq_norm(&u, n, d_out, &ps))
}

/// `(G_b, G_a)`: the symmetric R × R float32 Gram matrices of the b parts (first `d_out`
/// columns) and the a parts of `units` (R × width, float32), GIL released.
#[pyfunction]
pub fn unit_grams<'py>(
    py: Python<'py>,
    units: PyReadonlyArray2<'py, f32>,
    d_out: usize,
) -> PyResult<Grams<'py>> {
    let n = units.shape()[0];
    let u = c_order(&units);
    let (gb, ga) = run_quick(py, || target_norm::unit_grams(&u, n, d_out, true))?;
    let gb = Array2::from_shape_vec((n, n), gb).map_err(|e| invalid(e.to_string()))?;
    let ga = Array2::from_shape_vec((n, n), ga).map_err(|e| invalid(e.to_string()))?;
    Ok((gb.into_pyarray(py), ga.into_pyarray(py)))
}

/// `pᵀ(G_b ∘ G_a)p` (float64) from two symmetric R × R float32 Grams (the lower triangles are
/// read), GIL released.
#[pyfunction]
pub fn grams_sq_norm<'py>(
    py: Python<'py>,
    gb: PyReadonlyArray2<'py, f32>,
    ga: PyReadonlyArray2<'py, f32>,
    p: PyReadonlyArray1<'py, f64>,
) -> PyResult<f64> {
    let n = p.len();
    if gb.shape() != [n, n] || ga.shape() != [n, n] {
        return Err(invalid(format!(
            "Grams of shapes {:?} and {:?} for {n} row scales",
            gb.shape(),
            ga.shape()
        )));
    }
    let (b, a, ps) = (c_order(&gb), c_order(&ga), c_order(&p));
    run_quick(py, || target_norm::grams_sq_norm(&b, &a, n, &ps))
}
