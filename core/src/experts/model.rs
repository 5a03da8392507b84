//! A small Llama written for training with candle autograd, and its export as an
//! HF-Llama directory (`config.json` + `model.safetensors` + `tokenizer.json`)
//! that [`crate::model::LocalModel::load`] and other Llama loaders read.
//!
//! The forward pass follows the HF `LlamaForCausalLM` definition (RMS norm,
//! rotary embedding on split halves, SiLU-gated MLP, tied embeddings) in plain
//! f32 with only differentiable ops; the inference path in [`crate::model`]
//! fuses projections and rounds attention operands to f16, so logits agree to
//! about 1e-3 (see the `expert_logits` test).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::ExpertError;
use super::train::Trainable;

/// Shape of an expert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertConfig {
    /// Token ids.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Attention heads (no grouped-query attention at this size).
    pub num_heads: usize,
    /// Positions; also the training sequence length.
    pub context_length: usize,
    /// Rotary base frequency.
    pub rope_theta: f32,
}

impl ExpertConfig {
    /// The shipped experts: 4 layers of width 128, about 1.4 M parameters (sized
    /// so that four of them train in under an hour on two shared CPU cores).
    pub fn expert(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 128,
            intermediate_size: 384,
            num_layers: 4,
            num_heads: 4,
            context_length: 256,
            rope_theta: 10_000.0,
        }
    }

    /// A tiny shape for smoke tests.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 32,
            intermediate_size: 64,
            num_layers: 2,
            num_heads: 2,
            context_length: 64,
            rope_theta: 10_000.0,
        }
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// HF `config.json` (with a top-level `rope_theta`, which loaders need).
    pub fn hf_config(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_heads,
            "head_dim": self.head_dim(),
            "hidden_act": "silu",
            "max_position_embeddings": self.context_length,
            "rms_norm_eps": RMS_EPS,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": true,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "torch_dtype": "float16",
        })
    }

    fn validate(&self) -> Result<(), ExpertError> {
        let ok = self.vocab_size > 0
            && self.num_heads > 0
            && self.num_layers > 0
            && self.context_length > 1
            && self.hidden_size.is_multiple_of(self.num_heads)
            && self.head_dim().is_multiple_of(2);
        if ok { Ok(()) } else { Err(ExpertError::Invalid(format!("unusable expert shape {self:?}"))) }
    }
}

const RMS_EPS: f64 = 1e-5;

/// Parameter names and shapes, in HF naming.
fn parameter_shapes(cfg: &ExpertConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, h])];
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            out.push((format!("{p}.self_attn.{proj}.weight"), vec![h, h]));
        }
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    out
}

/// An expert being trained: named variables and the training forward.
pub struct TrainModel {
    cfg: ExpertConfig,
    vars: Vec<(String, Var)>,
    by_name: HashMap<String, usize>,
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

impl TrainModel {
    /// Fresh weights: normal(0, 0.02), output projections scaled by 1/√(2·layers), norms 1.
    pub fn new(cfg: ExpertConfig, seed: u64) -> Result<Self, ExpertError> {
        cfg.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let residual_scale = 1.0 / (2.0 * cfg.num_layers as f32).sqrt();
        let mut tensors = HashMap::new();
        for (name, shape) in parameter_shapes(&cfg) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with("norm.weight") {
                vec![1.0; n]
            } else {
                let std =
                    if name.contains("o_proj") || name.contains("down_proj") { 0.02 * residual_scale } else { 0.02 };
                (0..n).map(|_| normal(&mut rng) * std).collect()
            };
            tensors.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
        }
        Self::from_tensors(cfg, tensors)
    }

    /// Weights from a saved `model.safetensors` (any float dtype, read as f32).
    pub fn load(cfg: ExpertConfig, weights: &Path) -> Result<Self, ExpertError> {
        cfg.validate()?;
        let tensors = candle_core::safetensors::load(weights, &Device::Cpu)?
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
            .collect::<Result<HashMap<_, _>, candle_core::Error>>()?;
        Self::from_tensors(cfg, tensors)
    }

