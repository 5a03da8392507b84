//! The FFI surface called from Rust: configuration checks, error kinds, streaming,
//! cancellation and the memory budget, on the real base model where one is needed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use moe_edge_ffi::{
    CancelHandle, EdgeServerConfig, EngineConfig, GenerateOptions, GenerationEvent, GenerationListener, MoeEngine,
    MoeError, PolicyChoice, StopReason,
};

/// The fetched base model, or `None` (with a message) when it is absent; with
/// `MOE_EDGE_REQUIRE_MODEL=1` (set by CI) a missing model fails the test.
fn base_model() -> Option<PathBuf> {
    let path = std::env::var_os("MOE_EDGE_BASE_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("MOE_EDGE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/moe-edge"));
        cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if path.is_file() {
        return Some(path);
    }
    let required = std::env::var("MOE_EDGE_REQUIRE_MODEL").is_ok_and(|v| v == "1");
    assert!(!required, "base model missing at {}", path.display());
    eprintln!("SKIPPED: base model not fetched at {} (run models/fetch-base-model.sh)", path.display());
    None
}

fn config(base_model: &str) -> EngineConfig {
    EngineConfig {
        base_model: base_model.into(),
        models_dir: String::new(),
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
    pieces: Mutex<Vec<String>>,
    events: Mutex<Vec<GenerationEvent>>,
    cancel_at: Option<(usize, Arc<CancelHandle>)>,
}

/// The listener handed to the engine: a shared handle on a [`Recorder`] the test keeps reading.
struct Tap(Arc<Recorder>);

impl GenerationListener for Tap {
    fn on_text(&self, subtask: u32, text: String) -> Result<(), MoeError> {
        assert_eq!(subtask, 0);
        let mut pieces = self.0.pieces.lock().unwrap();
        pieces.push(text);
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
fn generates_cancels_and_budgets_on_the_base_model() {
    let Some(path) = base_model() else { return };
    let path = path.to_str().unwrap();
    let engine = MoeEngine::new(config(path)).unwrap();
    let prompt = "What is the capital of France? Answer in one sentence.";

    let rec = Arc::new(Recorder::default());
    let result = engine.generate(prompt.into(), greedy(64), Box::new(Tap(Arc::clone(&rec))), None).unwrap();
    // The same text and prompt length as llama.cpp (core/tests/generation.rs).
    assert_eq!(result.text, "The capital of France is Paris.");
    assert_eq!(rec.pieces.lock().unwrap().concat(), result.text);
    assert_eq!((result.prompt_tokens, result.stop_reason), (42, StopReason::EndOfSequence));
    assert_eq!(
        *rec.events.lock().unwrap(),
        [
            GenerationEvent::Placed { subtask: 0, expert: "base".into(), node: "phone".into() },
            GenerationEvent::SubtaskDone { subtask: 0, tokens: result.generated_tokens },
        ]
    );

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
    let weights_mb = std::fs::metadata(path).unwrap().len().div_ceil(1 << 20) as u32;
    let tight = MoeEngine::new(EngineConfig { memory_budget_mb: weights_mb + 2, ..config(path) }).unwrap();
    let err = tight.generate(prompt.into(), greedy(64), Box::new(Tap(Arc::default())), None).unwrap_err();
    assert!(matches!(err, MoeError::Busy(_)), "{err:?}");
}
