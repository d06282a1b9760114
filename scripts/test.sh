#!/usr/bin/env bash
# The whole test suite, from a fresh machine or a warm one.
#
# Python packages go to a venv outside the clone (RANKWISE_VENV, default ~/.cache/rankwise-venv)
# and Rust builds to CARGO_TARGET_DIR (default ~/.cache/rankwise-target), so that a second run
# reuses both; a fresh machine pays for torch (~3 GB) once.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${RANKWISE_VENV:-$HOME/.cache/rankwise-venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rankwise-target}"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
# pip skips what is already installed; the build backend is installed too, so that the package
# builds without an isolated (downloaded) build environment.
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip
"$PY" -m pip install -q --disable-pip-version-check "maturin>=1.5,<2" ruff
"$PY" -m pip install -q --disable-pip-version-check --no-build-isolation ".[test,bench]"

echo "== cargo test (rankwise-core)"
cargo test -q -p rankwise-core --release

echo "== pytest"
# pytest exits 5 when it collects no test: with `set -e` that fails the run, as it should.
"$PY" -m pytest -q tests "$@"
