"""Pools, merge configurations and evaluation for bench_quality.

A *pool* is a set of trained adapters (``AdapterSpec``s) whose tasks are their domains. A
*configuration* is one way to merge a pool: a LEGO option set, a rankwise baseline, or one of
PEFT's own ``add_weighted_adapter`` combination types. Every rankwise merge is saved as a PEFT
folder and loaded back with ``PeftModel.from_pretrained`` for evaluation (that also checks the
format); PEFT's merges are evaluated in place. The score of a merged model on a pool is its
*normalized accuracy*: per task, test accuracy / the task's individual adapter accuracy (the mean
over the task's adapters when it has several seeds), averaged over the pool's tasks.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .tasks import DOMAINS, GEOMETRIC, AdapterSpec, Workspace, accuracy

# ------------------------------------------------------------------------------------- pools
ALL_DOMAINS = list(DOMAINS)


@dataclass(frozen=True)
class Pool:
    name: str
    about: str
    specs: tuple[AdapterSpec, ...]

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(s.domain for s in self.specs))

    @property
    def r_ref(self) -> int:
        """The reference rank k=r of the LEGO sweep: the sources' rank (rounded mean if mixed)."""
        return round(float(np.mean([s.rank for s in self.specs])))

    @property
    def r_mean(self) -> float:
        return float(np.mean([s.rank for s in self.specs]))

    @property
    def total_units(self) -> int:
        return sum(s.rank for s in self.specs)

    @property
    def equal_ranks(self) -> bool:
        return len({s.rank for s in self.specs}) == 1


def make_pools(quick: bool) -> list[Pool]:
    """(a) many domains, one seed each, independent LoRA inits; (b) few domains × several seeds;
    (c) many domains, ranks 4 and 16 mixed; (d) many domains from one shared LoRA init (A starts
    identical, as when every run uses the same seed: units correspond across adapters); (e) as
    (a) but each adapter trained on its domain alone (no plain images mixed in): adapters that
    forget the plain task, so they interfere more."""
    doms = ALL_DOMAINS[:4] if quick else ALL_DOMAINS
    few = ["occlude_top", "blur", "contrast"]
    seeds = 2 if quick else 4
    out = [
        Pool("domains", f"{len(doms)} domains × 1 seed, r=8, independent inits",
             tuple(AdapterSpec(d, 0, 100 + i) for i, d in enumerate(doms))),
        Pool("seeds", f"{len(few)} domains × {seeds} seeds, r=8, independent inits",
             tuple(AdapterSpec(d, s, 200 + 10 * i + s) for i, d in enumerate(few) for s in range(seeds))),
        Pool("hetero", f"{len(doms)} domains × 1 seed, ranks 4/16 alternating, independent inits",
             tuple(AdapterSpec(d, 0, 300 + i, rank=(4 if i % 2 == 0 else 16)) for i, d in enumerate(doms))),
        Pool("shared-init", f"{len(doms)} domains × 1 seed, r=8, one shared LoRA init",
             tuple(AdapterSpec(d, 0, 7) for d in doms)),
        Pool("no-replay", f"{len(doms)} domains × 1 seed, r=8, independent inits, trained on the domain only",
             tuple(AdapterSpec(d, 0, 400 + i, replay=False) for i, d in enumerate(doms))),
        Pool("one-layer", f"{len(doms)} domains × 1 seed, r=8, fc2 only, trained on the domain only",
             tuple(AdapterSpec(d, 0, 500 + i, replay=False, targets=("fc2",)) for i, d in enumerate(doms))),
        Pool("geometric", f"{len(GEOMETRIC)} geometric transforms × 2 seeds, r=8 (conflicting tasks)",
             tuple(AdapterSpec(d, s, 600 + 10 * i + s) for i, d in enumerate(GEOMETRIC) for s in range(2))),
    ]  # fmt: skip
    return [p for p in out if not quick or p.name in ("domains", "hetero", "shared-init")]


# ---------------------------------------------------------------------------- configurations
# LEGO's (scale, reweight) pairs. With scale="mass" output reweighting does not apply, so
# mass+True == mass+"param" and mass+False == mass+"output": two distinct modes, not four.
MODES: dict[str, tuple[str, Any]] = {
    "union+both": ("union", True),
    "union+param": ("union", "param"),
    "union+output": ("union", "output"),
    "union+none": ("union", False),
    "mass+param": ("mass", "param"),
    "mass+none": ("mass", False),
}


