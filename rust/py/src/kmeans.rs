//! `rankwise._core.kmeans`: numpy in, numpy out, GIL released, interruptible.

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::arrays::{c_order, int_arg, invalid, size_arg};
use crate::run::run;
use rankwise_core::kmeans::{
    assign as core_assign, kmeans as core_kmeans, kmeans_gram as core_kmeans_gram, KMeansParams,
};

/// The parameters both k-means calls take from Python (the rest at their defaults).
fn params(
    k: i128,
    n_init: i128,
    max_iter: i128,
    tol: f64,
    seed: i128,
    sign_invariant: bool,
) -> PyResult<KMeansParams> {
    Ok(KMeansParams {
        k: size_arg(k, "k", 1)?,
        n_init: size_arg(n_init, "n_init", 1)?,
        max_iter: size_arg(max_iter, "max_iter", 1)?,
        tol,
        seed: int_arg(seed, "seed", 0, u64::MAX)?,
        sign_invariant,
        ..KMeansParams::default()
    })
}

type KMeansOut<'py> = (
    Bound<'py, PyArray2<f32>>,
    Bound<'py, PyArray1<i64>>,
    f64,
    usize,
    Bound<'py, PyArray1<f32>>,
);

/// k-means of the rows of `x` (n × d, float32): returns
/// `(centroids k × d, labels n, inertia, n_iter, signs n)`; `signs` is all 1.0 unless
/// `sign_invariant` (clustering modulo sign, distance ‖x‖² + ‖c‖² − 2|x·c|). `distance_cache=False`
/// recomputes every distance each iteration (same result; for measuring the full iteration);
/// `seed_projection=False` seeds wide data with exact distances (for measuring the projection).
#[pyfunction]
#[pyo3(signature = (x, k, n_init=1, max_iter=300, tol=1e-4, seed=0, init=None, sign_invariant=false, distance_cache=true, seed_projection=true))]
#[allow(clippy::too_many_arguments)]
pub fn kmeans<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    k: i128,
    n_init: i128,
    max_iter: i128,
    tol: f64,
    seed: i128,
    init: Option<PyReadonlyArray2<'py, f32>>,
    sign_invariant: bool,
    distance_cache: bool,
    seed_projection: bool,
) -> PyResult<KMeansOut<'py>> {
    let params = KMeansParams {
        distance_cache,
        seed_projection,
        ..params(k, n_init, max_iter, tol, seed, sign_invariant)?
    };
    let k = params.k;
    let (n, d) = (x.shape()[0], x.shape()[1]);
    let xs = c_order(&x);
    let init_s = match &init {
        Some(c) if c.shape() != [k, d] => {
            return Err(invalid(format!(
                "init has shape {:?}, expected (k, d) = ({k}, {d})",
                c.shape()
            )))
        }
        Some(c) => Some(c_order(c)),
        None => None,
    };
    let res = run(py, || core_kmeans(&xs, n, d, &params, init_s.as_deref()))?;
    let c = Array2::from_shape_vec((k, d), res.centroids).map_err(|e| invalid(e.to_string()))?;
    Ok((
        c.into_pyarray(py),
        PyArray1::from_vec(py, res.labels),
        res.inertia,
        res.n_iter,
        PyArray1::from_vec(py, res.signs),
    ))
}

type AssignOut<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray2<f64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<f64>>,
);

/// One k-means assignment of the rows of `x` (n × d, float32) to `centres` (k × d): returns
/// `(labels n, signs n, sums k × d float64, counts k, sq_dist n float64)`: for a k-means that
/// streams its points in blocks (python/rankwise/streaming_kmeans.py). Same bytes at any thread count.
#[pyfunction]
#[pyo3(signature = (x, centres, sign_invariant=false))]
pub fn kmeans_assign<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    centres: PyReadonlyArray2<'py, f32>,
    sign_invariant: bool,
) -> PyResult<AssignOut<'py>> {
    let (n, d) = (x.shape()[0], x.shape()[1]);
    let k = centres.shape()[0];
    if centres.shape()[1] != d || k == 0 {
        return Err(invalid(format!(
            "centres have shape {:?}, expected (k >= 1, {d})",
            centres.shape()
        )));
    }
    let xs = c_order(&x);
    let cs = c_order(&centres);
    let a = run(py, || core_assign(&xs, n, d, &cs, sign_invariant))?;
    let sums = Array2::from_shape_vec((k, d), a.sums).map_err(|e| invalid(e.to_string()))?;
    Ok((
        PyArray1::from_vec(py, a.labels),
        PyArray1::from_vec(py, a.signs),
        sums.into_pyarray(py),
        PyArray1::from_vec(py, a.counts),
        PyArray1::from_vec(py, a.dist),
    ))
}

type GramOut<'py> = (
    Bound<'py, PyArray1<i64>>,
    f64,
    usize,
    Bound<'py, PyArray1<f32>>,
);

/// k-means of n points of width `d` from their Gram matrix `g` (n × n, float32, symmetric):
/// returns `(labels n, inertia, n_iter, signs n)`, as `kmeans` with `seed_projection=False` in
/// exact arithmetic (rust/core/src/kmeans/gram.rs). GIL released, interruptible.
#[pyfunction]
#[pyo3(signature = (g, d, k, n_init=1, max_iter=300, tol=1e-4, seed=0, sign_invariant=false))]
#[allow(clippy::too_many_arguments)]
pub fn kmeans_gram<'py>(
    py: Python<'py>,
    g: PyReadonlyArray2<'py, f32>,
    d: i128,
    k: i128,
    n_init: i128,
    max_iter: i128,
    tol: f64,
    seed: i128,
    sign_invariant: bool,
) -> PyResult<GramOut<'py>> {
    let n = g.shape()[0];
    if g.shape()[1] != n {
        return Err(invalid(format!(
            "the Gram matrix must be square, got shape {:?}",
            g.shape()
        )));
    }
    let params = params(k, n_init, max_iter, tol, seed, sign_invariant)?;
    let d = size_arg(d, "d", 1)?;
    let gs = c_order(&g);
    let res = run(py, || core_kmeans_gram(&gs, n, d, &params))?;
    Ok((
        PyArray1::from_vec(py, res.labels),
        res.inertia,
        res.n_iter,
        PyArray1::from_vec(py, res.signs),
    ))
}
