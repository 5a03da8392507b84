#!/usr/bin/env bash
# Builds the release library and writes the Kotlin and Swift bindings next to it:
#   $TARGET/bindings/kotlin/org/moeedge/ffi/moe_edge_ffi.kt
#   $TARGET/bindings/swift/{MoeEdge.swift, MoeEdgeFFI.h, MoeEdgeFFI.modulemap}
# ($TARGET is $CARGO_TARGET_DIR or ./target). Prints $TARGET/bindings.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
# The same features as `cargo test --workspace --all-features`, so CI builds the tree once.
cargo build --release --workspace --all-features >&2
case "$(uname -s)" in Darwin) lib="$target/release/libmoe_edge_ffi.dylib" ;; *) lib="$target/release/libmoe_edge_ffi.so" ;; esac
out="$target/bindings"
rm -rf "$out/kotlin" "$out/swift"
"$target/release/uniffi-bindgen" generate "$lib" -l kotlin -o "$out/kotlin" >&2
"$target/release/uniffi-bindgen" generate "$lib" -l swift -o "$out/swift" >&2
echo "$out"
