#!/usr/bin/env bash
# Shared set-up for .ci/demo and .ci/test: installs what a fresh Debian machine
# lacks (idempotently) and fetches the base model into the cache.
# Sourced, not run: it exports MOE_EDGE_BASE_MODEL.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v python3 >/dev/null || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v cc >/dev/null || missing+=(build-essential)
command -v curl >/dev/null || missing+=(curl ca-certificates)
command -v ip >/dev/null || missing+=(iproute2)  # offload: network-namespace test
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)  # chart text
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} ..." >&2
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  export PATH="$HOME/.cargo/bin:$PATH"
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

MOE_EDGE_BASE_MODEL=$(bash "$(dirname "${BASH_SOURCE[0]}")/../models/fetch-base-model.sh")
export MOE_EDGE_BASE_MODEL

# --- experts and gate (issue 3): the domain corpora for their tests (cached) ---
fetch_corpora="$(dirname "${BASH_SOURCE[0]}")/../core/scripts/fetch-corpora.sh"
bash "$fetch_corpora" >/dev/null || { as_root apt-get update -q >&2 && bash "$fetch_corpora" >/dev/null; }
