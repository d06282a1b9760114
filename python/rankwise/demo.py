"""``rankwise demo``: a small pool made with numpy, merged with LEGO, explained in a few lines.

Each synthetic adapter is built from shared "skills" (rank-one units): it picks a few of them,
perturbs them, and stores them in a random order with random signs and scales, which leave its
delta unchanged. LEGO clusters the pool's units and should find the skills again.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from .adapter import Adapter
from .merging import merge
from .pool import AdapterPool

MODULES = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]


def make_demo_pool(
    folder: Path,
    *,
    n_adapters: int = 12,
    hidden: int = 64,
    rank: int = 4,
    n_skills: int = 8,
    noise: float = 0.05,
    seed: int = 0,
) -> tuple[list[Path], dict[str, np.ndarray]]:
    """Writes ``n_adapters`` PEFT folders under ``folder``; returns them and each module's skills
    as ``[n_skills, 2·hidden]`` rows ``[b ; a]``."""
    rng = np.random.default_rng(seed)
    skills = {m: rng.standard_normal((n_skills, 2 * hidden)).astype(np.float32) / np.sqrt(hidden) for m in MODULES}
    paths = []
    for j in range(n_adapters):
        factors = {}
        for m in MODULES:
            picked = skills[m][rng.choice(n_skills, size=rank, replace=False)]
            units = picked + noise * rng.standard_normal(picked.shape).astype(np.float32) / np.sqrt(hidden)
            # Same delta, different parameters: a random sign and a random scale split per unit.
            c = rng.choice([-1.0, 1.0], size=(rank, 1)) * rng.uniform(0.5, 2.0, size=(rank, 1))
            b, a = units[:, :hidden] * c, units[:, hidden:] / c
            factors[m] = (a.astype(np.float32), np.ascontiguousarray(b.T, dtype=np.float32))
        cfg = {
            "base_model_name_or_path": "rankwise/demo-tiny",
            "target_modules": ["q_proj", "v_proj"],
            "task_type": "CAUSAL_LM",
        }
        paths.append(Adapter.from_factors(factors, base_config=cfg, dtype="F16").save(folder / f"adapter_{j:02d}"))
    return paths, skills


def _unit_cos(b1: np.ndarray, a1: np.ndarray, b2: np.ndarray, a2: np.ndarray) -> np.ndarray:
    """|cos| between the rank-one matrices b1 a1ᵀ and b2 a2ᵀ (all pairs), without forming them."""
    nb1, na1 = np.linalg.norm(b1, axis=1), np.linalg.norm(a1, axis=1)
    nb2, na2 = np.linalg.norm(b2, axis=1), np.linalg.norm(a2, axis=1)
    return np.abs((b1 @ b2.T) * (a1 @ a2.T)) / (np.outer(nb1, nb2) * np.outer(na1, na2))


def run_demo(n_adapters: int = 12, out: str | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="rankwise-demo-") as tmp:
        t0 = time.perf_counter()
        paths, skills = make_demo_pool(Path(tmp), n_adapters=n_adapters)
        t_make = time.perf_counter() - t0
        pool = AdapterPool.load(paths)
        n_skills = next(iter(skills.values())).shape[0]
        t1 = time.perf_counter()
        # legacy keeps each centroid as one unit, so the units themselves can be compared with the
        # skills; the default projection returns the same span as balanced singular factors.
        merged = merge(pool, "lego", rank=n_skills, seed=0, canonicalize=True, assembly="legacy")
        t_merge = time.perf_counter() - t1
        n_units = sum(pool.ranks(MODULES[0]))
        print(
            f"made {len(pool)} rank-{pool.ranks(MODULES[0])[0]} fp16 LoRA adapters ({len(MODULES)} modules each) "
            f"from {n_skills} shared skills per module, shuffled, sign-flipped and rescaled ({t_make:.2f}s)"
        )
        print(
            f"LEGO clustered {n_units} rank units per module into k={n_skills} and assembled a rank-{n_skills} "
            f"adapter in {t_merge:.2f}s"
        )
        for m in MODULES:
            a, b = merged.factors(m, folded=True)
            s = skills[m]
            h = s.shape[1] // 2
            cos = _unit_cos(s[:, :h], s[:, h:], b.T, a)
            best = cos.max(axis=1)
            print(f"  {m:32s} skills recovered: best |cos| per skill min {best.min():.3f}, mean {best.mean():.3f}")
        if out is not None:
            print(f"wrote {merged.save(out)} (load it with peft.PeftModel.from_pretrained)")
        print("next: `rankwise merge ADAPTER_DIR... -o OUT --rank K`, `rankwise inspect DIR`")
