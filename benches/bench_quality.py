"""Merge quality on a small real task: LoRA-LEGO's options against the baselines.

    python benches/bench_quality.py [--quick] [--write] [--seeds 3] [--peft] [--fresh]

The task (benches/quality/tasks.py): scikit-learn's bundled digits (nothing downloaded). A base
MLP 64 → 256 → 256 → 10 is trained on the plain images; each *domain* is a fixed corruption
(shift, three occlusions, blur, dilation, erosion, low contrast), and a domain's LoRA (all
three linear layers, lora_alpha = 2r) is trained with PEFT on the corrupted training split plus
as many plain images, and saved with ``save_pretrained``. Pools (benches/quality/merging.py): ``domains`` (8 domains ×
1 seed), ``seeds`` (3 domains × 4 seeds), ``hetero`` (8 domains, ranks 4 and 16 alternating),
``shared-init`` (8 domains, every LoRA starting from the same A), ``no-replay`` (8 domains,
adapters trained on their domain alone); ``--quick``: 4 domains, pools domains, hetero and
shared-init.

Every pool is merged by every configuration (the LEGO grid, each rankwise baseline
``rw.merge_methods()`` lists, PEFT's own ``add_weighted_adapter`` with ``--peft``); a rankwise
merge is saved and loaded back with ``PeftModel.from_pretrained``. Score: *normalized
accuracy*, per task the merged model's test accuracy over the task's individual adapter's
(mean over its seeds), averaged over the pool's tasks; ± is the standard deviation over
``--seeds`` merge seeds (k-means and DARE). Trained adapters are cached (``--cache``), so a rerun
only merges; ``--fresh`` retrains.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from quality.assembly_table import assembly_table
from quality.merging import (
    REFERENCES,
    Config,
    Pool,
    PoolRun,
    Result,
    baseline_configs,
    lego_configs,
    make_pools,
    peft_configs,
    run_pool,
)
from quality.tasks import Recipe, Workspace, load_data

SECTION = "bench_quality"
# The paper-literal reading (lego's first default), and the recommended options (the second is
# lego's default since this bench chose it).
PAPER_LITERAL = {"features": "raw", "canon": False, "mode": "union+both", "k": "r", "init": "k-means++"}
RECOMMENDED = [
    {"features": "normalized", "canon": True, "mode": "mass+param", "k": "r", "init": "k-means++"},
    {"features": "normalized", "canon": True, "mode": "mass+param", "k": "2r", "init": "k-means++"},
]


# ---------------------------------------------------------------------------------- running
def run_all(args: argparse.Namespace) -> tuple[list[Pool], dict[str, PoolRun], list[Result], int]:
    import rankwise as rw
    from rankwise.merging import get_method

    ws = Workspace(args.cache, Recipe(), load_data())
    methods = {n: get_method(n).params for n in rw.merge_methods()}
    seeds = list(range(args.seeds))
    pools = make_pools(args.quick)
    runs: dict[str, PoolRun] = {}
    results: list[Result] = []
    for pool in pools:
        t0 = time.perf_counter()
        run = PoolRun(ws, pool)
        t1 = time.perf_counter()
        configs = REFERENCES + baseline_configs(pool, methods) + lego_configs(pool, quick=args.quick)
        if args.peft:
            configs += peft_configs(pool)
        res = list(run_pool(run, configs, seeds))
        run.close()
        runs[pool.name] = run
        results += res
        print(
            f"{pool.name}: {len(pool.specs)} adapters ready in {t1 - t0:.1f} s, "
            f"{len(res)} merges+evals in {time.perf_counter() - t1:.1f} s",
            file=sys.stderr,
        )
    trained = ws.trained
    if args.lm:
        from quality.lm import run_lm_pool

        t0 = time.perf_counter()
        lm_results, lm_trained, args.lm_desc = run_lm_pool(args.cache, seeds)
        results += lm_results
        trained += lm_trained
        print(f"lm: {len(lm_results)} merges+evals in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return pools, runs, results, trained


# ---------------------------------------------------------------------------------- tables
class Scores:
    """Per (pool, config label): the scores over merge seeds, and the per-task means."""

    def __init__(self, results: list[Result]) -> None:
        self.by: dict[tuple[str, str], list[Result]] = defaultdict(list)
        self.configs: dict[str, Config] = {}
        self.errors: dict[tuple[str, str], str] = {}
        for r in results:
            self.configs.setdefault(r.config.label, r.config)
            if r.error:
                self.errors[(r.pool, r.config.label)] = r.error
            else:
                self.by[(r.pool, r.config.label)].append(r)

    def mean(self, pool: str, label: str) -> float:
        rs = self.by.get((pool, label))
        return float(np.mean([r.score for r in rs])) if rs else math.nan

    def std(self, pool: str, label: str) -> float:
        rs = self.by.get((pool, label), [])
        return float(np.std([r.score for r in rs], ddof=1)) if len(rs) > 1 else 0.0

    def task_means(self, pool: str, label: str) -> dict[str, float]:
        rs = self.by.get((pool, label), [])
        return {t: float(np.mean([r.norm[t] for r in rs])) for t in rs[0].norm} if rs else {}

    def cell(self, pool: str, label: str) -> str:
        if (pool, label) in self.errors and (pool, label) not in self.by:
            return "n/a"
        m, s = self.mean(pool, label), self.std(pool, label)
        if math.isnan(m):
            return "–"
        return f"{m:.3f} ± {s:.3f}" if len(self.by[(pool, label)]) > 1 else f"{m:.3f}"

    def labels(self, family: str | tuple[str, ...]) -> list[str]:
        fams = (family,) if isinstance(family, str) else family
        return [lb for lb, c in self.configs.items() if c.family in fams]


def lego_label(fac: dict) -> str:
    feat, canon, mode, k, init = fac["features"], fac["canon"], fac["mode"], fac["k"], fac["init"]
    return f"lego {feat[:4]} {'canon' if canon else 'plain'} {mode} k={k}" + (" aligned" if init == "aligned" else "")


def mean_over_pools(sc: Scores, pools: list[Pool], label: str) -> float:
    vals = [sc.mean(p.name, label) for p in pools]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def complete(sc: Scores, pools: list[Pool], label: str) -> bool:
    return all(not math.isnan(sc.mean(p.name, label)) for p in pools)


def mean_cell(sc: Scores, pools: list[Pool], label: str) -> str:
    """The mean over pools; starred when the method could not run on every pool."""
    m = mean_over_pools(sc, pools, label)
    if math.isnan(m):
        return "n/a"
    return f"{m:.3f}" + ("" if complete(sc, pools, label) else "*")


def mean_ranks(sc: Scores, pools: list[Pool], labels: list[str]) -> dict[str, float]:
    """Mean over pools of each label's rank (1 = best) among ``labels`` in that pool."""
    ranks: dict[str, list[float]] = defaultdict(list)
    labels = [lb for lb in labels if complete(sc, pools, lb)]
    for p in pools:
        vals = [(sc.mean(p.name, lb), lb) for lb in labels if not math.isnan(sc.mean(p.name, lb))]
        order = sorted(vals, key=lambda t: -t[0])
        for i, (_, lb) in enumerate(order, start=1):
            ranks[lb].append(i)
    return {lb: float(np.mean(v)) for lb, v in ranks.items()}


