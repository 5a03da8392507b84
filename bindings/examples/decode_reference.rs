//! The Rust side of the Kotlin-overhead benchmark (bindings/bench/run-bench.sh):
//! the same greedy generation as `bindings/bench/DecodeBench.kt`, called on the
//! core's `LocalModel` directly. Prints one line per timed run:
//! `rust <generated tokens> <decode tokens/s>`.
//!
//! Usage: decode_reference MODEL RUNS (run with RAYON_NUM_THREADS set, like the engine's threads)

use moe_edge::model::{CancelToken, GenerateOptions, LocalModel, SamplingOptions};

/// Prompt and length shared with DecodeBench.kt.
const PROMPT: &str = "Tell me a long story about a dragon.";
const MAX_TOKENS: usize = 128;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, runs] = args.as_slice() else {
        return Err("usage: decode_reference MODEL RUNS".into());
    };
    let model = LocalModel::load(model.as_ref())?;
    let options = GenerateOptions { sampling: SamplingOptions::greedy(), max_tokens: MAX_TOKENS, ..Default::default() };
    for run in 0..=runs.parse::<usize>()? {
        let mut text = String::new();
        let report = model.generate(PROMPT, &options, &mut |piece| text.push_str(piece), &CancelToken::new())?;
        if run > 0 {
            // Run 0 warms up caches and thread pools.
            println!("rust {} {:.3}", report.generated_tokens, report.decode_tokens_per_s);
        }
    }
    Ok(())
}
