//! Loading a model from a GGUF file or an HF safetensors directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::ModelError;
use super::chat::ChatTemplate;
use super::config::LlamaConfig;
use super::gguf::GgufFile;
use super::llama::{Embedding, Layer, Linear, Llama, concat_rows};
use super::tokenizer::Tokenizer;

/// What a model file (or directory) provides: the network, its tokenizer and,
/// when the file has one, its chat template.
pub struct LoadedModel {
    /// The decoder.
    pub llama: Llama,
    /// The tokenizer that goes with it.
    pub tokenizer: Tokenizer,
    /// The chat template, if the model ships one.
    pub chat_template: Option<ChatTemplate>,
}

/// Loads `path`: a `.gguf` file, or a directory with `config.json`,
/// `model.safetensors` and `tokenizer.json` (HF layout).
///
/// `progress` is called with a fraction in `[0, 1]` as layers are read.
pub fn load(path: &Path, progress: &mut dyn FnMut(f32)) -> Result<LoadedModel, ModelError> {
    let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    if meta.is_dir() && super::lora::is_adapter_dir(path) {
        return Err(ModelError::invalid(
            path,
            "a LoRA adapter, not a model: apply it to its base with LocalModel::with_adapter",
        ));
    }
    if meta.is_dir() { load_safetensors_dir(path, progress) } else { load_gguf(path, progress) }
}

fn load_gguf(path: &Path, progress: &mut dyn FnMut(f32)) -> Result<LoadedModel, ModelError> {
    let mut gguf = GgufFile::open(path)?;
    let tokenizer = Tokenizer::from_gguf(gguf.content())?;
    let embed = gguf.tensor("token_embd.weight")?;
    let (vocab, hidden) =
        embed.shape().dims2().map_err(|_| ModelError::invalid(path, "token_embd.weight is not 2-D"))?;
    let cfg = LlamaConfig::from_gguf(&gguf, vocab)?;
    expect_shape(path, "token_embd.weight", &[vocab, hidden], &[cfg.vocab_size, cfg.hidden_size])?;
    let shapes = ProjectionShapes::new(&cfg);
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let mut weight = |name: &str, shape: [usize; 2]| -> Result<QTensor, ModelError> {
            let full = format!("blk.{i}.{name}.weight");
            let t = gguf.tensor(&full)?;
            expect_shape(path, &full, t.shape().dims(), &shape)?;
            Ok(t)
        };
        let qkv =
            concat_rows(&[weight("attn_q", shapes.q)?, weight("attn_k", shapes.kv)?, weight("attn_v", shapes.kv)?])?;
        let attn_out = weight("attn_output", shapes.out)?;
        let gate_up = concat_rows(&[weight("ffn_gate", shapes.gate)?, weight("ffn_up", shapes.gate)?])?;
        let down = weight("ffn_down", shapes.down)?;
        let attn_norm = gguf_vector(&mut gguf, &format!("blk.{i}.attn_norm.weight"), cfg.hidden_size)?;
        let ffn_norm = gguf_vector(&mut gguf, &format!("blk.{i}.ffn_norm.weight"), cfg.hidden_size)?;
        layers.push(Layer {
            attn_norm,
            qkv: Linear::from_qtensor(qkv)?,
            attn_out: Linear::from_qtensor(attn_out)?,
            ffn_norm,
            gate_up: Linear::from_qtensor(gate_up)?,
            down: Linear::from_qtensor(down)?,
        });
        progress((i + 1) as f32 / cfg.num_layers as f32);
    }
    let norm = gguf_vector(&mut gguf, "output_norm.weight", cfg.hidden_size)?;
    let embed = Arc::new(embed);
    let lm_head = if cfg.tie_word_embeddings {
        Linear::from_shared_qtensor(embed.clone())?
    } else {
        let head = gguf.tensor("output.weight")?;
        expect_shape(path, "output.weight", head.shape().dims(), &[cfg.vocab_size, cfg.hidden_size])?;
        Linear::from_qtensor(head)?
    };
    let chat_template = match gguf.get("tokenizer.chat_template") {
        Some(_) => Some(ChatTemplate::new(gguf.string("tokenizer.chat_template")?, &tokenizer)?),
        None => None,
    };
    let llama = Llama::new(cfg, Embedding::Quantized(embed), layers, norm, lm_head)?;
    Ok(LoadedModel { llama, tokenizer, chat_template })
}

