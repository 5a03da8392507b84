//! Criterion benches of the runtime's hot paths: one decode step of the base
//! model (SmolLM2-135M Q4_1, with 128 positions in the KV cache) and sampling
//! from a full 49152-entry logits vector.
//!
//! `cargo bench -p moe-edge --bench runtime`; the model comes from
//! `models/fetch-base-model.sh` (or `MOE_EDGE_BASE_MODEL`).

use std::path::PathBuf;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use moe_edge::model::{LocalModel, Sampler, SamplingOptions};

fn base_model() -> PathBuf {
    std::env::var_os("MOE_EDGE_BASE_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/moe-edge/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    })
}

fn decode_step(c: &mut Criterion) {
    let path = base_model();
    let model = LocalModel::load(&path)
        .unwrap_or_else(|e| panic!("{e} (run models/fetch-base-model.sh or set MOE_EDGE_BASE_MODEL)"));
    let llama = model.llama();
    let prompt: Vec<u32> = (0..128u32).map(|i| 1000 + (i * 37) % 20000).collect();
    let mut cache = llama.new_cache(4096);
    llama.forward(&prompt, &mut cache, false).unwrap();
    c.bench_function("decode step (SmolLM2-135M Q4_1, 128 cached)", |b| {
        b.iter_batched(
            || {
                let mut cache = llama.new_cache(256);
                llama.forward(&prompt, &mut cache, false).unwrap();
                cache
            },
            |mut cache| llama.forward(&[42], &mut cache, false).unwrap(),
            BatchSize::LargeInput,
        )
    });
}

fn sampling(c: &mut Criterion) {
    let logits: Vec<f32> = (0..49152u32).map(|i| ((i * 2654435761u32) >> 16) as f32 / 4096.0).collect();
    let history: Vec<u32> = (0..64).collect();
    for (name, options) in [
        ("sample greedy (49152 logits)", SamplingOptions::greedy()),
        (
            "sample top-k/top-p/min-p + penalty (49152 logits)",
            SamplingOptions { repeat_penalty: 1.1, ..SamplingOptions::default() },
        ),
        (
            "sample temperature only (49152 logits)",
            SamplingOptions { top_k: 0, top_p: 1.0, min_p: 0.0, ..SamplingOptions::default() },
        ),
    ] {
        let mut sampler = Sampler::new(options).unwrap();
        c.bench_function(name, |b| {
            b.iter_batched(|| logits.clone(), |mut l| sampler.sample(&mut l, &history), BatchSize::SmallInput)
        });
    }
}

criterion_group!(benches, decode_step, sampling);
criterion_main!(benches);
