"""HTML reports: produced, self-contained (every figure inline, nothing fetched), and they open
in headless Chromium without a console error (a screenshot is left in the test's temp dir)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rankwise as rw
from insight_pools import saved_pool
from rankwise.analyze import analyze
from rankwise.cli import main
from rankwise.compare import compare
from rankwise.report import analysis_html, compare_html, composition_panels, imbalance, write_analysis, write_compare

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def _self_contained(page: str) -> None:
    # No URL that a browser would fetch: only data: images, no scripts, links or remote sources.
    assert not re.search(r"(src|href)=\"(?!data:)", page)
    assert "http://" not in page and "https://" not in page and "<script" not in page


def _open_in_chromium(page: Path, shot: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium)")
    res = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         f"--screenshot={shot}", "--window-size=1200,1600", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    # Page errors (a broken image, a script error) are logged as CONSOLE messages.
    assert "CONSOLE" not in res.stderr and "Uncaught" not in res.stderr, res.stderr[-2000:]
    assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 10_000


def test_analysis_page_holds_every_figure_and_opens(tmp_path: Path) -> None:
    pool = rw.AdapterPool.load(saved_pool(tmp_path, 3))
    page = write_analysis(analyze(pool, clusters=2), tmp_path / "analyze.html")
    text = page.read_text(encoding="utf-8")
    _self_contained(text)
    imgs = _images(text)
    # heatmap, spectra, cluster sizes of every module, composition panels, inertia curves
    assert len(imgs) == 5 and all(i.startswith(PNG) for i in imgs)
    assert all(h in text for h in ("Similarity", "Spectra", "Cluster composition", "Clustering curve"))
    assert "2 of 2 modules" in text and "suggested k" in text
    _open_in_chromium(page, tmp_path / "analyze.png")


def test_composition_panels_show_the_most_unbalanced_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = rw.AdapterPool.load(saved_pool(tmp_path, 3))
    rep = analyze(pool, clusters=3)
    worst = max(rep.modules, key=lambda m: rep.clusters[m].sum(axis=1).max() / rep.clusters[m].sum())
    assert imbalance(rep.clusters[worst]) == rep.clusters[worst].sum(axis=1).max() / sum(pool.ranks(worst))
    monkeypatch.setattr(sys.modules["rankwise.report"], "MAX_PANELS", 1)
    _, shown = composition_panels(rep, rep.adapters)
    assert shown == [worst]
    assert "1 of 2 modules (the most unbalanced" in analysis_html(rep)


def test_compare_page_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = saved_pool(tmp_path, 3)
    page = write_compare(compare(rw.AdapterPool.load(paths), ["lego", "svd"], rank=2), tmp_path / "c.html")
    text = page.read_text(encoding="utf-8")
    _self_contained(text)
    # kept and cos side by side per adapter, kept per module; the table's rows are the methods'.
    assert len(_images(text)) == 3 and "lego" in text and "svd" in text
    assert all(h in text for h in ("Retention per module", "worst kept", "mean cos"))
    res = compare(rw.AdapterPool.load(paths), ["lego", "cat"], rank=2)
    worst_cat = min(r["kept"] for r in res["cat"]["retention"]["adapters"])
    assert "<td>cat</td><td>6</td>" in compare_html(res).replace("\n", "") and f"{worst_cat:.3f}" in compare_html(res)
    _open_in_chromium(page, tmp_path / "compare.png")
    out = tmp_path / "cli.html"
    assert main(["--threads", "1", "analyze", *map(str, paths), "--html", str(out)]) == 0
    assert len(_images(out.read_text(encoding="utf-8"))) == 2  # no clusters asked: heatmap, spectra
    cmp = tmp_path / "cli-compare.html"
    args = ["--threads", "1", "compare", *map(str, paths), "--methods", "lego,svd", "--rank", "2", "--html", str(cmp)]
    assert main(args) == 0
    assert len(_images(cmp.read_text(encoding="utf-8"))) == 3


def test_numpy_only_merge_imports_neither_matplotlib_nor_yaml(tmp_path: Path) -> None:
    saved_pool(tmp_path, 2)
    code = (
        "import sys, rankwise as rw, rankwise.cli\n"
        f"m = rw.merge([{str(tmp_path / 'a0')!r}, {str(tmp_path / 'a1')!r}], 'lego', rank=2)\n"
        f"m.save({str(tmp_path / 'm')!r})\n"
        "print(sorted(k for k in ('matplotlib', 'yaml') if k in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
