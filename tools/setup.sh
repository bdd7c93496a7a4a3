#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment in .venv with svdq-edge installed (editable).
#   bash tools/setup.sh          runtime only
#   bash tools/setup.sh --test   also test tools, Debian packages the tests use, and both models
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
if [ "${1:-}" = "--test" ]; then
  # Debian packages for the NEON cross-compile tests (best effort: tests skip without them)
  if [ -f .ci/apt-packages.txt ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    pkgs=$(grep -v '^#' .ci/apt-packages.txt | tr '\n' ' ')
    missing=""
    for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    if [ -n "$missing" ]; then
      (apt-get update -qq && apt-get install -y -qq $missing) >/dev/null 2>&1 \
        || echo "setup: could not install$missing (their tests will be skipped)"
    fi
  fi
  # cuda: numba-cuda for the CUDA simulator tests and the PTX compile check (no GPU needed)
  pip install -q -e '.[test,cuda]'
  svdq-edge pull gemma-3-270m
  svdq-edge pull qwen2.5-coder-0.5b
else
  pip install -q -e .
fi
