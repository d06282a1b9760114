//! `rankwise._core.gram_top_k`: the `svd` baseline's top-k triplets from stacked factors.

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use rankwise_core::linalg::lowrank_svd::{top_k, TopK};

use crate::arrays::{c_order, invalid};
use crate::run::run_quick;

pub type Out<'py> = Option<(Bound<'py, PyArray2<f64>>, Bound<'py, PyArray2<f64>>)>;

/// `(U_k·S_k, Vh_k)` (float64, `d_out × k` and `k × d_in`) of `Σ_i fold_i·b_i·a_iᵀ`, row i of
/// `units` (R × (d_out + d_in), float32 or float64) being `[b_i ; a_i]`. With
/// `allow_single`, in float32 where that is provably close (else float64); `parallel`: the two
/// Gram matrices at once on the rankwise pool (False for callers that run modules at once).
/// None where the Gram path declines (see rust/core/src/linalg/lowrank_svd.rs).
#[pyfunction]
#[pyo3(signature = (units, d_out, fold, k, allow_single=false, parallel=false))]
pub fn gram_top_k<'py>(
    py: Python<'py>,
    units: &Bound<'py, PyAny>,
    d_out: usize,
    fold: PyReadonlyArray1<'py, f64>,
    k: usize,
    allow_single: bool,
    parallel: bool,
) -> PyResult<Out<'py>> {
    let fs = c_order(&fold);
    let split = |width: usize| {
        width
            .checked_sub(d_out)
            .ok_or_else(|| invalid(format!("d_out = {d_out} exceeds the units' width {width}")))
    };
    let res: Option<TopK> = if let Ok(u) = units.extract::<PyReadonlyArray2<'py, f64>>() {
        let d_in = split(u.shape()[1])?;
        let u = c_order(&u);
        run_quick(py, || {
            top_k(&u, d_out, d_in, &fs, k, allow_single, parallel)
        })?
    } else if let Ok(u) = units.extract::<PyReadonlyArray2<'py, f32>>() {
        let d_in = split(u.shape()[1])?;
        let u = c_order(&u);
        run_quick(py, || {
            top_k(&u, d_out, d_in, &fs, k, allow_single, parallel)
        })?
    } else {
        return Err(invalid("units must be a 2-d float32 or float64 array"));
    };
    top_k_arrays(py, res, d_out, k)
}

/// `(U_k·S_k, Vh_k)` as numpy arrays, or None.
pub fn top_k_arrays<'py>(
    py: Python<'py>,
    res: Option<TopK>,
    d_out: usize,
    k: usize,
) -> PyResult<Out<'py>> {
    let Some(TopK { us, vh }) = res else {
        return Ok(None);
    };
    let d_in = vh.len() / k.max(1);
    let us = Array2::from_shape_vec((d_out, k), us).map_err(|e| invalid(e.to_string()))?;
    let vh = Array2::from_shape_vec((k, d_in), vh).map_err(|e| invalid(e.to_string()))?;
    Ok(Some((us.into_pyarray(py), vh.into_pyarray(py))))
}
