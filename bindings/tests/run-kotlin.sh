#!/usr/bin/env bash
# Kotlin/JVM suite: compiles the generated Kotlin bindings, the Android demo's
# facade (android-demo/moeedge, no Android classes) and bindings/tests/kotlin with
# kotlinc 2.4.20 + JNA + kotlinx-coroutines, and runs them against the release
# library, the real base model and a real `moe-edge serve` edge server. Prints
# `N passed, N failed`; fails if any failed.
# Usage: bindings/tests/run-kotlin.sh [substring of a test name]
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
: "${MOE_EDGE_BASE_MODEL:=$(bash models/fetch-base-model.sh)}"
export MOE_EDGE_BASE_MODEL MOE_EDGE_MODELS_DIR="$repo/models" MOE_EDGE_BIN="$target/release/moe-edge"

kotlin=$(bash bindings/scripts/ensure-kotlin.sh)
out=$(bash bindings/scripts/generate.sh)
cp="/usr/share/java/jna.jar:$kotlin/lib/kotlinx-coroutines-core-jvm.jar"
echo "compiling the Kotlin bindings, facade and tests ..." >&2
"$kotlin/bin/kotlinc" -nowarn "$out/kotlin/org/moeedge/ffi/moe_edge_ffi.kt" \
  android-demo/moeedge/src/main/kotlin/org/moeedge/*.kt bindings/tests/kotlin/*.kt \
  -cp "$cp" -d "$out/kotlin-tests.jar"
java -Djna.library.path="$target/release" -cp "$out/kotlin-tests.jar:$cp:$kotlin/lib/kotlin-stdlib.jar" \
  MoeEdgeTestsKt "$@"
