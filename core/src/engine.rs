//! The orchestrator behind `generate()`: decompose → gate → policy → run the
//! subtasks (on the phone or on edge servers over QUIC) → stream the text to the
//! caller in subtask order.
//!
//! Local subtasks run one at a time, lowest index first, on the local runner
//! (the base model is always loaded; on-device experts are loaded on demand and
//! evicted least-recently-used beyond a memory budget). Remote subtasks run
//! concurrently, each on its own QUIC stream with a deadline; when one fails
//! (error, timeout, lost connection, busy server) it is re-run locally on the
//! base model and the listener receives [`EngineEvent::Fallback`].
//!
//! Every model loaded from the models directory (gate, policy actor, on-device
//! experts) is first checked against `manifest.json` (size and SHA-256); a
//! mismatch is refused with [`EngineError::Manifest`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::gate::{ARITHMETIC_EXPERT, Gate, GateError, arithmetic_question, decompose};
use crate::manifest::{Manifest, ManifestError};
use crate::model::lora::is_adapter_dir;
use crate::model::{CancelToken, GenerateOptions, LocalModel, ModelError, StopReason};
use crate::offload::protocol::GenerateRequest;
use crate::offload::{EdgeClient, EdgeServerConfig, LinkState, OffloadError};
use crate::policy::{
    DeviceState, NodeState, Observation, Placement, Policy, PolicyError, PolicyKind, SubtaskInfo, load_policy,
};

/// The base model's expert id.
pub const BASE_EXPERT: &str = "base";
/// The gate's id in `manifest.json`.
const GATE_ID: &str = "gate";
/// The SAC actor's id in `manifest.json`.
const POLICY_ID: &str = "policy";

/// The request for a remote subtask and its deadline. The deadline also goes on
/// the wire, so the server stops on its own even if the client's stream reset
/// never arrives.
fn remote_request(expert: &str, prompt: &str, options: &GenerateOptions) -> (GenerateRequest, Duration) {
    let deadline = REMOTE_BASE_DEADLINE + REMOTE_PER_TOKEN * options.max_tokens.min(100_000) as u32;
    let request = GenerateRequest {
        expert: expert.to_owned(),
        prompt: prompt.to_owned(),
        sampling: options.sampling.clone(),
        max_tokens: options.max_tokens.min(u32::MAX as usize) as u32,
        stop: options.stop.clone(),
        chat: options.chat,
        deadline_ms: deadline.as_millis().min(u32::MAX as u128) as u32,
    };
    (request, deadline)
}

/// The expert ids runnable from `experts_dir` (`models/experts`): `"base"`, then
/// every sub-directory holding a model (`config.json`) or a LoRA adapter, sorted.
pub fn installed_experts(experts_dir: &Path) -> Vec<String> {
    let mut ids = vec![BASE_EXPERT.to_owned()];
    if let Ok(dir) = std::fs::read_dir(experts_dir) {
        let mut found: Vec<String> = dir
            .flatten()
            .filter(|e| e.path().join("config.json").is_file() || is_adapter_dir(&e.path()))
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        found.sort();
        ids.extend(found);
    }
    ids
}
/// How often edge servers are probed in the background.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A silent edge server counts as lost after this long.
const EDGE_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// How long [`Engine::new`] waits for the first probe of each server.
const FIRST_PROBE_WAIT: Duration = Duration::from_secs(3);
/// Deadline of a remote subtask: this much plus [`REMOTE_PER_TOKEN`] per token.
const REMOTE_BASE_DEADLINE: Duration = Duration::from_secs(10);
/// Per-token share of a remote subtask's deadline.
const REMOTE_PER_TOKEN: Duration = Duration::from_millis(250);
/// Decode speed assumed for the phone before the first local generation.
const INITIAL_LOCAL_TOKENS_PER_S: f32 = 20.0;
/// Decode speed assumed for an edge server that has not finished a generation
/// yet (its probe reports 0): our base model's measured decode speed on a
/// 2-core x86 machine (`moe-edge bench`, 44.5 tokens/s), a floor for a server.
const INITIAL_EDGE_TOKENS_PER_S: f32 = 44.5;

