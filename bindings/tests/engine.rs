//! The FFI surface called from Rust: configuration checks, error kinds, streaming,
//! cancellation and the memory budget, on the real base model where one is needed.

// The base-model locator shared with the core's tests.
#[path = "../../core/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use moe_edge_ffi::{
    CancelHandle, EdgeServerConfig, EngineConfig, GenerateOptions, GenerationEvent, GenerationListener, MoeEngine,
    MoeError, PolicyChoice, StopReason,
};

/// The repository's small models: gate, quality table, policy, experts.
const MODELS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");

fn config(base_model: &str) -> EngineConfig {
    EngineConfig {
        base_model: base_model.into(),
        models_dir: MODELS_DIR.into(),
        threads: Some(2),
        memory_budget_mb: 1024,
        edge_servers: vec![],
        policy: PolicyChoice::LocalOnly,
    }
}

fn greedy(max_tokens: u32) -> GenerateOptions {
    GenerateOptions { max_tokens, temperature: 0.0, ..GenerateOptions::default() }
}

/// Collects what a generation streams; cancels `cancel_at` pieces in, if set.
#[derive(Default)]
struct Recorder {
    pieces: Mutex<Vec<(u32, String)>>,
    events: Mutex<Vec<GenerationEvent>>,
    cancel_at: Option<(usize, Arc<CancelHandle>)>,
}

impl Recorder {
    /// The streamed text, one string per subtask.
    fn streamed(&self) -> Vec<String> {
        let mut texts: Vec<String> = Vec::new();
        for (subtask, piece) in self.pieces.lock().unwrap().iter() {
            texts.resize(texts.len().max(*subtask as usize + 1), String::new());
            texts[*subtask as usize].push_str(piece);
        }
        texts
    }
}

/// The listener handed to the engine: a shared handle on a [`Recorder`] the test keeps reading.
struct Tap(Arc<Recorder>);

impl GenerationListener for Tap {
    fn on_text(&self, subtask: u32, text: String) -> Result<(), MoeError> {
        let mut pieces = self.0.pieces.lock().unwrap();
        assert!(pieces.last().is_none_or(|(last, _)| *last <= subtask), "subtasks stream in order");
        pieces.push((subtask, text));
        if let Some((n, handle)) = &self.0.cancel_at
            && pieces.len() == *n
        {
            handle.cancel();
        }
        Ok(())
    }

    fn on_event(&self, event: GenerationEvent) -> Result<(), MoeError> {
        self.0.events.lock().unwrap().push(event);
        Ok(())
    }
}

fn new_err(config: EngineConfig) -> MoeError {
    MoeEngine::new(config).err().expect("config should be rejected")
}

#[test]
fn bad_configs_are_typed_errors() {
    // Any existing file passes the path check; everything below fails before loading it.
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let server = |address: &str, pin: &str, token: &str| EdgeServerConfig {
        address: address.into(),
        cert_sha256: pin.into(),
        token: token.into(),
    };
    let pin = "ab".repeat(32);
    assert!(matches!(new_err(config("")), MoeError::InvalidInput(_)));
    assert!(matches!(new_err(config("/no/such/model.gguf")), MoeError::ModelLoad(_)));
    assert!(matches!(new_err(EngineConfig { threads: Some(0), ..config(file) }), MoeError::InvalidInput(_)));
    assert!(matches!(new_err(EngineConfig { models_dir: file.into(), ..config(file) }), MoeError::InvalidInput(_)));
    assert!(matches!(new_err(EngineConfig { memory_budget_mb: 0, ..config(file) }), MoeError::InvalidInput(_)));
    for bad in [
        server("edge.local", &pin, "t"),
        server("edge.local:0", &pin, "t"),
        server("edge.local:70000", &pin, "t"),
        server(":4433", &pin, "t"),
        server("::1:4433", &pin, "t"),
        server("edge.local:4433", "abc", "t"),
        server("edge.local:4433", &"zz".repeat(32), "t"),
        server("edge.local:4433", &pin, ""),
        server("edge.local:4433", &pin, "two words"),
    ] {
        let err = new_err(EngineConfig { edge_servers: vec![bad.clone()], ..config(file) });
        assert!(matches!(err, MoeError::InvalidInput(_)), "{bad:?} gave {err:?}");
    }
    // Well-formed servers pass validation; then the file is not a model.
    let good = vec![server("edge.local:4433", &pin, "t"), server("[::1]:4433", &pin.to_uppercase(), "t")];
    assert!(matches!(new_err(EngineConfig { edge_servers: good, ..config(file) }), MoeError::ModelLoad(_)));
}

