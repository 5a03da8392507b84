//! `MoeEngine`: the object apps hold, a thin layer over the core's orchestrator
//! (`moe_edge::engine::Engine`: decompose → gate → policy → run on the phone and on
//! edge servers → stream in order). This layer adds what an app needs on top:
//! admission within a memory budget, listener errors, async calls, and the
//! mapping of every failure onto [`MoeError`].

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use moe_edge::engine::{self as core, Engine, EngineEvent, EngineListener};
use moe_edge::model::CancelToken;
use moe_edge::offload;

use crate::MoeError;
use crate::error::no_panic;
use crate::types::{
    DeviceState, EdgeServerStatus, EngineConfig, EngineStatus, GenerateOptions, GenerationEvent, GenerationListener,
    GenerationResult, StopReason, SubtaskReport, existing_path,
};

const MB: u64 = 1024 * 1024;

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
    engine: Engine,
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
        let models_dir = existing_path("models dir", &config.models_dir)?;
        if !models_dir.is_dir() {
            return Err(MoeError::InvalidInput(format!("models dir {} is not a directory", config.models_dir)));
        }
        let core_config = core::EngineConfig {
            base_model: base,
            models_dir,
            threads: config.threads.map(|t| t as usize),
            memory_budget_mb: ((budget - weights_bytes) / MB) as usize,
            edge_servers: config
                .edge_servers
                .iter()
                .map(|s| offload::EdgeServerConfig {
                    address: s.address.clone(),
                    cert_sha256: s.cert_sha256.clone(),
                    token: s.token.clone(),
                })
                .collect(),
            policy: config.policy.to_core(),
        };
        let engine = Engine::new(core_config).map_err(MoeError::from_engine_start)?;
        let cfg = engine.base_model().llama().config();
        let kv_bytes_per_token = (cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * size_of::<f32>()) as u64;
        let state = State { device: DeviceState::default(), kv_reserved_bytes: 0, active: 0 };
        Ok(Self { config, engine, weights_bytes, kv_bytes_per_token, state: Mutex::new(state) })
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
        let core_options = options.to_core()?;
        if cancel.is_cancelled() {
            return Err(MoeError::Cancelled);
        }
        let base = self.engine.base_model();
        // The whole prompt in one context bounds what any of its subtasks holds at once.
        let tokens = base.prompt_tokens(prompt, core_options.chat).map_err(MoeError::from_generate)?;
        let context = base.llama().config().context_length;
        let _reservation = self.reserve((tokens.len() + core_options.max_tokens).min(context))?;
        let forward = Forward { listener, cancel, error: Mutex::new(None) };
        let outcome = self.engine.generate(prompt, &core_options, &forward, cancel);
        if let Some(error) = forward.error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(error);
        }
        let report = outcome.map_err(MoeError::from_engine)?;
        result(&report, &self.config.edge_servers)
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
        self.give_experts_the_rest(&state);
        Ok(Reservation { inner: self, bytes })
    }

    /// Lets the on-device experts (a cache, evicted least recently used first)
    /// hold what the base model and the reserved KV caches leave of the budget.
    fn give_experts_the_rest(&self, state: &State) {
        let budget = u64::from(self.config.memory_budget_mb) * MB;
        self.engine.set_expert_memory_budget(budget.saturating_sub(self.weights_bytes + state.kv_reserved_bytes));
    }

    fn status(&self) -> EngineStatus {
        let core = self.engine.status();
        let state = self.lock();
        EngineStatus {
            base_model: self.config.base_model.clone(),
            policy: core.policy,
            local_experts: core.local_experts,
            threads: u32::try_from(rayon::current_num_threads()).unwrap_or(u32::MAX),
            memory_budget_mb: self.config.memory_budget_mb,
            memory_in_use_mb: u32::try_from(
                (self.weights_bytes + core.loaded_expert_bytes + state.kv_reserved_bytes).div_ceil(MB),
            )
            .unwrap_or(u32::MAX),
            active_generations: state.active,
            device: state.device,
            edge_servers: core
                .edge
                .into_iter()
                .map(|e| EdgeServerStatus {
                    address: e.address,
                    connected: e.link.connected,
                    rtt_ms: e.link.rtt_ms,
                    hosted: if e.link.connected { e.link.hosted } else { Vec::new() },
                    detail: match (e.link.connected, e.link.last_error) {
                        (true, _) => String::new(),
                        (false, Some(error)) => error,
                        (false, None) => "not connected yet".into(),
                    },
                })
                .collect(),
        }
    }
}

