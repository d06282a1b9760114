//! rankwise-core: the numerics of rankwise, free of Python.
//!
//! A LoRA update is a sum of rank-one units; this crate reads adapters' factors from mapped
//! safetensors files, lays out the unit matrix of one module across a pool of adapters,
//! clusters it (k-means), aligns units between adapters and takes the top singular triplets
//! of their sum (the svd baseline).
//!
//! Layers, bottom up: `error`, `threads`, `rng`, `simd` (kernels and their dispatch),
//! `scalar` (f32/f64), `limits`; `linalg` (dense algebra on slices); `dtype` and `safetensors_io`
//! (files); `units` (a module's units across a pool, on top of files and `linalg`), `kmeans`,
//! `align`, `assemble`.

pub mod align;
pub mod assemble;
pub mod dtype;
pub mod error;
pub mod kmeans;
pub mod limits;
pub mod linalg;
pub mod rng;
pub mod safetensors_io;
pub mod scalar;
pub mod simd;
pub mod threads;
pub mod units;

pub use error::{Error, Result};
