//! `moe-edge bench`: prefill and decode speed, time to first token, peak memory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use moe_edge::model::argmax;
use serde::Serialize;

use crate::load_model;

/// Arguments of `moe-edge bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// A GGUF file or an HF safetensors directory.
    #[arg(long)]
    model: PathBuf,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens decoded for the decode measurement.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Timed repetitions (the median is reported), after one warm-up.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Print only the JSON result.
    #[arg(long)]
    json: bool,
}

/// What `bench` measures; the keys match `core/scripts/llamacpp_bench.py`.
#[derive(Serialize)]
struct BenchResult {
    engine: &'static str,
    model: String,
    threads: usize,
    prompt_tokens: usize,
    decode_tokens: usize,
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
    ttft_ms: f64,
    peak_rss_mb: f64,
}

/// One timed run: prefill, then greedy decode.
struct BenchRun {
    prefill: Duration,
    ttft: Duration,
    decode: Duration,
}

/// Runs `moe-edge bench`.
pub fn run(args: BenchArgs, threads: Option<usize>) -> Result<()> {
    anyhow::ensure!(args.prompt_tokens > 0 && args.decode_tokens > 0 && args.repeat > 0, "counts must be positive");
    let model = load_model(&args.model, args.json)?;
    let llama = model.llama();
    let vocab = llama.config().vocab_size as u32;
    anyhow::ensure!(
        args.prompt_tokens + args.decode_tokens <= llama.config().context_length,
        "prompt + decode tokens exceed the context window"
    );
    // Same ids as the llama.cpp side of the comparison: content does not change speed.
    let prompt: Vec<u32> = (0..args.prompt_tokens as u32).map(|i| (1000 + (i * 37) % 20000) % vocab).collect();
    let run_once = || -> Result<BenchRun> {
        let mut cache = llama.new_cache(args.prompt_tokens + args.decode_tokens);
        let start = Instant::now();
        let logits = llama.forward(&prompt, &mut cache, false)?;
        let prefill = start.elapsed();
        let mut token = argmax(&logits.to_vec1::<f32>()?);
        let ttft = start.elapsed();
        let decode_start = Instant::now();
        for _ in 0..args.decode_tokens {
            let logits = llama.forward(&[token], &mut cache, false)?;
            token = argmax(&logits.to_vec1::<f32>()?);
        }
        Ok(BenchRun { prefill, ttft, decode: decode_start.elapsed() })
    };
    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(args.repeat as u64 + 1) };
    bar.set_style(
        ProgressStyle::with_template("bench [{bar:30}] {pos}/{len} runs {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    run_once()?; // warm-up
    bar.inc(1);
    let mut runs = Vec::with_capacity(args.repeat);
    for _ in 0..args.repeat {
        runs.push(run_once()?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let median = |f: &dyn Fn(&BenchRun) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let result = BenchResult {
        engine: "moe-edge",
        model: args.model.display().to_string(),
        threads: threads.unwrap_or_else(candle_core::utils::get_num_threads),
        prompt_tokens: args.prompt_tokens,
        decode_tokens: args.decode_tokens,
        prefill_tokens_per_s: median(&|r| args.prompt_tokens as f64 / r.prefill.as_secs_f64()),
        decode_tokens_per_s: median(&|r| args.decode_tokens as f64 / r.decode.as_secs_f64()),
        ttft_ms: median(&|r| r.ttft.as_secs_f64() * 1e3),
        peak_rss_mb: peak_rss_mb()?,
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!("model                {}", result.model);
        println!("threads              {}", result.threads);
        println!("prefill tokens/s     {:.1}  ({} tokens)", result.prefill_tokens_per_s, result.prompt_tokens);
        println!("decode tokens/s      {:.1}  ({} tokens)", result.decode_tokens_per_s, result.decode_tokens);
        println!("time to first token  {:.1} ms", result.ttft_ms);
        println!("peak RSS             {:.1} MB", result.peak_rss_mb);
        println!("{}", serde_json::to_string(&result)?);
    }
    Ok(())
}

/// The process's peak resident set size (VmHWM), in MB.
pub fn peak_rss_mb() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok(kb / 1024.0)
}
