"""The merge methods, registered by name (``rw.merge(pool, method=...)``, ``rw.merge_methods()``).

``contract``: what a method is and how it registers (ModuleContext, MergeMethod,
``register_method``, the registry ``METHODS``); ``weighting``: what ``weights`` mean for every
method (the target Σ_j w_j·ΔW_j) and how they map to PEFT's. The built-in methods, each registered when its
module is imported, here, once: ``lego`` (LoRA-LEGO), ``baselines`` (PEFT's
``add_weighted_adapter`` combinations), ``aligned`` (the permutation-aligned average).
"""

from . import aligned, baselines, lego, weighting
from .contract import METHODS, Factors, MergeMethod, ModuleContext, Prepare, register_method

__all__ = [
    "METHODS",
    "Factors",
    "MergeMethod",
    "ModuleContext",
    "Prepare",
    "aligned",
    "baselines",
    "lego",
    "register_method",
    "weighting",
]
