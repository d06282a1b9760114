"""How alike a pool's adapters are: per module and overall, the cosine of ΔW_i and ΔW_j in the
Frobenius inner product, and the norms ‖ΔW_j‖_F, all from the factors' Gram matrices
(``rankwise.lowrank``). Overall means over the whole model: the inner products summed over
modules, i.e. the cosine of the adapters' updates concatenated."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .lowrank import gram, split, stacked
from .pool import AdapterPool


@dataclass
class Similarity:
    """``inner[module]``: the n × n Frobenius inner products of one module's updates."""

    modules: list[str]
    inner: dict[str, np.ndarray]

    def norms(self, module: str | None = None) -> np.ndarray:
        """‖ΔW_j‖_F per adapter, of one module or (None) of the whole model."""
        g = self.inner[module] if module is not None else self.total()
        return np.sqrt(np.maximum(np.diag(g), 0.0))

    def cosine(self, module: str | None = None) -> np.ndarray:
        """The n × n cosines of one module or (None) of the whole model; 0 where a norm is 0."""
        g = self.inner[module] if module is not None else self.total()
        return cosine_of(g)

    def total(self) -> np.ndarray:
        return np.sum([self.inner[m] for m in self.modules], axis=0)


def cosine_of(g: np.ndarray) -> np.ndarray:
    n = np.sqrt(np.maximum(np.diag(g), 0.0))
    denom = np.outer(n, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(denom > 0, g / np.where(denom > 0, denom, 1.0), 0.0)
    return np.clip(c, -1.0, 1.0)


def similarity(pool: AdapterPool) -> Similarity:
    """The adapter × adapter inner products of every module of ``pool`` (weights not applied)."""
    inner = {}
    for m in pool.modules:
        st, ranks = stacked(pool, m)
        inner[m] = gram(split(st, ranks))
        if pool.streams:
            pool.release()
    return Similarity(pool.modules, inner)
