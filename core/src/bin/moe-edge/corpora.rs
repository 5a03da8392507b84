//! `moe-edge corpora`: builds the train/valid/test splits of every domain from
//! the fetched packages (`core/scripts/fetch-corpora.sh`) and checks them
//! against `core/scripts/corpora.sha256`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use moe_edge::experts::corpus;

/// Arguments of `moe-edge corpora`.
#[derive(Args)]
pub struct CorporaArgs {
    /// Cache directory (default: $MOE_EDGE_CACHE or ~/.cache/moe-edge).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Write the checksums to this file instead of checking them (to record a new corpus version).
    #[arg(long)]
    record: Option<PathBuf>,
}

/// Runs the subcommand.
pub fn run(args: CorporaArgs) -> Result<()> {
    let cache = args.cache.unwrap_or_else(corpus::cache_dir);
    let sums = corpus::build_splits(&cache, args.record.is_none())?;
    if let Some(path) = args.record {
        std::fs::write(&path, &sums)?;
        eprintln!("recorded checksums in {}", path.display());
    }
    print!("{sums}");
    eprintln!("splits in {}", corpus::splits_dir(&cache).display());
    Ok(())
}
