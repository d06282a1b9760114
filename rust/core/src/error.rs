//! One error type for the whole core. Every variant carries what a user needs to find the
//! problem: the file, the tensor key (or module) and what is wrong. The binding maps the
//! variants onto Python exception classes in one place (`rust/py/src/errors.rs`).

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or mapped.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The safetensors header (or the file as a whole) is malformed.
    #[error("{path}: invalid safetensors file: {reason}")]
    Header { path: String, reason: String },
    /// One tensor is unusable (unknown dtype, bad offsets, NaN/Inf, wrong shape, ...).
    #[error("{path}: tensor '{key}': {reason}")]
    Tensor {
        path: String,
        key: String,
        reason: String,
    },
    /// Tensors that must agree across adapters (or across A and B) do not.
    #[error("{reason}")]
    Incompatible { reason: String },
    /// An argument is out of its domain (k < 1, k > n, wrong lengths, ...).
    #[error("{reason}")]
    InvalidArgument { reason: String },
    /// The caller asked to stop (Ctrl-C in Python): see `threads::cancel`.
    #[error("cancelled")]
    Cancelled,
    /// A bug: a panic inside a worker, caught before it could cross into Python.
    #[error("internal error in {context}: {message}")]
    Panic { context: String, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn header(path: &Path, reason: impl Into<String>) -> Self {
        Error::Header {
            path: path.display().to_string(),
            reason: reason.into(),
        }
    }

    pub fn tensor(path: &Path, key: &str, reason: impl Into<String>) -> Self {
        Error::Tensor {
            path: path.display().to_string(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    pub fn invalid(reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            reason: reason.into(),
        }
    }

    pub fn incompatible(reason: impl Into<String>) -> Self {
        Error::Incompatible {
            reason: reason.into(),
        }
    }
}

/// Runs `f`, turning a panic into `Error::Panic` so that no panic unwinds into Python.
pub fn catch_panic<T>(context: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let message = if let Some(s) = payload.downcast_ref::<&str>() {
                (*s).to_string()
            } else if let Some(s) = payload.downcast_ref::<String>() {
                s.clone()
            } else {
                "unknown panic".to_string()
            };
            Err(Error::Panic {
                context: context.to_string(),
                message,
            })
        }
    }
}
