//! Records and enums that cross the FFI boundary, and their conversions to and
//! from the core's types.

use std::path::{Path, PathBuf};

use moe_edge::model;
use moe_edge::policy::{self, PolicyKind};

use crate::MoeError;

/// How the engine is built. Mirrors the core's `EngineConfig`.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct EngineConfig {
    /// The phone's base model: a GGUF file or an HF safetensors directory.
    pub base_model: String,
    /// The directory with the small models (`models/` of the repo): the gate, the
    /// quality table, the policy actor and the on-device experts.
    pub models_dir: String,
    /// Compute threads of this engine (default: one per physical core).
    #[uniffi(default = None)]
    pub threads: Option<u32>,
    /// Memory the engine may use, in MB: the base model's weights plus the KV caches
    /// of the generations in flight (a request that would exceed it fails with
    /// `Busy`); what the base model leaves is the budget for on-device experts.
    #[uniffi(default = 1024)]
    pub memory_budget_mb: u32,
    /// Edge servers that host experts.
    #[uniffi(default = [])]
    pub edge_servers: Vec<EdgeServerConfig>,
    /// Which policy places subtasks on experts and nodes.
    pub policy: PolicyChoice,
}

/// One edge server (what `moe-edge serve` prints). Mirrors the core's `EdgeServerConfig`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct EdgeServerConfig {
    /// `host:port` of its QUIC endpoint (`[v6-address]:port` for IPv6).
    pub address: String,
    /// SHA-256 of its TLS certificate, 64 hex digits: the only certificate accepted.
    pub cert_sha256: String,
    /// Bearer token the phone presents.
    pub token: String,
}

impl EdgeServerConfig {
    /// Checks the address, the certificate pin and the token are well formed.
    pub(crate) fn validate(&self) -> Result<(), MoeError> {
        let bad = |what: String| Err(MoeError::InvalidInput(format!("edge server {:?}: {what}", self.address)));
        let Some((host, port)) = self.address.rsplit_once(':') else {
            return bad("address must be host:port".into());
        };
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty()
            || host.contains(char::is_whitespace)
            || (host.contains(':') && !self.address.starts_with('['))
        {
            return bad("address must be host:port".into());
        }
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return bad(format!("port {port:?} is not in 1..=65535"));
        }
        if self.cert_sha256.len() != 64 || !self.cert_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad("cert_sha256 must be 64 hex digits".into());
        }
        if self.token.is_empty() || self.token.contains(char::is_whitespace) {
            return bad("token must be non-empty and without spaces".into());
        }
        Ok(())
    }
}

/// Which policy decides where subtasks run. Mirrors the core's `PolicyKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum PolicyChoice {
    /// The trained Soft Actor-Critic actor (the default in apps).
    Sac,
    /// Everything on the phone.
    LocalOnly,
    /// Uniformly random among hosted (expert, node) pairs.
    Random {
        /// Seed of the draws.
        seed: u64,
    },
    /// The best expected quality per cost, one subtask at a time.
    Greedy,
}

impl PolicyChoice {
    /// The core's policy kind.
    pub(crate) fn to_core(self) -> PolicyKind {
        match self {
            Self::Sac => PolicyKind::Sac,
            Self::LocalOnly => PolicyKind::LocalOnly,
            Self::Random { seed } => PolicyKind::Random { seed },
            Self::Greedy => PolicyKind::Greedy,
        }
    }
}

/// The phone's condition as the app sees it.
#[derive(Debug, Clone, Copy, PartialEq, uniffi::Record)]
pub struct DeviceState {
    /// Battery charge, 0 (empty) to 1 (full).
    pub battery: f32,
    /// Whether it is charging.
    pub charging: bool,
    /// Thermal pressure, 0 (cool) to 1 (throttling).
    pub thermal: f32,
}

