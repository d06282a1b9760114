"""Shared helpers of the benches: machine info, timing, peak memory, and RESULTS.md sections."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCHES = Path(__file__).resolve().parent
REPO = BENCHES.parent
RESULTS = BENCHES / "RESULTS.md"
RESULTS_HEADER = (
    "# rankwise benchmark results\n\n"
    "Each section is written by the script it names (`--write`); the exact command, the machine "
    "and the commit are given in the section. Do not edit between a section's markers by hand.\n"
)
POOLS = Path(os.environ.get("RANKWISE_POOLS", "/tmp/rankwise-pools"))


def set_threads(n: int = 2) -> None:
    """Pins rankwise's thread pool, and torch's when torch is already imported."""
    import rankwise as rw

    rw.set_num_threads(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def settle(seconds: float = 0.5) -> None:
    """Waits before a clock starts until the idle threads that imports leave spinning are asleep:
    numpy's OpenBLAS spins its worker threads for ~0.1-0.3 s after it loads (and torch's
    OpenMP pool after each parallel op), which took ~10 ms from a 0.15 s merge on 2 cores."""
    time.sleep(seconds)


def ensure_pool(shape: str, n: int, *, rank: int = 16, dtype: str = "f16", clustered: int | None = None) -> list[Path]:
    """The first ``n`` adapters of a cached pool under ``POOLS`` (``RANKWISE_POOLS``), made with
    ``make_pool`` (seed 0) when no complete pool of at least ``n`` adapters exists."""
    sys.path.insert(0, str(BENCHES))
    from make_pool import make_pool

    stem = f"{shape}-r{rank}-{dtype}" + (f"-c{clustered}" if clustered else "")
    for d in sorted(POOLS.glob(f"{stem}-n*"), key=lambda d: int(d.name.rsplit("-n", 1)[1])):
        if int(d.name.rsplit("-n", 1)[1]) >= n and (d / ".complete").exists():
            return sorted(d.glob("adapter_*"))[:n]
    out = POOLS / f"{stem}-n{n}"
    t0 = time.perf_counter()
    paths = make_pool(out, n, shape, rank=rank, dtype=dtype, seed=0, clustered=clustered)
    (out / ".complete").write_text(f"{time.perf_counter() - t0:.1f} s\n")
    print(f"made {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return paths


# ------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "amx_tile", "amx_bf16") if f in have]
    except OSError:
        pass
    return []


def host_kind() -> tuple[str, str]:
    """(slug, label) of this machine's kind, for one RESULTS.md table per host kind: the vendor
    from /proc/cpuinfo and whether it has AVX-512 (the GEMM kernels faer and OpenBLAS pick
    differ between them), e.g. ("intel-avx512", "Intel Xeon AVX-512")."""
    model, flags = cpu_model(), set(cpu_flags())
    vendor = "AMD" if "AMD" in model.upper() else "Intel" if "INTEL" in model.upper() else "other"
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "baseline"
    name = {"AMD": "AMD EPYC", "Intel": "Intel Xeon"}.get(vendor, "other CPU")
    label = f"{name} {isa.upper().replace('AVX', 'AVX-')}"
    return f"{vendor.lower()}-{isa}", label


def git_commit() -> str:
    try:

        def git(*a: str) -> str:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

        sha = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info() -> str:
    """One markdown line: CPU, cores, RAM, load, versions, commit."""
    import numpy as np

    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()[0]
    parts = [
        f"CPU: {cpu_model()} ({', '.join(cpu_flags())})",
        f"{os.cpu_count()} cores",
        f"{mem_gb:.0f} GiB RAM",
        f"load avg {load:.1f} at start",
        f"Python {platform.python_version()}, numpy {np.__version__}",
    ]
    for mod in ("torch", "peft", "safetensors"):
        if mod in sys.modules:
            parts.append(f"{mod} {sys.modules[mod].__version__}")
    pins = [f"{v}={os.environ[v]}" for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if v in os.environ]
    parts.append("OpenBLAS kernels pinned by " + ", ".join(pins) if pins else "OpenBLAS kernels: its own choice")
    parts.append(f"commit {git_commit()}")
    return "Machine: " + "; ".join(parts) + "."


# ------------------------------------------------------------------------------------- timing
def timeit(fn: Callable[[], Any], repeat: int = 3, warmup: int = 0) -> tuple[float, list[float]]:
    """Median wall time of ``repeat`` runs (after ``warmup`` untimed ones), and all the times."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def warm_page_cache(paths: Sequence[Path]) -> int:
    """Reads every file once so that the timings see a warm page cache; returns total bytes."""
    total = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while chunk := f.read(16 << 20):
                total += len(chunk)
    return total


# ------------------------------------------------------------------------------------- memory
def peak_rss_mb() -> float:
    """Peak resident set of this process so far (ru_maxrss; file-backed mapped pages count)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _status_kbs(*fields: str) -> list[int]:
    """Several /proc/self/status fields (kB) from one read."""
    found = dict.fromkeys(fields, 0)
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in found:
                found[key] = int(line.split()[1])
    return [found[k] for k in fields]


class RssPoller:
    """Samples RSS and anonymous RSS (/proc/self/status) every ``interval`` s in a thread.

    One read per sample, every 5 ms: the sampler holds the GIL while it parses, which delays
    the merge's own Python threads; at 2 ms with two reads it added ~10% to a 0.15 s merge.

    ``phase = "name"`` starts a phase: ``phases[name]`` keeps that phase's peaks (MB)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_rss_kb = 0
        self.peak_anon_kb = 0
        self.phase = ""
        self.phases: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss, anon = _status_kbs("VmRSS", "RssAnon")
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_anon_kb = max(self.peak_anon_kb, anon)
        if self.phase:
            ph = self.phases.setdefault(self.phase, {"rss_mb": 0.0, "anon_mb": 0.0})
            ph["rss_mb"] = max(ph["rss_mb"], rss / 1024)
            ph["anon_mb"] = max(ph["anon_mb"], anon / 1024)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssPoller:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@contextmanager
def peak_memory() -> Iterator[RssPoller]:
    with RssPoller() as p:
        yield p


def run_child(
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    echo_stderr: bool = False,
    unset: Sequence[str] = (),
) -> dict[str, Any]:
    """Runs ``python argv...`` that prints one JSON object as its last stdout line; adds the
    child's peak RSS (``RUSAGE_CHILDREN`` is the max over children, so one child at a time) and
    its wall time as seen from here. ``env`` is added to this environment, ``unset`` removed."""
    child_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=child_env, timeout=timeout)
    wall = time.perf_counter() - t0
    if echo_stderr and proc.stderr.strip():
        sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"child {argv} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    out = json.loads(lines[-1])
    out.setdefault("child_wall_s", wall)
    return out


# ------------------------------------------------------------------------------------ results
def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def command_line() -> str:
    """The command that ran this script, relative to the repo root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_s = str(script.relative_to(REPO))
    except ValueError:
        script_s = str(script)
    return " ".join(["python", script_s, *sys.argv[1:]])


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replaces the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in
    RESULTS.md (appending the markers at the end if absent, creating the file if needed).
    Everything outside the markers is kept byte for byte."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else RESULTS_HEADER
    block = f"{start}\n{body.strip()}\n{end}"
    i, j = text.find(start), text.find(end)
    if i >= 0 and j > i:
        text = text[:i] + block + text[j + len(end) :]
    elif i >= 0 or j >= 0:
        raise RuntimeError(f"{path}: the markers of section '{name}' are broken; fix them by hand")
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
