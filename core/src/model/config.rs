//! The hyper-parameters of a Llama-family model, read from GGUF metadata or an
//! HF `config.json`.

use std::path::Path;

use serde::Deserialize;

use super::ModelError;
use super::gguf::GgufFile;

/// Shape and numerics of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Number of token embeddings.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Number of query heads.
    pub num_heads: usize,
    /// Number of key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Epsilon of the RMS norms.
    pub rms_norm_eps: f64,
    /// Base frequency of the rotary embedding.
    pub rope_theta: f32,
    /// Context window in tokens.
    pub context_length: usize,
    /// Whether the output head reuses the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether rotary pairs are adjacent (GGUF's permuted Q/K) rather than split halves (HF).
    pub rope_interleaved: bool,
}

impl LlamaConfig {
    /// Reads the config of a `llama` architecture GGUF.
    pub fn from_gguf(gguf: &GgufFile, vocab_size: usize) -> Result<Self, ModelError> {
        let arch = gguf.string("general.architecture")?;
        if arch != "llama" {
            return Err(ModelError::Unsupported(format!(
                "architecture {arch:?} (only llama-family models are supported)"
            )));
        }
        let key = |k: &str| format!("llama.{k}");
        let hidden_size = gguf.usize(&key("embedding_length"))?;
        let num_heads = gguf.usize(&key("attention.head_count"))?;
        let num_kv_heads = match gguf.get(&key("attention.head_count_kv")) {
            Some(_) => gguf.usize(&key("attention.head_count_kv"))?,
            None => num_heads,
        };
        let head_dim = match gguf.get(&key("attention.key_length")) {
            Some(_) => gguf.usize(&key("attention.key_length"))?,
            None => hidden_size.checked_div(num_heads).unwrap_or(0),
        };
        let cfg = Self {
            vocab_size,
            hidden_size,
            intermediate_size: gguf.usize(&key("feed_forward_length"))?,
            num_layers: gguf.usize(&key("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: f64::from(gguf.f32(&key("attention.layer_norm_rms_epsilon"))?),
            rope_theta: match gguf.get(&key("rope.freq_base")) {
                Some(_) => gguf.f32(&key("rope.freq_base"))?,
                None => 10_000.0,
            },
            context_length: gguf.usize(&key("context_length"))?,
            tie_word_embeddings: !gguf.has_tensor("output.weight"),
            rope_interleaved: true,
        };
        cfg.validate(gguf.path())
    }

    /// Reads an HF `config.json` of a `LlamaForCausalLM`-style model.
    ///
    /// `rope_theta` is honoured whether it is top-level or inside `rope_parameters`
    /// (transformers 5 writes only the latter); a missing value is an error rather
    /// than a silent default, because a wrong base frequency gives plausible garbage.
    pub fn from_config_json(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let raw: HfConfig = serde_json::from_str(&text).map_err(|e| ModelError::invalid(path, e.to_string()))?;
        let rope_theta = raw.rope_theta.or(raw.rope_parameters.and_then(|p| p.rope_theta)).ok_or_else(|| {
            ModelError::invalid(path, "missing field `rope_theta` (top-level or in `rope_parameters`)")
        })?;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size.checked_div(raw.num_attention_heads).unwrap_or(0));
        let cfg = Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: rope_theta as f32,
            context_length: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            rope_interleaved: false,
        };
        cfg.validate(path)
    }

    /// Rejects shapes the forward pass cannot run.
    fn validate(self, path: &Path) -> Result<Self, ModelError> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("context_length", self.context_length),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ModelError::invalid(path, format!("{name} must be positive")));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(ModelError::invalid(path, "num_heads must be a multiple of num_kv_heads"));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ModelError::invalid(path, "head_dim must be even for rotary embeddings"));
        }
        let positive_finite = |v: f64| v.is_finite() && v > 0.0;
        if !positive_finite(f64::from(self.rope_theta)) || !positive_finite(self.rms_norm_eps) {
            return Err(ModelError::invalid(path, "rope_theta and rms_norm_eps must be positive"));
        }
        Ok(self)
    }
}

/// The fields of an HF Llama `config.json` that the runtime uses.
#[derive(Deserialize)]
struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    max_position_embeddings: usize,
    tie_word_embeddings: Option<bool>,
}

/// transformers 5's nested rope settings.
#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
}
