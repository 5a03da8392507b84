#!/usr/bin/env python3
# Produces the llama.cpp golden reference that our candle runtime must match:
# core/tests/fixtures/golden/smollm2-135m-q4_1.json plus the full last-position
# logits vector smollm2-135m-q4_1.logits.f32 (little-endian f32, vocab-size values).
#
# It renders one fixed chat with the GGUF's own chat template (jinja2), tokenizes it
# with llama.cpp, evaluates it on 2 threads, records the last position's logits
# (top-20, gaps, full vector), a 32-token greedy continuation, and how much the
# logits move between 1 and 2 threads.
#
# Run from the repository root (any python3; it re-runs itself under the cached
# llama-cpp-python venv made by core/scripts/llamacpp-venv.sh, and fetches the
# base model with models/fetch-base-model.sh when --model is not given):
#
#     python core/scripts/golden_reference.py
#
# Options: --model PATH, --out-dir DIR (default core/tests/fixtures/golden).
import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess

from llamacpp_env import log, reexec_under_venv

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FETCH_SCRIPT = os.path.join(REPO_ROOT, "models", "fetch-base-model.sh")
DEFAULT_OUT_DIR = os.path.join(REPO_ROOT, "core", "tests", "fixtures", "golden")

EXPECTED_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FIXTURE_NAME = "smollm2-135m-q4_1"
USER_MESSAGE = "What is the capital of France? Answer in one sentence."
N_CTX = 2048
N_BATCH = 512
N_THREADS = 2
SEED = 0
TOP_K = 20
N_GREEDY = 32
REGENERATE_COMMAND = "python core/scripts/golden_reference.py"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def default_model_path():
    return subprocess.run(
        ["bash", FETCH_SCRIPT], check=True, stdout=subprocess.PIPE, text=True
    ).stdout.strip().splitlines()[-1]


def load(model_path, n_threads):
    from llama_cpp import Llama

    # n_threads_batch must be set too: llama-cpp-python defaults it to the CPU
    # count, and the prompt (a batch) is evaluated with n_threads_batch.
    return Llama(
        model_path=model_path,
        n_ctx=N_CTX,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        n_batch=N_BATCH,
        logits_all=False,
        verbose=False,
        seed=SEED,
    )


def last_logits(llm):
    """Copy of the logits of the last evaluated position (float32, n_vocab)."""
    import llama_cpp
    import numpy as np

    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32, copy=True)


def prompt_logits(model_path, n_threads, prompt_ids):
    llm = load(model_path, n_threads)
    llm.eval(prompt_ids)
    out = last_logits(llm)
    llm.close()
    return out


def render_chat(template, messages):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # Same environment settings as llama-cpp-python's Jinja2ChatFormatter and HF
    # transformers (trim_blocks, lstrip_blocks); we also check the plain default
    # environment renders the same string, so the Rust side can use either.
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True
    )
    rendered = env.from_string(template).render(messages=messages, add_generation_prompt=True)
    plain = jinja2.Environment().from_string(template).render(
        messages=messages, add_generation_prompt=True
    )
    return rendered, rendered == plain


def top_k(logits, k):
    import numpy as np

    # Sort by logit descending, ties by ascending id (stable and reproducible).
    order = np.lexsort((np.arange(logits.shape[0]), -logits.astype(np.float64)))
    return [int(i) for i in order[:k]]


def greedy_continue(llm, first_logits, n):
    """Greedy ids and top-1 minus top-2 margins; first_logits are the current ones."""
    ids, margins = [], []
    step_logits = first_logits
    for k in range(n):
        if k > 0:
            llm.eval([ids[-1]])
            step_logits = last_logits(llm)
        t = top_k(step_logits, 2)
        ids.append(t[0])
        margins.append(float(step_logits[t[0]] - step_logits[t[1]]))
    return ids, margins


def compare(other, ref):
    """Differences between two logit vectors (ref is the fixture's)."""
    import numpy as np

    a, b = other.astype(np.float64), ref.astype(np.float64)
    d = np.abs(a - b)

    def log_softmax(x):
        x = x - x.max()
        return x - np.log(np.exp(x).sum())

    la, lb = log_softmax(a), log_softmax(b)
    kl = float(np.sum(np.exp(lb) * (lb - la)))
    ta, tb = top_k(other, 5), top_k(ref, 5)
    return {
        "max_abs_diff": float(d.max()),
        "mean_abs_diff": float(d.mean()),
        "kl_ref_other": kl,
        "top1_equal": ta[0] == tb[0],
        "top5_set_equal": sorted(ta) == sorted(tb),
        "top5_order_equal": ta == tb,
        "top5_ids": ta,
    }


