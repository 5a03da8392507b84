#!/usr/bin/env bash
# Kotlin overhead benchmark: decode speed of the same greedy 128-token generation
# called from Kotlin (MoeEngine.generate through JNA, streaming every piece to a
# Kotlin listener) and from Rust (the same MoeEngine.generate), interleaved ROUNDS times,
# RUNS timed generations per process after one warm-up. Prints every run and the
# ratio of decode times, Kotlin / Rust, of the medians and of the fastest runs
# (goal ≤ 1.05).
# Usage: bindings/bench/run-bench.sh [ROUNDS=3] [RUNS=3] [THREADS=2]
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
rounds=${1:-3} runs=${2:-3} threads=${3:-2}
target="${CARGO_TARGET_DIR:-$repo/target}"
: "${MOE_EDGE_BASE_MODEL:=$(bash models/fetch-base-model.sh)}"
kotlin=$(bash bindings/scripts/ensure-kotlin.sh)
out=$(bash bindings/scripts/generate.sh)
cargo build --release --workspace --all-features --example decode_reference >&2
cp="/usr/share/java/jna.jar:$kotlin/lib/kotlinx-coroutines-core-jvm.jar"
"$kotlin/bin/kotlinc" -nowarn "$out/kotlin/org/moeedge/ffi/moe_edge_ffi.kt" bindings/bench/DecodeBench.kt \
  -cp "$cp" -d "$out/kotlin-bench.jar" 2>/dev/null
log=$(mktemp)
for round in $(seq "$rounds"); do
  echo "round $round/$rounds" >&2
  RAYON_NUM_THREADS=$threads "$target/release/examples/decode_reference" "$MOE_EDGE_BASE_MODEL" "$repo/models" "$runs" "$threads" | tee -a "$log"
  RAYON_NUM_THREADS=$threads java -Djna.library.path="$target/release" -cp "$out/kotlin-bench.jar:$cp:$kotlin/lib/kotlin-stdlib.jar" \
    DecodeBenchKt "$MOE_EDGE_BASE_MODEL" "$repo/models" "$runs" "$threads" | tee -a "$log"
done
python3 - "$log" <<'PY'
import statistics, sys
runs = {"rust": [], "kotlin": []}
tokens = set()
for line in open(sys.argv[1]):
    side, n, tps = line.split()
    runs[side].append(float(tps))
    tokens.add(int(n))
assert len(tokens) == 1, f"the two sides generated different lengths: {tokens}"
rust, kotlin = statistics.median(runs["rust"]), statistics.median(runs["kotlin"])
print(f"decode tokens/s, median of {len(runs['rust'])} runs each ({tokens.pop()} tokens): "
      f"rust {rust:.2f}, kotlin {kotlin:.2f}")
print(f"decode time ratio kotlin/rust, medians: {rust / kotlin:.3f}")
# Other load on a shared machine only ever slows a run down: the fastest run of
# each side is the least disturbed one.
print(f"decode time ratio kotlin/rust, fastest runs: {max(runs['rust']) / max(runs['kotlin']):.3f}")
PY
rm -f "$log"
