#!/usr/bin/env python3
# Measures llama.cpp (through llama-cpp-python) the same way `moe-edge bench`
# measures our runtime, so the two can be compared side by side:
#   - prefill: one 512-token prompt, ids [1000 + (i * 37) % 20000 for i in range(512)],
#     evaluated as one batch (n_batch 512, n_ctx 1024); prefill tokens/s = 512 / time
#     of that evaluation (until its last-position logits are available); time to
#     first token = that time plus the argmax over the logits, in ms;
#   - decode: 128 single-token steps after that prompt, each feeding the previous
#     greedy (argmax) token; decode tokens/s = 128 / their total time;
#   - memory: VmRSS right after `import llama_cpp` (before loading the model) is the
#     baseline, VmHWM at the end the peak; model_rss_mb = peak - baseline.
# One untimed warm-up run precedes --repeat timed runs (default 3); the medians are
# reported. Progress goes to stderr, the result to stdout.
#
# Run (any python3; it re-runs itself under the llama-cpp-python venv made by
# core/scripts/llamacpp-venv.sh):
#
#     python core/scripts/llamacpp_bench.py --model PATH --threads 2 [--repeat 3] [--json]
import argparse
import os
import statistics

from llamacpp_env import log, reexec_under_venv
import time

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

PROMPT_TOKENS = 512
DECODE_TOKENS = 128
N_CTX = 1024
N_BATCH = 512


def proc_status_mb(field):
    """A memory field of /proc/self/status (reported in kB) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status")


def bench_prompt_ids():
    return [1000 + (i * 37) % 20000 for i in range(PROMPT_TOKENS)]


def one_run(llm, prompt_ids):
    """One prefill + decode run from an empty context; returns (prefill_s, ttft_s, decode_s)."""
    import llama_cpp
    import numpy as np

    n_vocab = llm.n_vocab()

    def argmax_last():
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))

    llm.reset()  # n_tokens = 0; the next eval clears the KV cache from position 0
    t0 = time.perf_counter()
    llm.eval(prompt_ids)
    # Fetching the logits pointer synchronizes with the backend, so the prefill
    # time covers the whole computation.
    llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    t1 = time.perf_counter()
    tok = argmax_last()
    t2 = time.perf_counter()
    for _ in range(DECODE_TOKENS):
        llm.eval([tok])
        tok = argmax_last()
    t3 = time.perf_counter()
    return t1 - t0, t2 - t0, t3 - t2


def main():
    parser = argparse.ArgumentParser(description="llama.cpp side of the moe-edge benchmark")
    parser.add_argument("--model", required=True, help="GGUF model path")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.repeat < 1 or args.threads < 1:
        parser.error("--repeat and --threads must be at least 1")

    reexec_under_venv(__file__, ["llama_cpp", "numpy"])
    import json

    import llama_cpp

    baseline_rss_mb = proc_status_mb("VmRSS")
    log(f"llama-cpp-python {llama_cpp.__version__}; baseline RSS {baseline_rss_mb:.1f} MiB")

    # n_threads_batch too: llama-cpp-python would otherwise use every CPU for prefill.
    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=N_CTX,
        n_batch=N_BATCH,
        n_ubatch=N_BATCH,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        logits_all=False,
        verbose=False,
        seed=0,
    )
    prompt_ids = bench_prompt_ids()

    log("warm-up run ...")
    one_run(llm, prompt_ids)
    prefill, ttft, decode = [], [], []
    for r in range(args.repeat):
        p, t, d = one_run(llm, prompt_ids)
        prefill.append(PROMPT_TOKENS / p)
        ttft.append(t * 1000.0)
        decode.append(DECODE_TOKENS / d)
        log(
            f"run {r + 1}/{args.repeat}: prefill {prefill[-1]:.1f} tok/s, "
            f"ttft {ttft[-1]:.1f} ms, decode {decode[-1]:.1f} tok/s"
        )

    peak_rss_mb = proc_status_mb("VmHWM")
    result = {
        "engine": "llama.cpp",
        "model": args.model,
        "threads": args.threads,
        "prompt_tokens": PROMPT_TOKENS,
        "decode_tokens": DECODE_TOKENS,
        "prefill_tokens_per_s": round(statistics.median(prefill), 2),
        "decode_tokens_per_s": round(statistics.median(decode), 2),
        "ttft_ms": round(statistics.median(ttft), 2),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "baseline_rss_mb": round(baseline_rss_mb, 1),
        "model_rss_mb": round(peak_rss_mb - baseline_rss_mb, 1),
    }
    llm.close()
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for k, v in result.items():
            print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
