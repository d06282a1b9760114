"""The issue-14 table: LEGO's default assembly per pool against svd, the exact mean and the
base; leave-one-pool-out selection; seed spread; the norm of the merge against its target."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from .merging import Result

DEFAULT = "lego projection-norm k={k}"
LEGACY = "lego norm canon mass+param k=2r"  # the earlier default
BASE, MEAN = "base model (no adapter)", "cat w=1/N"
SVD = "svd w=1/N rank={k}"


class _By:
    def __init__(self, results: list[Result]) -> None:
        self.scores: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.ratios: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.family: dict[str, str] = {}
        for r in results:
            if r.error:
                continue
            self.family.setdefault(r.config.label, r.config.family)
            self.scores[(r.pool, r.config.label)].append(r.score)
            if r.norm_ratio is not None:
                self.ratios[(r.pool, r.config.label)].append(r.norm_ratio)

    def mean(self, pool: str, label: str) -> float:
        s = self.scores.get((pool, label))
        return float(np.mean(s)) if s else math.nan

    def spread(self, pool: str, label: str) -> float:
        s = self.scores.get((pool, label))
        return float(max(s) - min(s)) if s else math.nan

    def ratio(self, pool: str, label: str) -> float:
        s = self.ratios.get((pool, label))
        return float(np.median(s)) if s else math.nan


def lopo(by: _By, pools: list[str], held_out: str, family: str = "lego") -> str:
    """The LEGO setting with the best mean score on every pool but ``held_out``."""
    labels = [lb for lb, f in by.family.items() if f == family and all((p, lb) in by.scores for p in pools)]
    rest = [p for p in pools if p != held_out]
    return max(labels, key=lambda lb: float(np.mean([by.mean(p, lb) for p in rest])))


def assembly_table(results: list[Result], pools: list[str], md_table) -> str:
    by = _By(results)
    head = ["pool", "base", "exact mean", "svd r", "svd 2r", "default r", "default 2r", "default 4r",
            "spread r / 2r / 4r", "‖merged‖/‖T‖ r / 4r", "LOPO choice: score", "legacy (old default)",
            "legacy ‖merged‖/‖mean‖"]  # fmt: skip
    rows, cols = [], defaultdict(list)
    for p in pools:
        vals = {
            "base": by.mean(p, BASE),
            "mean": by.mean(p, MEAN),
            "svd r": by.mean(p, SVD.format(k="r")),
            "svd 2r": by.mean(p, SVD.format(k="2r")),
            **{f"d {k}": by.mean(p, DEFAULT.format(k=k)) for k in ("r", "2r", "4r")},
        }
        choice = lopo(by, pools, p)
        vals["lopo"] = by.mean(p, choice)
        vals["legacy"] = by.mean(p, LEGACY)
        for key, v in vals.items():
            cols[key].append(v)
        spread = " / ".join(f"{by.spread(p, DEFAULT.format(k=k)):.3f}" for k in ("r", "2r", "4r"))
        ratio = " / ".join(f"{by.ratio(p, DEFAULT.format(k=k)):.2f}" for k in ("r", "4r"))
        rows.append([p, *[f"{vals[k]:.3f}" for k in ("base", "mean", "svd r", "svd 2r", "d r", "d 2r", "d 4r")],
                     spread, ratio, f"`{choice.removeprefix('lego ')}`: {vals['lopo']:.3f}", f"{vals['legacy']:.3f}",
                     f"{by.ratio(p, LEGACY):.2f}"])  # fmt: skip
    mean = {k: float(np.mean(v)) for k, v in cols.items()}
    rows.append(["**mean**", *[f"{mean[k]:.3f}" for k in ("base", "mean", "svd r", "svd 2r", "d r", "d 2r", "d 4r")],
                 "", "", f"{mean['lopo']:.3f}", f"{mean['legacy']:.3f}", ""])  # fmt: skip
    out = [md_table(head, rows), ""]
    d_r, s_r = np.array(cols["d r"]), np.array(cols["svd r"])
    worst = int(np.argmin(d_r - s_r))
    out.append(
        f"Default (projection-norm) at r minus svd at r: mean {np.mean(d_r - s_r):+.3f}, worst pool "
        f"`{pools[worst]}` {(d_r - s_r)[worst]:+.3f}; at 4r minus max(svd r, exact mean): mean "
        f"{np.mean(np.array(cols['d 4r']) - np.maximum(s_r, cols['mean'])):+.3f}; default at r minus the "
        f"base: worst {np.min(d_r - np.array(cols['base'])):+.3f}."
    )
    return "\n".join(out)