def to_json(value, indent=0):
    """Indented JSON, but lists of plain numbers kept on one line."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {to_json(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and value and not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        items = [inner + to_json(v, indent + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False)


def piece(llm, tok):
    return llm.detokenize([tok], special=True).decode("utf-8", errors="replace")


def main():
    parser = argparse.ArgumentParser(
        description="Writes the llama.cpp golden fixture for SmolLM2-135M-Instruct Q4_1"
    )
    parser.add_argument("--model", help="GGUF path (default: fetched base model)")
    parser.add_argument("--out-dir", default=DEFAULT_OUT_DIR)
    args = parser.parse_args()

    reexec_under_venv(__file__, ["llama_cpp", "jinja2", "numpy"])
    import jinja2
    import llama_cpp
    import numpy as np

    model_path = args.model or default_model_path()
    log(f"model: {model_path}")
    model_sha = sha256_file(model_path)
    if model_sha != EXPECTED_MODEL_SHA256:
        log(f"warning: model sha256 {model_sha} differs from the expected base model")

    llm = load(model_path, N_THREADS)
    meta = llm.metadata
    n_vocab = llm.n_vocab()
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    # llama-cpp-python hands GGUF metadata values over as strings.
    gguf_add_bos = meta.get("tokenizer.ggml.add_bos_token") == "true"
    vocab_add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    bos_id, eos_id = llm.token_bos(), llm.token_eos()

    # 1. Chat rendering with the template stored in the GGUF.
    template = meta["tokenizer.chat_template"]
    messages = [{"role": "user", "content": USER_MESSAGE}]
    prompt, same_without_trim = render_chat(template, messages)
    log(f"rendered prompt: {prompt!r}")

    # 2. Tokenization. llama-cpp-python's chat completion for a GGUF template
    # tokenizes the rendered prompt with add_bos=False (the template already adds
    # its special tokens), special=True; llama.cpp's tokenizer only ever adds BOS
    # when the vocab's add_bos flag is set, which is false for this model.
    prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    ids_if_add_bos = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    log(f"prompt ids ({len(prompt_ids)}): {prompt_ids}")

    # 3. Last-position logits.
    llm.eval(prompt_ids)
    logits = last_logits(llm)
    os.makedirs(args.out_dir, exist_ok=True)
    logits_file = f"{FIXTURE_NAME}.logits.f32"
    logits_path = os.path.join(args.out_dir, logits_file)
    logits.astype("<f4").tofile(logits_path)
    top = top_k(logits, TOP_K)
    top_logits = [float(logits[i]) for i in top]
    log("top-5: " + ", ".join(f"{i}:{v:.4f}" for i, v in zip(top[:5], top_logits[:5])))

    # 4. Greedy continuation: argmax over raw logits, fed back one token at a time,
    # no stop at EOS. Token k is the argmax after evaluating the prompt and tokens
    # 0..k-1 (so 31 single-token evals after the prompt).
    greedy, margins = greedy_continue(llm, logits, N_GREEDY)
    eog_positions = [i for i, t in enumerate(greedy) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    eos_positions = [i for i, t in enumerate(greedy) if t == eos_id]
    text_special = llm.detokenize(greedy, special=True).decode("utf-8", errors="replace")
    text_plain = llm.detokenize(greedy, special=False).decode("utf-8", errors="replace")
    log(f"greedy ids: {greedy}")
    log(f"greedy text: {text_special!r}")
    top_pieces = [piece(llm, t) for t in top]
    greedy_pieces = [piece(llm, t) for t in greedy]
    llm.close()

    # 5. How much llama.cpp moves against itself: thread count, and how the prompt
    # is split into batches (one batch vs one token at a time).
    log("sensitivity: evaluating the prompt again with 1 and 2 threads ...")
    l1 = prompt_logits(model_path, 1, prompt_ids)
    l2 = prompt_logits(model_path, 2, prompt_ids)
    log("sensitivity: evaluating the prompt one token at a time ...")
    seq_llm = load(model_path, N_THREADS)
    for t in prompt_ids:
        seq_llm.eval([t])
    lseq = last_logits(seq_llm)
    seq_greedy, _ = greedy_continue(seq_llm, lseq, N_GREEDY)
    seq_llm.close()
    agree = next((i for i, (a, b) in enumerate(zip(greedy, seq_greedy)) if a != b), N_GREEDY)
    sensitivity = {
        "threads1_vs_threads2": compare(l1, l2),
        "threads2_rerun_vs_fixture": compare(l2, logits),
        "one_token_at_a_time_vs_fixture": compare(lseq, logits),
        "one_token_at_a_time_greedy_ids": seq_greedy,
        "one_token_at_a_time_greedy_agreeing_prefix": agree,
        "note": (
            "Fresh Llama instances, same prompt_ids, last-position logits of the prompt. "
            "threads*: n_threads = n_threads_batch = 1 or 2, prompt in one batch. "
            "one_token_at_a_time: 2 threads, the prompt fed as 42 single-token evals "
            "instead of one batch, then the same 32-token greedy continuation. Each "
            "comparison gives max and mean absolute logit difference, KL(fixture || other) "
            "of the softmax distributions in nats, and whether top-1 / the top-5 set / "
            "the top-5 order are equal."
        ),
    }
    log(f"sensitivity: {json.dumps(sensitivity)}")

    doc = {
        "description": "llama.cpp golden reference for SmolLM2-135M-Instruct Q4_1: "
        "chat rendering, tokenization, last-position logits and greedy continuation",
        "regenerate_command": REGENERATE_COMMAND,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "llama_cpp_python_version": llama_cpp.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "jinja2_version": jinja2.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "model_file": os.path.basename(model_path),
        "model_sha256": model_sha,
        "vocab_size": n_vocab,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "gguf_add_bos_token": gguf_add_bos,
        "n_ctx": N_CTX,
        "n_batch": N_BATCH,
        "n_threads": N_THREADS,
        "n_threads_batch": N_THREADS,
        "seed": SEED,
        "flash_attn": False,
        "messages": messages,
        "add_generation_prompt": True,
        "chat_template": template,
        "chat_template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
        "jinja2_environment": "ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)",
        "rendered_identically_without_trim_lstrip": same_without_trim,
        "rendered_prompt": prompt,
        "tokenize_add_bos": False,
        "tokenize_special": True,
        "add_bos_reason": (
            "GGUF tokenizer.ggml.add_bos_token = "
            f"{str(gguf_add_bos).lower()} (llama_vocab_get_add_bos = {str(vocab_add_bos).lower()}); "
            "llama-cpp-python's "
            "chat completion with the GGUF template tokenizes with add_bos=False, "
            "special=True, and llama.cpp adds BOS only when the vocab flag is set, so "
            "add_bos=True gives the same ids here "
            f"(identical: {str(ids_if_add_bos == prompt_ids).lower()}). The template's first token "
            f"<|im_start|> is id {bos_id}, which this GGUF also names as BOS."
        ),
        "prompt_ids": prompt_ids,
        "n_prompt_tokens": len(prompt_ids),
        "logits_file": logits_file,
        "logits_format": "little-endian f32, vocab_size values, logits of the last prompt position",
        "logits_sha256": sha256_file(logits_path),
        "top20_ids": top,
        "top20_logits": top_logits,
        "top20_pieces": top_pieces,
        "gap_top1_top2": top_logits[0] - top_logits[1],
        "gap_top5_top6": top_logits[4] - top_logits[5],
        "top20_consecutive_gaps": [a - b for a, b in zip(top_logits, top_logits[1:])],
        "logits_min": float(logits.min()),
        "logits_max": float(logits.max()),
        "logits_mean": float(logits.astype(np.float64).mean()),
        "greedy_n_tokens": N_GREEDY,
        "greedy_ids": greedy,
        "greedy_text": text_special,
        "greedy_text_without_special": text_plain,
        "greedy_pieces": greedy_pieces,
        "greedy_step_margins": margins,
        "greedy_min_step_margin": min(margins),
        "greedy_eos_appeared": bool(eos_positions),
        "greedy_eos_first_index": eos_positions[0] if eos_positions else None,
        "greedy_eog_appeared": bool(eog_positions),
        "llama_cpp_self_sensitivity": sensitivity,
    }
    json_path = os.path.join(args.out_dir, f"{FIXTURE_NAME}.json")
    with open(json_path, "w", encoding="utf-8") as f:
        f.write(to_json(doc) + "\n")
    log(f"wrote {json_path} and {logits_path}")


if __name__ == "__main__":
    main()
