"""Small pools of random low-rank adapters held in memory (and their dense deltas), shared by
the analysis tests (similarity, spectrum, retention, analyze, report, compare)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import rankwise as rw

MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
SHAPES = {MODULES[0]: (12, 10), MODULES[1]: (6, 10)}


def random_adapters(n: int = 3, ranks: tuple[int, ...] = (2, 3, 1), seed: int = 0) -> list[rw.Adapter]:
    rng = np.random.default_rng(seed)
    out = []
    for j in range(n):
        r = ranks[j % len(ranks)]
        factors = {
            m: (rng.standard_normal((r, d_in)).astype(np.float32), rng.standard_normal((d_out, r)).astype(np.float32))
            for m, (d_out, d_in) in SHAPES.items()
        }
        out.append(rw.Adapter.from_factors(factors, base_config={"base_model_name_or_path": "tiny/base"}))
    return out


def saved_pool(root: Path, n: int = 3, seed: int = 0) -> list[Path]:
    return [a.save(root / f"a{j}") for j, a in enumerate(random_adapters(n, seed=seed))]


def dense(adapter: rw.Adapter, module: str) -> np.ndarray:
    a, b = adapter.factors(module, folded=True)
    return b.astype(np.float64) @ a.astype(np.float64)
