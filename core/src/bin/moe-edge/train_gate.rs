//! `moe-edge train-gate`: trains the gating network on labelled snippets of the
//! domains' training splits and reports its top-1 accuracy on snippets of the
//! test splits.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use moe_edge::experts::corpus::{self, Split};
use moe_edge::experts::gate_train::{GateTrainOptions, labelled_snippets, train_gate};
use moe_edge::experts::{DOMAINS, ExpertError};

/// Arguments of `moe-edge train-gate`.
#[derive(Args)]
pub struct TrainGateArgs {
    /// The experts' tokenizer (the gate reads the same ids).
    #[arg(long, default_value = "models/tokenizer.json")]
    tokenizer: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "models/gate")]
    out: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = GateTrainOptions::default().steps)]
    steps: usize,
    /// Cache directory (default: $MOE_EDGE_CACHE or ~/.cache/moe-edge).
    #[arg(long)]
    cache: Option<PathBuf>,
}

/// Runs the subcommand.
pub fn run(args: TrainGateArgs) -> Result<()> {
    let cache = args.cache.unwrap_or_else(corpus::cache_dir);
    let opts = GateTrainOptions { steps: args.steps, ..Default::default() };
    let read =
        |split| DOMAINS.iter().map(|d| corpus::read_split(&cache, d, split)).collect::<Result<Vec<_>, ExpertError>>();
    let (train_texts, test_texts) = (read(Split::Train)?, read(Split::Test)?);
    let train = labelled_snippets(
        &train_texts.iter().map(String::as_str).collect::<Vec<_>>(),
        opts.train_per_domain,
        opts.seed,
    );
    let test = labelled_snippets(
        &test_texts.iter().map(String::as_str).collect::<Vec<_>>(),
        opts.test_per_domain,
        opts.seed + 1,
    );
    let domains: Vec<String> = DOMAINS.iter().map(|d| d.to_string()).collect();
    let bar = ProgressBar::new(opts.steps as u64);
    bar.set_style(ProgressStyle::with_template("gate [{bar:30}] {pos}/{len} {msg} {elapsed}")?.progress_chars("=> "));
    let accuracy = train_gate(&domains, &train, &test, &args.tokenizer, &args.out, &opts, &mut |step, loss| {
        bar.set_position(step as u64);
        bar.set_message(format!("loss {loss:.4}"));
    })?;
    bar.finish();
    println!("held-out top-1 accuracy: {:.4} on {} snippets", accuracy, test.len());
    Ok(())
}
