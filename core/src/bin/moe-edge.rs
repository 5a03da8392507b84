//! The `moe-edge` command line: generate text, benchmark the runtime.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use moe_edge::model::{CancelToken, GenerateOptions, LocalModel, SamplingOptions, argmax};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "moe-edge", version, about = "Mixture of experts on the phone and nearby edge servers")]
struct Cli {
    /// Compute threads (default: physical cores). Fixed for the whole process.
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text with a local model, streaming it to stdout.
    Generate(GenerateArgs),
    /// Measure prefill and decode speed, time to first token and peak memory.
    Bench(BenchArgs),
}

#[derive(Args)]
struct GenerateArgs {
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

#[derive(Args)]
struct BenchArgs {
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        // SAFETY: set before any other thread exists; candle sizes its pools from these.
        unsafe {
            std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Generate(args) => generate(args),
        Command::Bench(args) => bench(args, cli.threads),
    }
}

/// Loads a model behind a progress bar on stderr.
fn load_model(path: &Path, quiet: bool) -> Result<LocalModel> {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(1000) };
    bar.set_style(
        ProgressStyle::with_template("loading {msg} [{bar:30}] {percent}% {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let model = LocalModel::load_with_progress(path, &mut |f| bar.set_position((f * 1000.0) as u64))
        .with_context(|| format!("loading {}", path.display()))?;
    bar.finish_and_clear();
    Ok(model)
}

fn generate(args: GenerateArgs) -> Result<()> {
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

fn bench(args: BenchArgs, threads: Option<usize>) -> Result<()> {
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
fn peak_rss_mb() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok(kb / 1024.0)
}
