"""The README's "Hostile inputs and conditions" table counts the cases each file really has."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parents[1] / "README.md"


def _table() -> dict[str, int]:
    text = README.read_text(encoding="utf-8")
    section = text.split("### Hostile inputs and conditions", 1)[1].split("\n#", 1)[0]
    return {f: int(n) for f, n in re.findall(r"^\|[^|]*\| `(test_hostile_\w+\.py)` \| (\d+) \|$", section, re.M)}


def _collected() -> Counter[str]:
    files = sorted(str(p) for p in HERE.glob("test_hostile_*.py"))
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        capture_output=True, text=True, cwd=HERE.parents[1], timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return Counter(Path(line.split("::", 1)[0]).name for line in p.stdout.splitlines() if "::" in line)


def test_readme_counts_match_the_files() -> None:
    table, got = _table(), _collected()
    files = {p.name for p in HERE.glob("test_hostile_*.py")}
    assert files <= set(table), f"files without a README row: {sorted(files - set(table))}"
    wrong = {f: (table[f], got[f]) for f in files if table[f] != got[f]}
    assert not wrong, f"README count vs collected cases: {wrong}"
    assert all(n == 0 for f, n in table.items() if f not in files), "a README row counts cases of a missing file"
