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
    curves = {m: np.cumsum(s**2) / np.sum(s**2) for m, s in rep.spectra.items() if s.size and np.sum(s**2) > 0}
    if len(curves) <= MAX_SPECTRA:
        for m, c in curves.items():
            ax.plot(np.arange(1, c.size + 1), c, label=m.rsplit(".", 3)[-1] if len(curves) > 1 else m, lw=1)
        if curves:
            ax.legend(fontsize=6)
    else:
        width = max(c.size for c in curves.values())
        pad = np.stack([np.pad(c, (0, width - c.size), constant_values=1.0) for c in curves.values()])
        x = np.arange(1, width + 1)
        ax.fill_between(x, pad.min(axis=0), pad.max(axis=0), alpha=0.3, label="range over modules")
        ax.plot(x, np.median(pad, axis=0), label="median")
        ax.legend(fontsize=7)
    for e in (0.9, 0.99):
        ax.axhline(e, color="gray", lw=0.5, ls="--")
    ax.set_xlabel("rank")
    ax.set_ylabel("share of the summed update's energy")
    ax.set_title("Spectra of the summed update, per module")
    return _png(fig)


def composition_figure(comp: np.ndarray, labels: list[str], module: str) -> str:
    plt = _plt()
    k, n = comp.shape
    fig, ax = plt.subplots(figsize=(min(3 + 0.3 * k, 14), 4))
    bottom = np.zeros(k)
    for j in range(n):
        ax.bar(range(k), comp[:, j], bottom=bottom, label=labels[j] if n <= 20 else None)
        bottom += comp[:, j]
    ax.set_xticks(range(k))
    ax.set_xlabel("cluster")
    ax.set_ylabel("rank units")
    ax.set_title(f"Which adapters' units each cluster holds ({module})")
    if n <= 20:
        ax.legend(fontsize=6, ncol=2)
    return _png(fig)


def retention_figure(result: dict[str, dict[str, Any]]) -> str:
    plt = _plt()
    methods = list(result)
    labels = _short([r["path"] for r in result[methods[0]]["retention"]["adapters"]])
    n = len(labels)
    fig, ax = plt.subplots(figsize=(min(3 + 0.35 * n * len(methods), 14), 4))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        kept = [r["kept"] for r in result[m]["retention"]["adapters"]]
        ax.bar(np.arange(n) + i * width, kept, width, label=m)
    if n <= 40:
        ax.set_xticks(np.arange(n) + 0.4 - width / 2, labels, rotation=90, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("kept: ‖P ΔW_j‖ / ‖ΔW_j‖")
    ax.set_title("How much of each source the merge kept")
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
    body.append(
        _table(
            ["module", "rank for 90%", "rank for 99%", "nonzero singular values"],
            [[m, *rep.energy_ranks(m).values(), rep.spectra[m].size] for m in rep.modules],
        )
    )
    if rep.clusters:
        m = next(iter(rep.clusters))
        body += ["<h2>Cluster composition</h2>", composition_figure(rep.clusters[m], labels, m)]
    return _page("rankwise analyze", body)


def compare_html(result: dict[str, dict[str, Any]]) -> str:
    methods = list(result)
    rows = [[m, ", ".join(map(str, result[m]["ranks"])), f"{result[m]['seconds']:.2f}"] for m in methods]
    body = [_table(["method", "merged rank", "seconds"], rows), "<h2>Retention</h2>", retention_figure(result)]
    return _page("rankwise compare", body)


def write_analysis(rep: Analysis, path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    p.write_text(analysis_html(rep), encoding="utf-8")
    return p


def write_compare(result: dict[str, dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    p.write_text(compare_html(result), encoding="utf-8")
    return p
