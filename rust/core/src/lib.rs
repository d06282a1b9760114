//! rankwise-core: the numerics of rankwise, free of Python.
//!
//! A LoRA update is a sum of rank-one units; this crate reads adapters' factors from mapped
//! safetensors files, lays out the unit matrix of one module across a pool of adapters,
//! clusters it (k-means) and aligns units between adapters.

pub mod align;
pub mod assemble;
pub mod dtype;
pub mod error;
pub mod kmeans;
pub mod lowrank_svd;
pub mod safetensors_io;
pub mod threads;
pub(crate) mod tridiag_eigen;
pub(crate) mod tridiag_reduce;
pub mod units;

pub use error::{Error, Result};
