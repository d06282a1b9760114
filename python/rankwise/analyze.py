"""``analyze(pool)``: what a pool holds before merging it, from the factors' Grams: adapter ×
adapter similarity and norms per module and overall, the spectrum of each module's summed
update with the ranks that keep 90% / 99% of its energy (the suggested merge rank), and, with
``clusters=k``, how LEGO's k-means groups the rank units (per cluster, how many units of each
adapter it holds) and an inertia-vs-k curve with its knee, a suggested k.

Each module's factors are read once. Up to ``EXACT_UNITS`` rank units (Σ ranks) its similarity
and spectrum are exact, from the stacked factors' Grams (shared between the two); beyond, the
R × R Grams would cost more than a LEGO merge (O(R²·d) against k-means' O(R·k·d) per
iteration), so they are estimated from random projections (``rankwise.sketch``): exact norms,
sketched cosines, the top singular values by a randomized range finder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import OptionError
from .kcurve import default_ks, inertia_curve, knee
from .kmeans import kmeans
from .lowrank import block_sums, stacked, thin_svd
from .pool import AdapterPool
from .similarity import Similarity
from .sketch import sketch_module
from .spectrum import ENERGIES, energy_rank

#: Σ ranks of a module up to which its similarity and spectrum are exact (from R × R Grams).
EXACT_UNITS = 1024
#: The random projections' size s beyond that (``sketch``).
SKETCH_SIZE = 64


@dataclass
class Analysis:
    """The report of :func:`analyze`; ``to_json()`` for tools, ``rankwise.report`` for a page."""

    adapters: list[str]
    modules: list[str]
    similarity: Similarity
    #: module -> singular values of the summed update, largest first (the top ones when sketched).
    spectra: dict[str, np.ndarray]
    #: module -> ‖Σ_j w_j ΔW_j‖_F² (estimated when sketched).
    energy: dict[str, float] = field(default_factory=dict)
    #: module -> "exact", or "sketch s" (random projections of size s).
    methods: dict[str, str] = field(default_factory=dict)
    #: module -> per cluster, the number of units of each adapter (k × n); with ``clusters``.
    clusters: dict[str, np.ndarray] = field(default_factory=dict)
    #: module -> [(k, mean inertia per unit)], the clustering curve; with ``clusters``.
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def energy_ranks(self, module: str) -> dict[str, int | None]:
        """Rank for 90% / 99% of the energy; None: more than the top values a sketch holds."""
        s, total = self.spectra[module], self.energy.get(module)
        return {f"{int(e * 100)}%": energy_rank(s, e, total) for e in ENERGIES}

    def suggested_rank(self, module: str) -> int | None:
        """The rank that keeps 90% of the module's summed update's energy."""
        return self.energy_ranks(module)["90%"]

    def suggested_k(self, module: str) -> int | None:
        """The knee of the module's inertia-vs-k curve (with ``clusters``); None: no knee."""
        return knee(self.curves[module]) if module in self.curves else None

    def to_dict(self) -> dict[str, Any]:
        sim = self.similarity
        return {
            "adapters": self.adapters,
            "overall": {"cosine": sim.cosine().tolist(), "norms": sim.norms().tolist()},
            "modules": {m: self._module_dict(m) for m in self.modules},
        }

    def _module_dict(self, m: str) -> dict[str, Any]:
        sim = self.similarity
        out: dict[str, Any] = {
            "method": self.methods.get(m, "exact"),
            "cosine": sim.cosine(m).tolist(),
            "norms": sim.norms(m).tolist(),
            "singular_values": self.spectra[m].tolist(),
            "energy": self.energy.get(m, float(np.sum(self.spectra[m] ** 2))),
            "energy_ranks": self.energy_ranks(m),
            "suggested_rank": self.suggested_rank(m),
        }
        if m in self.clusters:
            out["clusters"] = self.clusters[m].tolist()
        if m in self.curves:
            out["inertia_curve"] = [{"k": k, "inertia": v} for k, v in self.curves[m]]
            out["suggested_k"] = self.suggested_k(m)
        return out

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    def summary(self) -> str:
        """A few lines for a terminal."""
        c = self.similarity.cosine()
        off = c[~np.eye(len(c), dtype=bool)]
        ranks = [self.suggested_rank(m) for m in self.modules]
        known = [r for r in ranks if r is not None]
        sketched = sum(1 for m in self.modules if self.methods.get(m, "exact") != "exact")
        lines = [
            f"{len(self.adapters)} adapters, {len(self.modules)} modules"
            + (f" ({sketched} estimated from random projections)" if sketched else ""),
            f"overall cosine between adapters: mean {off.mean():.3f}, max {off.max():.3f}"
            if off.size
            else "one adapter",
        ]
        if known:
            lines.append(
                f"rank for 90% of the summed update's energy: median {int(np.median(known))}, max {max(known)}"
            )
        if len(known) < len(ranks):
            top = min(self.spectra[m].size for m, r in zip(self.modules, ranks) if r is None)
            lines.append(f"{len(ranks) - len(known)} modules need more than their top {top} directions for 90%")
        if self.curves:
            got = [self.suggested_k(m) for m in self.modules if m in self.curves]
            ks = [k for k in got if k is not None]
            if ks:
                lines.append(
                    f"suggested k (knee of inertia vs k): median {int(np.median(ks))}, range {min(ks)}-{max(ks)}"
                )
            if len(ks) < len(got):
                lines.append(f"{len(got) - len(ks)} modules show no knee in inertia vs k (no cluster count)")
        return "\n".join(lines)


