//! Mapped safetensors files and the per-module unit matrix, as seen from Python.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use numpy::ndarray::{Array2, ArrayD, IxDyn};
use numpy::{
    IntoPyArray, PyArray2, PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use rankwise_core::dtype::DType;
use rankwise_core::linalg::lowrank_svd::top_k_of;
use rankwise_core::safetensors_io::{self, MappedFile, TensorOut};
use rankwise_core::units::{self, MappedFactors, UnitSource};
use rankwise_core::Error;

use crate::arrays::{c_order, invalid, out_array};
use crate::errors::to_pyerr;
use crate::run::{run, run_quick};

/// A set of memory-mapped safetensors files with validated headers.
#[pyclass(module = "rankwise._core", frozen)]
pub struct MappedFiles {
    files: Arc<Vec<MappedFile>>,
}

impl MappedFiles {
    /// The factors of one adapter's module in file `i` (checked to exist).
    fn unit_source<'a>(
        &'a self,
        i: usize,
        key_a: &'a str,
        key_b: &'a str,
        b_scale: f32,
    ) -> PyResult<UnitSource<'a>> {
        Ok(UnitSource {
            file: self.file(i)?,
            key_a,
            key_b,
            b_scale,
        })
    }

    fn file(&self, i: usize) -> PyResult<&MappedFile> {
        self.files.get(i).ok_or_else(|| {
            to_pyerr(Error::invalid(format!(
                "file index {i} out of range ({} files)",
                self.files.len()
            )))
        })
    }
}

#[pymethods]
impl MappedFiles {
    /// Maps and validates every file in parallel; raises for the first file that fails.
    #[staticmethod]
    fn open(py: Python<'_>, paths: Vec<PathBuf>) -> PyResult<Self> {
        let files = run(py, || {
            MappedFile::open_many(&paths)
                .into_iter()
                .collect::<rankwise_core::Result<Vec<_>>>()
        })?;
        Ok(MappedFiles {
            files: Arc::new(files),
        })
    }

    fn __len__(&self) -> usize {
        self.files.len()
    }

    fn path(&self, i: usize) -> PyResult<String> {
        Ok(self.file(i)?.path().display().to_string())
    }

    /// `{key: (dtype name, shape)}` of file `i`.
    fn tensors(&self, i: usize) -> PyResult<BTreeMap<String, (String, Vec<usize>)>> {
        Ok(self
            .file(i)?
            .tensors()
            .iter()
            .map(|(k, t)| (k.clone(), (t.dtype_name.clone(), t.shape.clone())))
            .collect())
    }

    fn metadata(&self, i: usize) -> PyResult<BTreeMap<String, String>> {
        Ok(self.file(i)?.metadata().clone())
    }

