"""Self-contained HTML reports of an analysis (``rankwise.analyze``) or a comparison of merges
(``rankwise.compare``): the similarity heatmap, the spectra, the retention bars and the cluster
composition as matplotlib figures embedded as base64 PNG, so the page needs no network to view.
matplotlib is the optional extra ``rankwise[report]``, imported only when a report is drawn."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from .analyze import Analysis
from .errors import OptionError

#: Spectra drawn one line each; beyond this many modules, the median and the range.
MAX_SPECTRA = 12


def _plt() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OptionError("HTML reports need matplotlib: pip install 'rankwise[report]'") from None
    return plt


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _short(names: list[str]) -> list[str]:
    return [os.path.basename(n.rstrip("/")) or n for n in names]


def heatmap(cos: np.ndarray, labels: list[str], title: str) -> str:
    plt = _plt()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(min(2 + 0.4 * n, 12), min(1.6 + 0.4 * n, 11)))
    im = ax.imshow(cos, vmin=-1, vmax=1, cmap="RdBu_r")
    if n <= 40:
        ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels, fontsize=7)
    fig.colorbar(im, ax=ax, label="cosine")
    ax.set_title(title)
    return _png(fig)


def spectra_figure(rep: Analysis) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    total = {m: rep.energy.get(m, float(np.sum(s**2))) for m, s in rep.spectra.items()}
    # Sketched modules hold only their top values: their curves end below 1 (cut at len(s)).
    curves = {m: np.cumsum(s**2) / total[m] for m, s in rep.spectra.items() if s.size and total[m] > 0}
    if len(curves) <= MAX_SPECTRA:
        for m, c in curves.items():
            ax.plot(np.arange(1, c.size + 1), c, label=m.rsplit(".", 3)[-1] if len(curves) > 1 else m, lw=1)
        if curves:
            ax.legend(fontsize=6)
    else:
        width = max(c.size for c in curves.values())
        pad = np.stack([np.pad(c, (0, width - c.size), constant_values=np.nan) for c in curves.values()])
        x = np.arange(1, width + 1)
        ax.fill_between(x, np.nanmin(pad, axis=0), np.nanmax(pad, axis=0), alpha=0.3, label="range over modules")
        ax.plot(x, np.nanmedian(pad, axis=0), label="median")
        ax.legend(fontsize=7)
    for e in (0.9, 0.99):
        ax.axhline(e, color="gray", lw=0.5, ls="--")
    ax.set_xlabel("rank")
    ax.set_ylabel("share of the summed update's energy")
    sketched = any(v != "exact" for v in rep.methods.values())
    ax.set_title("Spectra of the summed update, per module" + (" (sketched: top values only)" if sketched else ""))
    return _png(fig)


#: Modules drawn one composition panel each; beyond, the most unbalanced ones.
MAX_PANELS = 12


def imbalance(comp: np.ndarray) -> float:
    """The largest cluster's share of a module's units (1/k: even clusters; 1: one holds all)."""
    t = comp.sum()
    return float(comp.sum(axis=1).max() / t) if t else 0.0


def composition_panels(rep: Analysis, labels: list[str]) -> tuple[str, list[str]]:
    """Small multiples: one stacked-bar panel per module (which adapters' units each cluster
    holds, clusters by size), the ``MAX_PANELS`` most unbalanced modules when there are more.
    Returns the figure and the modules drawn."""
    plt = _plt()
    mods = sorted(rep.clusters, key=lambda m: -imbalance(rep.clusters[m]))[:MAX_PANELS]
    mods = [m for m in rep.modules if m in mods]  # model order
    cols = min(3, len(mods))
    rows = -(-len(mods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, m in zip(axes.ravel(), mods):
        comp = rep.clusters[m]
        order = np.argsort(-comp.sum(axis=1), kind="stable")
        bottom = np.zeros(comp.shape[0])
        for j in range(comp.shape[1]):
            ax.bar(range(comp.shape[0]), comp[order, j], bottom=bottom, color=cmap(j % 20), width=0.9)
            bottom += comp[order, j]
        ax.set_title(f"{_tail(m)} (largest {imbalance(comp):.0%})", fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(mods) :]:
        ax.axis("off")
    if len(labels) <= 20:
        handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(j % 20)) for j in range(len(labels))]
        fig.legend(
            handles, labels, fontsize=6, ncol=min(len(labels), 6), loc="lower center", bbox_to_anchor=(0.5, -0.02)
        )
    fig.supxlabel("cluster (largest first)", fontsize=8)
    fig.supylabel("rank units", fontsize=8)
    fig.tight_layout()
    return _png(fig), mods


def cluster_sizes_figure(rep: Analysis) -> str:
    """Every module at once: cluster sizes (largest first, share of the module's units) as one
    modules × clusters heatmap, and how many adapters each cluster draws units from."""
    plt = _plt()
    mods = [m for m in rep.modules if m in rep.clusters]
    k = max(rep.clusters[m].shape[0] for m in mods)
    share = np.zeros((len(mods), k))
    spread = np.zeros((len(mods), k))
    for i, m in enumerate(mods):
        comp = rep.clusters[m]
        order = np.argsort(-comp.sum(axis=1), kind="stable")
        share[i, : comp.shape[0]] = comp[order].sum(axis=1) / max(comp.sum(), 1)
        spread[i, : comp.shape[0]] = (comp[order] > 0).sum(axis=1)
    h = min(1.5 + 0.18 * len(mods), 12)
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, h))
    for ax, data, title, label in (
        (a0, share, "Cluster size (share of the module's units)", "share"),
        (a1, spread, "Adapters with units in the cluster", "adapters"),
    ):
        im = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_xlabel("cluster (largest first)")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, label=label)
        if len(mods) <= 64:
            ax.set_yticks(range(len(mods)), [_tail(m) for m in mods], fontsize=5)
    return _png(fig)


def curves_figure(rep: Analysis) -> str:
    """Inertia vs k per module (relative to k = 1), each module's knee (the suggested k) dotted."""
    plt = _plt()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    knees = []
    many = len(rep.curves) > MAX_SPECTRA
    for m, curve in rep.curves.items():
        ks = np.array([c[0] for c in curve])
        y = np.array([c[1] for c in curve])
        y = y / y[0] if y[0] > 0 else y
        kn = rep.suggested_k(m)
        knees.append("none" if kn is None else str(kn))
        line = a0.plot(ks, y, lw=0.6 if many else 1, alpha=0.4 if many else 1, label=None if many else _tail(m))
        if kn is not None:
            a0.plot([kn], [y[list(ks).index(kn)]], "o", ms=3, color=line[0].get_color())
    a0.set_xscale("log", base=2)
    a0.set_xlabel("k")
    a0.set_ylabel("inertia / inertia at k = 1")
    a0.set_title("k-means inertia vs k per module (dots: knee)", fontsize=9)
    if not many and rep.curves:
        a0.legend(fontsize=6)
    vals = sorted(set(knees), key=lambda v: (v == "none", int(v) if v != "none" else 0))
    a1.bar(vals, [knees.count(v) for v in vals])
    a1.set_xlabel("suggested k")
    a1.set_ylabel("modules")
    a1.set_title("Suggested k over modules", fontsize=9)
    return _png(fig)


def _tail(module: str) -> str:
    """``layers.3.self_attn.q_proj`` -> ``3.q_proj``: short enough for a tick label."""
    parts = module.split(".")
    nums = [p for p in parts if p.isdigit()]
    return ".".join([*nums[-1:], parts[-1]]) if nums else parts[-1]


def retention_figure(result: dict[str, dict[str, Any]], key: str = "kept") -> str:
    """Per source adapter, each method's ``kept`` (or ``cos``) side by side: grouped bars up to
    40 adapters, beyond one line per method over the adapters sorted by that method's value."""
    plt = _plt()
    methods = list(result)
    labels = _short([r["path"] for r in result[methods[0]]["retention"]["adapters"]])
    n = len(labels)
    fig, ax = plt.subplots(figsize=(min(3 + 0.35 * n * len(methods), 14) if n <= 40 else 8, 4))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        vals = [r[key] for r in result[m]["retention"]["adapters"]]
        if n <= 40:
            ax.bar(np.arange(n) + i * width, vals, width, label=m)
        else:
            ax.plot(np.arange(1, n + 1), np.sort(vals), label=m)
    if n <= 40:
        ax.set_xticks(np.arange(n) + 0.4 - width / 2, labels, rotation=90, fontsize=7)
    else:
        ax.set_xlabel("source adapters, sorted (worst first) per method")
    if key == "kept":
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("kept: ‖P ΔW_j‖ / ‖ΔW_j‖")
        ax.set_title("How much of each source the merge kept")
    else:
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.05)
        ax.set_ylabel("cos(ΔW_merged, ΔW_j)")
        ax.set_title("Cosine of the merge with each source")
    ax.legend(fontsize=7)
    return _png(fig)


