//! The Rust side of the Kotlin-overhead benchmark (bindings/bench/run-bench.sh):
//! the same greedy generation as `bindings/bench/DecodeBench.kt`, through the same
//! `MoeEngine::generate` called from Rust instead of through JNA. Prints one line
//! per timed run: `rust <generated tokens> <decode tokens/s>`.
//!
//! Usage: decode_reference MODEL MODELS_DIR RUNS THREADS

use moe_edge_ffi::{
    EngineConfig, GenerateOptions, GenerationEvent, GenerationListener, MoeEngine, MoeError, PolicyChoice,
};

/// Prompt and length shared with DecodeBench.kt.
const PROMPT: &str = "Tell me a long story about a dragon.";
const MAX_TOKENS: u32 = 128;

/// Keeps the streamed text, like the Kotlin listener.
#[derive(Default)]
struct Collect(std::sync::Mutex<String>);

impl GenerationListener for Collect {
    fn on_text(&self, _subtask: u32, text: String) -> Result<(), MoeError> {
        self.0.lock().expect("text lock").push_str(&text);
        Ok(())
    }

    fn on_event(&self, _event: GenerationEvent) -> Result<(), MoeError> {
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, models_dir, runs, threads] = args.as_slice() else {
        return Err("usage: decode_reference MODEL MODELS_DIR RUNS THREADS".into());
    };
    let engine = MoeEngine::new(EngineConfig {
        base_model: model.clone(),
        models_dir: models_dir.clone(),
        threads: Some(threads.parse()?),
        memory_budget_mb: 1024,
        edge_servers: Vec::new(),
        policy: PolicyChoice::LocalOnly,
    })?;
    let options = GenerateOptions {
        max_tokens: MAX_TOKENS,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        ..GenerateOptions::default()
    };
    for run in 0..=runs.parse::<usize>()? {
        let result = engine.generate(PROMPT.into(), options.clone(), Box::new(Collect::default()), None)?;
        if run > 0 {
            // Run 0 warms up caches and thread pools.
            println!("rust {} {:.3}", result.generated_tokens, result.decode_tokens_per_s);
        }
    }
    Ok(())
}
