"""rankwise: every rank of a LoRA adapter is a building block.

LoRA-LEGO merging of many adapters by clustering their rank units (Rust core: mmap loading,
unit extraction, k-means, alignment), the usual merge baselines beside it, and SMoRA
(rank-wise mixture of experts) training in ``rankwise.smora``.

Attributes are imported lazily: ``import rankwise`` loads neither torch nor the extension.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AdapterFormatError,
    AdapterNotFoundError,
    IncompatibleAdaptersError,
    InternalError,
    MergeConfigError,
    OutputExistsError,
    RankwiseError,
)

__version__ = "0.1.0"

_LAZY = {
    "Adapter": ".adapter",
    "ModuleInfo": ".adapter",
    "AdapterPool": ".pool",
    "load_adapter": ".api",
    "merge": ".merge",
    "merge_methods": ".merge",
    "register_method": ".merge",
    "prune": ".merge",
    "align": ".merge",
    "kmeans": ".api",
    "KMeansResult": ".api",
    "set_num_threads": ".api",
    "get_num_threads": ".api",
}

__all__ = [
    "AdapterFormatError",
    "AdapterNotFoundError",
    "IncompatibleAdaptersError",
    "InternalError",
    "MergeConfigError",
    "OutputExistsError",
    "RankwiseError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'rankwise' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # the lazy names, for type checkers and IDEs
    from .adapter import Adapter, ModuleInfo  # noqa: F401
    from .api import KMeansResult, get_num_threads, kmeans, load_adapter, set_num_threads  # noqa: F401
    from .merge import align, merge, merge_methods, prune, register_method  # noqa: F401
    from .pool import AdapterPool  # noqa: F401