#[test]
fn generates_cancels_and_budgets_on_the_phone() {
    let Some(path) = common::base_model() else { return };
    let path = path.to_str().unwrap();
    let engine = MoeEngine::new(config(path)).unwrap();
    let prompt = "What is the capital of France? Answer in one sentence.";

    let rec = Arc::new(Recorder::default());
    let result = engine.generate(prompt.into(), greedy(64), Box::new(Tap(Arc::clone(&rec))), None).unwrap();
    // The same text and prompt length as llama.cpp with the base model (core/tests/generation.rs):
    // the committed gate and quality table place it on the prose adapter, which answers as the base does.
    assert_eq!(result.text, "The capital of France is Paris.");
    assert_eq!(rec.streamed(), std::slice::from_ref(&result.text));
    assert_eq!((result.prompt_tokens, result.stop_reason), (42, StopReason::EndOfSequence));
    assert_eq!(
        *rec.events.lock().unwrap(),
        [
            GenerationEvent::Placed { subtask: 0, expert: "prose".into(), node: "phone".into() },
            GenerationEvent::SubtaskDone { subtask: 0, tokens: result.generated_tokens },
        ]
    );
    // The prose adapter stays loaded and counts as what it holds in memory (about 11 MB, a 4 MB file).
    let weights_mb = std::fs::metadata(path).unwrap().len().div_ceil(1 << 20) as u32;
    let in_use = engine.status().memory_in_use_mb;
    assert!(in_use >= weights_mb + 10, "{in_use} MB in use, the base model alone is {weights_mb} MB");

    let handle = CancelHandle::new();
    let rec = Arc::new(Recorder { cancel_at: Some((2, Arc::clone(&handle))), ..Recorder::default() });
    let long = "Tell me a long story about a dragon.";
    let err = engine.generate(long.into(), greedy(200), Box::new(Tap(Arc::clone(&rec))), Some(handle)).unwrap_err();
    assert_eq!(err, MoeError::Cancelled);
    assert!(rec.pieces.lock().unwrap().len() <= 3);

    assert!(matches!(
        engine.generate(" ".into(), greedy(8), Box::new(Tap(Arc::default())), None),
        Err(MoeError::InvalidInput(_))
    ));
    assert!(matches!(engine.set_device_state(0.5, true, 2.0), Err(MoeError::InvalidInput(_))));
    engine.set_device_state(0.5, true, 0.2).unwrap();
    let status = engine.status();
    assert_eq!((status.device.battery, status.device.charging, status.active_generations), (0.5, true, 0));
    assert_eq!((status.policy.as_str(), status.threads), ("local-only", 2));

    // A budget that fits the weights but not the KV cache of this request.
    let tight = MoeEngine::new(EngineConfig { memory_budget_mb: weights_mb + 2, ..config(path) }).unwrap();
    let err = tight.generate(prompt.into(), greedy(64), Box::new(Tap(Arc::default())), None).unwrap_err();
    assert!(matches!(err, MoeError::Busy(_)), "{err:?}");
}

#[test]
fn multi_part_prompt_runs_on_the_phone_and_an_edge_server() {
    use moe_edge::model::LocalModel;
    use moe_edge::server::{EdgeServer, Identity, ServerSettings};

    let Some(path) = common::base_model() else { return };
    let token = "ffi-test-token";
    let hosted = [("base", path.clone()), ("arithmetic", PathBuf::from(MODELS_DIR).join("experts/arithmetic"))];
    let models = hosted.iter().map(|(id, p)| ((*id).to_owned(), Arc::new(LocalModel::load(p).unwrap()))).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let settings = ServerSettings { listen: "127.0.0.1:0".into(), tokens: vec![token.into()], ..Default::default() };
    let server = {
        let _guard = runtime.enter();
        EdgeServer::start(settings, models, Identity::ephemeral().unwrap()).unwrap()
    };
    let address = server.local_addr().unwrap().to_string();
    let edge =
        EdgeServerConfig { address: address.clone(), cert_sha256: server.fingerprint().into(), token: token.into() };
    let config =
        EngineConfig { edge_servers: vec![edge], policy: PolicyChoice::Greedy, ..config(path.to_str().unwrap()) };
    let engine = MoeEngine::new(config).unwrap();
    let status = engine.status();
    assert!(status.edge_servers[0].connected, "{status:?}");
    assert!(status.edge_servers[0].hosted.contains(&"arithmetic".to_owned()), "{status:?}");

    // Greedy follows the gate: the sum to the server hosting the arithmetic expert,
    // the prose question to the phone (no server hosts prose).
    let rec = Arc::new(Recorder::default());
    let prompt = "1. 347+258\n2. Write one sentence about the sea.";
    let result = engine.generate(prompt.into(), greedy(12), Box::new(Tap(Arc::clone(&rec))), None).unwrap();
    let placed: Vec<_> = result.subtasks.iter().map(|s| (s.expert.as_str(), s.node.as_str(), s.fell_back)).collect();
    assert_eq!(placed, [("arithmetic", address.as_str(), false), ("prose", "phone", false)]);
    assert!(result.subtasks.iter().all(|s| s.generated_tokens > 0));
    let events = rec.events.lock().unwrap();
    assert_eq!(events[0], GenerationEvent::Placed { subtask: 0, expert: "arithmetic".into(), node: address.clone() });
    assert_eq!(events[1], GenerationEvent::Placed { subtask: 1, expert: "prose".into(), node: "phone".into() });
    // Streamed in subtask order; the result joins the subtasks with a blank line.
    let streamed = rec.streamed();
    assert_eq!(streamed.len(), 2);
    assert_eq!(streamed.join("\n\n"), result.text);
    assert_eq!(result.generated_tokens, result.subtasks.iter().map(|s| s.generated_tokens).sum::<u32>());
}
