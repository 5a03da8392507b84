//! Where each subtask runs: the observation the phone builds, the cost model
//! shared by the simulator and the runtime, the SAC actor and the baselines.
//!
//! A [`Policy`] maps an [`Observation`] (subtasks with their gate scores, the
//! phone and the edge servers it can reach, the device state) to one
//! [`Placement`] (expert, node) per subtask, choosing only pairs a node hosts.
//! The observation is encoded per (expert, node) pair ([`encode`]): the phone
//! first assesses each candidate's quality, latency and cost (the paper's
//! "resource assessment" step), and the SAC actor scores every available pair
//! with one small shared network, so one actor serves any number of servers and
//! experts up to [`encode::MAX_NODES`] and [`encode::MAX_MODELS`].
//!
//! With feature `train`, [`sim`] simulates the edge network and [`sac`] trains
//! the actor with discrete Soft Actor-Critic.

mod actor;
mod baselines;
pub mod encode;
mod quality;
#[cfg(feature = "train")]
pub mod sac;
#[cfg(feature = "train")]
pub mod sim;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use actor::{ACTOR_FILE, SacActor};
pub use baselines::{Greedy, LocalOnly, RandomPolicy};
pub use quality::QualityTable;

/// Name of the quality table inside a models directory.
pub const QUALITY_FILE: &str = "quality.json";

/// The phone's own state, as reported by the app.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Battery charge, 0 (empty) ..= 1 (full).
    pub battery: f32,
    /// Whether the phone is plugged in.
    pub charging: bool,
    /// Thermal state, 0 (cool) ..= 1 (throttling).
    pub thermal: f32,
}

impl Default for DeviceState {
    fn default() -> Self {
        DeviceState { battery: 1.0, charging: false, thermal: 0.0 }
    }
}

/// One node the phone can run a subtask on. `nodes[0]` is always the phone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    /// Round-trip time to the node in milliseconds (0 for the phone).
    pub rtt_ms: f32,
    /// Measured goodput of the link in Mbit/s (0 for the phone; 0 for a server
    /// means unreachable).
    pub goodput_mbps: f32,
    /// Fraction of the node's compute already in use by others, 0 ..= 1.
    pub load: f32,
    /// Requests waiting ahead of ours on the node.
    pub queue: u32,
    /// Expert ids this node can run ("base" on the phone, always).
    pub hosted: Vec<String>,
    /// Decode speed of the node in tokens per second (measured or configured).
    pub tokens_per_s: f32,
}

/// What the phone knows about one subtask before running it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubtaskInfo {
    /// Gate probability per domain, in the quality table's domain order.
    pub gate: Vec<f32>,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Expected answer length in tokens. The engine reports the request's
    /// cap (`max_tokens`); answers often end sooner, and the simulator draws
    /// their realised length below the cap.
    pub expected_output_tokens: usize,
}

/// Everything a policy sees when placing one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The request's subtasks, in order.
    pub subtasks: Vec<SubtaskInfo>,
    /// The phone (`nodes[0]`) and the edge servers.
    pub nodes: Vec<NodeState>,
    /// The phone's battery and thermal state.
    pub device: DeviceState,
}

/// Where one subtask runs: which expert, on which node (index into
/// [`Observation::nodes`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Placement {
    /// Expert id (a domain id or "base").
    pub expert: String,
    /// Index of the node in [`Observation::nodes`]; 0 is the phone.
    pub node: usize,
}

/// A placement policy: one [`Placement`] per subtask, same order, only among
/// the (expert, node) pairs the observation says are available.
pub trait Policy: Send + Sync {
    /// Short name for logs and result tables ("sac", "local-only", ...).
    fn name(&self) -> &str;
    /// Places every subtask of the request.
    fn decide(&self, obs: &Observation) -> Result<Vec<Placement>, PolicyError>;
}

/// Which policy [`load_policy`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyKind {
    /// The trained SAC actor (`models/policy.safetensors`).
    Sac,
    /// Only what the phone hosts, best expected quality (the paper's "without edge network support").
    LocalOnly,
    /// Uniformly random among the available pairs, seeded.
    Random {
        /// Seed of the random stream.
        seed: u64,
    },
    /// Gate top-1 expert on the best-rate node that hosts it.
    Greedy,
}

/// Everything that can go wrong while loading or running a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The quality table is malformed.
    #[error("invalid quality table {path}: {detail}")]
    InvalidQuality {
        /// The file that failed (empty for an in-memory table).
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The actor weights are missing tensors or have unexpected shapes.
    #[error("invalid policy weights {path}: {detail}")]
    InvalidWeights {
        /// The file that failed.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The observation is malformed (wrong sizes, values out of range, too many nodes).
    #[error("invalid observation: {0}")]
    InvalidObservation(String),
    /// No node hosts any known expert for this subtask.
    #[error("subtask {0} has no available (expert, node) pair")]
    NoAvailablePair(usize),
    /// Training hyper-parameters that cannot work.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A tensor operation failed (training only).
    #[error("tensor operation failed: {0}")]
    Tensor(String),
}

impl From<candle_core::Error> for PolicyError {
    fn from(e: candle_core::Error) -> Self {
        PolicyError::Tensor(e.to_string())
    }
}

/// Builds a policy. The SAC actor reads `policy.safetensors` and every policy
/// reads `quality.json` from `models_dir`.
pub fn load_policy(kind: PolicyKind, models_dir: &Path) -> Result<Box<dyn Policy>, PolicyError> {
    let table = QualityTable::load(&models_dir.join(QUALITY_FILE))?;
    Ok(match kind {
        PolicyKind::Sac => Box::new(SacActor::load(&models_dir.join(ACTOR_FILE), table)?),
        PolicyKind::LocalOnly => Box::new(LocalOnly::new(table)),
        PolicyKind::Random { seed } => Box::new(RandomPolicy::new(table, seed)),
        PolicyKind::Greedy => Box::new(Greedy::new(table)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_policy_reads_the_models_dir() {
        let dir = std::env::temp_dir().join(format!("moe-edge-load-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(load_policy(PolicyKind::Greedy, &dir), Err(PolicyError::Io { .. })));
        std::fs::write(dir.join(QUALITY_FILE), serde_json::to_string(&QualityTable::synthetic(2)).unwrap()).unwrap();
        for (kind, name) in [
            (PolicyKind::LocalOnly, "local-only"),
            (PolicyKind::Random { seed: 1 }, "random"),
            (PolicyKind::Greedy, "greedy"),
        ] {
            assert_eq!(load_policy(kind, &dir).unwrap().name(), name);
        }
        assert!(matches!(load_policy(PolicyKind::Sac, &dir), Err(PolicyError::Io { .. })));
        std::fs::write(dir.join(ACTOR_FILE), b"not safetensors").unwrap();
        assert!(matches!(load_policy(PolicyKind::Sac, &dir), Err(PolicyError::InvalidWeights { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
