#!/usr/bin/env bash
# The whole test suite with its gates, from a fresh machine or a warm one (CI runs exactly this).
#
# Python packages go to a venv outside the clone (RANKWISE_VENV, default ~/.cache/rankwise-venv)
# and Rust builds to CARGO_TARGET_DIR (default ~/.cache/rankwise-target), so that a second run
# reuses both; a fresh machine pays for torch (~3 GB) once. Every install step is here and
# skips what is already installed.
#
# Gates, in order: cargo fmt, clippy, ruff check, ruff format, the stub of rankwise._core
# against the built module (mypy's stubtest), the core's Rust tests (natively, and on an
# AVX-512 host also under an emulated AVX2-only CPU, beside pytest), pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${RANKWISE_VENV:-$HOME/.cache/rankwise-venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rankwise-target}"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
export PYO3_PYTHON="$PY"  # clippy and cargo test build the binding against this interpreter
# pip skips what is already installed; the build backend is installed too, so that the package
# builds without an isolated (downloaded) build environment.
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip
"$PY" -m pip install -q --disable-pip-version-check "maturin>=1.5,<2" ruff mypy
"$PY" -m pip install -q --disable-pip-version-check --no-build-isolation ".[test,bench,ray]"

# Headless Chromium opens the HTML reports in tests/test_report.py (Debian's package; the test
# skips, saying why, where it cannot be installed).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
    if [ "$SUDO" != none ]; then
        echo "== installing chromium with apt-get"
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq || true
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || true
    fi
fi

# rustfmt and clippy come with rustup's default profile; a minimal toolchain lacks them.
for tool in fmt clippy; do
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            rustup component add "$([ "$tool" = fmt ] && echo rustfmt || echo clippy)"
        else
            echo "error: 'cargo $tool' is missing and there is no rustup to install it" >&2
            exit 1
        fi
    fi
done

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy -q --all-targets -- -D warnings

echo "== ruff"
"$PY" -m ruff check python tests benches
"$PY" -m ruff format --check python tests benches

echo "== stubtest rankwise._core"
"$PY" -m mypy.stubtest rankwise._core

echo "== cargo test (rankwise-core)"
cargo test -q -p rankwise-core --release

# On an AVX-512 host the native run takes the AVX-512 kernels; the AVX2 ones (what AVX2-only
# hosts run) are checked by running the core's unit-test binary under QEMU's Haswell model,
# which has AVX2 and FMA but no AVX-512. It runs beside pytest (it is slow: emulation).
emulated_pid=""
emulated_log=""
cleanup() { [ -n "$emulated_pid" ] && kill "$emulated_pid" 2>/dev/null || true; }
trap cleanup EXIT
if grep -q avx512f /proc/cpuinfo; then
    if ! command -v qemu-x86_64 >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
        if [ "$SUDO" != none ]; then
            echo "== installing qemu-user (qemu-x86_64) with apt-get"
            $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq || true
            $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null || true
        fi
    fi
    if command -v qemu-x86_64 >/dev/null 2>&1; then
        bin=$(cargo test -q -p rankwise-core --release --lib --no-run --message-format=json |
            "$PY" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])')
        emulated_log="$CARGO_TARGET_DIR/rankwise-core-haswell.log"
        # Only the simd module's tests (every AVX2 kernel against the scalar one, same bytes):
        # emulation is ~100× slower, and the k-means and linalg tests would take tens of minutes.
        echo "== cargo test (rankwise-core simd kernels) under qemu-x86_64 -cpu Haswell (AVX2, no AVX-512), beside pytest"
        timeout 900 qemu-x86_64 -cpu Haswell "$bin" -q simd >"$emulated_log" 2>&1 &
        emulated_pid=$!
    else
        echo "== SKIPPED: the core's tests on an emulated AVX2-only CPU: this host has AVX-512 but no" \
            "qemu-x86_64, and apt-get is missing or needs a password (install the Debian package qemu-user)"
    fi
fi

echo "== pytest"
# pytest exits 5 when it collects no test: with `set -e` that fails the run, as it should.
"$PY" -m pytest -q tests "$@"

if [ -n "$emulated_pid" ]; then
    echo "== cargo test (rankwise-core) under qemu-x86_64 -cpu Haswell: waiting"
    status=0
    wait "$emulated_pid" || status=$?
    emulated_pid=""
    grep -v "TCG doesn't support requested feature" "$emulated_log" | tail -n 20
    if [ "$status" != 0 ]; then
        echo "error: the core's tests failed on the emulated AVX2-only CPU (log: $emulated_log)" >&2
        exit "$status"
    fi
fi
