"""What the hostile cases share: the preamble each child runs (imports, the case's folder) and
small builders of adapter folders, so that a case is a few lines saying what is hostile."""

from __future__ import annotations

#: Run first in every child: a case works in its cwd (a pytest tmp_path).
PRELUDE = """
import json, math, os, sys
from pathlib import Path
import numpy as np
import rankwise as rw
from raw_adapter import A_KEY, B_KEY, CONFIG, good_header, write_pool, write_raw
tmp = Path.cwd()
nan, inf = float("nan"), float("inf")  # as repr() writes them into a case

def adapter(name, config=None, **kw):
    h, d = good_header(**kw)
    return write_raw(tmp / name, h, d, {**CONFIG, **(config or {})})
"""


def case(body: str) -> str:
    """The child's code: the prelude, then ``body``."""
    return PRELUDE + "\n" + body