    /// Tensor `key` of file `i` as a float32 array of its shape.
    fn read<'py>(
        &self,
        py: Python<'py>,
        i: usize,
        key: String,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let f = self.file(i)?;
        let (data, shape) = run_quick(py, || {
            let shape = f.info(&key)?.shape.clone();
            Ok((f.read(&key)?, shape))
        })?;
        let arr = ArrayD::from_shape_vec(IxDyn(&shape), data)
            .map_err(|e| to_pyerr(Error::invalid(e.to_string())))?;
        Ok(arr.into_pyarray(py))
    }

    /// Checks that the listed tensors `(file index, key)` hold only finite values. Files are
    /// checked in parallel; with `release`, each file's pages leave the resident set as soon as
    /// it is done, so a pool larger than RAM is scanned with a resident set of a few files.
    #[pyo3(signature = (items, release=true))]
    fn check_finite(
        &self,
        py: Python<'_>,
        items: Vec<(usize, String)>,
        release: bool,
    ) -> PyResult<()> {
        let mut by_file: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (i, key) in items {
            self.file(i)?;
            by_file.entry(i).or_default().push(key);
        }
        let files = &self.files;
        run(py, || {
            use rayon::prelude::*;
            by_file.par_iter().try_for_each(|(i, keys)| {
                let f = &files[*i];
                let checked = keys.iter().try_for_each(|k| f.check_finite(k));
                if release {
                    f.release_all();
                }
                checked
            })
        })
    }

    /// Drops file `i`'s pages from this process's resident set (they stay in the page cache).
    fn release(&self, i: usize) -> PyResult<()> {
        self.file(i)?.release_all();
        Ok(())
    }

    /// The unit matrix of one module: `sources` lists `(file index, key_A, key_B, b_scale)` per
    /// adapter. Returns `(U, ranks, part_norms)` with `U` float32 `[Σ ranks, d_out + d_in]`;
    /// with `normalized`, U's b and a parts have unit norm and `part_norms` (`[Σ ranks, 2]`)
    /// holds the norms they had, else it is None. With `out` (a C-contiguous float32 array of
    /// exactly that shape, writeable; else a ValueError), U is written into it and `out` is returned.
    #[pyo3(signature = (sources, canonical=false, normalized=false, out=None))]
    fn unit_matrix<'py>(
        &self,
        py: Python<'py>,
        sources: Vec<(usize, String, String, f32)>,
        canonical: bool,
        normalized: bool,
        out: Option<Bound<'py, PyAny>>,
    ) -> PyResult<UnitMatrixOut<'py>> {
        let srcs = sources
            .iter()
            .map(|(i, ka, kb, s)| self.unit_source(*i, ka, kb, *s))
            .collect::<PyResult<Vec<_>>>()?;
        let layout = run(py, || units::unit_layout(&srcs))?;
        let width = layout.d_out + layout.d_in;
        let n = layout.n_units;
        let arr: Bound<'py, PyArray2<f32>> = match out {
            Some(out) => out_array(&out, &[n, width], "out")?,
            None => PyArray2::zeros(py, [n, width], false),
        };
        let norms = {
            let mut view = arr.try_readwrite().map_err(|e| invalid(e.to_string()))?;
            let buf = view
                .as_slice_mut()
                .map_err(|_| invalid("out must be C-contiguous"))?;
            run(py, || {
                units::fill_unit_matrix(&srcs, &layout, canonical, normalized, buf)
            })?
        };
        let norms = match norms {
            Some(v) => Some(
                Array2::from_shape_vec((n, 2), v)
                    .map_err(|e| to_pyerr(Error::invalid(e.to_string())))?
                    .into_pyarray(py),
            ),
            None => None,
        };
        Ok((arr, layout.ranks, norms))
    }

    /// The svd baseline's `(U_k·S_k, Vh_k)` of one module, `Σ_i fold_i·b_i·a_iᵀ` over the
    /// units of `sources` (`(file index, key_A, key_B)` per adapter; raw factors, `fold` one
    /// value per unit), read straight from the mapped files into the core's Gram path (see
    /// `_core.gram_top_k` for `allow_single`, `parallel` and the meaning of None). `stream`:
    /// the pool's pages are not mapped (dropped after its finite check): each adapter's pages
    /// of the module are mapped in one call, and leave the resident set once read.
    #[pyo3(signature = (sources, fold, k, allow_single=false, parallel=false, stream=true))]
    #[allow(clippy::too_many_arguments)] // the Python signature's keywords
    fn svd_top_k<'py>(
        &self,
        py: Python<'py>,
        sources: Vec<(usize, String, String)>,
        fold: PyReadonlyArray1<'py, f64>,
        k: usize,
        allow_single: bool,
        parallel: bool,
        stream: bool,
    ) -> PyResult<crate::svd::Out<'py>> {
        let srcs = sources
            .iter()
            .map(|(i, ka, kb)| self.unit_source(*i, ka, kb, 1.0))
            .collect::<PyResult<Vec<_>>>()?;
        let fs = c_order(&fold);
        let (res, d_out) = run_quick(py, || {
            let layout = units::unit_layout(&srcs)?;
            let src = MappedFactors {
                sources: &srcs,
                layout: &layout,
                stream,
            };
            let res = top_k_of(
                &src,
                layout.d_out,
                layout.d_in,
                &fs,
                k,
                allow_single,
                parallel,
            )?;
            Ok((res, layout.d_out))
        })?;
        crate::svd::top_k_arrays(py, res, d_out, k)
    }
}

type UnitMatrixOut<'py> = (
    Bound<'py, PyArray2<f32>>,
    Vec<usize>,
    Option<Bound<'py, PyArray2<f32>>>,
);

/// Writes a safetensors file from `(name, dtype, float32 array)` triples (arrays in any layout,
/// written in C order); values are converted
/// to `dtype` ("F32", "F16", "BF16" or "F64") with round-to-nearest-even.
#[pyfunction]
#[pyo3(signature = (path, tensors, metadata=None))]
pub fn write_safetensors(
    py: Python<'_>,
    path: PathBuf,
    tensors: Vec<(String, String, PyReadonlyArrayDyn<'_, f32>)>,
    metadata: Option<BTreeMap<String, String>>,
) -> PyResult<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, dtype, arr) in &tensors {
        let dt = DType::from_safetensors(dtype).ok_or_else(|| {
            to_pyerr(Error::invalid(format!(
                "tensor '{name}': cannot write dtype '{dtype}' (F32, F16, BF16, F64)"
            )))
        })?;
        let data = c_order(arr);
        owned.push((name.as_str(), dt, arr.shape().to_vec(), data));
    }
    let metadata = metadata.unwrap_or_default();
    run_quick(py, || {
        let outs: Vec<TensorOut> = owned
            .iter()
            .map(|(name, dtype, shape, data)| TensorOut {
                name,
                dtype: *dtype,
                shape,
                data: data.as_ref(),
            })
            .collect();
        safetensors_io::write(&path, &outs, &metadata)
    })
}
