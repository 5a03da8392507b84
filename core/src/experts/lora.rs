//! Training a LoRA adapter over the base model (the text experts).
//!
//! The base GGUF is dequantized to f32 once and stays frozen; only the rank-`r`
//! matrices `A` (Gaussian) and `B` (zero, so training starts at the base model)
//! of the projections in [`TARGET_MODULES`] are variables. The forward pass
//! follows the runtime's [`crate::model::Llama`] (grouped-query attention, the
//! GGUF's rotary layout, tied embeddings) with differentiable ops; frozen
//! matmuls go through [`FrozenLinear`], whose backward skips the gradient of the
//! weight. The adapter is written in the PEFT layout that
//! [`crate::model::LocalModel::with_adapter`] (and PEFT itself) reads.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::ExpertError;
use super::model::{causal_mask, rms_norm, save_f16};
use super::train::Trainable;
use crate::model::llama::rope_tables;
use crate::model::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterConfig, TARGET_MODULES, tensor_name};
use crate::model::{GgufFile, LlamaConfig, Tokenizer};

/// Shape of an adapter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraShape {
    /// Rank of every update.
    pub rank: usize,
    /// Updates are scaled by `alpha / rank`.
    pub alpha: f32,
    /// Training window in tokens.
    pub context_length: usize,
}

impl Default for LoraShape {
    /// Rank 8, alpha 16 (scale 2), windows of 128 tokens: about 1 M parameters
    /// over SmolLM2-135M's 30 layers, 2 MB in f16.
    fn default() -> Self {
        Self { rank: 8, alpha: 16.0, context_length: 128 }
    }
}

/// The frozen dense weights of one decoder layer, each `(out, in)`.
struct FrozenLayer {
    attn_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    ffn_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// A LoRA adapter being trained over a frozen base model.
pub struct LoraTrainModel {
    cfg: LlamaConfig,
    shape: LoraShape,
    base_name: String,
    tokenizer: Tokenizer,
    embed: Tensor,
    layers: Vec<FrozenLayer>,
    norm: Tensor,
    vars: Vec<(String, Var)>,
    by_name: HashMap<String, usize>,
    bos: u32,
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

impl LoraTrainModel {
    /// Dequantizes the base GGUF at `base` and creates a fresh adapter (seeded).
    pub fn new(base: &Path, shape: LoraShape, seed: u64) -> Result<Self, ExpertError> {
        if shape.rank == 0 || shape.context_length < 2 {
            return Err(ExpertError::Invalid(format!("unusable adapter shape {shape:?}")));
        }
        let mut gguf = GgufFile::open(base)?;
        let tokenizer = Tokenizer::from_gguf(gguf.content())?;
        let bos = tokenizer
            .bos_id()
            .or_else(|| tokenizer.eos_ids().first().copied())
            .ok_or_else(|| ExpertError::Invalid("the base model has neither a BOS nor an end-of-text token".into()))?;
        let base_name = gguf.string("general.name").unwrap_or("base").to_owned();
        let embed = dense(&mut gguf, "token_embd.weight")?;
        let cfg = LlamaConfig::from_gguf(&gguf, embed.dim(0)?)?;
        if !cfg.tie_word_embeddings {
            return Err(ExpertError::Invalid("adapter training expects a base with tied embeddings".into()));
        }
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let mut w = |n: &str| dense(&mut gguf, &format!("blk.{i}.{n}.weight"));
            layers.push(FrozenLayer {
                attn_norm: w("attn_norm")?,
                q: w("attn_q")?,
                k: w("attn_k")?,
                v: w("attn_v")?,
                o: w("attn_output")?,
                ffn_norm: w("ffn_norm")?,
                gate: w("ffn_gate")?,
                up: w("ffn_up")?,
                down: w("ffn_down")?,
            });
        }
        let norm = dense(&mut gguf, "output_norm.weight")?;

