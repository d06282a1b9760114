"""Merge methods, registered by name: ``rankwise.merge(pool, method=...)``."""

from __future__ import annotations

import sys as _sys
import types as _types
from typing import Any

from .registry import ModuleContext, get_method, merge, merge_methods, register_method


def prune(adapter: Any, rank: Any, **options: Any) -> Any:
    """Prunes one adapter to rank k with LEGO clustering of its own units (arXiv 2409.16167)."""
    from .lego import prune as _prune

    return _prune(adapter, rank, **options)


def align(reference: Any, other: Any, **options: Any) -> Any:
    """``other`` with its units permuted and sign-flipped per module to match ``reference``."""
    from .aligned import align as _align

    return _align(reference, other, **options)


__all__ = ["ModuleContext", "align", "get_method", "merge", "merge_methods", "prune", "register_method"]


class _MergePackage(_types.ModuleType):
    """``import rankwise.merge`` binds this package to ``rankwise.merge``, where the function of
    the same name is expected: calling the package calls the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return merge(*args, **kwargs)


_sys.modules[__name__].__class__ = _MergePackage
