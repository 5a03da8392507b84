//! `MoeEngine`: the object apps hold. Today it generates with the phone's base
//! model (`moe_edge::model::LocalModel`); edge servers are validated and listed in
//! `status()` as not connected. The orchestrator (`moe_edge::engine::Engine`)
//! replaces [`Inner::generate`]'s body once it lands; the FFI surface stays.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use moe_edge::model::{CancelToken, LocalModel, StopReason as CoreStopReason};

use crate::MoeError;
use crate::error::no_panic;
use crate::types::{
    DeviceState, EdgeServerStatus, EngineConfig, EngineStatus, GenerateOptions, GenerationEvent, GenerationListener,
    GenerationResult, StopReason, SubtaskReport, existing_path,
};

const MB: u64 = 1024 * 1024;
/// Name of the phone in placements.
const PHONE: &str = "phone";
/// Expert id of the base model.
const BASE: &str = "base";

/// Cancels generations. Pass one to `generate` / `generateAsync` and call
/// `cancel()` from any thread: decoding stops before the next token and the call
/// fails with `Cancelled`. A handle stays cancelled: use a fresh one per request.
#[derive(Debug, Default, uniffi::Object)]
pub struct CancelHandle {
    token: CancelToken,
}

#[uniffi::export]
impl CancelHandle {
    /// A fresh, un-cancelled handle.
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Requests cancellation; safe to call several times and from any thread.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Whether `cancel()` was called.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// The mixture-of-experts engine. Safe to share between threads; several
/// generations may run at once within the memory budget.
#[derive(uniffi::Object)]
pub struct MoeEngine {
    inner: Arc<Inner>,
}

/// What the engine owns.
struct Inner {
    config: EngineConfig,
    model: LocalModel,
    pool: rayon::ThreadPool,
    weights_bytes: u64,
    kv_bytes_per_token: u64,
    state: Mutex<State>,
}

/// The mutable part of the engine.
struct State {
    device: DeviceState,
    kv_reserved_bytes: u64,
    active: u32,
}

#[uniffi::export]
impl MoeEngine {
    /// Loads the base model and checks the configuration (paths, threads,
    /// memory budget, edge servers). Blocking: call it off the main thread.
    #[uniffi::constructor]
    pub fn new(config: EngineConfig) -> Result<Arc<Self>, MoeError> {
        no_panic(|| Ok(Arc::new(Self { inner: Arc::new(Inner::new(config)?) })))
    }

    /// Generates an answer to `prompt`, streaming it to `listener`, and returns
    /// when done. Blocking: call it from a background thread.
    #[uniffi::method(default(cancel = None))]
    pub fn generate(
        &self,
        prompt: String,
        options: GenerateOptions,
        listener: Box<dyn GenerationListener>,
        cancel: Option<Arc<CancelHandle>>,
    ) -> Result<GenerationResult, MoeError> {
        let token = cancel.map(|c| c.token.clone()).unwrap_or_default();
        no_panic(|| self.inner.generate(&prompt, &options, listener.as_ref(), &token))
    }

