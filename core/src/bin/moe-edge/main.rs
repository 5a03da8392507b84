//! The `moe-edge` command line. Each subcommand lives in its own module; this
//! file only parses arguments, sets up threads and logging, and dispatches.

mod bench;
mod corpora;
mod demo;
mod eval;
mod generate;
mod manifest;
mod serve;
mod train_expert;
mod train_gate;
mod train_policy;
mod train_tokenizer;

use std::path::Path;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use moe_edge::model::LocalModel;

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
    Generate(generate::GenerateArgs),
    /// Measure prefill and decode speed, time to first token and peak memory.
    Bench(bench::BenchArgs),
    /// Build the domain corpora's train/valid/test splits and check their checksums.
    Corpora(corpora::CorporaArgs),
    /// Train the experts' byte-level BPE tokenizer.
    TrainTokenizer(train_tokenizer::TrainTokenizerArgs),
    /// Train one domain expert (small Llama, from scratch).
    TrainExpert(train_expert::TrainExpertArgs),
    /// Measure every model on every domain and write models/quality.json.
    Eval(eval::EvalArgs),
    /// Train the gating network.
    TrainGate(train_gate::TrainGateArgs),
    /// Write models/manifest.json (sizes and SHA-256 of every committed model file).
    Manifest(manifest::ManifestArgs),
    /// Train the SAC placement policy in the edge-network simulator and compare it with the baselines.
    TrainPolicy(train_policy::TrainPolicyArgs),
    /// Demo: an edge server on loopback + the engine, showing routing and the answer.
    Demo(demo::DemoArgs),
    /// Run an edge server hosting experts over QUIC (`--config edge.toml`).
    Serve(serve::ServeArgs),
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
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args, cli.threads),
        Command::Corpora(args) => corpora::run(args),
        Command::TrainTokenizer(args) => train_tokenizer::run(args),
        Command::TrainExpert(args) => train_expert::run(args),
        Command::Eval(args) => eval::run(args),
        Command::TrainGate(args) => train_gate::run(args),
        Command::Manifest(args) => manifest::run(args),
        Command::TrainPolicy(args) => train_policy::run(args, cli.threads),
        Command::Serve(args) => serve::run(args),
        Command::Demo(args) => demo::run(args, cli.threads),
    }
}

/// Loads a model behind a progress bar on stderr.
pub fn load_model(path: &Path, quiet: bool) -> Result<LocalModel> {
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
