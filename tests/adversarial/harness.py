"""Hostile cases run in a child process with a timeout, so that a crash (a signal, an abort) or a
hang fails one test instead of killing or stalling the suite.

A case is a snippet of Python. The child runs it and reports the exception it ended with (its
class, the classes it derives from, and its message) on its last line; the parent asserts on that.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
_MARK = "@@rankwise-case@@"

_CHILD = f"""
import json, sys
code = sys.stdin.read()
result = {{"type": None, "mro": [], "message": ""}}
try:
    exec(compile(code, "<case>", "exec"), {{"__name__": "__case__"}})
except BaseException as e:  # the case's outcome, whatever it is
    result = {{"type": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__], "message": str(e)}}
sys.stdout.flush()
print("\\n{_MARK}" + json.dumps(result))
"""


@dataclass
class Outcome:
    returncode: int | None  # None: timed out
    exc_type: str | None
    exc_mro: list[str] = field(default_factory=list)
    message: str = ""
    stdout: str = ""
    stderr: str = ""

    @property
    def crashed(self) -> bool:
        """Killed by a signal (SIGBUS, SIGSEGV, SIGABRT) or exited without reporting."""
        if self.returncode is None:
            return False
        return self.returncode < 0 or (self.exc_type is None and _MARK not in self.stdout)


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.setdefault("RANKWISE_NUM_THREADS", "2")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def run_case(code: str, *, timeout: float = 60, cwd: Path | None = None, env: dict[str, str] | None = None) -> Outcome:
    """Run ``code`` in a fresh interpreter; the outcome, or a timed-out one."""
    try:
        p = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=code,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=_env(env),
        )
    except subprocess.TimeoutExpired as e:
        return Outcome(None, None, stdout=str(e.stdout or ""), stderr=str(e.stderr or ""))
    out = Outcome(p.returncode, None, stdout=p.stdout, stderr=p.stderr)
    if _MARK in p.stdout:
        r = json.loads(p.stdout.rsplit(_MARK, 1)[1].strip().splitlines()[0])
        out.exc_type, out.exc_mro, out.message = r["type"], r["mro"], r["message"]
    return out


def _describe(o: Outcome) -> str:
    return f"rc={o.returncode} exc={o.exc_type}: {o.message[:500]!r}\nstderr tail: {o.stderr[-1500:]}"


def expect_error(
    code: str, exc: type[BaseException] | str, match: str, *, timeout: float = 60, cwd: Path | None = None
) -> Outcome:
    """The case must end with an exception of class ``exc`` (or a subclass) whose message matches
    the regex ``match`` (searched, case-insensitive): no crash, no hang, no other outcome."""
    o = run_case(code, timeout=timeout, cwd=cwd)
    name = exc if isinstance(exc, str) else exc.__name__
    assert o.returncode is not None, f"hang: no outcome within {timeout} s\n{_describe(o)}"
    assert not o.crashed, f"crash\n{_describe(o)}"
    assert name in o.exc_mro, f"expected {name}\n{_describe(o)}"
    assert re.search(match, o.message, re.IGNORECASE | re.DOTALL), f"message does not match {match!r}\n{_describe(o)}"
    return o


def expect_ok(code: str, *, timeout: float = 60, cwd: Path | None = None) -> Outcome:
    """The case must run to its end without an exception, crash or hang."""
    o = run_case(code, timeout=timeout, cwd=cwd)
    assert o.returncode is not None, f"hang: no outcome within {timeout} s\n{_describe(o)}"
    assert o.returncode == 0 and o.exc_type is None and _MARK in o.stdout, _describe(o)
    return o


def run_cli(args: list[str], *, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m rankwise ARGS`` in a child; a hang raises TimeoutExpired (fails the test)."""
    cmd = [sys.executable, "-m", "rankwise", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=_env(None))


def expect_cli_error(args: list[str], match: str, *, timeout: float = 60, cwd: Path | None = None) -> str:
    """The CLI must exit non-zero with a one-screen message matching ``match`` and no traceback."""
    p = run_cli(args, timeout=timeout, cwd=cwd)
    assert p.returncode > 0, f"rc={p.returncode}\n{p.stdout[-800:]}\n{p.stderr[-1500:]}"
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    assert re.search(match, p.stderr + p.stdout, re.IGNORECASE), p.stderr[-1500:]
    return p.stderr


def tree_digest(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: to assert that a run left its inputs untouched."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