    /// [`MoeEngine::generate`] as a Kotlin `suspend` / Swift `async` function. It runs
    /// on its own thread; cancelling the coroutine (or dropping the future) stops
    /// decoding. In Swift, pass a `CancelHandle` and cancel it from
    /// `withTaskCancellationHandler` (the iOS facade does this).
    #[uniffi::method(default(cancel = None))]
    pub async fn generate_async(
        &self,
        prompt: String,
        options: GenerateOptions,
        listener: Box<dyn GenerationListener>,
        cancel: Option<Arc<CancelHandle>>,
    ) -> Result<GenerationResult, MoeError> {
        let token = cancel.map(|c| c.token.clone()).unwrap_or_default();
        let on_drop = CancelOnDrop(Some(token.clone()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let inner = Arc::clone(&self.inner);
        std::thread::Builder::new()
            .name("moe-edge-generate".into())
            .spawn(move || {
                // The receiver is gone only if the caller stopped waiting: nothing to tell.
                let _ = tx.send(no_panic(|| inner.generate(&prompt, &options, listener.as_ref(), &token)));
            })
            .map_err(|e| MoeError::Other(format!("cannot start a generation thread: {e}")))?;
        let result = rx.await.unwrap_or_else(|_| Err(MoeError::Other("the generation thread died".into())));
        on_drop.disarm();
        result
    }

    /// Tells the engine the phone's battery (0..=1), charging state and thermal
    /// pressure (0 cool ..= 1 throttling); the policy takes them into account.
    pub fn set_device_state(&self, battery: f32, charging: bool, thermal: f32) -> Result<(), MoeError> {
        no_panic(|| {
            let device = DeviceState { battery, charging, thermal };
            device.validate()?;
            self.inner.lock().device = device;
            Ok(())
        })
    }

    /// A snapshot of the engine: model, policy, threads, memory, edge servers.
    pub fn status(&self) -> EngineStatus {
        self.inner.status()
    }
}

impl Inner {
    fn new(config: EngineConfig) -> Result<Self, MoeError> {
        let base = existing_path("base model", &config.base_model)?;
        if !config.models_dir.is_empty() && !existing_path("models dir", &config.models_dir)?.is_dir() {
            return Err(MoeError::InvalidInput(format!("models dir {} is not a directory", config.models_dir)));
        }
        if config.threads == Some(0) {
            return Err(MoeError::InvalidInput("threads must be at least 1".into()));
        }
        for server in &config.edge_servers {
            server.validate()?;
        }
        let weights_bytes = weights_size(&base)?;
        let budget = u64::from(config.memory_budget_mb) * MB;
        if weights_bytes > budget {
            return Err(MoeError::InvalidInput(format!(
                "memory budget {} MB is smaller than the base model ({} MB)",
                config.memory_budget_mb,
                weights_bytes.div_ceil(MB)
            )));
        }
        let model = LocalModel::load(&base).map_err(MoeError::from_load)?;
        let cfg = model.llama().config();
        let kv_bytes_per_token = (cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * size_of::<f32>()) as u64;
        let threads = config.threads.map_or_else(candle_core::utils::get_num_threads, |t| t as usize);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("moe-edge-compute-{i}"))
            .build()
            .map_err(|e| MoeError::Other(format!("cannot start compute threads: {e}")))?;
        let state = State { device: DeviceState::default(), kv_reserved_bytes: 0, active: 0 };
        Ok(Self { config, model, pool, weights_bytes, kv_bytes_per_token, state: Mutex::new(state) })
    }

    /// The state, even if a thread panicked while holding it (it stays consistent:
    /// every update is a single assignment or counter change).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn generate(
        &self,
        prompt: &str,
        options: &GenerateOptions,
        listener: &dyn GenerationListener,
        cancel: &CancelToken,
    ) -> Result<GenerationResult, MoeError> {
        let start = Instant::now();
        let core_options = options.to_core()?;
        if cancel.is_cancelled() {
            return Err(MoeError::Cancelled);
        }
        let tokens = self.model.prompt_tokens(prompt, core_options.chat).map_err(MoeError::from_generate)?;
        let context = self.model.llama().config().context_length;
        let _reservation = self.reserve((tokens.len() + core_options.max_tokens).min(context))?;

        listener.on_event(GenerationEvent::Placed { subtask: 0, expert: BASE.into(), node: PHONE.into() })?;
        let mut text = String::new();
        let mut listener_error = None;
        let report = self.pool.install(|| {
            let mut on_text = |piece: &str| {
                if listener_error.is_some() {
                    return;
                }
                text.push_str(piece);
                if let Err(e) = listener.on_text(0, piece.to_owned()) {
                    listener_error = Some(e);
                    cancel.cancel();
                }
            };
            self.model.generate_from_tokens(&tokens, &core_options, &mut on_text, cancel, start)
        });
        if let Some(error) = listener_error {
            return Err(error);
        }
        let report = report.map_err(MoeError::from_generate)?;
        let stop_reason = match report.stop_reason {
            CoreStopReason::Cancelled => return Err(MoeError::Cancelled),
            CoreStopReason::EndOfSequence => StopReason::EndOfSequence,
            CoreStopReason::StopString => StopReason::StopString,
            CoreStopReason::MaxTokens => StopReason::MaxTokens,
            CoreStopReason::ContextFull => StopReason::ContextFull,
        };
        let generated = u32::try_from(report.generated_tokens).unwrap_or(u32::MAX);
        listener.on_event(GenerationEvent::SubtaskDone { subtask: 0, tokens: generated })?;
        Ok(GenerationResult {
            text,
            prompt_tokens: u32::try_from(report.prompt_tokens).unwrap_or(u32::MAX),
            generated_tokens: generated,
            time_to_first_token_ms: report.time_to_first_token.as_secs_f64() * 1e3,
            prefill_tokens_per_s: report.prefill_tokens_per_s,
            decode_tokens_per_s: report.decode_tokens_per_s,
            stop_reason,
            subtasks: vec![SubtaskReport {
                index: 0,
                expert: BASE.into(),
                node: PHONE.into(),
                generated_tokens: generated,
                fell_back: false,
            }],
        })
    }

