#!/usr/bin/env python3
"""Writes a tiny random HF-Llama model directory (config.json, model.safetensors,
tokenizer.json with the 256 byte-level symbols) for smoke tests such as the
aarch64 `moe-edge bench` under qemu. Standard library only; no downloaded weights.

Usage: tiny-llama.py OUT_DIR
"""

import json
import random
import struct
import sys
from array import array
from pathlib import Path

VOCAB, HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, CONTEXT = 256, 64, 128, 2, 4, 2, 256
HEAD_DIM = HIDDEN // HEADS


def byte_level_vocab():
    """GPT-2's byte-to-symbol map: printable bytes map to themselves, the rest to U+0100...."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    symbols = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = 256 + extra
            extra += 1
    return {chr(s): b for b, s in symbols.items()}


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)

    def matrix(rows, cols):
        scale = cols ** -0.5
        return (rows, cols), array("f", (rng.uniform(-scale, scale) for _ in range(rows * cols)))

    def norm():
        return (HIDDEN,), array("f", (rng.uniform(0.5, 1.5) for _ in range(HIDDEN)))

    tensors = {"model.embed_tokens.weight": matrix(VOCAB, HIDDEN), "model.norm.weight": norm()}
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        tensors[f"{p}.self_attn.q_proj.weight"] = matrix(HEADS * HEAD_DIM, HIDDEN)
        tensors[f"{p}.self_attn.k_proj.weight"] = matrix(KV_HEADS * HEAD_DIM, HIDDEN)
        tensors[f"{p}.self_attn.v_proj.weight"] = matrix(KV_HEADS * HEAD_DIM, HIDDEN)
        tensors[f"{p}.self_attn.o_proj.weight"] = matrix(HIDDEN, HEADS * HEAD_DIM)
        tensors[f"{p}.mlp.gate_proj.weight"] = matrix(INTER, HIDDEN)
        tensors[f"{p}.mlp.up_proj.weight"] = matrix(INTER, HIDDEN)
        tensors[f"{p}.mlp.down_proj.weight"] = matrix(HIDDEN, INTER)
        tensors[f"{p}.input_layernorm.weight"] = norm()
        tensors[f"{p}.post_attention_layernorm.weight"] = norm()

    # safetensors: u64 header length, JSON header with byte offsets, then the raw data.
    header, blobs, offset = {}, [], 0
    for name, (shape, data) in tensors.items():
        if sys.byteorder != "little":
            data.byteswap()
        raw = data.tobytes()
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for raw in blobs:
            f.write(raw)

    config = {
        "architectures": ["LlamaForCausalLM"], "vocab_size": VOCAB, "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": CONTEXT, "tie_word_embeddings": True,
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": level, "post_processor": None, "decoder": level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": byte_level_vocab(), "merges": []},
    }
    (out / "tokenizer.json").write_text(json.dumps(tokenizer))


if __name__ == "__main__":
    main()