    fn from_tensors(cfg: ExpertConfig, mut tensors: HashMap<String, Tensor>) -> Result<Self, ExpertError> {
        let mut vars = Vec::new();
        for (name, shape) in parameter_shapes(&cfg) {
            let t = tensors.remove(&name).ok_or_else(|| ExpertError::Invalid(format!("missing tensor {name}")))?;
            if t.dims() != shape.as_slice() {
                return Err(ExpertError::Invalid(format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    t.dims()
                )));
            }
            vars.push((name, Var::from_tensor(&t)?));
        }
        let by_name = vars.iter().enumerate().map(|(i, (n, _))| (n.clone(), i)).collect();
        let (cos, sin) = rope_tables(&cfg)?;
        let t = cfg.context_length;
        Ok(Self { cfg, vars, by_name, cos, sin, mask: causal_mask(t)? })
    }

    /// The shape.
    pub fn config(&self) -> &ExpertConfig {
        &self.cfg
    }

    /// Named variables (for the optimizer).
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    fn w(&self, name: &str) -> &Tensor {
        self.vars[self.by_name[name]].1.as_tensor()
    }

    /// Logits `(batch, seq, vocab)` for token ids `(batch, seq)`, seq ≤ context.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor, ExpertError> {
        let cfg = &self.cfg;
        let (b, t) = ids.dims2()?;
        if t > cfg.context_length || t == 0 {
            return Err(ExpertError::Invalid(format!(
                "sequence of {t} tokens for a context of {}",
                cfg.context_length
            )));
        }
        let (h, nh, hd) = (cfg.hidden_size, cfg.num_heads, cfg.head_dim());
        let embed = self.w("model.embed_tokens.weight");
        let mut x = embed.index_select(&ids.flatten_all()?, 0)?; // (b·t, h)
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let mask = self.mask.narrow(0, 0, t)?.narrow(1, 0, t)?;
        let linear = |x: &Tensor, name: &str| x.matmul(&self.w(name).t()?);
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let a = rms_norm(&x, self.w(&format!("{p}.input_layernorm.weight")), RMS_EPS)?;
            let heads = |name: &str| -> candle_core::Result<Tensor> {
                linear(&a, &format!("{p}.self_attn.{name}.weight"))?
                    .reshape((b, t, nh, hd))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = rope(&heads("q_proj")?, &cos, &sin)?;
            let k = rope(&heads("k_proj")?, &cos, &sin)?;
            let v = heads("v_proj")?;
            let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.broadcast_add(&mask)?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let attn = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * t, h))?;
            x = (x + linear(&attn, &format!("{p}.self_attn.o_proj.weight"))?)?;
            let m = rms_norm(&x, self.w(&format!("{p}.post_attention_layernorm.weight")), RMS_EPS)?;
            let gate = linear(&m, &format!("{p}.mlp.gate_proj.weight"))?;
            let up = linear(&m, &format!("{p}.mlp.up_proj.weight"))?;
            x = (x + linear(&(gate.silu()? * up)?, &format!("{p}.mlp.down_proj.weight"))?)?;
        }
        let x = rms_norm(&x, self.w("model.norm.weight"), RMS_EPS)?;
        Ok(x.matmul(&embed.t()?)?.reshape((b, t, cfg.vocab_size))?)
    }

    /// Mean next-token cross-entropy (nats) of `ids` `(batch, seq + 1)`.
    pub fn loss(&self, ids: &Tensor) -> Result<Tensor, ExpertError> {
        let (b, t1) = ids.dims2()?;
        let inputs = ids.narrow(1, 0, t1 - 1)?;
        let targets = ids.narrow(1, 1, t1 - 1)?.flatten_all()?;
        let logits = self.forward(&inputs)?.reshape((b * (t1 - 1), self.cfg.vocab_size))?;
        Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
    }
}

impl Trainable for TrainModel {
    fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    fn context_length(&self) -> usize {
        self.cfg.context_length
    }

    fn loss(&self, ids: &Tensor) -> Result<Tensor, ExpertError> {
        TrainModel::loss(self, ids)
    }

    /// Writes `config.json` and `model.safetensors` (f16).
    fn save(&self, dir: &Path) -> Result<(), ExpertError> {
        std::fs::create_dir_all(dir).map_err(|e| ExpertError::io(dir, e))?;
        let config = dir.join("config.json");
        let json = serde_json::to_string_pretty(&self.cfg.hf_config()).expect("json value serializes");
        std::fs::write(&config, json + "\n").map_err(|e| ExpertError::io(&config, e))?;
        save_f16(&self.vars, &dir.join("model.safetensors"))
    }
}

/// A standard normal sample (Box–Muller).
fn normal(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// `x / √(mean(x²) + ε) · w` over the last axis, from differentiable ops.
pub(super) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(w)
}

/// The additive causal mask `(t, t)` of a training window.
pub(super) fn causal_mask(t: usize) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..t).flat_map(|i| (0..t).map(move |j| if j > i { -1e9 } else { 0.0 })).collect();
    Tensor::from_vec(mask, (t, t), &Device::Cpu)
}

/// Writes named variables as an f16 safetensors file.
pub(super) fn save_f16(vars: &[(String, Var)], path: &Path) -> Result<(), ExpertError> {
    let tensors = vars
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_dtype(DType::F16)?)))
        .collect::<Result<HashMap<_, _>, candle_core::Error>>()?;
    candle_core::safetensors::save(&tensors, path)?;
    Ok(())
}

/// HF rotary embedding on split halves: `x·cos + rotate_half(x)·sin`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)?.broadcast_add(&rotated.broadcast_mul(sin)?)
}

/// cos/sin tables `(context, head_dim)`, angles computed as the inference path does.
fn rope_tables(cfg: &ExpertConfig) -> candle_core::Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim();
    let half = hd / 2;
    let scale = cfg.rope_theta.powf(-2.0 / hd as f32);
    let mut cos = Vec::with_capacity(cfg.context_length * hd);
    let mut sin = Vec::with_capacity(cfg.context_length * hd);
    for pos in 0..cfg.context_length {
        let mut angles = Vec::with_capacity(half);
        let mut angle = pos as f32;
        for _ in 0..half {
            angles.push(angle);
            angle *= scale;
        }
        for _ in 0..2 {
            cos.extend(angles.iter().map(|a| a.cos()));
            sin.extend(angles.iter().map(|a| a.sin()));
        }
    }
    let shape = (cfg.context_length, hd);
    Ok((Tensor::from_vec(cos, shape, &Device::Cpu)?, Tensor::from_vec(sin, shape, &Device::Cpu)?))
}
