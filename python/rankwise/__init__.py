"""rankwise: every rank of a LoRA adapter is a building block.

LoRA-LEGO merging of many adapters by clustering their rank units (Rust core: mmap loading,
unit extraction, k-means, alignment), the usual merge baselines beside it, and SMoRA
(rank-wise mixture of experts) training in ``rankwise.smora``.

``import rankwise`` loads numpy and the compiled core, never torch (SMoRA's ``rankwise.smora``
and ``Adapter.state_dict("torch")`` import it).
"""

from __future__ import annotations

from .adapter import Adapter, ModuleInfo, load_adapter
from .errors import (
    AdapterFormatError,
    AdapterNotFoundError,
    IncompatibleAdaptersError,
    InternalError,
    MergeConfigError,
    NonFiniteError,
    OptionError,
    OutputExistsError,
    OutputWriteError,
    RankwiseError,
)
from .kmeans import KMeansResult, kmeans
from .merging import merge, merge_methods, prune
from .methods import register_method
from .methods.aligned import align
from .pool import AdapterPool
from .threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "AdapterFormatError",
    "AdapterNotFoundError",
    "AdapterPool",
    "IncompatibleAdaptersError",
    "InternalError",
    "KMeansResult",
    "MergeConfigError",
    "ModuleInfo",
    "NonFiniteError",
    "OptionError",
    "OutputExistsError",
    "OutputWriteError",
    "RankwiseError",
    "__version__",
    "align",
    "get_num_threads",
    "kmeans",
    "load_adapter",
    "merge",
    "merge_methods",
    "prune",
    "register_method",
    "set_num_threads",
]
