#!/usr/bin/env bash
# Side-by-side benchmark of our runtime (`moe-edge bench`) against llama.cpp
# (core/scripts/llamacpp_bench.py) on the same GGUF, same thread count and the same
# 512-token prompt / 128 decode steps. The two are run alternately (ours, llama.cpp,
# ours, llama.cpp, ...) so that noise from a busy machine hits both, and the medians
# are printed as a table with the bars from our issue:
#   decode tokens/s  >= 0.5 x llama.cpp
#   prefill tokens/s >= 0.3 x llama.cpp
#   peak RSS         <= 1.5 x llama.cpp's model_rss_mb (our whole-process VmHWM
#                    against llama.cpp's VmHWM minus its interpreter+library baseline)
#
# Usage: core/scripts/bench-vs-llamacpp.sh [MODEL] [THREADS]
#   MODEL    defaults to the base model fetched by models/fetch-base-model.sh
#   THREADS  defaults to 2
# Environment knobs:
#   ROUNDS=2       interleaved rounds (each round runs both engines once)
#   REPEAT=3       timed runs inside each llama.cpp invocation (median taken there)
#   MOE_EDGE_BIN   use this moe-edge binary instead of building one with
#                  `cargo build --release -p moe-edge --features cli`
#   STRICT=1       exit 1 when a bar fails (default: report only)
# llama.cpp is run with its defaults (OpenMP spin-waiting included); on a machine
# shared with other jobs its multi-threaded numbers suffer badly from that.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MODEL="${1:-}"
THREADS="${2:-2}"
ROUNDS="${ROUNDS:-2}"
REPEAT="${REPEAT:-3}"

if [ -z "$MODEL" ]; then
  MODEL="$(bash "$ROOT/models/fetch-base-model.sh")"
fi
[ -f "$MODEL" ] || { echo "error: model not found: $MODEL" >&2; exit 1; }

PY="$(bash "$ROOT/core/scripts/llamacpp-venv.sh")"

if [ -n "${MOE_EDGE_BIN:-}" ]; then
  BIN="$MOE_EDGE_BIN"
else
  echo "building moe-edge (release, cli) ..." >&2
  (cd "$ROOT" && cargo build --release -p moe-edge --features cli >&2)
  TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
    | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
  BIN="$TARGET_DIR/release/moe-edge"
fi
[ -x "$BIN" ] || { echo "error: moe-edge binary not found: $BIN" >&2; exit 1; }

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

# Keeps the last line of stdout that looks like a JSON object.
last_json() { grep '^[[:space:]]*{' | tail -n 1; }

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS: moe-edge ..." >&2
  "$BIN" bench --model "$MODEL" --threads "$THREADS" --json | last_json >"$OUT/moe-edge.$round.json" \
    || { echo "error: moe-edge bench failed or printed no JSON" >&2; exit 1; }
  echo "round $round/$ROUNDS: llama.cpp ..." >&2
  "$PY" "$ROOT/core/scripts/llamacpp_bench.py" --model "$MODEL" --threads "$THREADS" \
    --repeat "$REPEAT" --json | last_json >"$OUT/llama.cpp.$round.json" \
    || { echo "error: llamacpp_bench.py failed or printed no JSON" >&2; exit 1; }
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

"$PY" - "$OUT" "$ROUNDS" "$MODEL" "$THREADS" "$LOAD_BEFORE" "$LOAD_AFTER" "${STRICT:-0}" <<'PY'
import json
import statistics
import sys

out, rounds, model, threads, load_before, load_after, strict = sys.argv[1:8]
rounds = int(rounds)


def load(engine):
    runs = []
    for r in range(1, rounds + 1):
        with open(f"{out}/{engine}.{r}.json") as f:
            runs.append(json.load(f))
    return runs


def median(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


ours, theirs = load("moe-edge"), load("llama.cpp")
o = {k: median(ours, k) for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "peak_rss_mb")}
t = {k: median(theirs, k) for k in (
    "prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms",
    "peak_rss_mb", "baseline_rss_mb", "model_rss_mb")}

# (label, ours, theirs, bar description, check on the ratio ours/theirs or None)
rows = [
    ("prefill tokens/s", o["prefill_tokens_per_s"], t["prefill_tokens_per_s"], ">= 0.30x", lambda r: r >= 0.3),
    ("decode tokens/s", o["decode_tokens_per_s"], t["decode_tokens_per_s"], ">= 0.50x", lambda r: r >= 0.5),
    ("ttft ms", o["ttft_ms"], t["ttft_ms"], "-", None),
    ("peak RSS MB (ours) / model RSS MB (llama.cpp)", o["peak_rss_mb"], t["model_rss_mb"], "<= 1.50x", lambda r: r <= 1.5),
]

print(f"model: {model}")
print(f"threads: {threads}; interleaved rounds: {rounds}; load average before {load_before}, after {load_after}")
header = f"{'metric':<46} {'moe-edge':>10} {'llama.cpp':>10} {'ratio':>7}  {'bar':<9} result"
print(header)
print("-" * len(header))
failed = False
for label, a, b, bar, check in rows:
    ratio = a / b if a is not None and b else None
    if check is None:
        result = ""
    elif ratio is None:
        result, failed = "FAIL (missing)", True
    elif check(ratio):
        result = "PASS"
    else:
        result, failed = "FAIL", True

    def fmt(x):
        return f"{x:10.1f}" if x is not None else f"{'-':>10}"

    r = f"{ratio:6.2f}x" if ratio is not None else f"{'-':>7}"
    print(f"{label:<46} {fmt(a)} {fmt(b)} {r}  {bar:<9} {result}")
print(
    f"(llama.cpp whole-process peak RSS {t['peak_rss_mb']:.1f} MB, "
    f"interpreter+library baseline {t['baseline_rss_mb']:.1f} MB)"
)
sys.exit(1 if failed and strict == "1" else 0)
PY
