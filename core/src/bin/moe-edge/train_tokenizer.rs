//! `moe-edge train-tokenizer`: trains a byte-level BPE tokenizer on the union
//! of the domains' training splits: the experts' shared tokenizer, or with
//! `--domains arithmetic` the arithmetic expert's own small one.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use moe_edge::experts::{DOMAINS, bpe, corpus};

/// Arguments of `moe-edge train-tokenizer`.
#[derive(Args)]
pub struct TrainTokenizerArgs {
    /// Output file.
    #[arg(long, default_value = "models/tokenizer.json")]
    out: PathBuf,
    /// Number of token ids.
    #[arg(long, default_value_t = bpe::VOCAB_SIZE)]
    vocab_size: usize,
    /// Domains whose training splits are used (default: all).
    #[arg(long, value_delimiter = ',')]
    domains: Option<Vec<String>>,
    /// Bytes of each domain's training split used (the same amount per domain, so none dominates).
    #[arg(long, default_value_t = 2_000_000)]
    bytes_per_domain: usize,
    /// Cache directory (default: $MOE_EDGE_CACHE or ~/.cache/moe-edge).
    #[arg(long)]
    cache: Option<PathBuf>,
}

/// Runs the subcommand.
pub fn run(args: TrainTokenizerArgs) -> Result<()> {
    let cache = args.cache.unwrap_or_else(corpus::cache_dir);
    let domains = args.domains.unwrap_or_else(|| DOMAINS.iter().map(|d| d.to_string()).collect());
    if let Some(unknown) = domains.iter().find(|d| !DOMAINS.contains(&d.as_str())) {
        anyhow::bail!("unknown domain {unknown:?} (known: {})", DOMAINS.join(", "));
    }
    let texts =
        domains.iter().map(|d| corpus::read_split(&cache, d, corpus::Split::Train)).collect::<Result<Vec<_>, _>>()?;
    let parts: Vec<&str> = texts.iter().map(|t| corpus::prefix_lines(t, args.bytes_per_domain)).collect();
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    bpe::train_tokenizer(&parts, args.vocab_size, &args.out)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
