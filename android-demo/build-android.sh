#!/usr/bin/env bash
# Builds libmoe_edge_ffi.so for Android (arm64-v8a, armeabi-v7a, x86_64 for
# emulators) with cargo-ndk into moeedge/src/main/jniLibs, and writes the Kotlin
# bindings into moeedge/src/main/kotlin. Then build the app with Gradle
# (`gradle :app:assembleDebug`) or open this directory in Android Studio.
# Needs the Android NDK (ANDROID_NDK_HOME) and `cargo install cargo-ndk`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
: "${ANDROID_NDK_HOME:?set ANDROID_NDK_HOME to your Android NDK}"
command -v cargo-ndk >/dev/null || cargo install cargo-ndk
rustup target add aarch64-linux-android armv7-linux-androideabi x86_64-linux-android

# Line tables are not worth shipping: the .so stays small without them.
CARGO_PROFILE_RELEASE_DEBUG=false cargo ndk -t arm64-v8a -t armeabi-v7a -t x86_64 -o "$here/moeedge/src/main/jniLibs" \
  build --release -p moe-edge-ffi
# The bindings come from any build of the library (they do not depend on the target).
out=$(bash bindings/scripts/generate.sh)
mkdir -p "$here/moeedge/src/main/kotlin"
rm -rf "$here/moeedge/src/main/kotlin/org/moeedge/ffi"
cp -r "$out/kotlin/org/moeedge/ffi" "$here/moeedge/src/main/kotlin/org/moeedge/"
ls -l "$here"/moeedge/src/main/jniLibs/*/libmoe_edge_ffi.so
