"""Merge methods, registered by name: ``rankwise.merge(pool, method=...)``."""

from __future__ import annotations

from typing import Any

from .registry import ModuleContext, get_method, merge, merge_methods, register_method


def prune(adapter: Any, rank: Any, **options: Any) -> Any:
    """Prunes one adapter to rank k with LEGO clustering of its own units (arXiv 2409.16167)."""
    from .lego import prune as _prune

    return _prune(adapter, rank, **options)


def align(reference: Any, other: Any) -> Any:
    """``other`` with its units permuted and sign-flipped per module to match ``reference``."""
    from .aligned import align as _align

    return _align(reference, other)


__all__ = ["ModuleContext", "align", "get_method", "merge", "merge_methods", "prune", "register_method"]
