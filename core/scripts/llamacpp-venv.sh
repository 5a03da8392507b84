#!/usr/bin/env bash
# Builds llama-cpp-python 0.3.36 (llama.cpp from source, ~9 min on 2 cores) once
# into a cached virtualenv and prints the venv's python. Used only by reference
# tools (golden fixtures, side-by-side benchmarks), never by tests.
set -euo pipefail
CACHE="${MOE_EDGE_CACHE:-$HOME/.cache/moe-edge}"
VENV="$CACHE/llamacpp-venv"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  echo "$VENV/bin/python"
  exit 0
fi
mkdir -p "$CACHE"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --disable-pip-version-check -q --upgrade pip >&2
echo "building llama-cpp-python 0.3.36 from source (about 9 minutes) ..." >&2
"$VENV/bin/pip" install --disable-pip-version-check -v llama-cpp-python==0.3.36 numpy >&2
echo "$VENV/bin/python"