fn load_safetensors_dir(dir: &Path, progress: &mut dyn FnMut(f32)) -> Result<LoadedModel, ModelError> {
    let cfg = LlamaConfig::from_config_json(&dir.join("config.json"))?;
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))?;
    let files = safetensors_files(dir)?;
    // SAFETY: the files are memory-mapped read-only; like every mmap-based loader we
    // rely on them not being truncated while loading (the tensors are copied out).
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu) }
        .map_err(|e| ModelError::invalid(dir, format!("safetensors: {e}")))?;
    let get = |name: &str, shape: &[usize]| -> Result<Tensor, ModelError> {
        vb.get(shape, name).map_err(|e| ModelError::invalid(dir, format!("tensor {name}: {e}")))
    };
    let shapes = ProjectionShapes::new(&cfg);
    let embed = get("model.embed_tokens.weight", &[cfg.vocab_size, cfg.hidden_size])?;
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        let w = |name: &str, shape: [usize; 2]| get(&format!("{p}.{name}.weight"), &shape);
        let qkv = Tensor::cat(
            &[w("self_attn.q_proj", shapes.q)?, w("self_attn.k_proj", shapes.kv)?, w("self_attn.v_proj", shapes.kv)?],
            0,
        )?;
        let gate_up = Tensor::cat(&[w("mlp.gate_proj", shapes.gate)?, w("mlp.up_proj", shapes.gate)?], 0)?;
        layers.push(Layer {
            attn_norm: get(&format!("{p}.input_layernorm.weight"), &[cfg.hidden_size])?,
            qkv: Linear::from_dense(qkv),
            attn_out: Linear::from_dense(w("self_attn.o_proj", shapes.out)?),
            ffn_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[cfg.hidden_size])?,
            gate_up: Linear::from_dense(gate_up),
            down: Linear::from_dense(w("mlp.down_proj", shapes.down)?),
        });
        progress((i + 1) as f32 / cfg.num_layers as f32);
    }
    let norm = get("model.norm.weight", &[cfg.hidden_size])?;
    let lm_head = if cfg.tie_word_embeddings {
        Linear::from_dense(embed.clone())
    } else {
        Linear::from_dense(get("lm_head.weight", &[cfg.vocab_size, cfg.hidden_size])?)
    };
    let chat_template = match read_hf_chat_template(dir)? {
        Some(source) => Some(ChatTemplate::new(&source, &tokenizer)?),
        None => None,
    };
    let llama = Llama::new(cfg, Embedding::Dense(embed), layers, norm, lm_head)?;
    Ok(LoadedModel { llama, tokenizer, chat_template })
}

/// The expected (out, in) shapes of the projections of one layer.
struct ProjectionShapes {
    q: [usize; 2],
    kv: [usize; 2],
    out: [usize; 2],
    gate: [usize; 2],
    down: [usize; 2],
}

impl ProjectionShapes {
    fn new(cfg: &LlamaConfig) -> Self {
        let h = cfg.hidden_size;
        Self {
            q: [cfg.num_heads * cfg.head_dim, h],
            kv: [cfg.num_kv_heads * cfg.head_dim, h],
            out: [h, cfg.num_heads * cfg.head_dim],
            gate: [cfg.intermediate_size, h],
            down: [h, cfg.intermediate_size],
        }
    }
}

fn expect_shape(path: &Path, name: &str, found: &[usize], expected: &[usize]) -> Result<(), ModelError> {
    if found == expected {
        Ok(())
    } else {
        Err(ModelError::invalid(path, format!("tensor {name} has shape {found:?}, expected {expected:?}")))
    }
}

/// Reads a 1-D tensor (a norm weight) as dense f32.
fn gguf_vector(gguf: &mut GgufFile, name: &str, len: usize) -> Result<Tensor, ModelError> {
    let t = gguf.tensor(name)?;
    expect_shape(gguf.path(), name, t.shape().dims(), &[len])?;
    Ok(t.dequantize(&Device::Cpu)?)
}

/// `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
    let index: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::invalid(&index_path, e.to_string()))?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::invalid(&index_path, "missing weight_map"))?;
    let mut files: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// The `chat_template` of `tokenizer_config.json`, when present.
fn read_hf_chat_template(dir: &Path) -> Result<Option<String>, ModelError> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::invalid(&path, e.to_string()))?;
    Ok(value.get("chat_template").and_then(|t| t.as_str()).map(str::to_owned))
}
