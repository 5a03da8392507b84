//! `moe-edge train-expert --domain D`: trains one expert on a domain's training
//! split: a small Llama from scratch (an HF-Llama directory), or with `--base`
//! a LoRA adapter over the base model (a PEFT adapter directory).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use moe_edge::experts::lora::{LoraShape, LoraTrainModel};
use moe_edge::experts::model::{ExpertConfig, TrainModel};
use moe_edge::experts::train::{TrainOptions, TrainPaths, Trainable, encode_text, train};
use moe_edge::experts::{DOMAINS, corpus};
use moe_edge::gate::QUESTION_START;

/// Arguments of `moe-edge train-expert`.
#[derive(Args)]
pub struct TrainExpertArgs {
    /// Domain to train on (prose, definitions, code, arithmetic).
    #[arg(long)]
    domain: String,
    /// The experts' tokenizer.
    #[arg(long, default_value = "models/tokenizer.json")]
    tokenizer: PathBuf,
    /// Output directory (default: models/experts/<domain>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 1_000)]
    steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Seed of initialisation and batches.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Train a LoRA adapter over this base GGUF instead of a model from scratch.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Rank of the LoRA adapter (with `--base`).
    #[arg(long, default_value_t = LoraShape::default().rank)]
    rank: usize,
    /// Use the tiny smoke-test shape instead of the shipped one.
    #[arg(long)]
    tiny: bool,
    /// Bytes of the training split used at most.
    #[arg(long, default_value_t = 8_000_000)]
    max_train_bytes: usize,
    /// Cache directory (default: $MOE_EDGE_CACHE or ~/.cache/moe-edge).
    #[arg(long)]
    cache: Option<PathBuf>,
}

/// Runs the subcommand.
pub fn run(args: TrainExpertArgs) -> Result<()> {
    anyhow::ensure!(DOMAINS.contains(&args.domain.as_str()), "unknown domain {:?}", args.domain);
    let cache = args.cache.unwrap_or_else(corpus::cache_dir);
    // Each arithmetic problem (question and answer line) is a document of its own.
    let document_start = (args.domain == "arithmetic").then_some(QUESTION_START);
    let train_text = corpus::read_split(&cache, &args.domain, corpus::Split::Train)?;
    let train_text = corpus::prefix_lines(&train_text, args.max_train_bytes);
    let valid_text = corpus::read_split(&cache, &args.domain, corpus::Split::Valid)?;
    let out = args.out.unwrap_or_else(|| PathBuf::from("models/experts").join(&args.domain));
    let (model, tokenizer, tokenizer_file): (Box<dyn Trainable>, _, _) = match &args.base {
        Some(base) => {
            let shape = LoraShape { rank: args.rank, ..LoraShape::default() };
            let model = LoraTrainModel::new(base, shape, args.seed)?;
            let tokenizer = model.tokenizer().inner().clone();
            (Box::new(model), tokenizer, None)
        }
        None => {
            let tokenizer = tokenizers::Tokenizer::from_file(&args.tokenizer)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("loading {}", args.tokenizer.display()))?;
            let vocab = tokenizer.get_vocab_size(true);
            let cfg = if args.tiny { ExpertConfig::tiny(vocab) } else { ExpertConfig::expert(vocab) };
            (Box::new(TrainModel::new(cfg, args.seed)?), tokenizer, Some(args.tokenizer.clone()))
        }
    };
    let train_ids = encode_text(&tokenizer, train_text, document_start)?;
    let valid_ids = encode_text(&tokenizer, &valid_text, document_start)?;
    let opts =
        TrainOptions { steps: args.steps, batch: args.batch, lr: args.lr, seed: args.seed, ..Default::default() };
    let opts = TrainOptions {
        warmup: (opts.steps / 10).clamp(1, opts.warmup),
        eval_every: opts.eval_every.min(opts.steps),
        ..opts
    };
    let paths = TrainPaths {
        checkpoints: cache.join("checkpoints").join(&args.domain),
        loss_png: Some(out.join("loss.png")),
        out: out.clone(),
        tokenizer: tokenizer_file,
    };
    let trained = model.parameter_count();
    eprintln!(
        "{}: {trained} trained parameters, {} training tokens ({} bytes), {} validation tokens",
        args.domain,
        train_ids.len(),
        train_text.len(),
        valid_ids.len()
    );
    let bar = ProgressBar::new(opts.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} {elapsed}<{eta}")?.progress_chars("=> "),
    );
    bar.set_prefix(args.domain.clone());
    let report = train(model.as_ref(), &train_ids, &valid_ids, &opts, &paths, &mut |s| {
        let valid = s.valid_loss.map_or(String::new(), |v| format!(" valid {v:.3}"));
        bar.set_message(format!("loss {:.3}{valid} lr {:.1e}", s.loss, s.lr));
        bar.set_position(s.step as u64);
    })?;
    bar.finish();
    let last_valid = report.valid.last().map_or(f32::NAN, |v| v.1);
    eprintln!(
        "{}: {} tokens seen, final validation loss {last_valid:.4} nats/token; wrote {}",
        args.domain,
        report.tokens,
        out.display()
    );
    Ok(())
}
