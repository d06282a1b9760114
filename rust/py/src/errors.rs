//! The one place where core errors become Python exceptions, by the variant of
//! `rankwise_core::Error` (the match is exhaustive: a new variant must be placed here). The
//! classes live in `rankwise.errors` (they subclass both RankwiseError and a builtin, which is
//! simpler to declare in Python), so they are looked up by name.

use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError};
use pyo3::prelude::*;

use rankwise_core::Error;

pub fn to_pyerr(err: Error) -> PyErr {
    let class = match &err {
        Error::Cancelled => return PyKeyboardInterrupt::new_err("cancelled"),
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            "AdapterNotFoundError"
        }
        Error::Io { .. } | Error::Header { .. } | Error::Tensor { .. } => "AdapterFormatError",
        Error::Incompatible { .. } => "IncompatibleAdaptersError",
        Error::InvalidArgument { .. } => "OptionError",
        Error::Panic { .. } => "InternalError",
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
