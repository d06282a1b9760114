"""The harness tells a crash, a hang, an exception and a clean run apart."""

from __future__ import annotations

import pytest
from harness import expect_error, expect_ok, run_case


def test_clean_run_and_exception() -> None:
    expect_ok("x = 1")
    expect_error("raise ValueError('bad key k in f.safetensors')", ValueError, r"key k in f\.safetensors")


def test_crash_is_seen() -> None:
    o = run_case("import os, signal; os.kill(os.getpid(), signal.SIGBUS)")
    assert o.crashed and o.returncode is not None and o.returncode < 0


def test_hang_is_seen() -> None:
    o = run_case("import time; time.sleep(30)", timeout=2)
    assert o.returncode is None


def test_wrong_exception_fails() -> None:
    with pytest.raises(AssertionError, match="expected KeyError"):
        expect_error("raise ValueError('x')", KeyError, "x")
