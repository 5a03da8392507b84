//! The engine's on-device models. It refuses model files that differ from
//! `models/manifest.json`: a copy of the models directory with one corrupted
//! file at a time (an on-device expert, the gate, the SAC actor) gives
//! `EngineError::Manifest`. Its memory budget counts what a loaded expert holds
//! in memory, not its size on disk, and the base model answers for an expert
//! that does not fit. Arithmetic asked in words reaches the
//! arithmetic expert in its question form. Its own test binary (own process), so it
//! does not compete with the engine tests' edge server for the compute pool.

mod common;

use std::path::{Path, PathBuf};

use moe_edge::engine::{Engine, EngineConfig, EngineError, EngineEvent, EngineListener};
use moe_edge::manifest::ManifestError;
use moe_edge::model::{CancelToken, GenerateOptions, LocalModel, SamplingOptions};
use moe_edge::policy::{Observation, Placement, Policy, PolicyError, PolicyKind};

struct Silent;

impl EngineListener for Silent {
    fn on_text(&self, _subtask: usize, _text: &str) {}

    fn on_event(&self, _event: &EngineEvent) {}
}

fn options(max_tokens: usize) -> GenerateOptions {
    GenerateOptions { sampling: SamplingOptions::greedy(), max_tokens, stop: Vec::new(), chat: true }
}

/// Every subtask on the phone, subtask `i` with expert `i` (the last one for the rest).
struct OnPhone(&'static [&'static str]);

impl Policy for OnPhone {
    fn name(&self) -> &str {
        "on the phone (test fixture)"
    }

    fn decide(&self, obs: &Observation) -> Result<Vec<Placement>, PolicyError> {
        let expert = |i: usize| self.0[i.min(self.0.len() - 1)];
        Ok((0..obs.subtasks.len()).map(|i| Placement { expert: expert(i).into(), node: 0 }).collect())
    }
}

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// Copies what the engine reads from `models/` (manifest, quality table, policy
/// actor, gate, the prose expert) into `to`.
fn copy_models(to: &Path) {
    let from = models_dir();
    for dir in ["gate", "experts/prose"] {
        std::fs::create_dir_all(to.join(dir)).unwrap();
        for entry in std::fs::read_dir(from.join(dir)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(dir).join(entry.file_name())).unwrap();
        }
    }
    for file in ["manifest.json", "quality.json", "policy.safetensors"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
}

/// Flips one bit in the middle of `path` (same size, different content).
fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(path, bytes).unwrap();
}

fn hash_mismatch_at(result: Result<impl std::fmt::Debug, EngineError>, file: &str) {
    match result {
        Err(EngineError::Manifest(ManifestError::HashMismatch { path, .. })) => {
            assert!(path.ends_with(file), "{} is not {file}", path.display())
        }
        other => panic!("expected a hash mismatch of {file}, got {other:?}"),
    }
}

