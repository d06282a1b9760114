"""Type stubs of the compiled extension ``rankwise._core`` (rust/py), checked by
``python -m mypy.stubtest rankwise._core``. Array arguments may have any layout (they are read
in C order, copied when not C-contiguous); an ``out=`` must be a writeable C-contiguous array of
the result's dtype and shape, else ``MergeConfigError`` (a ValueError)."""

from os import PathLike
from typing import final

import numpy as np
import numpy.typing as npt

__all__ = [
    "SEED_POINTS_PER_CENTRE",
    "MappedFiles",
    "__version__",
    "_panic_in_worker",
    "align_factors",
    "align_units",
    "cluster_means",
    "delta_gram",
    "get_num_threads",
    "gram_top_k",
    "grams_sq_norm",
    "hungarian",
    "kmeans",
    "kmeans_assign",
    "kmeans_gram",
    "set_num_threads",
    "unit_grams",
    "units_sq_norm",
    "write_safetensors",
]

__version__: str
SEED_POINTS_PER_CENTRE: int  # k-means++ subsample per centre (rust/core/src/kmeans/seeding.rs)

@final
class MappedFiles:
    """Memory-mapped safetensors files with validated headers."""

    @staticmethod
    def open(paths: list[str | PathLike[str]]) -> MappedFiles: ...
    def __len__(self) -> int: ...
    def path(self, i: int) -> str: ...
    def tensors(self, i: int) -> dict[str, tuple[str, list[int]]]: ...
    def metadata(self, i: int) -> dict[str, str]: ...
    def read(self, i: int, key: str) -> npt.NDArray[np.float32]: ...
    def check_finite(self, items: list[tuple[int, str]], release: bool = True) -> None: ...
    def release(self, i: int) -> None: ...
    def unit_matrix(
        self,
        sources: list[tuple[int, str, str, float]],
        canonical: bool = False,
        normalized: bool = False,
        out: npt.NDArray[np.float32] | None = None,
    ) -> tuple[npt.NDArray[np.float32], list[int], npt.NDArray[np.float32] | None]: ...
    def svd_top_k(
        self,
        sources: list[tuple[int, str, str]],
        fold: npt.NDArray[np.float64],
        k: int,
        allow_single: bool = False,
        parallel: bool = False,
        stream: bool = True,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None: ...

def write_safetensors(
    path: str | PathLike[str],
    tensors: list[tuple[str, str, npt.NDArray[np.float32]]],
    metadata: dict[str, str] | None = None,
) -> None: ...
def kmeans(
    x: npt.NDArray[np.float32],
    k: int,
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    init: npt.NDArray[np.float32] | None = None,
    sign_invariant: bool = False,
    distance_cache: bool = True,
    seed_projection: bool = True,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], float, int, npt.NDArray[np.float32]]: ...
def kmeans_assign(
    x: npt.NDArray[np.float32],
    centres: npt.NDArray[np.float32],
    sign_invariant: bool = False,
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.float32],
    npt.NDArray[np.float64],
    npt.NDArray[np.int64],
    npt.NDArray[np.float64],
]: ...
def kmeans_gram(
    g: npt.NDArray[np.float32],
    d: int,
    k: int,
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    sign_invariant: bool = False,
) -> tuple[npt.NDArray[np.int64], float, int, npt.NDArray[np.float32]]: ...
def cluster_means(
    x: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    signs: npt.NDArray[np.float32],
    k: int,
    d_out: int,
    part_norms: npt.NDArray[np.float32] | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
def gram_top_k(
    units: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    d_out: int,
    fold: npt.NDArray[np.float64],
    k: int,
    allow_single: bool = False,
    parallel: bool = False,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None: ...
def units_sq_norm(units: npt.NDArray[np.float32], d_out: int, p: npt.NDArray[np.float64]) -> float: ...
def unit_grams(
    units: npt.NDArray[np.float32], d_out: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
def grams_sq_norm(gb: npt.NDArray[np.float32], ga: npt.NDArray[np.float32], p: npt.NDArray[np.float64]) -> float: ...
def hungarian(cost: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]: ...
def align_factors(
    pairs: list[
        tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]
    ],
    similarity: str = "delta",
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], float]]: ...
def align_units(
    reference: npt.NDArray[np.float32],
    others: npt.NDArray[np.float32],
    d_out: int,
    similarity: str = "delta",
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.float64]]: ...
def delta_gram(factors: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]) -> npt.NDArray[np.float64]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def _panic_in_worker() -> None: ...
