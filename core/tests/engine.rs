//! The engine end to end on loopback: real QUIC + TLS to an in-process edge
//! server and to a `moe-edge serve` child process, the real base model on both
//! sides.
//!
//! Placement comes from a fixture policy that alternates phone and edge (the
//! trained gate and SAC actor are exercised by their own tests; these tests check
//! the executor: ordering, streaming, fallback, cancellation).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moe_edge::engine::{Engine, EngineConfig, EngineError, EngineEvent, EngineListener};
use moe_edge::model::{CancelToken, GenerateOptions, LocalModel, SamplingOptions};
use moe_edge::offload::EdgeServerConfig;
use moe_edge::policy::{Observation, Placement, Policy, PolicyError, PolicyKind};
use moe_edge::server::{EdgeServer, Identity, ServerSettings};

const TOKEN: &str = "engine-test-token";
const PROMPT: &str = "1. Name a fruit.\n2. Name a colour.\n3. Name an animal.";

/// Even subtasks on `even`, odd ones on the other node (0 = phone, 1 = edge); base model.
struct Alternate {
    even: usize,
}

impl Policy for Alternate {
    fn name(&self) -> &str {
        "alternate (test fixture)"
    }

    fn decide(&self, obs: &Observation) -> Result<Vec<Placement>, PolicyError> {
        Ok((0..obs.subtasks.len())
            .map(|i| {
                let node = if i % 2 == 0 { self.even } else { 1 - self.even };
                assert!(obs.nodes[node].hosted.contains(&"base".to_string()), "node {node} hosts base: {obs:?}");
                Placement { expert: "base".into(), node }
            })
            .collect())
    }
}