@dataclass(frozen=True)
class Config:
    label: str
    family: str  # "lego", "rw" (rankwise baseline), "peft" (PEFT's add_weighted_adapter), "ref"
    method: str
    options: tuple[tuple[str, Any], ...] = ()
    weights: str = "1"  # "1", "1/N" or "1/√N"
    seeded: bool = False  # result depends on the merge seed
    factors: tuple[tuple[str, Any], ...] = ()  # LEGO factors, for the analysis

    def opts(self) -> dict[str, Any]:
        return dict(self.options)

    def fac(self) -> dict[str, Any]:
        return dict(self.factors)


def lego_configs(pool: Pool, *, quick: bool) -> list[Config]:
    """The LEGO grid: features × canonicalize × mode × k, plus init="aligned" where it applies
    (equal ranks and k = r), plus three merges at k = all units (every cluster is one unit)."""
    r = pool.r_ref
    ks = {"r": r} if quick else {"r": r, "2r": 2 * r, "Nr/2": max(r, pool.total_units // 2)}
    inits: list[str | None] = [None, "aligned"] if pool.equal_ranks else [None]
    out = []
    for kname, k in ks.items():
        for feat in ("raw", "normalized"):
            for canon in (False, True):
                for mode, (scale, rw_) in MODES.items():
                    for init in inits:
                        if init is not None and kname != "r":
                            continue
                        if k == pool.r_mean and mode in ("union+param", "union+output"):
                            continue  # sqrt(r̄/k) = 1: the same merge as union+both / union+none
                        fac = {"features": feat, "canon": canon, "mode": mode, "k": kname, "init": init or "k-means++"}
                        label = f"lego {feat[:4]} {'canon' if canon else 'plain'} {mode} k={kname}" + (
                            " aligned" if init else ""
                        )
                        opts = {"rank": k, "features": feat, "canonicalize": canon, "assembly": "legacy"}
                        opts |= {"scale": scale, "reweight": rw_}
                        if init:
                            opts["init"] = init
                        seeded = init is None  # the aligned init is deterministic
                        out.append(Config(label, "lego", "lego", tuple(opts.items()), "1", seeded, tuple(fac.items())))
    # k = all units: every cluster is one unit. union+none is the exact sum Σ ΔW_j, mass+none the
    # exact mean, union+output the sum times sqrt(r̄/k) = 1/sqrt(N) (the variance argument).
    for mode, what in (("union+none", "exact sum"), ("mass+none", "exact mean"), ("union+output", "sum/√N")):
        scale, rw_ = MODES[mode]
        opts = {"rank": pool.total_units, "assembly": "legacy", "scale": scale, "reweight": rw_}
        out.append(Config(f"lego {mode} k=all ({what})", "lego-all", "lego", tuple(opts.items()), "1", False))
    return out + assembly_configs(pool)


# The assemblies beside legacy (docs/ALGORITHMS.md §1.4), on the default features; projection
# targets the mean (weights 1/N), paper is a union of units (weights 1).
ASSEMBLY_WEIGHTS = {"projection-norm": "1/N", "projection": "1/N", "paper": "1"}


def assembly_configs(pool: Pool) -> list[Config]:
    r = pool.r_ref
    out = []
    for assembly, w in ASSEMBLY_WEIGHTS.items():
        for kname, k in (("r", r), ("2r", 2 * r), ("4r", 4 * r)):
            k = min(k, pool.total_units)
            fac = {"features": "normalized", "canon": True, "mode": assembly, "k": kname, "init": "k-means++"}
            opts = {"rank": k, "assembly": assembly}
            out.append(
                Config(f"lego {assembly} k={kname}", "lego", "lego", tuple(opts.items()), w, True, tuple(fac.items()))
            )
    return out


def _plans(pool: Pool) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """PEFT-style settings per baseline: weights 1/N (the mean of the sources) and 1 (the sum,
    task arithmetic with λ = 1), and for cat and svd also 1/√N (between the two; what LEGO's
    output reweighting gives at k = all units); density 0.5; SVD rank r (and 2r for svd)."""
    r = pool.r_ref
    half = {"density": 0.5}
    return {
        "linear": [("1/N", {}), ("1", {})],
        "cat": [("1/N", {}), ("1/√N", {}), ("1", {})],
        "svd": [
            ("1/N", {"svd_rank": r}),
            ("1/√N", {"svd_rank": r}),
            ("1", {"svd_rank": r}),
            ("1/N", {"svd_rank": 2 * r}),
        ],
        "ties": [("1", half), ("1/N", half)],
        "ties_svd": [("1", {**half, "svd_rank": r}), ("1/N", {**half, "svd_rank": r})],
        "dare_linear": [("1/N", half)],
        "dare_linear_svd": [("1/N", {**half, "svd_rank": r})],
        "dare_ties": [("1", half)],
        "dare_ties_svd": [("1", {**half, "svd_rank": r})],
        "magnitude_prune": [("1/N", half)],
        "magnitude_prune_svd": [("1/N", {**half, "svd_rank": r})],
        "aligned": [("1", {})],
    }


def _label(name: str, w: str, o: dict[str, Any], r: int) -> str:
    def show(key: str, v: Any) -> str:
        return {r: "r", 2 * r: "2r"}.get(v, str(v)) if key == "svd_rank" else str(v)

    desc = ",".join(f"{k.replace('svd_', '')}={show(k, v)}" for k, v in o.items())
    return f"{name} w={w}" + (f" {desc}" if desc else "")


def baseline_configs(pool: Pool, methods: dict[str, list[str]]) -> list[Config]:
    """rankwise's baselines: whatever ``rw.merge_methods()`` lists besides lego (they follow
    PEFT's ``add_weighted_adapter`` numerics), with the settings of ``_plans``. Options a method
    does not take are left out; a method the plan does not know runs with its defaults."""
    plans = _plans(pool)
    out = []
    for name, params in sorted(methods.items()):
        if name == "lego":
            continue
        for w, opts in plans.get(name, [("1/N", {}), ("1", {})]):
            o = {key: v for key, v in opts.items() if key in params}
            out.append(Config(_label(name, w, o, pool.r_ref), "rw", name, tuple(o.items()), w, "seed" in params))
    return out


PEFT_TYPES = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_linear_svd", "dare_ties",
              "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")  # fmt: skip
FACTOR_WISE = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")


def peft_configs(pool: Pool) -> list[Config]:
    """PEFT's own ``add_weighted_adapter``, the oracle of rankwise's baselines, with the same
    settings (``--peft``: a cross-check; deterministic ones should score exactly what
    rankwise's do, DARE differs by its random stream). The factor-wise types need equal ranks;
    an SVD rank above a layer's min(d_out, d_in) fails in PEFT 0.21 (the 10-output layer at 2r)."""
    plans = _plans(pool)
    out = []
    for ctype in PEFT_TYPES:
        if ctype in FACTOR_WISE and not pool.equal_ranks:
            continue
        for w, o in plans[ctype]:
            out.append(
                Config("PEFT " + _label(ctype, w, o, pool.r_ref), "peft", ctype, tuple(o.items()), w, "dare" in ctype)
            )
    return out


REFERENCES = [
    Config("base model (no adapter)", "ref", "base"),
    Config("output ensemble (mean of probs; not a merge)", "ref", "ensemble"),
]


# ------------------------------------------------------------------------------ evaluation
@dataclass
class Result:
    pool: str
    config: Config
    seed: int
    acc: dict[str, float]  # per task
    norm: dict[str, float]  # per task, acc / individual acc
    seconds: float
    error: str | None = None
    norm_ratio: float | None = None  # LEGO: median over modules of ‖merged‖ / ‖its target‖

    @property
    def score(self) -> float:
        return float(np.mean(list(self.norm.values()))) if self.norm else math.nan


@dataclass
class PoolRun:
    """Merges and evaluates configurations on one pool."""

    ws: Workspace
    pool: Pool
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rw-quality-")))

    def __post_init__(self) -> None:
        self.paths = [self.ws.adapter(s) for s in self.pool.specs]
        self.tests = {t: self.ws.data.domain(t, "test") for t in self.pool.tasks}
        self.individual = {s.name: self.ws.individual_accuracy(s) for s in self.pool.specs}
        self.ref = {
            t: float(np.mean([self.individual[s.name] for s in self.pool.specs if s.domain == t]))
            for t in self.pool.tasks
        }
        self._rw_pool = None
        self._peft = None
        self._n = 0

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def weights(self, kind: str) -> list[float]:
        n = len(self.paths)
        return {"1": [1.0] * n, "1/N": [1.0 / n] * n, "1/√N": [n**-0.5] * n}[kind]

    def _rw_weights(self, cfg: Config) -> dict[str, list[float]]:
        return rw_weights(cfg, self.weights(cfg.weights))

    def evaluate(self, model) -> dict[str, float]:
        return {t: accuracy(model, x, y) for t, (x, y) in self.tests.items()}

    def _result(self, cfg: Config, seed: int, acc: dict[str, float], t0: float) -> Result:
        norm = {t: acc[t] / self.ref[t] for t in acc}
        return Result(self.pool.name, cfg, seed, acc, norm, time.perf_counter() - t0)

    def run(self, cfg: Config, seed: int = 0) -> Result:
        t0 = time.perf_counter()
        try:
            if cfg.family in ("lego", "lego-all", "rw"):
                acc, ratio = self._run_rw(cfg, seed)
                return replace(self._result(cfg, seed, acc, t0), norm_ratio=ratio)
            elif cfg.family == "peft":
                acc = self._run_peft(cfg, seed)
            else:
                acc = self._run_ref(cfg)
        except Exception as e:  # a baseline that rejects this pool (e.g. mixed ranks): n/a
            return Result(self.pool.name, cfg, seed, {}, {}, time.perf_counter() - t0, f"{type(e).__name__}: {e}")
        return self._result(cfg, seed, acc, t0)

    # rankwise ----------------------------------------------------------------------------
    def _run_rw(self, cfg: Config, seed: int) -> tuple[dict[str, float], float | None]:
        from peft import PeftModel

        import rankwise as rw

        if self._rw_pool is None:
            self._rw_pool = rw.AdapterPool.load(self.paths)
        opts = cfg.opts()
        if cfg.seeded:
            opts["seed"] = seed
        kw = self._rw_weights(cfg)
        stream = os.environ.get("RANKWISE_QUALITY_STREAM")  # e.g. "1KB": LEGO's streamed path, forced
        if stream and cfg.method == "lego" and opts.get("assembly", "projection-norm") != "legacy":
            streamable = opts.get("assembly") != "paper" and opts.get("norm") != "exact"
            if streamable and opts.get("init") is None and opts.get("features", "normalized") == "normalized":
                kw["memory_limit"] = stream
        merged = rw.merge(self._rw_pool, method=cfg.method, **kw, **opts)
        ratio = norm_ratio(self._rw_pool, merged, kw["weights"]) if cfg.method == "lego" else None
        self._n += 1
        out = merged.save(self.tmp / f"m{self._n}")
        model = PeftModel.from_pretrained(self.ws.base(), str(out))
        model.eval()
        acc = self.evaluate(model)
        shutil.rmtree(out, ignore_errors=True)
        return acc, ratio

    # PEFT --------------------------------------------------------------------------------
    def _peft_model(self):
        from peft import PeftModel

        if self._peft is None:
            pm = PeftModel.from_pretrained(self.ws.base(), str(self.paths[0]), adapter_name="a0")
            for i, p in enumerate(self.paths[1:], start=1):
                pm.load_adapter(str(p), adapter_name=f"a{i}")
            pm.eval()
            self._peft = pm
        return self._peft

    def _run_peft(self, cfg: Config, seed: int) -> dict[str, float]:
        import torch

        pm = self._peft_model()
        names = [f"a{i}" for i in range(len(self.paths))]
        torch.manual_seed(seed)  # DARE's random drops
        with torch.no_grad():
            pm.add_weighted_adapter(
                names, self.weights(cfg.weights), "merged", combination_type=cfg.method, **cfg.opts()
            )
        try:
            pm.set_adapter("merged")
            return self.evaluate(pm)
        finally:
            pm.set_adapter("a0")
            pm.delete_adapter("merged")

    def _run_ref(self, cfg: Config) -> dict[str, float]:
        import torch

        if cfg.method == "base":
            return self.evaluate(self.ws.base())
        pm = self._peft_model()
        probs = {t: 0.0 for t in self.tests}
        for i in range(len(self.paths)):
            pm.set_adapter(f"a{i}")
            with torch.no_grad():
                for t, (x, _) in self.tests.items():
                    probs[t] = probs[t] + torch.softmax(pm(torch.from_numpy(x)), -1).numpy()
        pm.set_adapter("a0")
        return {t: float((probs[t].argmax(1) == self.tests[t][1]).mean()) for t in self.tests}


def run_pool(run: PoolRun, configs: list[Config], seeds: list[int]) -> Iterator[Result]:
    for cfg in configs:
        for s in seeds if cfg.seeded else [0]:
            yield run.run(cfg, s)


def rw_weights(cfg: Config, w: list[float]) -> dict[str, list[float]]:
    """The bench's weights as its labels mean them (README "Weights"): PEFT's for the
    baselines; for lego's mass scale and aligned, which normalised by Σw before the one
    weights rule, the weights over their sum; lego's union scale takes them as they are."""
    if cfg.method in PEFT_TYPES:
        return {"peft_weights": w}
    if cfg.method == "aligned" or cfg.opts().get("scale", "mass") == "mass":
        return {"weights": [x / sum(w) for x in w]}
    return {"weights": w}


def norm_ratio(pool, merged, w: list[float]) -> float:
    """Median over modules of ‖merged‖_F / ‖target‖_F, the target Σ_j w_j·ΔW_j (the weights
    rule; for every assembly)."""
    ratios = []
    for m in pool.modules:
        target = sum(wj * a.delta(m) for wj, a in zip(w, pool))
        ratios.append(float(np.linalg.norm(merged.delta(m)) / np.linalg.norm(target)))
    return float(np.median(ratios))
