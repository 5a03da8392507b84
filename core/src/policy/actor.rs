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

/// One dense layer: `y = W x + b`, `W` row-major `[out, in]`.
#[derive(Debug, Clone)]
struct Dense {
    w: Vec<f32>,
    b: Vec<f32>,
    inputs: usize,
}

impl Dense {
    fn forward(&self, x: &[f32], y: &mut Vec<f32>, relu: bool) {
        y.clear();
        y.extend(self.w.chunks_exact(self.inputs).zip(&self.b).map(|(row, b)| {
            let v = row.iter().zip(x).map(|(w, x)| w * x).sum::<f32>() + b;
            if relu { v.max(0.0) } else { v }
        }));
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
            if inp != inputs || b.dims() != [out] || (last && out != 1) || out == 0 || out > 4096 {
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

    /// The logit of every pair; unavailable pairs get `-inf`.
    pub fn logits(&self, enc: &Encoded) -> [f32; MAX_PAIRS] {
        let mut out = [f32::NEG_INFINITY; MAX_PAIRS];
        let (mut a, mut b) = (Vec::with_capacity(64), Vec::with_capacity(64));
        for i in enc.available() {
            a.clear();
            a.extend_from_slice(&enc.features[i]);
            for (l, layer) in self.layers.iter().enumerate() {
                layer.forward(&a, &mut b, l + 1 < self.layers.len());
                std::mem::swap(&mut a, &mut b);
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
        tracing::debug!(?obs, ?placements, "sac placement");
        Ok(placements)
    }
}