        let mut rng = StdRng::seed_from_u64(seed);
        let mut vars = Vec::new();
        for (i, layer) in layers.iter().enumerate() {
            for module in TARGET_MODULES {
                let (rows, cols) = match module {
                    "v_proj" => layer.v.dims2()?,
                    "o_proj" => layer.o.dims2()?,
                    "gate_proj" => layer.gate.dims2()?,
                    "up_proj" => layer.up.dims2()?,
                    _ => layer.down.dims2()?,
                };
                // PEFT's initialisation: A ~ U(±1/√in) (Kaiming uniform, a = √5), B = 0.
                let bound = 1.0 / (cols as f32).sqrt();
                let a: Vec<f32> = (0..shape.rank * cols).map(|_| rng.random_range(-bound..bound)).collect();
                let a = Tensor::from_vec(a, (shape.rank, cols), &Device::Cpu)?;
                let b = Tensor::zeros((rows, shape.rank), DType::F32, &Device::Cpu)?;
                vars.push((tensor_name(i, module, "A"), Var::from_tensor(&a)?));
                vars.push((tensor_name(i, module, "B"), Var::from_tensor(&b)?));
            }
        }
        let by_name = vars.iter().enumerate().map(|(i, (n, _))| (n.clone(), i)).collect();
        let (cos, sin) = rope_tables(&cfg)?;
        let (cos, sin) = (cos.narrow(0, 0, shape.context_length)?, sin.narrow(0, 0, shape.context_length)?);
        let t = shape.context_length;
        Ok(Self {
            cfg,
            shape,
            base_name,
            tokenizer,
            embed,
            layers,
            norm,
            vars,
            by_name,
            bos,
            cos,
            sin,
            mask: causal_mask(t)?,
        })
    }

    /// The base model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Sets every `B` to small seeded noise (tests: a fresh adapter is the identity).
    pub fn perturb(&self, seed: u64, std: f32) -> Result<(), ExpertError> {
        let mut rng = StdRng::seed_from_u64(seed);
        for (name, var) in &self.vars {
            if name.contains("lora_B") {
                let n = var.elem_count();
                let data: Vec<f32> = (0..n).map(|_| rng.random_range(-std..std)).collect();
                var.set(&Tensor::from_vec(data, var.dims(), &Device::Cpu)?)?;
            }
        }
        Ok(())
    }

    /// `x Wᵀ + (α/r) (x Aᵀ) Bᵀ` for an adapted projection, `x Wᵀ` otherwise; `x` is `(n, in)`.
    fn project(&self, x: &Tensor, weight: &Tensor, layer: usize, module: &str) -> candle_core::Result<Tensor> {
        let base = x.apply_op1(FrozenLinear(weight.clone()))?;
        match self.by_name.get(&tensor_name(layer, module, "A")) {
            Some(&a) => {
                let (a, b) = (self.vars[a].1.as_tensor(), self.vars[a + 1].1.as_tensor());
                let scale = f64::from(self.shape.alpha) / self.shape.rank as f64;
                base + (x.matmul(&a.t()?)?.matmul(&b.t()?)? * scale)?
            }
            None => Ok(base),
        }
    }

    /// Logits `(batch, seq, vocab)` for token ids `(batch, seq)`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor, ExpertError> {
        let cfg = &self.cfg;
        let (b, t) = ids.dims2()?;
        if t == 0 || t > self.shape.context_length {
            return Err(ExpertError::Invalid(format!(
                "sequence of {t} tokens for windows of {}",
                self.shape.context_length
            )));
        }
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let eps = cfg.rms_norm_eps;
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?; // (b·t, hidden)
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let mask = self.mask.narrow(0, 0, t)?.narrow(1, 0, t)?;
        for (l, w) in self.layers.iter().enumerate() {
            let a = rms_norm(&x, &w.attn_norm, eps)?;
            let heads = |y: Tensor, n: usize| y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous();
            let q = self.rope(&heads(a.apply_op1(FrozenLinear(w.q.clone()))?, nh)?, &cos, &sin)?;
            let k = self.rope(&heads(a.apply_op1(FrozenLinear(w.k.clone()))?, nkv)?, &cos, &sin)?;
            let v = heads(self.project(&a, &w.v, l, "v_proj")?, nkv)?;
            // Grouped-query attention: each KV head serves `nh / nkv` query heads.
            let repeat = |kv: Tensor| {
                kv.unsqueeze(2)?.broadcast_as((b, nkv, nh / nkv, t, hd))?.contiguous()?.reshape((b, nh, t, hd))
            };
            let (k, v) = (repeat(k)?, repeat(v)?);
            let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.broadcast_add(&mask)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let attn = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * t, nh * hd))?;
            x = (x + self.project(&attn, &w.o, l, "o_proj")?)?;
            let m = rms_norm(&x, &w.ffn_norm, eps)?;
            let gate = self.project(&m, &w.gate, l, "gate_proj")?;
            let up = self.project(&m, &w.up, l, "up_proj")?;
            x = (x + self.project(&(candle_nn::ops::silu(&gate)? * up)?, &w.down, l, "down_proj")?)?;
        }
        let x = rms_norm(&x, &self.norm, eps)?;
        Ok(x.apply_op1(FrozenLinear(self.embed.clone()))?.reshape((b, t, cfg.vocab_size))?)
    }

    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let (b, h, t, d) = x.dims4()?;
        if self.cfg.rope_interleaved {
            // Adjacent pairs (x₀, x₁) rotate together.
            let pairs = x.reshape((b, h, t, d / 2, 2))?;
            let (x0, x1) = (pairs.narrow(4, 0, 1)?.squeeze(4)?, pairs.narrow(4, 1, 1)?.squeeze(4)?);
            let r0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
            let r1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
            Tensor::stack(&[r0, r1], 4)?.reshape((b, h, t, d))
        } else {
            // Split halves (HF layout).
            let (x0, x1) = (x.narrow(3, 0, d / 2)?, x.narrow(3, d / 2, d / 2)?);
            let r0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
            let r1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
            Tensor::cat(&[r0, r1], 3)
        }
    }
}

