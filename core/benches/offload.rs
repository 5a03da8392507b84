//! Offload overhead: time to first token and per-token time of the base model
//! run locally vs. offloaded to an edge server on loopback (real QUIC + TLS).
//!
//! `cargo bench --bench offload --features server` measures (5 rounds × 32
//! tokens, alternating local and remote so background load hits both alike) and
//! prints the ratios; `cargo test --benches` runs one short round as a smoke test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moe_edge::model::{CancelToken, GenerateOptions, LocalModel, SamplingOptions};
use moe_edge::offload::protocol::GenerateRequest;
use moe_edge::offload::{EdgeClient, EdgeServerConfig};
use moe_edge::server::{EdgeServer, Identity, ServerSettings};

const PROMPT: &str = "Explain in two sentences why the sky is blue.";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let (rounds, tokens) = if measuring { (5, 32) } else { (1, 4) };
    let Some(path) = std::env::var_os("MOE_EDGE_BASE_MODEL").map(std::path::PathBuf::from).or_else(|| {
        let p = std::path::PathBuf::from(std::env::var_os("HOME")?)
            .join(".cache/moe-edge/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        p.is_file().then_some(p)
    }) else {
        assert!(!std::env::var("MOE_EDGE_REQUIRE_MODEL").is_ok_and(|v| v == "1"), "base model missing");
        eprintln!("SKIPPED: base model not fetched");
        return;
    };
    let model = Arc::new(LocalModel::load(&path).expect("base model loads"));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _guard = runtime.enter();
    let settings = ServerSettings { listen: "127.0.0.1:0".into(), tokens: vec!["bench".into()], ..Default::default() };
    let server =
        EdgeServer::start(settings, vec![("base".into(), model.clone())], Identity::ephemeral().unwrap()).unwrap();
    let client = EdgeClient::new(EdgeServerConfig {
        address: server.local_addr().unwrap().to_string(),
        cert_sha256: server.fingerprint().to_owned(),
        token: "bench".into(),
    })
    .unwrap();
    runtime.block_on(client.probe()).unwrap();
    let options = GenerateOptions { sampling: SamplingOptions::greedy(), max_tokens: tokens, stop: vec![], chat: true };
    let request = GenerateRequest {
        expert: "base".into(),
        prompt: PROMPT.into(),
        sampling: SamplingOptions::greedy(),
        max_tokens: tokens as u32,
        stop: vec![],
        chat: true,
        deadline_ms: 0,
    };
    let (mut local_ttft, mut local_tok, mut remote_ttft, mut remote_tok) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let start = Instant::now();
        let mut first = None;
        let r = model
            .generate(
                PROMPT,
                &options,
                &mut |_| {
                    first.get_or_insert(start.elapsed());
                },
                &CancelToken::new(),
            )
            .unwrap();
        let total = start.elapsed();
        let first = first.unwrap_or(total);
        local_ttft.push(first.as_secs_f64() * 1e3);
        local_tok.push((total - first).as_secs_f64() * 1e3 / (r.generated_tokens.max(2) - 1) as f64);

        let report = runtime.block_on(client.generate(&request, &mut |_| {}, &CancelToken::new(), None)).unwrap();
        let after_first = report.elapsed.saturating_sub(report.time_to_first_token).max(Duration::ZERO);
        remote_ttft.push(report.time_to_first_token.as_secs_f64() * 1e3);
        remote_tok.push(after_first.as_secs_f64() * 1e3 / (report.stats.generated_tokens.max(2) - 1) as f64);
    }
    let (lt, rt, lp, rp) = (median(local_ttft), median(remote_ttft), median(local_tok), median(remote_tok));
    println!("offload overhead, {rounds} rounds × {tokens} tokens (medians; noisy if other jobs share the CPU):");
    println!(
        "  time to first token: local {lt:.1} ms, loopback edge {rt:.1} ms → added {:.1} ms (ratio {:.3})",
        rt - lt,
        rt / lt
    );
    println!(
        "  per token:           local {lp:.2} ms, loopback edge {rp:.2} ms → added {:.2} ms (ratio {:.3})",
        rp - lp,
        rp / lp
    );
}