impl DeviceState {
    /// Checks both fractions are within 0..=1.
    pub(crate) fn validate(&self) -> Result<(), MoeError> {
        for (name, value) in [("battery", self.battery), ("thermal", self.thermal)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(MoeError::InvalidInput(format!("{name} must be in 0..=1, got {value}")));
            }
        }
        Ok(())
    }
}

impl From<DeviceState> for policy::DeviceState {
    fn from(d: DeviceState) -> Self {
        Self { battery: d.battery, charging: d.charging, thermal: d.thermal }
    }
}

impl Default for DeviceState {
    fn default() -> Self {
        Self { battery: 1.0, charging: false, thermal: 0.0 }
    }
}

/// Options of one generation (defaults as in the core).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct GenerateOptions {
    /// At most this many new tokens.
    #[uniffi(default = 256)]
    pub max_tokens: u32,
    /// Softmax temperature; 0 is greedy.
    #[uniffi(default = 0.8)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[uniffi(default = 40)]
    pub top_k: u32,
    /// Nucleus sampling threshold (1 = off).
    #[uniffi(default = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely (0 = off).
    #[uniffi(default = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1 = off).
    #[uniffi(default = 1.0)]
    pub repeat_penalty: f32,
    /// Seed of the random draws.
    #[uniffi(default = 0)]
    pub seed: u64,
    /// Generation stops before any of these strings.
    #[uniffi(default = [])]
    pub stop: Vec<String>,
    /// Wrap the prompt in the model's chat template.
    #[uniffi(default = true)]
    pub chat: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self::from_core(&model::GenerateOptions::default())
    }
}

impl GenerateOptions {
    /// The same options as the core's.
    pub(crate) fn from_core(o: &model::GenerateOptions) -> Self {
        let s = &o.sampling;
        Self {
            max_tokens: u32::try_from(o.max_tokens).unwrap_or(u32::MAX),
            temperature: s.temperature,
            top_k: u32::try_from(s.top_k).unwrap_or(u32::MAX),
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            seed: s.seed,
            stop: o.stop.clone(),
            chat: o.chat,
        }
    }

    /// The core's options, checked.
    pub(crate) fn to_core(&self) -> Result<model::GenerateOptions, MoeError> {
        let sampling = model::SamplingOptions {
            temperature: self.temperature,
            top_k: self.top_k as usize,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ..model::SamplingOptions::default()
        };
        sampling.validate().map_err(MoeError::from_generate)?;
        if self.stop.iter().any(String::is_empty) {
            return Err(MoeError::InvalidInput("stop strings must not be empty".into()));
        }
        Ok(model::GenerateOptions {
            sampling,
            max_tokens: self.max_tokens as usize,
            stop: self.stop.clone(),
            chat: self.chat,
        })
    }
}

/// Something that happened while generating, for the app's placement panel.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum GenerationEvent {
    /// The policy chose where a subtask runs.
    Placed {
        /// Subtask index.
        subtask: u32,
        /// Expert id (`"base"` is the phone's base model).
        expert: String,
        /// `"phone"` or the edge server's address.
        node: String,
    },
    /// A subtask is re-run on the phone's base model: its edge server failed,
    /// or its on-device expert does not fit the memory budget. The
    /// `discarded_chars` characters of this subtask already passed to `on_text`
    /// are superseded by the re-run's text that follows: remove them.
    Fallback {
        /// Subtask index.
        subtask: u32,
        /// What went wrong.
        reason: String,
        /// Characters of this subtask's text streamed before the failure.
        discarded_chars: u32,
    },
    /// A subtask finished.
    SubtaskDone {
        /// Subtask index.
        subtask: u32,
        /// Tokens it generated.
        tokens: u32,
    },
}

/// Receives the streamed answer. Called on an engine thread, never concurrently for
/// one generation. Throwing from a method stops the generation, which then fails
/// with that error (or `Other` for exceptions that are not a `MoeError`).
#[uniffi::export(callback_interface)]
pub trait GenerationListener: Send + Sync {
    /// The next piece of text of `subtask` (whole UTF-8 characters; subtasks in order).
    fn on_text(&self, subtask: u32, text: String) -> Result<(), MoeError>;
    /// A placement, fallback or completion event.
    fn on_event(&self, event: GenerationEvent) -> Result<(), MoeError>;
}