def summary_table(sc: Scores, pools: list[Pool], labels: list[str], *, sort: bool = False) -> str:
    names = [p.name for p in pools]
    if sort:
        labels = sorted(labels, key=lambda lb: (not complete(sc, pools, lb), -mean_over_pools(sc, pools, lb)))
    rows = [[lb, *[sc.cell(n, lb) for n in names], mean_cell(sc, pools, lb), gap_cell(sc, pools, lb)] for lb in labels]
    return C.md_table(["method / options", *names, "mean", "worst gap"], rows)


def gap_cell(sc: Scores, pools: list[Pool], label: str) -> str:
    """The largest shortfall, over pools, from the best merge of that pool (any method or
    option; the references excluded): how far a fixed choice can be from the pool's best."""
    gaps = []
    for p in pools:
        m = sc.mean(p.name, label)
        if math.isnan(m):
            continue
        best = max(
            (sc.mean(p.name, lb) for lb, c in sc.configs.items() if c.family != "ref"),
            key=lambda v: -math.inf if math.isnan(v) else v,
        )
        gaps.append(best - m)
    return f"{max(gaps):.3f}" if gaps else "n/a"


def pool_table(sc: Scores, pool: Pool, run: PoolRun, labels: list[str]) -> str:
    tasks = pool.tasks
    rows = [["individual adapters (accuracy)", "1", *[f"{run.ref[t]:.3f}" for t in tasks]]]
    for lb in labels:
        tm = sc.task_means(pool.name, lb)
        rows.append([lb, sc.cell(pool.name, lb), *[f"{tm[t]:.3f}" if t in tm else "–" for t in tasks]])
    return C.md_table(["method / options", "norm. acc", *tasks], rows)