/// The app's answer from the core's report; `servers` names the edge nodes.
fn result(report: &core::EngineReport, servers: &[crate::EdgeServerConfig]) -> Result<GenerationResult, MoeError> {
    let last = report.subtasks.last().ok_or_else(|| MoeError::Other("the engine answered no subtask".into()))?;
    let stop_reason = StopReason::from_core(last.stop_reason).ok_or(MoeError::Cancelled)?;
    let generated: usize = report.subtasks.iter().map(|s| s.tokens).sum();
    // Decode time of each subtask: its tokens after the first at its own speed.
    let decode_s: f64 = report
        .subtasks
        .iter()
        .filter(|s| s.tokens > 1 && s.decode_tokens_per_s > 0.0)
        .map(|s| (s.tokens - 1) as f64 / s.decode_tokens_per_s)
        .sum();
    let decode_tokens: usize =
        report.subtasks.iter().filter(|s| s.decode_tokens_per_s > 0.0).map(|s| s.tokens.saturating_sub(1)).sum();
    Ok(GenerationResult {
        text: report.subtasks.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join("\n\n"),
        prompt_tokens: count(report.subtasks.iter().map(|s| s.prompt_tokens).sum()),
        generated_tokens: count(generated),
        time_to_first_token_ms: report.subtasks[0].time_to_first_token.unwrap_or(report.total).as_secs_f64() * 1e3,
        decode_tokens_per_s: if decode_s > 0.0 { decode_tokens as f64 / decode_s } else { 0.0 },
        stop_reason,
        subtasks: report
            .subtasks
            .iter()
            .map(|s| SubtaskReport {
                index: count(s.index),
                expert: s.expert.clone(),
                node: match s.node.checked_sub(1) {
                    None => "phone".into(),
                    Some(i) => servers.get(i).map_or_else(|| format!("node {}", s.node), |c| c.address.clone()),
                },
                generated_tokens: count(s.tokens),
                fell_back: s.fallback.is_some(),
                latency_ms: s.latency.as_secs_f64() * 1e3,
            })
            .collect(),
    })
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
        self.inner.give_experts_the_rest(&state);
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

/// Passes the core's text and events to the app's listener, one call at a time.
/// The first listener error is kept and cancels the generation.
struct Forward<'a> {
    listener: &'a dyn GenerationListener,
    cancel: &'a CancelToken,
    error: Mutex<Option<MoeError>>,
}

impl Forward<'_> {
    fn call(&self, f: impl FnOnce() -> Result<(), MoeError>) {
        let mut error = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if error.is_none()
            && let Err(e) = f()
        {
            *error = Some(e);
            self.cancel.cancel();
        }
    }
}

impl EngineListener for Forward<'_> {
    fn on_text(&self, subtask: usize, text: &str) {
        self.call(|| self.listener.on_text(count(subtask), text.to_owned()));
    }

    fn on_event(&self, event: &EngineEvent) {
        let event = match event {
            EngineEvent::Placed { subtask, expert, node_name, .. } => {
                GenerationEvent::Placed { subtask: count(*subtask), expert: expert.clone(), node: node_name.clone() }
            }
            EngineEvent::Fallback { subtask, reason, discarded_chars, .. } => GenerationEvent::Fallback {
                subtask: count(*subtask),
                reason: reason.clone(),
                discarded_chars: count(*discarded_chars),
            },
            EngineEvent::SubtaskDone { subtask, tokens, .. } => {
                GenerationEvent::SubtaskDone { subtask: count(*subtask), tokens: count(*tokens) }
            }
        };
        self.call(|| self.listener.on_event(event));
    }
}

/// A count or index as it crosses the FFI boundary.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
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
