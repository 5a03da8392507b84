#!/usr/bin/env bash
# Swift-on-Linux suite: compiles the generated Swift bindings, the iOS demo's
# facade (ios-demo/Sources/MoeEdge) and bindings/tests/swift with swiftc 6 in the
# cached Debian trixie chroot, and runs them there against the release library,
# the real base model and the repository's small models. Prints `N passed,
# N failed`; fails if any failed. Needs root (chroot). Files are copied into the
# chroot; only /proc is mounted, and unmounted on exit.
# Usage: bindings/tests/run-swift.sh [substring of a test name]
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
: "${MOE_EDGE_BASE_MODEL:=$(bash models/fetch-base-model.sh)}"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

root=$(bash bindings/scripts/ensure-swift-chroot.sh)
out=$(bash bindings/scripts/generate.sh)
work=/tmp/moe-edge-swift-tests   # inside the chroot
host_work="$root$work"
as_root rm -rf --one-file-system "$host_work"
as_root mkdir -p "$host_work/gen" "$host_work/lib" "$host_work/src" "$host_work/models"
as_root cp "$out"/swift/* "$host_work/gen/"
as_root cp "$target/release/libmoe_edge_ffi.so" "$host_work/lib/"
as_root cp ios-demo/Sources/MoeEdge/*.swift bindings/tests/swift/main.swift "$host_work/src/"
as_root cp -r models "$host_work/models/small"
as_root cp -l "$MOE_EDGE_BASE_MODEL" "$host_work/models/base.gguf" 2>/dev/null \
  || as_root cp "$MOE_EDGE_BASE_MODEL" "$host_work/models/base.gguf"

mounted=0
cleanup() {
  if [ "$mounted" = 1 ]; then as_root umount "$root/proc"; fi
  as_root rm -rf --one-file-system "$host_work"
}
trap cleanup EXIT
if ! mountpoint -q "$root/proc"; then
  as_root mount -t proc proc "$root/proc"
  mounted=1
fi
in_chroot() {
  as_root chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    MOE_EDGE_BASE_MODEL="$work/models/base.gguf" MOE_EDGE_MODELS_DIR="$work/models/small" "$@"
}
echo "compiling the Swift bindings, facade and tests ..." >&2
in_chroot bash -c "cd $work && swiftc -I gen -Xcc -fmodule-map-file=gen/MoeEdgeFFI.modulemap \
  -L lib -lmoe_edge_ffi -Xlinker -rpath -Xlinker $work/lib gen/*.swift src/*.swift -o moe-edge-tests"
in_chroot "$work/moe-edge-tests" "$@"
