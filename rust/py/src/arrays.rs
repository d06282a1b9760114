//! The binding's one array policy.
//!
//! Inputs: any layout. Values are read in C (row-major) order: borrowed when the array is
//! C-contiguous, else copied once into C order before the GIL is released (numpy's
//! `as_slice` also accepts a Fortran-ordered array, whose memory is not C order, so it is
//! never used on inputs). Outputs given as `out=`: a writeable, C-contiguous array of exactly
//! the dtype and shape the result has, else a `ValueError` (`MergeConfigError`) saying which.

use std::borrow::Cow;

use numpy::ndarray::Dimension;
use numpy::{
    dtype, Element, PyArray, PyArrayDescrMethods, PyReadonlyArray, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use rankwise_core::Error;

use crate::errors::to_pyerr;

/// The error of a bad argument (`MergeConfigError`, a `ValueError`).
pub fn invalid(reason: impl Into<String>) -> PyErr {
    to_pyerr(Error::invalid(reason))
}

/// The array's values in C order: borrowed when it is C-contiguous, else copied.
pub fn c_order<'a, T: Element + Copy, D: Dimension>(
    arr: &'a PyReadonlyArray<'_, T, D>,
) -> Cow<'a, [T]> {
    match arr.as_slice() {
        Ok(s) if arr.is_c_contiguous() => Cow::Borrowed(s),
        _ => Cow::Owned(arr.as_array().iter().copied().collect()),
    }
}

/// A shape as Python writes it: `(3, 4)`, `(5,)`.
fn py_shape(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", dims.join(", "))
        }
    }
}

/// `out` checked to be an array the result can be written into: dtype `T`, exactly `shape`,
/// C-contiguous and writeable.
pub fn out_array<'py, T: Element, D: Dimension>(
    out: &Bound<'py, PyAny>,
    shape: &[usize],
    what: &str,
) -> PyResult<Bound<'py, PyArray<T, D>>> {
    let py = out.py();
    let arr = out
        .downcast::<PyUntypedArray>()
        .map_err(|_| invalid(format!("{what} must be a numpy array")))?;
    let want = dtype::<T>(py);
    if !arr.dtype().is_equiv_to(&want) {
        return Err(invalid(format!(
            "{what} has dtype {}, expected {}",
            arr.dtype(),
            want
        )));
    }
    if arr.shape() != shape {
        return Err(invalid(format!(
            "{what} has shape {}, expected {}",
            py_shape(arr.shape()),
            py_shape(shape)
        )));
    }
    if !arr.is_c_contiguous() {
        return Err(invalid(format!("{what} must be C-contiguous")));
    }
    let typed = arr
        .downcast::<PyArray<T, D>>()
        .map_err(|e| invalid(format!("{what}: {e}")))?;
    let writeable: bool = arr.getattr("flags")?.getattr("writeable")?.extract()?;
    if !writeable {
        return Err(invalid(format!("{what} is read-only")));
    }
    Ok(typed.clone())
}

/// An integer argument in `lo..=hi` (taken as i128, so that a negative or huge Python int
/// reaches this check), else an `OptionError` naming it, not pyo3's OverflowError.
pub fn int_arg(v: i128, name: &str, lo: u64, hi: u64) -> PyResult<u64> {
    if v >= lo as i128 && v <= hi as i128 {
        return Ok(v as u64);
    }
    let range = match (lo, hi) {
        (lo, u64::MAX) => format!("in {lo}..2**64"),
        (lo, hi) => format!("in {lo}..={hi}"),
    };
    Err(invalid(format!(
        "{name} must be an integer {range}, got {v}"
    )))
}

/// `int_arg` as a usize.
pub fn size_arg(v: i128, name: &str, lo: u64) -> PyResult<usize> {
    int_arg(v, name, lo, u64::MAX).map(|v| usize::try_from(v).unwrap_or(usize::MAX))
}
