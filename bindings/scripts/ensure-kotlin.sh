#!/usr/bin/env bash
# Prints the directory of a cached Kotlin toolchain for the JVM tests, fetching it
# once: kotlinc 2.4.20 from npm (`kotlin-compiler`, which also ships
# kotlinx-coroutines), and JNA from Debian (`libjna-java`).
# Cache: ${MOE_EDGE_CACHE:-~/.cache/moe-edge}/kotlinc-2.4.20/package
set -euo pipefail
version=2.4.20
cache="${MOE_EDGE_CACHE:-$HOME/.cache/moe-edge}"
dir="$cache/kotlinc-$version"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -f /usr/share/java/jna.jar ] || ! command -v java >/dev/null || ! command -v npm >/dev/null; then
  echo "installing JNA, Java and npm ..." >&2
  as_root apt-get update -q >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q libjna-java default-jre-headless npm >&2
fi
if [ ! -x "$dir/package/bin/kotlinc" ]; then
  echo "fetching kotlin-compiler@$version from npm ..." >&2
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/kotlinc.XXXXXX")
  (cd "$tmp" && npm pack --silent "kotlin-compiler@$version" >/dev/null && tar xzf "kotlin-compiler-$version.tgz" \
    && rm "kotlin-compiler-$version.tgz")
  rm -rf "$dir"
  mv "$tmp" "$dir"
fi
echo "$dir/package"