def retention_modules_figure(result: dict[str, dict[str, Any]]) -> str:
    """Per module, each method's ``kept`` over the sources: the mean (line) and the range (band)."""
    plt = _plt()
    methods = list(result)
    mods = list(result[methods[0]]["retention"]["modules"])
    fig, ax = plt.subplots(figsize=(min(4 + 0.15 * len(mods), 14), 3.6))
    x = np.arange(len(mods))
    for m in methods:
        kept = np.array([result[m]["retention"]["modules"][mod]["kept"] for mod in mods])
        line = ax.plot(x, kept.mean(axis=1), label=m, lw=1)
        ax.fill_between(x, kept.min(axis=1), kept.max(axis=1), alpha=0.2, color=line[0].get_color())
    if len(mods) <= 64:
        ax.set_xticks(x, [_tail(m) for m in mods], rotation=90, fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("kept (mean; band: min-max over sources)")
    ax.set_title("Retention per module")
    ax.legend(fontsize=7)
    return _png(fig)


def _page(title: str, body: list[str]) -> str:
    style = "body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%}td,th{padding:2px 8px}"
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{trs}</table>"


def analysis_html(rep: Analysis) -> str:
    labels = _short(rep.adapters)
    body = [f"<pre>{html.escape(rep.summary())}</pre>", "<h2>Similarity</h2>"]
    body.append(heatmap(rep.similarity.cosine(), labels, "Cosine of the adapters' updates (whole model)"))
    body += ["<h2>Spectra</h2>", spectra_figure(rep)]

    def rank(v: int | None, m: str) -> str:
        return f"> {rep.spectra[m].size}" if v is None else str(v)

    rows = []
    for m in rep.modules:
        r = rep.energy_ranks(m)
        rows.append([m, rank(r["90%"], m), rank(r["99%"], m), rep.spectra[m].size, rep.methods.get(m, "exact")])
        if m in rep.curves:
            kn = rep.suggested_k(m)
            rows[-1].append("no knee" if kn is None else kn)
    head = ["module", "rank for 90%", "rank for 99%", "singular values", "how"]
    body.append(_table(head + (["suggested k"] if rep.curves else []), rows))
    if rep.clusters:
        panels, shown = composition_panels(rep, labels)
        body += [
            "<h2>Cluster composition</h2>",
            "<p>Every module: cluster sizes and how many adapters each cluster draws from.</p>",
            cluster_sizes_figure(rep),
            f"<p>Which adapters' units each cluster holds, {len(shown)} of {len(rep.clusters)} modules"
            + (" (the most unbalanced: largest cluster's share of the units)" if len(shown) < len(rep.clusters) else "")
            + ".</p>",
            panels,
        ]
    if rep.curves:
        body += ["<h2>Clustering curve</h2>", curves_figure(rep)]
    return _page("rankwise analyze", body)


def compare_html(result: dict[str, dict[str, Any]]) -> str:
    methods = list(result)
    rows = []
    for m in methods:
        ad = result[m]["retention"]["adapters"]
        kept, cos = [r["kept"] for r in ad], [r["cos"] for r in ad]
        rows.append([
            m, ", ".join(map(str, result[m]["ranks"])), f"{result[m]['seconds']:.2f}",
            f"{np.mean(kept):.3f}", f"{np.min(kept):.3f}", f"{np.mean(cos):.3f}", f"{np.min(cos):.3f}",
        ])  # fmt: skip
    head = ["method", "merged rank", "seconds", "mean kept", "worst kept", "mean cos", "worst cos"]
    body = [_table(head, rows), "<h2>Retention</h2>", retention_figure(result, "kept"), retention_figure(result, "cos")]
    body += ["<h2>Retention per module</h2>", retention_modules_figure(result)]
    return _page("rankwise compare", body)


def write_analysis(rep: Analysis, path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    p.write_text(analysis_html(rep), encoding="utf-8")
    return p


def write_compare(result: dict[str, dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    p.write_text(compare_html(result), encoding="utf-8")
    return p
