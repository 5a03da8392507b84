//! `moe-edge demo "<multi-part prompt>"`: an edge server on loopback plus the
//! engine, showing each routing decision and the streamed answer.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use moe_edge::engine::{Engine, EngineConfig, EngineEvent, EngineListener};
use moe_edge::model::{CancelToken, GenerateOptions, LocalModel, SamplingOptions};
use moe_edge::offload::EdgeServerConfig;
use moe_edge::policy::PolicyKind;
use moe_edge::server::{EdgeServer, Identity, ServerSettings};

use crate::load_model;

/// Which placement policy the demo uses.
#[derive(Clone, Copy, ValueEnum)]
pub enum PolicyArg {
    /// The trained Soft Actor-Critic actor.
    Sac,
    /// Gate top-1 expert on the best node hosting it.
    Greedy,
    /// Everything on the phone.
    LocalOnly,
    /// Uniformly random placements (seed 0).
    Random,
}

impl From<PolicyArg> for PolicyKind {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Sac => PolicyKind::Sac,
            PolicyArg::Greedy => PolicyKind::Greedy,
            PolicyArg::LocalOnly => PolicyKind::LocalOnly,
            PolicyArg::Random => PolicyKind::Random { seed: 0 },
        }
    }
}

/// Arguments of `moe-edge demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// The phone's base model (GGUF or safetensors directory).
    #[arg(long)]
    model: PathBuf,
    /// The models directory (gate, experts, quality table, policy).
    #[arg(long, default_value = "models")]
    models_dir: PathBuf,
    /// Placement policy.
    #[arg(long, value_enum, default_value = "sac")]
    policy: PolicyArg,
    /// Expert ids the loopback edge server hosts (default: every expert in
    /// `models/experts/` plus the base model).
    #[arg(long, value_delimiter = ',')]
    edge_experts: Vec<String>,
    /// At most this many new tokens per subtask.
    #[arg(long, default_value_t = 96)]
    max_tokens: usize,
    /// The (multi-part) prompt.
    prompt: String,
}

struct Printer {
    current: AtomicUsize,
}

impl EngineListener for Printer {
    fn on_text(&self, subtask: usize, text: &str) {
        let mut out = std::io::stdout().lock();
        if self.current.swap(subtask, Ordering::SeqCst) != subtask {
            let _ = write!(out, "\n\n── part {} ──\n", subtask + 1);
        }
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    fn on_event(&self, event: &EngineEvent) {
        match event {
            EngineEvent::Placed { subtask, text, expert, node_name, gate, link, .. } => {
                let scores: Vec<String> = gate.iter().map(|(d, p)| format!("{d} {p:.2}")).collect();
                let link = link.as_ref().map_or("on device".to_owned(), |l| {
                    format!(
                        "rtt {:.1} ms, goodput {:.0} Mbit/s, load {:.2}, queue {}",
                        l.rtt_ms, l.goodput_mbps, l.load, l.queue
                    )
                });
                eprintln!("part {}: {text:?}", subtask + 1);
                eprintln!("   gate [{}] → expert {expert} on {node_name} ({link})", scores.join(", "));
            }
            EngineEvent::Fallback { subtask, reason, .. } => {
                eprintln!("\n[part {}: edge failed ({reason}); re-running on the phone's base model]", subtask + 1)
            }
            EngineEvent::SubtaskDone { .. } => {}
        }
    }
}

/// Runs `moe-edge demo`.
pub fn run(args: DemoArgs, threads: Option<usize>) -> Result<()> {
    let edge_ids = if args.edge_experts.is_empty() {
        moe_edge::engine::installed_experts(&args.models_dir.join("experts"))
    } else {
        args.edge_experts.clone()
    };
    // The embedded server's experts come from models/ too: checked against its manifest.
    let manifest = moe_edge::manifest::Manifest::load(&args.models_dir)?;
    // One copy of the base serves the server's base expert and its LoRA adapters.
    let base = Arc::new(load_model(&args.model, false)?);
    let mut experts = Vec::new();
    for id in &edge_ids {
        let model = if id == "base" {
            base.clone()
        } else {
            let dir = manifest.verify(id)?;
            Arc::new(LocalModel::load_expert(&dir, &base).with_context(|| format!("loading {}", dir.display()))?)
        };
        experts.push((id.clone(), model));
    }
    let token = format!("demo-{:016x}", rand::random::<u64>());
    let server_runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let server = {
        let _guard = server_runtime.enter();
        let settings =
            ServerSettings { listen: "127.0.0.1:0".into(), tokens: vec![token.clone()], ..ServerSettings::default() };
        EdgeServer::start(settings, experts, Identity::ephemeral()?)?
    };
    let address = server.local_addr()?.to_string();
    eprintln!(
        "edge server on {address} (QUIC, TLS 1.3, pinned sha256 {}…) hosting {}",
        &server.fingerprint()[..16],
        edge_ids.join(", ")
    );
    let engine = Engine::new(EngineConfig {
        base_model: args.model.clone(),
        models_dir: args.models_dir.clone(),
        threads,
        memory_budget_mb: 512,
        edge_servers: vec![EdgeServerConfig { address, cert_sha256: server.fingerprint().to_owned(), token }],
        policy: args.policy.into(),
    })
    .context("starting the engine")?;
    let status = engine.status();
    eprintln!("policy {}; phone hosts {}", status.policy, status.local_experts.join(", "));
    let options = GenerateOptions {
        sampling: SamplingOptions::greedy(),
        max_tokens: args.max_tokens,
        stop: Vec::new(),
        chat: true,
    };
    let printer = Printer { current: AtomicUsize::new(usize::MAX) };
    let report = engine.generate(&args.prompt, &options, &printer, &CancelToken::new())?;
    println!();
    eprintln!(
        "\n{:<5} {:<12} {:<8} {:>6} {:>9} {:>9} {:>8} {:>8}  fallback",
        "part", "expert", "node", "tokens", "ttft ms", "total ms", "sent B", "recv B"
    );
    for s in &report.subtasks {
        let node = if s.node == 0 { "phone" } else { "edge" };
        eprintln!(
            "{:<5} {:<12} {:<8} {:>6} {:>9.0} {:>9.0} {:>8} {:>8}  {}",
            s.index + 1,
            s.expert,
            node,
            s.tokens,
            s.time_to_first_token.map_or(0.0, |d| d.as_secs_f64() * 1e3),
            s.latency.as_secs_f64() * 1e3,
            s.bytes_sent,
            s.bytes_received,
            s.fallback.as_deref().unwrap_or("-")
        );
    }
    eprintln!(
        "total {:.1} s with policy {}; server counters {:?}",
        report.total.as_secs_f64(),
        report.policy,
        server.counters()
    );
    Ok(())
}
