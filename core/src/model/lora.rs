//! LoRA adapters over a base model, in the PEFT layout (`adapter_config.json` +
//! `adapter_model.safetensors`), applied unmerged at inference: an adapted
//! projection adds `(alpha / r) · B (A x)` to the base output, so one copy of
//! the (quantized) base serves every adapter.
//!
//! Supported targets are the projections whose rows GGUF stores in HF order:
//! `v_proj`, `o_proj`, `gate_proj`, `up_proj` and `down_proj` (GGUF permutes the
//! rows of `q_proj`/`k_proj` for its rotary layout).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::ModelError;
use super::config::LlamaConfig;
use super::llama::tensor_bytes;

/// File name of an adapter's configuration.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// File name of an adapter's weights.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The projections an adapter may target (HF names).
pub const TARGET_MODULES: [&str; 5] = ["v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// The PEFT `adapter_config.json` fields this runtime reads and writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Always `"LORA"`.
    pub peft_type: String,
    /// Rank of the update.
    pub r: usize,
    /// The update is scaled by `lora_alpha / r`.
    pub lora_alpha: f32,
    /// Adapted projections (HF names, a subset of [`TARGET_MODULES`]).
    pub target_modules: Vec<String>,
    /// The model the adapter was trained over.
    #[serde(default)]
    pub base_model_name_or_path: String,
}

/// Name of one LoRA matrix (`which` is `"A"` or `"B"`) in PEFT's safetensors layout.
pub fn tensor_name(layer: usize, module: &str, which: &str) -> String {
    let block = if ["gate_proj", "up_proj", "down_proj"].contains(&module) { "mlp" } else { "self_attn" };
    format!("base_model.model.model.layers.{layer}.{block}.{module}.lora_{which}.weight")
}

/// Whether `dir` holds a LoRA adapter (rather than a standalone model).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file()
}

/// The low-rank update of one (possibly fused) projection: `x ↦ (x Aᵀ) Bᵀ`, with
/// the scale folded into `B` and zero rows where a fused part is not adapted.
pub(crate) struct LowRank {
    a_t: Tensor,
    b_t: Tensor,
}

impl LowRank {
    fn bytes(&self) -> u64 {
        tensor_bytes(&self.a_t) + tensor_bytes(&self.b_t)
    }

    /// Adds the update of `xs` to `base_out`.
    pub(crate) fn add_to(&self, base_out: Tensor, xs: &Tensor) -> candle_core::Result<Tensor> {
        base_out + xs.broadcast_matmul(&self.a_t)?.broadcast_matmul(&self.b_t)?
    }
}

/// The updates of one decoder layer's fused projections.
#[derive(Default)]
pub(crate) struct LayerAdapter {
    pub(crate) qkv: Option<LowRank>,
    pub(crate) attn_out: Option<LowRank>,
    pub(crate) gate_up: Option<LowRank>,
    pub(crate) down: Option<LowRank>,
}

/// A loaded adapter, laid out for the runtime's fused projections.
pub struct Adapter {
    pub(crate) layers: Vec<LayerAdapter>,
}

impl Adapter {
    /// Bytes its matrices take in memory (f32, fused as the runtime uses them).
    pub(crate) fn bytes(&self) -> u64 {
        let parts = self.layers.iter().flat_map(|l| [&l.qkv, &l.attn_out, &l.gate_up, &l.down]);
        parts.flatten().map(LowRank::bytes).sum()
    }

    /// Reads the adapter in `dir` and checks it against the base model's shape.
    pub fn load(dir: &Path, cfg: &LlamaConfig) -> Result<Self, ModelError> {
        let config_path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
        let config: AdapterConfig =
            serde_json::from_str(&text).map_err(|e| ModelError::invalid(&config_path, e.to_string()))?;
        if config.peft_type != "LORA" || config.r == 0 {
            return Err(ModelError::invalid(&config_path, "not a LoRA adapter with a positive rank"));
        }
        if let Some(bad) = config.target_modules.iter().find(|m| !TARGET_MODULES.contains(&m.as_str())) {
            return Err(ModelError::Unsupported(format!(
                "adapter target {bad:?} (supported: {})",
                TARGET_MODULES.join(", ")
            )));
        }
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        let tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)
            .map_err(|e| ModelError::invalid(&weights_path, e.to_string()))?;
        let scale = f64::from(config.lora_alpha) / config.r as f64;
        let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let (q_rows, kv_rows) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for layer in 0..cfg.num_layers {
            // (module, input width, rows before it in the fused output, its rows)
            let part = |module: &str, input: usize, offset: usize, rows: usize| {
                if !config.target_modules.iter().any(|m| m == module) {
                    return Ok(None);
                }
                let get = |which: &str, shape: [usize; 2]| -> Result<Tensor, ModelError> {
                    let name = tensor_name(layer, module, which);
                    let t = tensors
                        .get(&name)
                        .ok_or_else(|| ModelError::invalid(&weights_path, format!("missing tensor {name}")))?;
                    if t.dims() != shape {
                        return Err(ModelError::invalid(
                            &weights_path,
                            format!("tensor {name} has shape {:?}, expected {shape:?}", t.dims()),
                        ));
                    }
                    Ok(t.to_dtype(DType::F32)?)
                };
                Ok::<_, ModelError>(Some(Part {
                    a: get("A", [config.r, input])?,
                    b: (get("B", [rows, config.r])? * scale)?,
                    offset,
                }))
            };
            let qkv = [part("v_proj", h, q_rows + kv_rows, kv_rows)?];
            let attn_out = [part("o_proj", q_rows, 0, h)?];
            let gate_up = [part("gate_proj", h, 0, inter)?, part("up_proj", h, inter, inter)?];
            let down = [part("down_proj", inter, 0, h)?];
            layers.push(LayerAdapter {
                qkv: fuse(&qkv, q_rows + 2 * kv_rows)?,
                attn_out: fuse(&attn_out, h)?,
                gate_up: fuse(&gate_up, 2 * inter)?,
                down: fuse(&down, h)?,
            });
        }
        Ok(Self { layers })
    }
}

/// One adapted projection inside a fused one.
struct Part {
    a: Tensor,
    b: Tensor,
    offset: usize,
}

/// The update of a fused projection with `rows` outputs: the parts' `A`s
/// stacked, their `B`s placed block-diagonally at their row offsets.
fn fuse(parts: &[Option<Part>], rows: usize) -> Result<Option<LowRank>, ModelError> {
    let parts: Vec<&Part> = parts.iter().flatten().collect();
    if parts.is_empty() {
        return Ok(None);
    }
    let rank: usize = parts.iter().map(|p| p.a.dim(0)).sum::<candle_core::Result<usize>>()?;
    let mut b = Tensor::zeros((rows, rank), DType::F32, &Device::Cpu)?;
    let mut column = 0;
    for p in &parts {
        let r = p.a.dim(0)?;
        b = b.slice_assign(&[p.offset..p.offset + p.b.dim(0)?, column..column + r], &p.b)?;
        column += r;
    }
    let a = Tensor::cat(&parts.iter().map(|p| &p.a).collect::<Vec<_>>(), 0)?;
    Ok(Some(LowRank { a_t: a.t()?.contiguous()?, b_t: b.t()?.contiguous()? }))
}
