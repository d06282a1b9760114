"""A merge's memory budget, ``memory_limit``: bytes, from an int or a string such as ``"64MB"``
or ``"2GiB"``; by default ``$RANKWISE_MEMORY_LIMIT`` when set (same syntax), else half of the
RAM available when the merge starts (``MemAvailable`` of /proc/meminfo; ``FALLBACK_BYTES``
where that cannot be read). LEGO streams a module whose unit
matrix would not fit in it (``methods/lego_streamed.py``)."""

from __future__ import annotations

import os
import re
from typing import Any

from .errors import OptionError

#: The limit where /proc/meminfo cannot be read (not Linux).
FALLBACK_BYTES = 4 << 30
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_PATTERN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def default_memory_limit() -> int:
    """``$RANKWISE_MEMORY_LIMIT``, else half of MemAvailable (/proc/meminfo), else ``FALLBACK_BYTES``."""
    env = os.environ.get("RANKWISE_MEMORY_LIMIT")
    if env:
        return memory_limit(env)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except (OSError, ValueError, IndexError):
        pass
    return FALLBACK_BYTES


def memory_limit(value: Any) -> int:
    """``value`` as bytes: None (the default), a positive int, or a number with a unit
    (B, kB, MB, GB, TB decimal; KiB, MiB, GiB, TiB binary; case-insensitive)."""
    if value is None:
        return default_memory_limit()
    if isinstance(value, bool):
        raise OptionError(f"memory_limit must be bytes (an int or e.g. '64MB'), got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise OptionError(f"memory_limit must be a positive number of bytes, got {value}")
        return value
    if isinstance(value, str):
        m = _PATTERN.fullmatch(value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise OptionError(
                f"memory_limit {value!r}: expected a number and a unit such as '64MB' or '2GiB' "
                f"(units: {', '.join(u for u in _UNITS if u)})"
            )
        n = int(float(m.group(1)) * _UNITS[unit])
        if n < 1:
            raise OptionError(f"memory_limit {value!r} is less than one byte")
        return n
    raise OptionError(f"memory_limit must be bytes (an int or e.g. '64MB'), got {value!r}")
