//! `moe-edge serve --config edge.toml`: the edge server hosting experts over QUIC.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use moe_edge::server::{EdgeConfig, EdgeServer, Identity, load_experts};

/// Arguments of `moe-edge serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The server's configuration file.
    #[arg(long)]
    config: PathBuf,
}

/// Runs `moe-edge serve` until SIGTERM or Ctrl-C, then drains.
pub fn run(args: ServeArgs) -> Result<()> {
    let config = EdgeConfig::load(&args.config)?;
    let bar = ProgressBar::new(config.experts.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("loading experts [{bar:30}] {pos}/{len} {msg}").expect("valid template"),
    );
    let experts = load_experts(&config, &mut |i, id| {
        bar.set_position(i as u64);
        bar.set_message(id.to_owned());
    })?;
    bar.finish_and_clear();
    let identity = Identity::load_or_create(&config.state_dir).context("TLS identity")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let server = EdgeServer::start(config.settings.clone(), experts, identity)?;
        // A closed stdout (the launcher stopped reading) must not stop the server.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {}", server.local_addr()?);
        let _ = writeln!(out, "certificate sha256 {}", server.fingerprint());
        let _ =
            writeln!(out, "hosting {}", config.experts.iter().map(|e| e.id.as_str()).collect::<Vec<_>>().join(", "));
        let _ = out.flush();
        drop(out);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("draining ...");
        server.drain().await;
        eprintln!("stopped; counters {:?}", server.counters());
        anyhow::Ok(())
    })
}