#[test]
fn corrupted_model_files_are_refused_with_a_typed_error() {
    let Some(path) = common::base_model() else { return };
    let dir = std::env::temp_dir().join(format!("moe-edge-corrupt-models-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_models(&dir);
    let config = EngineConfig {
        base_model: path,
        models_dir: dir.clone(),
        threads: None,
        memory_budget_mb: 256,
        edge_servers: Vec::new(),
        policy: PolicyKind::Sac,
    };
    let prompt = "Tell me about the sea.";
    // The intact copy: the engine starts and runs the prose expert on the phone.
    Engine::new(config.clone()).unwrap();
    let engine = Engine::with_routing(config.clone(), None, Box::new(OnPhone(&["prose"]))).unwrap();
    let report = engine.generate(prompt, &options(2), &Silent, &CancelToken::new()).unwrap();
    assert_eq!(report.subtasks[0].expert, "prose");

    // A corrupted expert is refused when it is about to be loaded.
    corrupt(&dir.join("experts/prose/adapter_model.safetensors"));
    let engine = Engine::with_routing(config.clone(), None, Box::new(OnPhone(&["prose"]))).unwrap();
    hash_mismatch_at(
        engine.generate(prompt, &options(2), &Silent, &CancelToken::new()),
        "experts/prose/adapter_model.safetensors",
    );
    // A corrupted gate or policy actor stops the engine from starting.
    corrupt(&dir.join("gate/gate.safetensors"));
    hash_mismatch_at(Engine::new(config.clone()).map(|_| ()), "gate/gate.safetensors");
    corrupt(&dir.join("gate/gate.safetensors")); // the same bit again: intact
    corrupt(&dir.join("policy.safetensors"));
    hash_mismatch_at(Engine::new(config.clone()).map(|_| ()), "policy.safetensors");
    // The local-only policy loads no actor file, so it still starts.
    Engine::new(EngineConfig { policy: PolicyKind::LocalOnly, ..config }).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_expert_budget_counts_memory_not_disk() {
    let Some(path) = common::base_model() else { return };
    let base = LocalModel::load(&path).unwrap();
    let gguf = std::fs::metadata(&path).unwrap().len() as f64;
    let base_bytes = base.llama().own_weight_bytes() as f64;
    // Q4_1 stays Q4_1 in memory: about the file (which also holds the tokenizer).
    assert!((0.9 * gguf..1.05 * gguf).contains(&base_bytes), "base holds {base_bytes} bytes, file {gguf}");
    let expert_dir = |id: &str| models_dir().join("experts").join(id);
    let file_bytes = |id: &str| std::fs::metadata(expert_dir(id).join("adapter_model.safetensors")).unwrap().len();
    let prose = LocalModel::load_expert(&expert_dir("prose"), &base).unwrap().llama().own_weight_bytes();
    // f16 on disk, f32 in memory; only the adapter, the base weights are shared.
    assert!(prose >= 2 * file_bytes("prose") && (prose as f64) < base_bytes / 4.0, "prose holds {prose} bytes");

    // Room for one adapter as it sits in memory, though two would fit by their file sizes.
    let budget_mb = prose.div_ceil(1 << 20) as usize + 1;
    assert!(((file_bytes("prose") + file_bytes("code")) >> 20) < budget_mb as u64);
    let config = EngineConfig {
        base_model: path,
        models_dir: models_dir(),
        threads: None,
        memory_budget_mb: budget_mb,
        edge_servers: Vec::new(),
        policy: PolicyKind::LocalOnly,
    };
    let engine = Engine::with_routing(config, None, Box::new(OnPhone(&["prose", "code"]))).unwrap();
    let prompt = "1. Tell me about the sea.\n2. Write a loop in Python.";
    let report = engine.generate(prompt, &options(2), &Silent, &CancelToken::new()).unwrap();
    let used: Vec<&str> = report.subtasks.iter().map(|s| s.expert.as_str()).collect();
    assert_eq!(used, ["prose", "code"]);
    let status = engine.status();
    assert_eq!(status.loaded_experts.len(), 2, "one expert evicted for the other: {:?}", status.loaded_experts);
    assert!((1..=budget_mb as u64 * (1 << 20)).contains(&status.loaded_expert_bytes), "{status:?}");

    // A smaller budget evicts at once.
    engine.set_expert_memory_budget(0);
    let status = engine.status();
    assert_eq!((status.loaded_experts, status.loaded_expert_bytes), (vec!["base".to_string()], 0));
    // An expert that does not fit at all: the base model answers instead, and says why.
    let report = engine.generate("Tell me about the sea.", &options(2), &Silent, &CancelToken::new()).unwrap();
    let subtask = &report.subtasks[0];
    assert_eq!((subtask.placed.expert.as_str(), subtask.expert.as_str()), ("prose", "base"));
    let reason = subtask.fallback.as_deref().unwrap_or_default();
    assert!(reason.contains(&format!("expert prose needs {} MiB", prose.div_ceil(1 << 20))), "{reason:?}");
    assert_eq!(engine.status().loaded_expert_bytes, 0);
    // Asked again, it is refused from its measured size, the same way.
    let again = engine.generate("Tell me about the sea.", &options(2), &Silent, &CancelToken::new()).unwrap();
    assert_eq!(again.subtasks[0].fallback.as_deref(), Some(reason));
}

#[test]
fn arithmetic_in_words_reaches_the_arithmetic_expert() {
    let Some(path) = common::base_model() else { return };
    let config = EngineConfig {
        base_model: path,
        models_dir: models_dir(),
        threads: None,
        memory_budget_mb: 256,
        edge_servers: Vec::new(),
        policy: PolicyKind::LocalOnly,
    };
    // The committed gate and quality table choose the expert.
    let engine = Engine::new(config).unwrap();
    let prompt = "1. What is 482 + 397?\n2. Compute 56 times 7.\n3. Define entropy.";
    let report = engine.generate(prompt, &options(96), &Silent, &CancelToken::new()).unwrap();
    let routed: Vec<(&str, &str)> = report.subtasks.iter().map(|s| (s.expert.as_str(), s.prompt.as_str())).collect();
    assert_eq!(routed[..2], [("arithmetic", "Q: 482+397\nA:"), ("arithmetic", "Q: 56*7\nA:")]);
    assert!(report.subtasks[0].text.trim_end().ends_with("so 879"), "{:?}", report.subtasks[0].text);
    assert!(report.subtasks[1].text.trim_end().ends_with("so 392"), "{:?}", report.subtasks[1].text);
    // Every other expert is asked in words.
    assert_ne!(routed[2].0, "arithmetic");
    assert_eq!(routed[2].1, "Define entropy.");
}