def analyze(
    pool: AdapterPool,
    *,
    weights: Sequence[float] | None = None,
    clusters: int | None = None,
    seed: int = 0,
    sketch: int | None = None,
) -> Analysis:
    """Similarity, norms and spectra of every module of ``pool`` (spectra of the ``weights``-
    weighted sum); ``clusters=k`` also runs LEGO's k-means (canonical units, modulo sign) per
    module, records which adapters' units each cluster holds, and an inertia-vs-k curve.
    ``sketch``: None picks per module (exact up to ``EXACT_UNITS`` units, else random
    projections of size ``SKETCH_SIZE``); 0 always exact; s > 0 always sketched with size s."""
    for name, v, low in (("sketch", sketch, 0), ("clusters", clusters, 1)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low):
            raise OptionError(f"{name} must be None or an int ≥ {low}, got {v!r}")
    names = [str(a.path) if a.path is not None else f"adapter {j}" for j, a in enumerate(pool)]
    w = pool.check_weights(weights)
    inner, spectra, energy, methods = {}, {}, {}, {}
    for m in pool.modules:
        total = sum(pool.ranks(m))
        size = (SKETCH_SIZE if total > EXACT_UNITS else 0) if sketch is None else sketch
        if size and pool.file_sources(m) is not None:
            units, ranks = pool.unit_matrix(m)
            sk = sketch_module(units, ranks, pool.shape(m)[0], w, size, seed)
            del units
            inner[m], spectra[m], energy[m], methods[m] = sk.inner, sk.singular_values, sk.energy, f"sketch {size}"
        else:
            (a, b), ranks = stacked(pool, m)
            ga, gb = a @ a.T, b.T @ b
            inner[m] = block_sums(gb * ga, ranks)
            wr = np.repeat(w, ranks)
            spectra[m] = thin_svd((a, b * wr), vectors=False, grams=(ga, gb * np.outer(wr, wr)))[1]
            energy[m] = float(np.sum(spectra[m] ** 2))
            methods[m] = "exact"
        if pool.streams:
            pool.release()
    out = Analysis(names, pool.modules, Similarity(pool.modules, inner), spectra, energy, methods)
    if clusters is not None:
        for m in pool.modules:
            out.clusters[m], out.curves[m] = clustering(pool, m, clusters, seed=seed)
            if pool.streams:
                pool.release()
    return out


def clustering(pool: AdapterPool, module: str, k: int, *, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, float]]]:
    """LEGO's k-means of one module's canonical units (modulo sign, as the merge runs it): the
    composition (:func:`composition`) and the inertia-vs-k curve around k (on a subsample of
    the same features)."""
    x, _ = pool.unit_features(module, canonical=True)
    return _composition(pool, module, x, k, seed), inertia_curve(x, default_ks(k, x.shape[0]), seed=seed)


def composition(pool: AdapterPool, module: str, k: int, *, seed: int = 0) -> np.ndarray:
    """k × n: how many of adapter j's rank units LEGO's k-means puts in cluster c."""
    return _composition(pool, module, pool.unit_features(module, canonical=True)[0], k, seed)


def _composition(pool: AdapterPool, module: str, x: np.ndarray, k: int, seed: int) -> np.ndarray:
    labels = kmeans(x, min(k, x.shape[0]), n_init=3, seed=seed, sign_invariant=True).labels
    owner = np.repeat(np.arange(len(pool)), pool.ranks(module))
    comp = np.zeros((k, len(pool)), dtype=np.int64)
    np.add.at(comp, (labels, owner), 1)
    return comp
