#!/usr/bin/env bash
# Mobile targets: `cargo check` of core and bindings for aarch64-linux-android and
# aarch64-apple-ios, then `moe-edge bench` cross-built for aarch64-unknown-linux-gnu
# (cheap `cross-smoke` profile) and run under qemu on a tiny random Llama made by
# tiny-llama.py. Installs what it needs (rustup targets, clang/llvm for ring's C
# code, the aarch64 GNU toolchain, qemu-user-static). Prints the bench JSON.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v clang >/dev/null || missing+=(clang)
command -v llvm-ar >/dev/null || missing+=(llvm)
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
targets=(aarch64-linux-android aarch64-apple-ios aarch64-unknown-linux-gnu)
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do grep -qx "$t" <<<"$installed" || rustup target add "$t"; done

echo "== cargo check: Android and iOS (aarch64)"
# Everything here uses the cheap `cross-smoke` profile, so the host build scripts and
# proc macros are compiled once for the checks and the aarch64 build below.
# Only C code in the tree (ring, once edge offload lands) needs a C compiler: Debian's
# clang, freestanding. For iOS a stub SDK stops cc-rs from calling xcrun.
sdk="$target/ios-sdk-stub"
mkdir -p "$sdk/usr/include"
cat >"$sdk/usr/include/TargetConditionals.h" <<'H'
#pragma once
#define TARGET_OS_IPHONE 1
#define TARGET_OS_IOS 1
#define TARGET_OS_OSX 0
#define TARGET_OS_MAC 1
#define TARGET_OS_SIMULATOR 0
H
freestanding="-ffreestanding -nostdlibinc -DRING_CORE_NOSTDLIBINC=1"
CC_aarch64_linux_android=clang AR_aarch64_linux_android=llvm-ar \
  CFLAGS_aarch64_linux_android="--target=aarch64-linux-android21 $freestanding" \
  SDKROOT="$sdk" CC_aarch64_apple_ios=clang AR_aarch64_apple_ios=llvm-ar \
  CFLAGS_aarch64_apple_ios="--target=arm64-apple-ios14.0 $freestanding -I$sdk/usr/include" \
  cargo check --profile cross-smoke --target aarch64-linux-android --target aarch64-apple-ios -p moe-edge -p moe-edge-ffi

echo "== moe-edge bench on aarch64 under qemu"
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
  cargo build --profile cross-smoke --target aarch64-unknown-linux-gnu -p moe-edge --features cli
bin="$target/aarch64-unknown-linux-gnu/cross-smoke/moe-edge"
model="$target/tiny-llama"
python3 bindings/scripts/tiny-llama.py "$model"
json=$(qemu-aarch64-static -L /usr/aarch64-linux-gnu "$bin" --threads 2 bench --model "$model" \
  --prompt-tokens 32 --decode-tokens 16 --repeat 1 --json)
echo "$json"
python3 -c 'import json, sys
r = json.loads(sys.argv[1])
assert r["prompt_tokens"] == 32 and r["decode_tokens"] == 16, r
assert r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0 and r["peak_rss_mb"] > 0, r
print("aarch64 bench under qemu: ok")' "$json"
