"""``analyze(pool)``: what a pool holds before merging it, from the factors' Grams: adapter ×
adapter similarity and norms per module and overall, the spectrum of each module's summed
update with the ranks that keep 90% / 99% of its energy (the suggested merge rank), and, with
``clusters=k``, how LEGO's k-means groups the rank units: per cluster, how many units of each
adapter it holds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .kmeans import kmeans
from .pool import AdapterPool
from .similarity import Similarity, similarity
from .spectrum import ENERGIES, energy_rank, spectra


@dataclass
class Analysis:
    """The report of :func:`analyze`; ``to_json()`` for tools, ``rankwise.report`` for a page."""

    adapters: list[str]
    modules: list[str]
    similarity: Similarity
    spectra: dict[str, np.ndarray]
    #: module -> per cluster, the number of units of each adapter (k × n); with ``clusters``.
    clusters: dict[str, np.ndarray] = field(default_factory=dict)

    def energy_ranks(self, module: str) -> dict[str, int]:
        return {f"{int(e * 100)}%": energy_rank(self.spectra[module], e) for e in ENERGIES}

    def suggested_rank(self, module: str) -> int:
        """The rank that keeps 90% of the module's summed update's energy."""
        return energy_rank(self.spectra[module], ENERGIES[0])

    def to_dict(self) -> dict[str, Any]:
        sim = self.similarity
        return {
            "adapters": self.adapters,
            "overall": {"cosine": sim.cosine().tolist(), "norms": sim.norms().tolist()},
            "modules": {
                m: {
                    "cosine": sim.cosine(m).tolist(),
                    "norms": sim.norms(m).tolist(),
                    "singular_values": self.spectra[m].tolist(),
                    "energy_ranks": self.energy_ranks(m),
                    "suggested_rank": self.suggested_rank(m),
                    **({"clusters": self.clusters[m].tolist()} if m in self.clusters else {}),
                }
                for m in self.modules
            },
        }

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    def summary(self) -> str:
        """A few lines for a terminal."""
        c = self.similarity.cosine()
        off = c[~np.eye(len(c), dtype=bool)]
        ranks = [self.suggested_rank(m) for m in self.modules]
        lines = [
            f"{len(self.adapters)} adapters, {len(self.modules)} modules",
            f"overall cosine between adapters: mean {off.mean():.3f}, max {off.max():.3f}"
            if off.size
            else "one adapter",
            f"rank for 90% of the summed update's energy: median {int(np.median(ranks))}, max {max(ranks)}",
        ]
        return "\n".join(lines)


def analyze(
    pool: AdapterPool,
    *,
    weights: Sequence[float] | None = None,
    clusters: int | None = None,
    seed: int = 0,
) -> Analysis:
    """Similarity, norms and spectra of every module of ``pool`` (spectra of the ``weights``-
    weighted sum); ``clusters=k`` also runs LEGO's k-means (canonical units, modulo sign) per
    module and records which adapters' units each cluster holds."""
    names = [str(a.path) if a.path is not None else f"adapter {j}" for j, a in enumerate(pool)]
    out = Analysis(names, pool.modules, similarity(pool), spectra(pool, weights))
    if clusters is not None:
        for m in pool.modules:
            out.clusters[m] = composition(pool, m, clusters, seed=seed)
    return out


def composition(pool: AdapterPool, module: str, k: int, *, seed: int = 0) -> np.ndarray:
    """k × n: how many of adapter j's rank units LEGO's k-means puts in cluster c."""
    x, _ = pool.unit_features(module, canonical=True)
    labels = kmeans(x, min(k, x.shape[0]), n_init=3, seed=seed, sign_invariant=True).labels
    owner = np.repeat(np.arange(len(pool)), pool.ranks(module))
    comp = np.zeros((k, len(pool)), dtype=np.int64)
    np.add.at(comp, (labels, owner), 1)
    return comp
