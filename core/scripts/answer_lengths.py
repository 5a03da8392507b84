#!/usr/bin/env python3
"""Measures how long the base model's answers are when left to end on their own,
and fits the log-normals the policy simulator draws answer lengths from
(`ANSWER_TOKENS_MEDIAN` and the two `ANSWER_LOG_SIGMA_*` in core/src/policy/sim.rs).

Each prompt below is answered --samples times with `moe-edge generate --chat`
(temperature 0.8, cap --max-tokens, seed = the prompt's number + 1000 * the
sample's number). Answers that reach the cap are counted as censored: their
own length is at least the cap. The overall fit is the maximum-likelihood
log-normal over a fine grid of (log-median, sigma). With more than one sample
per prompt the spread is split in two: sigma within a prompt (pooled standard
deviation of the log-lengths of each prompt's answers, answers at the cap
counted at the cap) and sigma between prompts (the rest: sqrt(sigma^2 - within^2)).

Usage: core/scripts/answer_lengths.py [--model GGUF] [--bin MOE_EDGE] [--samples 4] [--max-tokens 512] [--out FILE.json]
(the defaults take about 11 minutes on a 2-core machine)
--bin defaults to target/release/moe-edge, built by
`cargo build --release -p moe-edge --features cli`; --model defaults to the
base model fetched by models/fetch-base-model.sh.
"""

import argparse
import json
import math
import os
import subprocess
import sys

# Everyday requests an app might send; not chosen for their answers' lengths.
PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a Python function that reverses a string.",
    "Define entropy.",
    "Explain why the sky is blue.",
    "Give me three tips for sleeping better.",
    "Summarize the plot of Romeo and Juliet.",
    "What does HTTP stand for?",
    "Write a haiku about autumn.",
    "How do I sort a list of dictionaries by a key in Python?",
    "What is the difference between a virus and a bacterium?",
    'Translate "good morning" into Spanish.',
    "Write a short email declining a meeting invitation.",
    "Define photosynthesis.",
    "What is 17 * 23?",
    "Write a SQL query that counts the rows of a table named users.",
    "Describe a cat in two sentences.",
    "Why do we have seasons?",
    "Write a JavaScript function that checks whether a number is prime.",
    "What are the benefits of regular exercise?",
    'Define the word "ubiquitous".',
    "Tell me a fun fact about octopuses.",
    "How does a refrigerator keep food cold?",
    "Write a bash command that counts the lines in a file.",
    "What should I pack for a weekend hiking trip?",
]


def answer_length(binary, model, prompt, cap, seed):
    """Generated tokens and stop reason of one answer."""
    cmd = [binary, "--threads", "2", "generate", "--model", model, "--chat",
           "--max-tokens", str(cap), "--seed", str(seed), "--report-json", prompt]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["generated_tokens"], report["stop_reason"]


def fit_censored_log_normal(lengths, cap):
    """Maximum-likelihood (median, sigma) with answers at the cap censored."""
    logs = [math.log(n) for n in lengths if n < cap]
    censored = sum(1 for n in lengths if n >= cap)
    log_cap = math.log(cap)

    def log_likelihood(mu, sigma):
        exact = sum(-math.log(sigma) - 0.5 * ((y - mu) / sigma) ** 2 for y in logs)
        tail = 0.5 * math.erfc((log_cap - mu) / (sigma * math.sqrt(2)))
        return exact + censored * math.log(max(tail, 1e-300))

    grid = ((mu / 100, s / 100) for mu in range(100, 700) for s in range(5, 300))
    mu, sigma = max(grid, key=lambda p: log_likelihood(*p))
    return math.exp(mu), sigma


def sigma_within(per_prompt):
    """Pooled standard deviation of the log-lengths of each prompt's answers."""
    squares, dof = 0.0, 0
    for lengths in per_prompt:
        logs = [math.log(n) for n in lengths]
        mean = sum(logs) / len(logs)
        squares += sum((y - mean) ** 2 for y in logs)
        dof += len(logs) - 1
    return math.sqrt(squares / dof)


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cache = os.environ.get("MOE_EDGE_CACHE", os.path.expanduser("~/.cache/moe-edge"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(cache, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--bin", default=os.path.join(root, "target", "release", "moe-edge"))
    parser.add_argument("--samples", type=int, default=4, help="answers per prompt (seeds differ)")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--out", help="also write the lengths and the fit here as JSON")
    args = parser.parse_args()

    per_prompt = []
    for i, prompt in enumerate(PROMPTS, start=1):
        answers = [answer_length(args.bin, args.model, prompt, args.max_tokens, i + 1000 * k) for k in range(args.samples)]
        per_prompt.append([n for n, _ in answers])
        shown = ", ".join(f"{n} ({stop})" for n, stop in answers)
        print(f"[{i:2}/{len(PROMPTS)}] {shown}  {prompt}", flush=True)
    lengths = [n for answers in per_prompt for n in answers]
    median, sigma = fit_censored_log_normal(lengths, args.max_tokens)
    at_cap = sum(1 for n in lengths if n >= args.max_tokens)
    print(f"{len(lengths)} answers, {min(lengths)}..{max(lengths)} tokens, {at_cap} at the cap of {args.max_tokens}")
    print(f"censored log-normal fit: median {median:.0f} tokens, sigma {sigma:.2f}")
    fit = {"max_tokens": args.max_tokens, "lengths": per_prompt, "median_tokens": median, "sigma": sigma}
    if args.samples > 1:
        within = sigma_within(per_prompt)
        between = math.sqrt(max(sigma**2 - within**2, 0.0))
        print(f"sigma within a prompt {within:.2f}, between prompts {between:.2f}")
        fit.update(sigma_within_prompt=within, sigma_between_prompts=between)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(fit, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