/// What the engine needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// The phone's base model (GGUF file or safetensors directory).
    pub base_model: PathBuf,
    /// The models directory: `gate/`, `experts/<id>/`, `quality.json`, the policy actor.
    pub models_dir: PathBuf,
    /// Compute threads for local generation (`None`: the runtime's default).
    pub threads: Option<usize>,
    /// Memory for on-device experts besides the base model, MiB (at the start;
    /// [`Engine::set_expert_memory_budget`] changes it).
    pub memory_budget_mb: usize,
    /// Edge servers the phone may offload to (node `i + 1` in placements).
    pub edge_servers: Vec<EdgeServerConfig>,
    /// Which placement policy decides.
    pub policy: PolicyKind,
}

/// Link figures of an edge node at decision time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkFigures {
    /// Probe round trip, ms.
    pub rtt_ms: f32,
    /// Goodput estimate, Mbit/s.
    pub goodput_mbps: f32,
    /// Server load, 0..=1.
    pub load: f32,
    /// Requests queued on the server.
    pub queue: u32,
}

/// Progress of a generation, told to the listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EngineEvent {
    /// The policy placed a subtask.
    Placed {
        /// Subtask index.
        subtask: usize,
        /// The subtask's text.
        text: String,
        /// Chosen expert id.
        expert: String,
        /// Chosen node (0 = this phone).
        node: usize,
        /// Node name: `"phone"` or the server address.
        node_name: String,
        /// Gate probabilities, `(domain, p)` in gate order.
        gate: Vec<(String, f32)>,
        /// Link figures of the chosen node (`None` for the phone).
        link: Option<LinkFigures>,
    },
    /// A subtask is answered by the base model on the phone instead: its edge
    /// server failed, or its on-device expert does not fit the memory budget.
    /// Text of this subtask already streamed (`discarded_chars` characters) is
    /// superseded by the local re-run that follows.
    Fallback {
        /// Subtask index.
        subtask: usize,
        /// The node that failed (0: the phone's expert did not fit).
        node: usize,
        /// Why.
        reason: String,
        /// Characters of this subtask already passed to `on_text`.
        discarded_chars: usize,
    },
    /// A subtask finished.
    SubtaskDone {
        /// Subtask index.
        subtask: usize,
        /// Tokens generated.
        tokens: usize,
        /// From the start of the request to the subtask's end, ms.
        latency_ms: f64,
    },
}

/// Receives streamed text and events; called from engine threads.
pub trait EngineListener: Send + Sync {
    /// A piece of subtask `subtask`'s text; pieces arrive in subtask order.
    fn on_text(&self, subtask: usize, text: &str);
    /// A progress event.
    fn on_event(&self, event: &EngineEvent);
}

/// What happened to one subtask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubtaskReport {
    /// Subtask index.
    pub index: usize,
    /// The subtask's prompt.
    pub prompt: String,
    /// The final text.
    pub text: String,
    /// Expert that produced the final text.
    pub expert: String,
    /// Node that produced the final text (0 = phone).
    pub node: usize,
    /// The placement the policy chose (differs from the above after a fallback).
    pub placed: Placement,
    /// Tokens in the subtask's (templated) prompt on the node that answered it.
    pub prompt_tokens: usize,
    /// Tokens generated for the final text.
    pub tokens: usize,
    /// Why generation of the final text ended.
    pub stop_reason: StopReason,
    /// Decode speed of the final text, tokens/s after the first token.
    pub decode_tokens_per_s: f64,
    /// From the start of the request to this subtask's first text, if any.
    pub time_to_first_token: Option<Duration>,
    /// From the start of the request to this subtask's end.
    pub latency: Duration,
    /// Bytes sent over the network for this subtask.
    pub bytes_sent: u64,
    /// Bytes received over the network for this subtask.
    pub bytes_received: u64,
    /// Why the remote run failed, when the subtask fell back to the phone.
    pub fallback: Option<String>,
}