def factor_table(sc: Scores, pools: list[Pool]) -> str:
    """Each LEGO factor level against the others with every other factor held fixed: the mean
    paired difference (in normalized accuracy) and in how many pools that mean is positive."""
    lego = [sc.configs[lb] for lb in sc.labels("lego")]
    facs = {lb: sc.configs[lb].fac() for lb in sc.labels("lego")}
    rows = []
    contrasts = [
        ("features", "normalized", "raw", "cluster on cat(b/‖b‖, a/‖a‖)"),
        ("canon", True, False, "canonical form (‖b‖ = ‖a‖, sign-invariant clustering)"),
        ("init", "aligned", "k-means++", "aligned init (k = r, equal ranks only)"),
        ("mode", "mass+param", "union+both", "scale: mass vs union (both with their reweighting)"),
        ("mode", "union+output", "union+both", "union: without parameter reweighting"),
        ("mode", "union+param", "union+both", "union: without output reweighting (k > r only)"),
        ("mode", "union+none", "union+both", "union: without any reweighting"),
        ("mode", "mass+none", "mass+param", "mass: without parameter reweighting"),
        ("k", "2r", "r", "k = 2r vs k = r"),
        ("k", "Nr/2", "r", "k = Nr/2 vs k = r"),
    ]
    index = {tuple(sorted(f.items(), key=lambda t: t[0])): lb for lb, f in facs.items()}
    for factor, hi, lo, what in contrasts:
        per_pool = []
        for p in pools:
            diffs = []
            for c in lego:
                f = c.fac()
                if f[factor] != lo:
                    continue
                g = dict(f, **{factor: hi})
                other = index.get(tuple(sorted(g.items(), key=lambda t: t[0])))
                if other is None:
                    continue
                a, b = sc.mean(p.name, other), sc.mean(p.name, c.label)
                if not (math.isnan(a) or math.isnan(b)):
                    diffs.append(a - b)
            if diffs:
                per_pool.append((p.name, float(np.mean(diffs)), sum(d > 0 for d in diffs), len(diffs)))
        if not per_pool:
            continue
        got = {name: f"{m:+.3f} ({w}/{n})" for name, m, w, n in per_pool}
        cells = [got.get(p.name, "n/a") for p in pools]
        means = [m for _, m, _, _ in per_pool]
        pos = sum(m > 0 for m in means)
        rows.append([f"{what}: {factor}={hi} vs {lo}", *cells, f"{np.mean(means):+.3f}", f"{pos}/{len(per_pool)}"])
    names = [p.name for p in pools]
    return C.md_table(["contrast (paired, other factors fixed)", *names, "mean", "pools where first is better"], rows)


def best_lego(sc: Scores, pools: list[Pool], n: int = 12) -> list[str]:
    full = [lb for lb in sc.labels("lego") if complete(sc, pools, lb)]
    return sorted(full, key=lambda lb: -mean_over_pools(sc, pools, lb))[:n]


def report(pools: list[Pool], runs: dict[str, PoolRun], results: list[Result], args: argparse.Namespace) -> str:
    sc = Scores(results)
    refs, base = sc.labels("ref"), sc.labels("rw")
    lego_all = sc.labels("lego-all")
    top = best_lego(sc, pools)
    default = lego_label(PAPER_LITERAL)
    ranks = mean_ranks(sc, pools, sc.labels("lego"))
    top_rank = sorted(ranks, key=lambda lb: ranks[lb])[:8]
    recommended = [lego_label(f) for f in RECOMMENDED]
    chosen = [lb for lb in dict.fromkeys([default, *recommended, *top[:5], *top_rank[:3]]) if lb in sc.configs]
    out = []
    out.append("### LEGO's default assembly against the baselines (issue 14)\n")
    out.append(
        'default: `assembly="projection-norm"` (weights 1/N: the target is the mean) at rank r, 2r, 4r; '
        "svd and exact mean (cat) with weights 1/N; spread: max − min over the merge seeds; "
        "‖merged‖/‖T‖: median over modules; LOPO: the LEGO setting with the best mean on the other "
        "pools, scored on this one; legacy: the earlier default (mass+param, k = 2r).\n"
    )
    names = [p.name for p in pools] + (["lm"] if any(r.pool == "lm" for r in results) else [])
    out.append(assembly_table(results, names, C.md_table))
    if getattr(args, "lm_desc", None):
        out.append("\n" + args.lm_desc + ".\n")
    out.append("")
    out.append("### Summary: mean normalized accuracy per pool (± std over merge seeds)\n")
    out.append(
        "worst gap: the largest shortfall, over pools, from the best merge found for that pool "
        "(any method or option): how far a fixed choice can land from the pool's best.\n"
    )
    sel = refs + list(dict.fromkeys(chosen + lego_all)) + base
    out.append(summary_table(sc, pools, sel))
    out.append(
        f"\n`{default}` is the paper-literal setting (lego's first default); "
        + ", ".join(f"`{lb}`" for lb in recommended)
        + ' the earlier recommended options (now `assembly="legacy"`; the default is in the table above). '
        "Other LEGO rows: the five best by mean over pools, the three best by mean rank over pools "
        "(a configuration's rank among all LEGO configurations, averaged over pools: rewards "
        "consistency). A starred mean is over the pools the method could run on (n/a: it needs "
        "equal ranks; –: not run there, its settings depend on r).\n"
    )
    out.append("### LEGO factors: paired differences\n")
    out.append(factor_table(sc, pools))
    out.append(
        "\nEach cell: the mean, over all LEGO configurations that differ only in that factor, of "
        "score(first level) − score(second level); in brackets how many of those pairs the first "
        "level wins.\n"
    )
    out.append("### LEGO: best by mean rank across pools\n")
    out.append(
        C.md_table(
            ["LEGO options", "mean rank", *[p.name for p in pools], "mean"],
            [
                [lb, f"{ranks[lb]:.1f}", *[sc.cell(p.name, lb) for p in pools], mean_cell(sc, pools, lb)]
                for lb in top_rank
            ],
        )
    )
    out.append("\n### Per pool, per task (normalized accuracy per task)\n")
    for p in pools:
        out.append(f"\n<details><summary>Pool <code>{p.name}</code>: {p.about} ({len(p.specs)} adapters)</summary>\n")
        out.append(pool_table(sc, p, runs[p.name], refs + list(dict.fromkeys(chosen + lego_all)) + base))
        out.append("\n</details>\n")
    peft = sc.labels("peft")
    if peft:
        out.append("\n### Cross-check: rankwise's baselines against PEFT's add_weighted_adapter (rankwise / PEFT)\n")
        rows = []
        for lb in peft:
            mine = lb.removeprefix("PEFT ")
            rows.append([mine, *[f"{sc.cell(p.name, mine)} / {sc.cell(p.name, lb)}" for p in pools]])
        out.append(C.md_table(["baseline", *[p.name for p in pools]], rows))
    out.append("\n<details><summary>Full LEGO grid (every configuration, every pool)</summary>\n")
    out.append(summary_table(sc, pools, sc.labels(("lego", "lego-all")), sort=True))
    out.append("\n</details>\n")
    errs = sorted({f"{p}: {lb}: {e.splitlines()[0][:160]}" for (p, lb), e in sc.errors.items()})
    if errs:
        out.append("n/a (the method rejected the pool):\n\n" + "\n".join(f"- {e}" for e in errs) + "\n")
    return "\n".join(out)


