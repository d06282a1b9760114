//! The one place where core errors become Python exceptions. The classes live in
//! `rankwise.errors` (they subclass both RankwiseError and a builtin, which is simpler to
//! declare in Python), so we look them up by name.

use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError};
use pyo3::prelude::*;

use rankwise_core::Error;

pub fn to_pyerr(err: Error) -> PyErr {
    if let Error::Cancelled = err {
        return PyKeyboardInterrupt::new_err("cancelled");
    }
    let class = match err.kind() {
        "not_found" => "AdapterNotFoundError",
        "io" | "format" => "AdapterFormatError",
        "incompatible" => "IncompatibleAdaptersError",
        "value" => "MergeConfigError",
        _ => "InternalError",
    };
    let msg = err.to_string();
    Python::with_gil(|py| {
        match py
            .import("rankwise.errors")
            .and_then(|m| m.getattr(class))
            .and_then(|cls| cls.call1((msg.clone(),)))
        {
            Ok(exc) => PyErr::from_value(exc),
            Err(_) => PyRuntimeError::new_err(msg),
        }
    })
}