/// The result of [`Engine::generate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineReport {
    /// Per subtask, in order.
    pub subtasks: Vec<SubtaskReport>,
    /// The policy that decided.
    pub policy: String,
    /// Wall time of the whole request.
    pub total: Duration,
}

impl EngineReport {
    /// The whole answer: subtask texts in order, separated by blank lines.
    pub fn text(&self) -> String {
        self.subtasks.iter().map(|s| s.text.trim()).collect::<Vec<_>>().join("\n\n")
    }
}

/// One edge server as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeStatus {
    /// `host:port`.
    pub address: String,
    /// What the last probe said.
    pub link: LinkState,
}

/// A snapshot of the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineStatus {
    /// The policy's name.
    pub policy: String,
    /// Experts loaded on the phone now (the base model first).
    pub loaded_experts: Vec<String>,
    /// Bytes of memory the loaded experts hold, the base model not counted.
    pub loaded_expert_bytes: u64,
    /// Experts available on the phone.
    pub local_experts: Vec<String>,
    /// Every configured edge server.
    pub edge: Vec<EdgeStatus>,
    /// The device state last set by the app.
    pub device: DeviceState,
}

/// Everything that can make `generate()` fail.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The prompt is empty or blank.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The local model failed.
    #[error("model: {0}")]
    Model(#[from] ModelError),
    /// A model file is missing from `manifest.json` or differs from it (corrupted
    /// or replaced), or the manifest itself is unreadable.
    #[error("model files: {0}")]
    Manifest(#[from] ManifestError),
    /// The gate failed to load or to score.
    #[error("gate: {0}")]
    Gate(#[from] GateError),
    /// The policy failed to load or to decide.
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),
    /// An edge server configuration is invalid.
    #[error("offload: {0}")]
    Offload(#[from] OffloadError),
    /// The policy placed a subtask on a node or expert that does not exist.
    #[error("invalid placement for subtask {subtask}: {detail}")]
    Placement {
        /// Subtask index.
        subtask: usize,
        /// What is wrong.
        detail: String,
    },
    /// An on-device expert needs more memory than the budget leaves for
    /// experts. `generate()` answers such a subtask with the base model
    /// instead ([`EngineEvent::Fallback`]).
    #[error(
        "expert {expert} needs {} MiB of memory, the budget leaves {} MiB for experts",
        .needed_bytes.div_ceil(1 << 20),
        .budget_bytes >> 20
    )]
    OverMemoryBudget {
        /// The expert.
        expert: String,
        /// What it holds once loaded.
        needed_bytes: u64,
        /// What the budget leaves for experts.
        budget_bytes: u64,
    },
    /// The caller cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The async runtime could not start.
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// On-device models: the base model always, experts on demand within a budget.
struct LocalRunner {
    base: Arc<LocalModel>,
    experts_dir: PathBuf,
    /// Checks each expert's files before it is loaded.
    manifest: Manifest,
    /// Memory the loaded experts may hold, bytes (see [`Engine::set_expert_memory_budget`]).
    budget_bytes: AtomicU64,
    /// Loaded experts, least recently used first: (id, model, bytes it holds).
    loaded: Mutex<Vec<(String, Arc<LocalModel>, u64)>>,
    /// Bytes each expert held when it was loaded, so that one known not to fit
    /// is refused without loading it again (its files are checked unchanged).
    measured: Mutex<HashMap<String, u64>>,
    tokens_per_s: Mutex<f32>,
}

impl LocalRunner {
    fn hosted(&self) -> Vec<String> {
        installed_experts(&self.experts_dir)
    }

    fn model(&self, id: &str) -> Result<Arc<LocalModel>, EngineError> {
        if id == BASE_EXPERT {
            return Ok(self.base.clone());
        }
        let mut loaded = self.loaded.lock().expect("runner lock");
        if let Some(at) = loaded.iter().position(|(i, _, _)| i == id) {
            let entry = loaded.remove(at);
            let model = entry.1.clone();
            loaded.push(entry);
            return Ok(model);
        }
        let budget = self.budget_bytes.load(Ordering::Relaxed);
        let over = |size: u64| EngineError::OverMemoryBudget {
            expert: id.to_owned(),
            needed_bytes: size,
            budget_bytes: budget,
        };
        let mut measured = self.measured.lock().expect("runner lock");
        if let Some(&size) = measured.get(id).filter(|&&size| size > budget) {
            return Err(over(size));
        }
        let dir = self.manifest.verify(id)?;
        let model = Arc::new(LocalModel::load_expert(&dir, &self.base)?);
        // What it holds in memory (an adapter's f32 matrices take 2-3 times its f16 file).
        let size = model.llama().own_weight_bytes();
        measured.insert(id.to_owned(), size);
        if size > budget {
            return Err(over(size));
        }
        self.evict_to_fit(&mut loaded, size);
        tracing::debug!(expert = id, bytes = size, "expert loaded");
        loaded.push((id.to_owned(), model.clone(), size));
        Ok(model)
    }

    /// Evicts the least recently used experts until `incoming` more bytes fit the budget.
    fn evict_to_fit(&self, loaded: &mut Vec<(String, Arc<LocalModel>, u64)>, incoming: u64) {
        let budget = self.budget_bytes.load(Ordering::Relaxed);
        while !loaded.is_empty() && loaded.iter().map(|e| e.2).sum::<u64>() + incoming > budget {
            let (evicted, _, bytes) = loaded.remove(0);
            tracing::debug!(evicted, bytes, "expert evicted (memory budget)");
        }
    }
}

/// Streams subtask text to the listener in subtask order: the lowest unfinished
/// subtask streams live, later ones are buffered until it is done.
struct OrderedSink<'a> {
    listener: &'a dyn EngineListener,
    state: Mutex<SinkState>,
}