    /// Reserves the KV cache of a generation of `tokens` positions within the
    /// memory budget, or fails with `Busy`.
    fn reserve(&self, tokens: usize) -> Result<Reservation<'_>, MoeError> {
        let bytes = tokens as u64 * self.kv_bytes_per_token;
        let budget = u64::from(self.config.memory_budget_mb) * MB;
        let mut state = self.lock();
        let in_use = self.weights_bytes + state.kv_reserved_bytes;
        if in_use + bytes > budget {
            return Err(MoeError::Busy(format!(
                "this request needs {} MB of KV cache; {} generation(s) in flight already use {} of the {} MB budget",
                bytes.div_ceil(MB),
                state.active,
                in_use.div_ceil(MB),
                self.config.memory_budget_mb
            )));
        }
        state.kv_reserved_bytes += bytes;
        state.active += 1;
        Ok(Reservation { inner: self, bytes })
    }

    fn status(&self) -> EngineStatus {
        let state = self.lock();
        EngineStatus {
            base_model: self.config.base_model.clone(),
            policy: self.config.policy.name().into(),
            threads: u32::try_from(self.pool.current_num_threads()).unwrap_or(u32::MAX),
            memory_budget_mb: self.config.memory_budget_mb,
            memory_in_use_mb: u32::try_from((self.weights_bytes + state.kv_reserved_bytes).div_ceil(MB))
                .unwrap_or(u32::MAX),
            active_generations: state.active,
            device: state.device,
            edge_servers: self
                .config
                .edge_servers
                .iter()
                .map(|s| EdgeServerStatus {
                    address: s.address.clone(),
                    connected: false,
                    detail: "edge offload is not in this build yet: every subtask runs on the phone".into(),
                })
                .collect(),
        }
    }
}

/// Memory held by one generation in flight; released on drop.
struct Reservation<'a> {
    inner: &'a Inner,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.kv_reserved_bytes -= self.bytes;
        state.active -= 1;
    }
}

/// Cancels a generation when the future awaiting it is dropped (coroutine or task cancelled).
struct CancelOnDrop(Option<CancelToken>);

impl CancelOnDrop {
    /// The generation finished: nothing to cancel.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(token) = &self.0 {
            token.cancel();
        }
    }
}

/// Bytes of weights: the GGUF file, or the `.safetensors` files of an HF directory.
fn weights_size(path: &Path) -> Result<u64, MoeError> {
    let io = |e: std::io::Error| MoeError::ModelLoad(format!("cannot read {}: {e}", path.display()));
    if path.is_file() {
        return Ok(path.metadata().map_err(io)?.len());
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.path().extension().is_some_and(|e| e == "safetensors") {
            total += entry.metadata().map_err(io)?.len();
        }
    }
    Ok(total)
}