#[derive(Default)]
struct Recorder {
    texts: Mutex<Vec<(usize, String)>>,
    events: Mutex<Vec<EngineEvent>>,
    on_first_text: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl EngineListener for Recorder {
    fn on_text(&self, subtask: usize, text: &str) {
        if let Some(f) = self.on_first_text.lock().unwrap().take() {
            f();
        }
        self.texts.lock().unwrap().push((subtask, text.to_owned()));
    }

    fn on_event(&self, event: &EngineEvent) {
        self.events.lock().unwrap().push(event.clone());
    }
}

impl Recorder {
    /// Streamed text per subtask, checking pieces came in subtask order.
    fn streamed(&self, n: usize) -> Vec<String> {
        let texts = self.texts.lock().unwrap();
        let order: Vec<usize> = texts.iter().map(|(i, _)| *i).collect();
        assert!(order.windows(2).all(|w| w[0] <= w[1]), "text not in subtask order: {order:?}");
        (0..n).map(|i| texts.iter().filter(|(j, _)| *j == i).map(|(_, t)| t.as_str()).collect()).collect()
    }
}

fn options(max_tokens: usize) -> GenerateOptions {
    GenerateOptions { sampling: SamplingOptions::greedy(), max_tokens, stop: Vec::new(), chat: true }
}

fn engine(model: &Path, server: EdgeServerConfig, even: usize) -> Engine {
    let config = EngineConfig {
        base_model: model.to_owned(),
        models_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"),
        threads: None,
        memory_budget_mb: 256,
        edge_servers: vec![server],
        policy: PolicyKind::LocalOnly,
    };
    Engine::with_routing(config, None, Box::new(Alternate { even })).unwrap()
}

fn local_text(model: &LocalModel, prompt: &str, max_tokens: usize) -> String {
    let mut text = String::new();
    model.generate(prompt, &options(max_tokens), &mut |t| text.push_str(t), &CancelToken::new()).unwrap();
    text
}

#[test]
fn multi_part_prompt_runs_on_phone_and_edge_in_order() {
    let Some(path) = common::base_model() else { return };
    let model = Arc::new(LocalModel::load(&path).unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = {
        let _guard = runtime.enter();
        let settings =
            ServerSettings { listen: "127.0.0.1:0".into(), tokens: vec![TOKEN.into()], ..Default::default() };
        EdgeServer::start(settings, vec![("base".into(), model.clone())], Identity::ephemeral().unwrap()).unwrap()
    };
    let config = EdgeServerConfig {
        address: server.local_addr().unwrap().to_string(),
        cert_sha256: server.fingerprint().to_owned(),
        token: TOKEN.into(),
    };
    let engine = engine(&path, config, 0);
    assert!(engine.status().edge[0].link.connected, "{:?}", engine.status());
    let recorder = Recorder::default();
    let report = engine.generate(PROMPT, &options(10), &recorder, &CancelToken::new()).unwrap();
    assert_eq!(report.subtasks.len(), 3);
    let fallbacks: Vec<_> = report.subtasks.iter().map(|s| s.fallback.clone()).collect();
    assert_eq!(report.subtasks.iter().map(|s| s.node).collect::<Vec<_>>(), vec![0, 1, 0], "fallbacks: {fallbacks:?}");
    let streamed = recorder.streamed(3);
    for s in &report.subtasks {
        assert!(s.fallback.is_none(), "{s:?}");
        assert!(!s.text.trim().is_empty(), "subtask {} is empty", s.index);
        assert_eq!(streamed[s.index], s.text, "streamed text equals the report's");
        // Greedy decoding of the same model: the edge and the phone give the same text.
        assert_eq!(s.text, local_text(&model, &s.prompt, 10), "subtask {}", s.index);
    }
    assert!(report.subtasks[1].bytes_received > 0 && report.subtasks[0].bytes_received == 0);
    assert_eq!(server.counters().completed, 1);
    let events = recorder.events.lock().unwrap();
    assert_eq!(events.iter().filter(|e| matches!(e, EngineEvent::Placed { .. })).count(), 3);
    assert_eq!(events.iter().filter(|e| matches!(e, EngineEvent::SubtaskDone { .. })).count(), 3);

    // Cancel mid-stream: everything stops, the server's generation included.
    let cancel = CancelToken::new();
    let recorder = Recorder::default();
    let flag = cancel.clone();
    *recorder.on_first_text.lock().unwrap() = Some(Box::new(move || flag.cancel()));
    let engine = {
        let config = EdgeServerConfig {
            address: server.local_addr().unwrap().to_string(),
            cert_sha256: server.fingerprint().to_owned(),
            token: TOKEN.into(),
        };
        self::engine(&path, config, 1)
    };
    let err = engine.generate(PROMPT, &options(300), &recorder, &cancel).unwrap_err();
    assert!(matches!(err, EngineError::Cancelled), "{err}");
    let mut waited = 0;
    while server.counters().active > 0 {
        assert!(waited < 6000, "the server kept generating: {:?}", server.counters());
        std::thread::sleep(Duration::from_millis(5));
        waited += 1;
    }
    let counters = server.counters();
    assert!(counters.cancels >= 1, "{counters:?}");
    assert!(counters.tokens < 2 * 300, "{counters:?}");
}

/// A `moe-edge serve` child process on loopback.
struct ServerProcess {
    child: Child,
    config: EdgeServerConfig,
    dir: PathBuf,
}

impl ServerProcess {
    fn start(model: &Path, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("moe-edge-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("edge.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"state\"\nlisten = \"127.0.0.1:0\"\ntokens = [\"{TOKEN}\"]\nmax_concurrent = 2\n\
                 max_queue = 64\nidle_timeout_ms = 5000\n[[experts]]\nid = \"base\"\npath = {:?}\n",
                model.display().to_string()
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_moe-edge"))
            .args(["--threads", "2", "serve", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut field = |prefix: &str| {
            let line = lines.next().expect("server output").unwrap();
            line.strip_prefix(prefix).unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}")).to_owned()
        };
        let address = field("listening on ");
        let cert_sha256 = field("certificate sha256 ");
        field("hosting ");
        Self { child, config: EdgeServerConfig { address, cert_sha256, token: TOKEN.into() }, dir }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn server_killed_mid_stream_falls_back_to_the_phone() {
    let Some(path) = common::base_model() else { return };
    let mut server = ServerProcess::start(&path, "kill");
    let engine = engine(&path, server.config.clone(), 1);
    let pid = server.child.id();
    let recorder = Recorder::default();
    // Subtask 0 runs on the edge and streams live: kill -9 the server at its first piece.
    *recorder.on_first_text.lock().unwrap() = Some(Box::new(move || {
        Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    }));
    let report = engine.generate(PROMPT, &options(24), &recorder, &CancelToken::new()).unwrap();
    server.child.wait().unwrap();
    assert_eq!(report.subtasks.len(), 3);
    let first = &report.subtasks[0];
    assert_eq!((first.placed.node, first.node), (1, 0), "placed on the edge, finished on the phone");
    assert!(first.fallback.is_some(), "{first:?}");
    for s in &report.subtasks {
        assert!(!s.text.trim().is_empty(), "subtask {} is empty", s.index);
    }
    let events = recorder.events.lock().unwrap();
    assert!(events.iter().any(|e| matches!(e, EngineEvent::Fallback { subtask: 0, .. })), "{events:?}");
    eprintln!("fallback reason: {}", first.fallback.as_deref().unwrap_or_default());
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

#[test]
fn sixty_four_concurrent_clients_complete_with_bounded_memory_then_sigterm_drains() {
    use moe_edge::offload::protocol::GenerateRequest;
    use moe_edge::offload::{EdgeClient, OffloadError};
    let Some(path) = common::base_model() else { return };
    let mut server = ServerProcess::start(&path, "many");
    let pid = server.child.id();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let request = |max_tokens| GenerateRequest {
        expert: "base".into(),
        prompt: "Say one word.".into(),
        sampling: SamplingOptions::greedy(),
        max_tokens,
        stop: Vec::new(),
        chat: true,
        deadline_ms: 0,
    };
    // Warm up (every weight page touched once), then measure the 64-client peak against it.
    runtime
        .block_on(async {
            EdgeClient::new(server.config.clone())?.generate(&request(4), &mut |_| {}, &CancelToken::new(), None).await
        })
        .unwrap();
    let warm_rss = peak_rss_mb(pid);
    let results = runtime.block_on(async {
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let config = server.config.clone();
                let request = request(4);
                tokio::spawn(async move {
                    let client = EdgeClient::new(config)?;
                    loop {
                        let mut text = String::new();
                        match client.generate(&request, &mut |t| text.push_str(t), &CancelToken::new(), None).await {
                            Err(OffloadError::Busy { retry_after_ms }) => {
                                tokio::time::sleep(Duration::from_millis(retry_after_ms as u64)).await
                            }
                            other => return other.map(|r| (r, text)),
                        }
                    }
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let peak = peak_rss_mb(pid);
    eprintln!("64 clients: server peak RSS {peak:.0} MiB (after one warm-up request {warm_rss:.0} MiB)");
    for r in &results {
        let (report, text) = r.as_ref().expect("every client completes");
        assert!(report.stats.generated_tokens >= 1 && !text.is_empty());
    }
    // Bounded: at most two generations at a time over one shared model; 64
    // connections and 62 queued requests add little.
    assert!(peak < warm_rss + 256.0, "peak RSS {peak:.0} MiB vs {warm_rss:.0} MiB after warm-up");

    // SIGTERM while a generation runs: it completes, then the process exits cleanly.
    let config = server.config.clone();
    let outcome = runtime.block_on(async move {
        let client = EdgeClient::new(config)?;
        let running = {
            let client = client.clone();
            tokio::spawn(async move { client.generate(&request(24), &mut |_| {}, &CancelToken::new(), None).await })
        };
        while client.probe().await?.counters.active == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        running.await.unwrap()
    });
    let report = outcome.expect("the running generation finishes during the drain");
    assert!(report.stats.generated_tokens > 0);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "clean exit after the drain: {status}");
}