impl Trainable for LoraTrainModel {
    fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    fn context_length(&self) -> usize {
        self.shape.context_length
    }

    /// Mean next-token cross-entropy of windows `(batch, seq + 1)` whose first
    /// token is replaced by BOS: every scored token then has the context that
    /// `moe-edge eval` and a fresh prompt give it.
    fn loss(&self, ids: &Tensor) -> Result<Tensor, ExpertError> {
        let (b, t1) = ids.dims2()?;
        let bos = Tensor::full(self.bos, (b, 1), &Device::Cpu)?;
        let inputs = Tensor::cat(&[&bos, &ids.narrow(1, 1, t1 - 2)?], 1)?;
        let targets = ids.narrow(1, 1, t1 - 1)?.flatten_all()?;
        let logits = self.forward(&inputs)?.reshape((b * (t1 - 1), self.cfg.vocab_size))?;
        Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (f16).
    fn save(&self, dir: &Path) -> Result<(), ExpertError> {
        std::fs::create_dir_all(dir).map_err(|e| ExpertError::io(dir, e))?;
        let config = AdapterConfig {
            peft_type: "LORA".into(),
            r: self.shape.rank,
            lora_alpha: self.shape.alpha,
            target_modules: TARGET_MODULES.iter().map(|m| m.to_string()).collect(),
            base_model_name_or_path: self.base_name.clone(),
        };
        let mut json = serde_json::to_value(&config).expect("config serializes");
        // PEFT's other required fields, with the values this adapter has.
        for (k, v) in [
            ("task_type", serde_json::json!("CAUSAL_LM")),
            ("bias", serde_json::json!("none")),
            ("lora_dropout", serde_json::json!(0.0)),
            ("fan_in_fan_out", serde_json::json!(false)),
        ] {
            json[k] = v;
        }
        let path = dir.join(ADAPTER_CONFIG);
        let text = serde_json::to_string_pretty(&json).expect("json value serializes") + "\n";
        std::fs::write(&path, text).map_err(|e| ExpertError::io(&path, e))?;
        save_f16(&self.vars, &dir.join(ADAPTER_WEIGHTS))
    }
}

/// `x ↦ x Wᵀ` for a frozen `W (out, in)` and `x (n, in)`: its backward gives
/// only the input's gradient (candle's matmul would also compute `W`'s, the
/// most expensive and here useless half of the backward pass).
struct FrozenLinear(Tensor);

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("frozen-linear needs a contiguous input".into()))?;
        let x = Tensor::from_slice(&storage.as_slice::<f32>()?[start..end], layout.shape(), &Device::Cpu)?;
        let y = x.matmul(&self.0.t()?)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.0)?))
    }
}

/// A GGUF tensor as dense f32.
fn dense(gguf: &mut GgufFile, name: &str) -> Result<Tensor, ExpertError> {
    Ok(gguf.tensor(name)?.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?)
}