struct SinkState {
    head: usize,
    buffers: Vec<String>,
    emitted: Vec<usize>,
    done: Vec<bool>,
}

impl<'a> OrderedSink<'a> {
    fn new(n: usize, listener: &'a dyn EngineListener) -> Self {
        Self {
            listener,
            state: Mutex::new(SinkState {
                head: 0,
                buffers: vec![String::new(); n],
                emitted: vec![0; n],
                done: vec![false; n],
            }),
        }
    }

    fn text(&self, subtask: usize, text: &str) {
        let mut s = self.state.lock().expect("sink lock");
        if subtask == s.head {
            s.emitted[subtask] += text.chars().count();
            self.listener.on_text(subtask, text);
        } else {
            s.buffers[subtask].push_str(text);
        }
    }

    /// Forgets subtask `subtask`'s text so far; returns the characters already emitted.
    fn restart(&self, subtask: usize) -> usize {
        let mut s = self.state.lock().expect("sink lock");
        s.buffers[subtask].clear();
        std::mem::take(&mut s.emitted[subtask])
    }

    fn done(&self, subtask: usize) {
        let mut s = self.state.lock().expect("sink lock");
        s.done[subtask] = true;
        while s.head < s.done.len() && s.done[s.head] {
            s.head += 1;
            if s.head < s.done.len() {
                let head = s.head;
                let pending = std::mem::take(&mut s.buffers[head]);
                if !pending.is_empty() {
                    s.emitted[head] += pending.chars().count();
                    self.listener.on_text(head, &pending);
                }
            }
        }
    }
}

/// Local work: subtask indices (lowest first), plus how many remote subtasks
/// may still fall back.
struct LocalQueue {
    state: Mutex<(BinaryHeap<Reverse<usize>>, usize)>,
    ready: Condvar,
}

impl LocalQueue {
    fn push(&self, index: usize) {
        self.state.lock().expect("queue lock").0.push(Reverse(index));
        self.ready.notify_all();
    }

    fn remote_finished(&self) {
        self.state.lock().expect("queue lock").1 -= 1;
        self.ready.notify_all();
    }

    /// The next local job, or `None` when no more can come.
    fn next(&self) -> Option<usize> {
        let mut state = self.state.lock().expect("queue lock");
        loop {
            if let Some(Reverse(i)) = state.0.pop() {
                return Some(i);
            }
            if state.1 == 0 {
                return None;
            }
            state = self.ready.wait(state).expect("queue lock");
        }
    }
}

