#!/usr/bin/env bash
# Create or update .venv in the repository root with klip and its test/bench/docs extras.
# torch is pinned to the local CPU wheel through a constraints file (an open range would make
# pip fetch a multi-GB CUDA build instead), and every other package by scripts/constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
TORCH_PIN="torch==${KLIP_TORCH_VERSION:-2.13.0}"
constraints=$(mktemp)
log=$(mktemp)
trap 'rm -f "$constraints" "$log"' EXIT
echo "$TORCH_PIN" > "$constraints"
# Every other package at the version the long jobs run with.
grep -v '^#' scripts/constraints.txt >> "$constraints"
pip_install() {
  if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -c "$constraints" "$@" \
      >"$log" 2>&1; then
    grep -v "is ignored" "$log" >&2
    echo "setup: pip install $* failed" >&2
    exit 1
  fi
}
# The study tests start a throw-away PostgreSQL server (Debian's package; initdb and pg_ctl).
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && command -v apt-get >/dev/null \
    && [ "$(id -u)" = 0 ]; then
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
      >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: apt-get install postgresql failed (the PostgreSQL study tests will be skipped)" >&2
  fi
fi
pip_install "$TORCH_PIN"
pip_install -e ".[test,bench,postgres,envpool,docs,box2d]"
.venv/bin/python -c "import torch, torchrl, pytorch_lightning, optuna, gymnasium, mujoco, envpool, mkdocs, mkdocstrings_handlers.python, material, Box2D"
