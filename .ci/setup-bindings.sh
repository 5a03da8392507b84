#!/usr/bin/env bash
# Extra set-up for the bindings tests in .ci/test (sourced after .ci/setup.sh):
# JNA + Java + npm for the Kotlin suite, debootstrap for the Swift chroot, and
# clang/llvm + the aarch64 GNU toolchain + qemu for the mobile-target checks.
set -euo pipefail

missing=()
[ -f /usr/share/java/jna.jar ] || missing+=(libjna-java)
command -v java >/dev/null || missing+=(default-jre-headless)
command -v npm >/dev/null || missing+=(npm)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v clang >/dev/null || missing+=(clang)
command -v llvm-ar >/dev/null || missing+=(llvm)
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} ..." >&2
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