/// The orchestrator. `Send + Sync`; `generate` may run on several threads at once.
pub struct Engine {
    runtime: tokio::runtime::Runtime,
    clients: Vec<EdgeClient>,
    runner: LocalRunner,
    gate: Option<Gate>,
    policy: Box<dyn Policy>,
    device: Mutex<DeviceState>,
}

impl Engine {
    /// Loads the base model, the gate (`models_dir/gate`) and the policy, and
    /// starts connecting to the edge servers (waiting briefly for a first probe
    /// of each). The gate's and the SAC actor's files are checked against
    /// `models_dir/manifest.json` first.
    pub fn new(config: EngineConfig) -> Result<Engine, EngineError> {
        let manifest = Manifest::load(&config.models_dir)?;
        let gate = Gate::load(&manifest.verify(GATE_ID)?)?;
        if config.policy == PolicyKind::Sac {
            manifest.verify(POLICY_ID)?;
        }
        let policy = load_policy(config.policy, &config.models_dir)?;
        Self::with_routing(config, Some(gate), policy)
    }

    /// Like [`Engine::new`] with a given gate and policy (`config.policy` is then
    /// ignored). Without a gate, subtasks reach the policy with empty gate
    /// scores: only for policies that do not use them.
    pub fn with_routing(
        config: EngineConfig,
        gate: Option<Gate>,
        policy: Box<dyn Policy>,
    ) -> Result<Engine, EngineError> {
        if let Some(n) = config.threads.filter(|n| *n > 0) {
            // Ignored when the global pool already exists; candle then uses it as is.
            let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("moe-edge-net")
            .enable_all()
            .build()?;
        let manifest = Manifest::load(&config.models_dir)?;
        let base = Arc::new(LocalModel::load(&config.base_model)?);
        let clients = {
            let _guard = runtime.enter();
            config
                .edge_servers
                .iter()
                .map(|s| EdgeClient::with_idle_timeout(s.clone(), EDGE_IDLE_TIMEOUT))
                .collect::<Result<Vec<_>, _>>()?
        };
        runtime.block_on(async {
            let probes: Vec<_> = clients
                .iter()
                .map(|c| {
                    let c = c.clone();
                    tokio::spawn(async move { tokio::time::timeout(FIRST_PROBE_WAIT, c.probe()).await })
                })
                .collect();
            for (client, probe) in clients.iter().zip(probes) {
                if !matches!(probe.await, Ok(Ok(Ok(_)))) {
                    tracing::warn!(server = client.address(), "edge server not reachable yet");
                }
            }
        });
        for client in &clients {
            let _guard = runtime.enter();
            client.spawn_monitor(PROBE_INTERVAL);
        }
        Ok(Engine {
            runtime,
            clients,
            runner: LocalRunner {
                base,
                experts_dir: config.models_dir.join("experts"),
                manifest,
                budget_bytes: AtomicU64::new(config.memory_budget_mb as u64 * 1024 * 1024),
                loaded: Mutex::new(Vec::new()),
                measured: Mutex::new(HashMap::new()),
                tokens_per_s: Mutex::new(INITIAL_LOCAL_TOKENS_PER_S),
            },
            gate,
            policy,
            device: Mutex::new(DeviceState::default()),
        })
    }

    /// The phone's base model (also the fallback for failed remote subtasks).
    pub fn base_model(&self) -> &LocalModel {
        &self.runner.base
    }

    /// Tells the engine the phone's battery and thermal state (feeds the policy).
    pub fn set_device_state(&self, state: DeviceState) {
        *self.device.lock().expect("device lock") = state;
    }

    /// Sets the memory the on-device experts may hold, in bytes, and evicts the
    /// least recently used ones beyond it at once (the FFI layer shrinks it
    /// while generations hold KV caches). An evicted expert that a generation
    /// is still using is freed when that generation ends.
    pub fn set_expert_memory_budget(&self, bytes: u64) {
        self.runner.budget_bytes.store(bytes, Ordering::Relaxed);
        self.runner.evict_to_fit(&mut self.runner.loaded.lock().expect("runner lock"), 0);
    }

    /// A snapshot: policy, loaded experts, edge links, device state.
    pub fn status(&self) -> EngineStatus {
        let mut loaded_experts = vec![BASE_EXPERT.to_owned()];
        let loaded_expert_bytes = {
            let loaded = self.runner.loaded.lock().expect("runner lock");
            loaded_experts.extend(loaded.iter().map(|e| e.0.clone()));
            loaded.iter().map(|e| e.2).sum()
        };
        EngineStatus {
            policy: self.policy.name().to_owned(),
            loaded_experts,
            loaded_expert_bytes,
            local_experts: self.runner.hosted(),
            edge: self
                .clients
                .iter()
                .map(|c| EdgeStatus { address: c.address().to_owned(), link: c.state() })
                .collect(),
            device: *self.device.lock().expect("device lock"),
        }
    }

    fn node_name(&self, node: usize) -> String {
        match node {
            0 => "phone".to_owned(),
            n => self.clients[n - 1].address().to_owned(),
        }
    }

    fn observe(&self, subtasks: &[SubtaskInfo]) -> Observation {
        let mut nodes = vec![NodeState {
            rtt_ms: 0.0,
            goodput_mbps: 0.0,
            load: 0.0,
            queue: 0,
            hosted: self.runner.hosted(),
            tokens_per_s: *self.runner.tokens_per_s.lock().expect("tps lock"),
        }];
        for client in &self.clients {
            let link = client.state();
            nodes.push(NodeState {
                rtt_ms: link.rtt_ms,
                goodput_mbps: if link.connected { link.goodput_mbps } else { 0.0 },
                load: link.load,
                queue: link.queue,
                hosted: if link.connected { link.hosted } else { Vec::new() },
                tokens_per_s: if link.tokens_per_s > 0.0 { link.tokens_per_s } else { INITIAL_EDGE_TOKENS_PER_S },
            });
        }
        Observation { subtasks: subtasks.to_vec(), nodes, device: *self.device.lock().expect("device lock") }
    }

    /// Answers `prompt`: decompose, gate, place, run, stream in subtask order.
    pub fn generate(
        &self,
        prompt: &str,
        options: &GenerateOptions,
        listener: &dyn EngineListener,
        cancel: &CancelToken,
    ) -> Result<EngineReport, EngineError> {
        let start = Instant::now();
        let subtasks = decompose(prompt);
        if subtasks.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        // Arithmetic asked in words, in the arithmetic expert's question form.
        let questions: Vec<Option<String>> = subtasks.iter().map(|s| arithmetic_question(&s.text)).collect();
        // What subtask `i` is asked as: the question form for the arithmetic expert, the words for any other.
        let prompt_for = |i: usize, expert: &str| match &questions[i] {
            Some(q) if expert == ARITHMETIC_EXPERT => q.as_str(),
            _ => subtasks[i].text.as_str(),
        };
        let mut infos = Vec::with_capacity(subtasks.len());
        for (s, question) in subtasks.iter().zip(&questions) {
            let prompt_tokens = self.runner.base.prompt_tokens(&s.text, options.chat)?.len();
            infos.push(SubtaskInfo {
                gate: match &self.gate {
                    Some(g) => g.probabilities(question.as_deref().unwrap_or(&s.text))?,
                    None => Vec::new(),
                },
                prompt_tokens,
                expected_output_tokens: options.max_tokens,
            });
        }
        let observation = self.observe(&infos);
        let placements = self.policy.decide(&observation)?;
        if placements.len() != subtasks.len() {
            return Err(EngineError::Placement {
                subtask: placements.len().min(subtasks.len()),
                detail: format!("{} placements for {} subtasks", placements.len(), subtasks.len()),
            });
        }
        for (i, p) in placements.iter().enumerate() {
            let hosted = observation.nodes.get(p.node).map(|n| n.hosted.contains(&p.expert));
            if hosted != Some(true) {
                let detail = format!("expert {:?} is not available on node {}", p.expert, p.node);
                return Err(EngineError::Placement { subtask: i, detail });
            }
            let link = (p.node > 0).then(|| {
                let n = &observation.nodes[p.node];
                LinkFigures { rtt_ms: n.rtt_ms, goodput_mbps: n.goodput_mbps, load: n.load, queue: n.queue }
            });
            listener.on_event(&EngineEvent::Placed {
                subtask: i,
                text: subtasks[i].text.clone(),
                expert: p.expert.clone(),
                node: p.node,
                node_name: self.node_name(p.node),
                gate: self
                    .gate
                    .iter()
                    .flat_map(|g| g.domains().iter().cloned().zip(infos[i].gate.iter().copied()))
                    .collect(),
                link,
            });
        }

        let n = subtasks.len();
        let sink = OrderedSink::new(n, listener);
        let remote: Vec<usize> = (0..n).filter(|&i| placements[i].node > 0).collect();
        let queue = LocalQueue { state: Mutex::new((BinaryHeap::new(), remote.len())), ready: Condvar::new() };
        for i in (0..n).filter(|&i| placements[i].node == 0) {
            queue.push(i);
        }
        let reports: Mutex<Vec<Option<SubtaskReport>>> = Mutex::new(vec![None; n]);
        let fallbacks: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; n]);
        // Releases a finished subtask's text to the listener and records its report.
        let complete = |report: SubtaskReport| {
            let i = report.index;
            sink.done(i);
            listener.on_event(&EngineEvent::SubtaskDone {
                subtask: i,
                tokens: report.tokens,
                latency_ms: report.latency.as_secs_f64() * 1e3,
            });
            reports.lock().expect("reports lock")[i] = Some(report);
        };
        let mut local_error = None;
        // Stops this request's work when the caller cancels or a local run fails.
        let stop = CancelToken::new();
        let finished = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !finished.load(std::sync::atomic::Ordering::Relaxed) {
                    if cancel.is_cancelled() {
                        stop.cancel();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
            for &i in &remote {
                let (sink, queue, fallbacks, stop, complete) = (&sink, &queue, &fallbacks, &stop, &complete);
                let placement = &placements[i];
                let text = prompt_for(i, &placement.expert);
                scope.spawn(move || {
                    let client = &self.clients[placement.node - 1];
                    let (request, deadline) = remote_request(&placement.expert, text, options);
                    let mut received = String::new();
                    let mut first = None;
                    let result = self.runtime.block_on(client.generate(
                        &request,
                        &mut |t| {
                            first.get_or_insert_with(|| start.elapsed());
                            received.push_str(t);
                            sink.text(i, t);
                        },
                        stop,
                        Some(deadline),
                    ));
                    match result {
                        Ok(r) => {
                            let report = SubtaskReport {
                                index: i,
                                prompt: text.to_owned(),
                                text: received,
                                expert: placement.expert.clone(),
                                node: placement.node,
                                placed: placement.clone(),
                                prompt_tokens: r.stats.prompt_tokens as usize,
                                tokens: r.stats.generated_tokens as usize,
                                stop_reason: r.stats.stop_reason,
                                decode_tokens_per_s: f64::from(r.stats.decode_tokens_per_s),
                                time_to_first_token: first,
                                latency: start.elapsed(),
                                bytes_sent: r.bytes_sent,
                                bytes_received: r.bytes_received,
                                fallback: None,
                            };
                            complete(report);
                        }
                        Err(OffloadError::Cancelled) => {}
                        Err(e) => {
                            let discarded_chars = sink.restart(i);
                            let reason = e.to_string();
                            listener.on_event(&EngineEvent::Fallback {
                                subtask: i,
                                node: placement.node,
                                reason: reason.clone(),
                                discarded_chars,
                            });
                            fallbacks.lock().expect("fallbacks lock")[i] = Some(reason);
                            queue.push(i);
                        }
                    }
                    queue.remote_finished();
                });
            }
            while let Some(i) = queue.next() {
                if stop.is_cancelled() {
                    continue;
                }
                let mut fallback = fallbacks.lock().expect("fallbacks lock")[i].clone();
                let expert = if fallback.is_some() { BASE_EXPERT } else { placements[i].expert.as_str() };
                let mut result = self.run_local(i, prompt_for(i, expert), expert, options, &sink, &stop, start);
                if let Err(over @ EngineError::OverMemoryBudget { .. }) = result {
                    // Nothing was generated yet: the base model answers instead.
                    let reason = over.to_string();
                    listener.on_event(&EngineEvent::Fallback {
                        subtask: i,
                        node: 0,
                        reason: reason.clone(),
                        discarded_chars: 0,
                    });
                    fallback = Some(reason);
                    result = self.run_local(i, prompt_for(i, BASE_EXPERT), BASE_EXPERT, options, &sink, &stop, start);
                }
                match result {
                    Ok(mut report) => {
                        report.placed = placements[i].clone();
                        report.fallback = fallback;
                        complete(report);
                    }
                    Err(e) => {
                        // Stop the remote subtasks too: the answer cannot be complete.
                        stop.cancel();
                        local_error.get_or_insert(e);
                    }
                }
            }
            finished.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        if let Some(e) = local_error {
            return Err(e);
        }
        let subtasks = reports.into_inner().expect("reports lock").into_iter().flatten().collect::<Vec<_>>();
        debug_assert_eq!(subtasks.len(), n);
        Ok(EngineReport { subtasks, policy: self.policy.name().to_owned(), total: start.elapsed() })
    }

    #[allow(clippy::too_many_arguments)]
    fn run_local(
        &self,
        index: usize,
        prompt: &str,
        expert: &str,
        options: &GenerateOptions,
        sink: &OrderedSink<'_>,
        cancel: &CancelToken,
        start: Instant,
    ) -> Result<SubtaskReport, EngineError> {
        let model = self.runner.model(expert)?;
        let mut text = String::new();
        let mut first = None;
        let report = model.generate(
            prompt,
            options,
            &mut |t| {
                first.get_or_insert_with(|| start.elapsed());
                text.push_str(t);
                sink.text(index, t);
            },
            cancel,
        )?;
        if report.stop_reason == StopReason::Cancelled {
            return Err(EngineError::Cancelled);
        }
        if report.generated_tokens > 1 {
            let mut tps = self.runner.tokens_per_s.lock().expect("tps lock");
            *tps = 0.7 * *tps + 0.3 * report.decode_tokens_per_s as f32;
        }
        Ok(SubtaskReport {
            index,
            prompt: prompt.to_owned(),
            text,
            expert: expert.to_owned(),
            node: 0,
            placed: Placement { expert: expert.to_owned(), node: 0 },
            prompt_tokens: report.prompt_tokens,
            tokens: report.generated_tokens,
            stop_reason: report.stop_reason,
            decode_tokens_per_s: report.decode_tokens_per_s,
            time_to_first_token: first,
            latency: start.elapsed(),
            bytes_sent: 0,
            bytes_received: 0,
            fallback: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SamplingOptions;

    #[test]
    fn remote_requests_carry_their_deadline_on_the_wire() {
        let options = GenerateOptions {
            sampling: SamplingOptions::greedy(),
            max_tokens: 40,
            stop: vec!["\n\n".into()],
            chat: true,
        };
        let (request, deadline) = remote_request("code", "Write a loop.", &options);
        // 10 s + 40 tokens × 250 ms.
        assert_eq!(deadline, Duration::from_secs(20));
        assert_eq!(request.deadline_ms, 20_000);
        assert_eq!(
            (request.expert.as_str(), request.prompt.as_str(), request.max_tokens),
            ("code", "Write a loop.", 40)
        );
        assert_eq!((request.stop.clone(), request.chat), (options.stop.clone(), true));
        // An absurd token budget is capped, never wrapped.
        let (request, deadline) = remote_request("code", "x", &GenerateOptions { max_tokens: usize::MAX, ..options });
        assert_eq!(u128::from(request.deadline_ms), deadline.as_millis());
        assert_eq!(request.max_tokens, u32::MAX);
    }
}
