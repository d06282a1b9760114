//! `rankwise._core`: the thin PyO3 layer over rankwise-core.
//!
//! Every function here converts arguments, releases the GIL, calls one core function inside
//! the rankwise thread pool, and converts the result or the error. Logic belongs in the core.

mod align;
mod arrays;
mod assemble;
mod errors;
mod files;
mod grams;
mod kmeans;
mod run;
mod svd;

use pyo3::prelude::*;

use rankwise_core::threads;

/// Sets the number of threads used by every parallel call (0 restores the default:
/// `RANKWISE_NUM_THREADS`, else the number of cores; at most 4 × the cores).
#[pyfunction]
fn set_num_threads(n: i128) -> PyResult<()> {
    let n = arrays::size_arg(n, "number of threads", 0)?;
    threads::set_num_threads(n).map_err(errors::to_pyerr)
}

/// The number of threads parallel calls use.
#[pyfunction]
fn get_num_threads() -> usize {
    threads::num_threads()
}

/// Panics inside a worker thread; exists so that tests can check that no panic crosses into
/// Python (it must come back as `rankwise.InternalError`).
#[pyfunction]
fn _panic_in_worker(py: Python<'_>) -> PyResult<()> {
    py.allow_threads(|| {
        threads::install(|| {
            rankwise_core::error::catch_panic(
                "_panic_in_worker",
                || -> rankwise_core::Result<()> {
                    use rayon::prelude::*;
                    (0..4).into_par_iter().for_each(|i| {
                        if i == 3 {
                            panic!("deliberate test panic");
                        }
                    });
                    Ok(())
                },
            )
        })
        .and_then(|r| r)
    })
    .map_err(errors::to_pyerr)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "SEED_POINTS_PER_CENTRE",
        rankwise_core::kmeans::SEED_POINTS_PER_CENTRE,
    )?;
    m.add_class::<files::MappedFiles>()?;
    m.add_function(wrap_pyfunction!(files::write_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans::kmeans, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans::kmeans_assign, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans::kmeans_gram, m)?)?;
    m.add_function(wrap_pyfunction!(assemble::cluster_means, m)?)?;
    m.add_function(wrap_pyfunction!(align::hungarian, m)?)?;
    m.add_function(wrap_pyfunction!(align::align_factors, m)?)?;
    m.add_function(wrap_pyfunction!(align::align_units, m)?)?;
    m.add_function(wrap_pyfunction!(align::delta_gram, m)?)?;
    m.add_function(wrap_pyfunction!(svd::gram_top_k, m)?)?;
    m.add_function(wrap_pyfunction!(grams::units_sq_norm, m)?)?;
    m.add_function(wrap_pyfunction!(grams::unit_grams, m)?)?;
    m.add_function(wrap_pyfunction!(grams::grams_sq_norm, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_in_worker, m)?)?;
    Ok(())
}
