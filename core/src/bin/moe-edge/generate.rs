//! `moe-edge generate`: stream text from a local model to stdout.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use moe_edge::model::{CancelToken, GenerateOptions, SamplingOptions};

use crate::load_model;

/// Arguments of `moe-edge generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// A GGUF file or an HF safetensors directory.
    #[arg(long)]
    model: PathBuf,
    /// Wrap the prompt in the model's chat template as a user turn.
    #[arg(long)]
    chat: bool,
    /// At most this many new tokens.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens below min-p × the top probability (0 = off).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalty for recently generated tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Window of the repetition penalty, in tokens.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed (same seed, same text).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Print the generation report as JSON on stderr at the end.
    #[arg(long)]
    report_json: bool,
    /// The prompt.
    prompt: String,
}

/// Runs `moe-edge generate`.
pub fn run(args: GenerateArgs) -> Result<()> {
    let model = load_model(&args.model, false)?;
    let options = GenerateOptions {
        sampling: SamplingOptions {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repeat_penalty: args.repeat_penalty,
            repeat_last_n: args.repeat_last_n,
            seed: args.seed,
        },
        max_tokens: args.max_tokens,
        stop: args.stop,
        chat: args.chat,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_error = None;
    let report = model.generate(
        &args.prompt,
        &options,
        &mut |piece| {
            if write_error.is_none() {
                write_error = out.write_all(piece.as_bytes()).and_then(|_| out.flush()).err();
            }
        },
        &CancelToken::new(),
    )?;
    writeln!(out)?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    if args.report_json {
        eprintln!("{}", serde_json::to_string(&report)?);
    } else {
        eprintln!(
            "[{} prompt + {} generated tokens; first token {:.0} ms; prefill {:.1} tok/s; decode {:.1} tok/s; stop: {:?}]",
            report.prompt_tokens,
            report.generated_tokens,
            report.time_to_first_token.as_secs_f64() * 1e3,
            report.prefill_tokens_per_s,
            report.decode_tokens_per_s,
            report.stop_reason
        );
    }
    Ok(())
}
