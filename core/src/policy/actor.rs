//! The SAC actor at run time: plain Rust matrix-vector products over the
//! trained weights (a few microseconds per decision, no tensor framework).
//!
//! The actor is one small MLP applied to every available (model, node) pair's
//! features ([`super::encode`]); its outputs are the logits of a softmax over
//! the available pairs. At run time the most probable pair is taken.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::encode::{Encoded, MAX_PAIRS, PAIR_FEATURES, RequestEncoder};
use super::{Observation, Placement, Policy, PolicyError, QualityTable};

/// Name of the actor's weights inside a models directory.
pub const ACTOR_FILE: &str = "policy.safetensors";
/// Tensor name prefixes of the actor's layers, input to output.
pub const ACTOR_LAYERS: [&str; 3] = ["l1", "l2", "l3"];

/// Widest layer the runtime actor accepts (its activations live on the stack).
pub const MAX_ACTOR_WIDTH: usize = 256;

/// One dense layer: `y = W x + b`, `W` row-major `[out, in]`.
#[derive(Debug, Clone)]
struct Dense {
    w: Vec<f32>,
    b: Vec<f32>,
    inputs: usize,
}

impl Dense {
    /// Writes the layer's `b.len()` outputs for input `x` into `y`.
    fn forward(&self, x: &[f32], y: &mut [f32], relu: bool) {
        for ((out, row), b) in y.iter_mut().zip(self.w.chunks_exact(self.inputs)).zip(&self.b) {
            let v = row.iter().zip(x).map(|(w, x)| w * x).sum::<f32>() + b;
            *out = if relu { v.max(0.0) } else { v };
        }
    }
}

/// The trained SAC actor as a [`Policy`].
#[derive(Debug, Clone)]
pub struct SacActor {
    table: QualityTable,
    layers: Vec<Dense>,
}

impl SacActor {
    /// Loads the actor from a safetensors file (tensors `l1.weight`, `l1.bias`, … `l3.bias`).
    pub fn load(path: &Path, table: QualityTable) -> Result<Self, PolicyError> {
        let bytes = std::fs::read(path).map_err(|source| PolicyError::Io { path: path.to_path_buf(), source })?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| PolicyError::InvalidWeights { path: path.to_path_buf(), detail: e.to_string() })?;
        Self::from_tensors(&tensors, table)
            .map_err(|detail| PolicyError::InvalidWeights { path: path.to_path_buf(), detail })
    }

    /// Builds the actor from named tensors (as saved by the trainer).
    pub fn from_tensors(tensors: &HashMap<String, Tensor>, table: QualityTable) -> Result<Self, String> {
        let mut layers = Vec::new();
        let mut inputs = PAIR_FEATURES;
        for (i, name) in ACTOR_LAYERS.iter().enumerate() {
            let get = |suffix: &str| -> Result<Tensor, String> {
                let t = tensors.get(&format!("{name}.{suffix}")).ok_or(format!("missing tensor {name}.{suffix}"))?;
                t.to_dtype(candle_core::DType::F32).map_err(|e| e.to_string())
            };
            let (w, b) = (get("weight")?, get("bias")?);
            let (out, inp) = w.dims2().map_err(|e| format!("{name}.weight: {e}"))?;
            let last = i + 1 == ACTOR_LAYERS.len();
            if inp != inputs || b.dims() != [out] || (last && out != 1) || out == 0 || out > MAX_ACTOR_WIDTH {
                return Err(format!("{name}: weight {:?} and bias {:?} do not chain", w.dims(), b.dims()));
            }
            let w: Vec<f32> = w.flatten_all().and_then(|t| t.to_vec1()).map_err(|e| e.to_string())?;
            let b: Vec<f32> = b.to_vec1().map_err(|e| e.to_string())?;
            if w.iter().chain(&b).any(|v| !v.is_finite()) {
                return Err(format!("{name} holds non-finite values"));
            }
            layers.push(Dense { w, b, inputs });
            inputs = out;
        }
        Ok(SacActor { table, layers })
    }

    /// The quality table the actor reads expected quality from.
    pub fn table(&self) -> &QualityTable {
        &self.table
    }

    /// The logit of every pair; unavailable pairs get `-inf`. No heap
    /// allocation: the activations live in two stack buffers.
    pub fn logits(&self, enc: &Encoded) -> [f32; MAX_PAIRS] {
        let mut out = [f32::NEG_INFINITY; MAX_PAIRS];
        let (mut buf_a, mut buf_b) = ([0.0f32; MAX_ACTOR_WIDTH], [0.0f32; MAX_ACTOR_WIDTH]);
        for i in enc.available() {
            let (mut a, mut b) = (&mut buf_a, &mut buf_b);
            a[..PAIR_FEATURES].copy_from_slice(&enc.features[i]);
            let mut width = PAIR_FEATURES;
            for (l, layer) in self.layers.iter().enumerate() {
                let outputs = layer.b.len();
                layer.forward(&a[..width], &mut b[..outputs], l + 1 < self.layers.len());
                // Swap the references, not the buffers.
                std::mem::swap(&mut a, &mut b);
                width = outputs;
            }
            out[i] = a[0];
        }
        out
    }

    /// The most probable available pair, if any.
    fn best(&self, enc: &Encoded) -> Option<usize> {
        let logits = self.logits(enc);
        enc.available().max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
    }
}

impl Policy for SacActor {
    fn name(&self) -> &str {
        "sac"
    }

    fn decide(&self, obs: &Observation) -> Result<Vec<Placement>, PolicyError> {
        let placements = RequestEncoder::new(&self.table, obs)?.decide_all(|_, _, enc| self.best(enc))?;
        // Formatting the observation costs more than the decision: only when logged.
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(?obs, ?placements, "sac placement");
        }
        Ok(placements)
    }
}
