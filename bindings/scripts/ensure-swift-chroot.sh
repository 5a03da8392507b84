#!/usr/bin/env bash
# Prints the path of a cached Debian trixie chroot with Swift 6 (`swiftlang`) for
# the Swift-on-Linux tests, creating it once (~1.5 min, ~2.7 GB). Needs root.
# Swift 6 needs glibc 2.38, newer than the host's, hence the chroot.
# Cache: ${MOE_EDGE_CACHE:-~/.cache/moe-edge}/swift-trixie
# Nothing is mounted inside it when this script ends.
set -euo pipefail
cache="${MOE_EDGE_CACHE:-$HOME/.cache/moe-edge}"
root="$cache/swift-trixie"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ -x "$root/usr/bin/swiftc" ] && [ -f "$root/.moe-edge-complete" ]; then
  echo "$root"
  exit 0
fi
command -v debootstrap >/dev/null || {
  as_root apt-get update -q >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
}
mkdir -p "$cache"
partial="$root.partial"
# A half-made chroot from an interrupted run: make sure nothing is mounted, then start over.
if [ -d "$partial" ]; then
  if findmnt -rn -o TARGET | grep -q "^$partial/"; then
    echo "refusing to delete $partial: something is mounted under it" >&2
    exit 1
  fi
  as_root rm -rf --one-file-system "$partial"
fi
echo "creating the Swift chroot at $root (debootstrap trixie + swiftlang) ..." >&2
as_root debootstrap --variant=minbase trixie "$partial" http://deb.debian.org/debian >&2
as_root mount -t proc proc "$partial/proc"
trap 'as_root umount "$partial/proc"' EXIT
as_root chroot "$partial" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  bash -c 'apt-get update -q && apt-get install -y -q swiftlang && apt-get clean' >&2
as_root umount "$partial/proc"
trap - EXIT
as_root touch "$partial/.moe-edge-complete"
[ ! -e "$root" ] || { echo "$root exists but is incomplete; remove it (nothing mounted under it) and retry" >&2; exit 1; }
as_root mv "$partial" "$root"
echo "$root"