/// Why a generation ended (cancellation is reported as `MoeError::Cancelled` instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum StopReason {
    /// The model produced an end-of-sequence token.
    EndOfSequence,
    /// A stop string appeared.
    StopString,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context window is full.
    ContextFull,
}

impl StopReason {
    /// The core's reason, or `None` for a cancelled generation.
    pub(crate) fn from_core(reason: model::StopReason) -> Option<Self> {
        match reason {
            model::StopReason::Cancelled => None,
            model::StopReason::EndOfSequence => Some(Self::EndOfSequence),
            model::StopReason::StopString => Some(Self::StopString),
            model::StopReason::MaxTokens => Some(Self::MaxTokens),
            model::StopReason::ContextFull => Some(Self::ContextFull),
        }
    }
}

/// Where one subtask ran and what it produced.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SubtaskReport {
    /// Subtask index.
    pub index: u32,
    /// Expert id that answered it.
    pub expert: String,
    /// `"phone"` or the edge server's address.
    pub node: String,
    /// Tokens generated for it.
    pub generated_tokens: u32,
    /// Whether it fell back to the phone after a remote failure.
    pub fell_back: bool,
    /// From the call until this subtask finished, in milliseconds.
    pub latency_ms: f64,
}

/// The outcome of a finished generation.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct GenerationResult {
    /// The whole answer: each subtask's final text (what the listener received,
    /// less any text a fallback superseded), subtasks separated by a blank line.
    pub text: String,
    /// Tokens in the (templated) prompts of all subtasks.
    pub prompt_tokens: u32,
    /// Tokens generated, all subtasks.
    pub generated_tokens: u32,
    /// From the call until the first text of the first subtask, in milliseconds.
    pub time_to_first_token_ms: f64,
    /// Generated tokens per second after each subtask's first token (over all subtasks).
    pub decode_tokens_per_s: f64,
    /// Why the last subtask ended.
    pub stop_reason: StopReason,
    /// One entry per subtask, in order.
    pub subtasks: Vec<SubtaskReport>,
}

/// Where an edge server stands.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct EdgeServerStatus {
    /// Its `host:port`.
    pub address: String,
    /// Whether a live connection exists.
    pub connected: bool,
    /// Round trip of the last probe, ms (0 before the first one).
    pub rtt_ms: f32,
    /// Experts it hosts (empty when not connected).
    pub hosted: Vec<String>,
    /// Why it is not connected (empty when it is).
    pub detail: String,
}

/// A snapshot of the engine for the app's status screen.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct EngineStatus {
    /// The base model path.
    pub base_model: String,
    /// The policy's name.
    pub policy: String,
    /// Experts the phone can run (`"base"` first).
    pub local_experts: Vec<String>,
    /// Compute threads of this engine.
    pub threads: u32,
    /// The memory budget, in MB.
    pub memory_budget_mb: u32,
    /// Memory in use now (the base model, the loaded experts and the KV caches
    /// of generations in flight), in MB.
    pub memory_in_use_mb: u32,
    /// Generations running now.
    pub active_generations: u32,
    /// The last device state set by the app.
    pub device: DeviceState,
    /// One entry per configured edge server.
    pub edge_servers: Vec<EdgeServerStatus>,
}

/// A path given by the app: non-empty, and existing.
pub(crate) fn existing_path(what: &str, path: &str) -> Result<PathBuf, MoeError> {
    if path.trim().is_empty() {
        return Err(MoeError::InvalidInput(format!("{what} path is empty")));
    }
    let path = Path::new(path);
    if !path.exists() {
        return Err(MoeError::ModelLoad(format!("{what} {} does not exist", path.display())));
    }
    Ok(path.to_path_buf())
}