def dump(results: list[Result], path: Path) -> None:
    rows = [
        {"pool": r.pool, "label": r.config.label, "family": r.config.family, "method": r.config.method,
         "options": {k: v for k, v in r.config.options}, "weights": r.config.weights, "factors": r.config.fac(),
         "seed": r.seed, "score": r.score, "acc": r.acc, "norm": r.norm, "seconds": r.seconds, "error": r.error,
         "norm_ratio": r.norm_ratio}
        for r in results
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=0, default=str))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 pools of 4 domains, k=r only, 1 merge seed")
    p.add_argument("--seeds", type=int, default=None, help="merge seeds (default 3; 1 with --quick)")
    p.add_argument("--peft", action="store_true", help="also merge with PEFT's add_weighted_adapter (cross-check)")
    p.add_argument("--cache", type=Path, default=Path("/tmp/rankwise-quality"), help="trained base and adapters")
    p.add_argument("--fresh", action="store_true", help="retrain the base and the adapters")
    p.add_argument("--json", type=Path, default=None, help="write every result here (default: under --cache)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-lm", dest="lm", action="store_false", help="skip the language-model pool (quality/lm.py)")
    p.add_argument("--write", action="store_true", help="replace the bench_quality section of RESULTS.md")
    args = p.parse_args()
    if args.seeds is None:
        args.seeds = 1 if args.quick else 5
    args.lm = args.lm and not args.quick
    if args.fresh:
        import shutil

        shutil.rmtree(args.cache, ignore_errors=True)

    import peft
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    C.set_threads(args.threads)
    t0 = time.perf_counter()
    pools, runs, results, trained = run_all(args)
    wall = time.perf_counter() - t0
    dump(results, args.json or args.cache / ("results-quick.json" if args.quick else "results.json"))
    body = report(pools, runs, results, args)
    print(body)
    print(f"\ntotal {wall:.0f} s (peft {peft.__version__})", file=sys.stderr)
    if args.write:
        header = (
            "## Merge quality (bench_quality.py)\n\n"
            f"Command: `{C.command_line()}` ({wall:.0f} s; "
            + (f"{trained} models trained in the run" if trained else "base and adapters from the cache")
            + "; from scratch the digit pools take about 90 s on a quiet machine, the `lm` pool about "
            "10 min on a loaded 2-core host).\n\n"
            f"{C.machine_info()}\n\n"
        )
        notes = Path(__file__).resolve().parent / "quality" / "NOTES.md"
        text = header + (notes.read_text() + "\n\n" if notes.exists() else "") + body
        C.write_section(SECTION, text)


if __name__ == "__main__":
    main()
