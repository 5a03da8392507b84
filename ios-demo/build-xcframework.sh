#!/usr/bin/env bash
# On a Mac with Xcode: builds the Rust library for iOS devices, the iOS simulator
# (arm64 + x86_64) and macOS, packs the static libraries with the C header into
# MoeEdgeFFI.xcframework, and writes the Swift bindings to Sources/MoeEdge/MoeEdge.swift.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
[ "$(uname -s)" = Darwin ] || { echo "build-xcframework.sh needs macOS with Xcode" >&2; exit 1; }
targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin)
rustup target add "${targets[@]}"
for t in "${targets[@]}"; do
  CARGO_PROFILE_RELEASE_DEBUG=false cargo build --release -p moe-edge-ffi --lib --target "$t"
done

out=$(bash bindings/scripts/generate.sh)   # host build: the Swift sources and the C header
cp "$out/swift/MoeEdge.swift" "$here/Sources/MoeEdge/MoeEdge.swift"
headers="$target/xcframework-headers"
rm -rf "$headers" && mkdir -p "$headers"
cp "$out/swift/MoeEdgeFFI.h" "$headers/"
cp "$out/swift/MoeEdgeFFI.modulemap" "$headers/module.modulemap"

fat="$target/xcframework-fat"
mkdir -p "$fat/ios-sim" "$fat/macos"
lipo -create "$target/aarch64-apple-ios-sim/release/libmoe_edge_ffi.a" \
  "$target/x86_64-apple-ios/release/libmoe_edge_ffi.a" -output "$fat/ios-sim/libmoe_edge_ffi.a"
lipo -create "$target/aarch64-apple-darwin/release/libmoe_edge_ffi.a" \
  "$target/x86_64-apple-darwin/release/libmoe_edge_ffi.a" -output "$fat/macos/libmoe_edge_ffi.a"
rm -rf "$here/MoeEdgeFFI.xcframework"
xcodebuild -create-xcframework \
  -library "$target/aarch64-apple-ios/release/libmoe_edge_ffi.a" -headers "$headers" \
  -library "$fat/ios-sim/libmoe_edge_ffi.a" -headers "$headers" \
  -library "$fat/macos/libmoe_edge_ffi.a" -headers "$headers" \
  -output "$here/MoeEdgeFFI.xcframework"
echo "wrote $here/MoeEdgeFFI.xcframework and Sources/MoeEdge/MoeEdge.swift"
