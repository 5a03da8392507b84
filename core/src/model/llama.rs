//! The Llama-family decoder: weights (quantized or dense) and the forward pass.
//!
//! One [`Llama`] is immutable and shared between generations; each generation
//! owns a [`KvCache`].

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use std::sync::Arc;

use candle_core::{D, DType, Device, Module, Tensor};

use super::ModelError;
use super::config::LlamaConfig;
use super::lora::{Adapter, LayerAdapter, LowRank};
use super::ops;
use super::q4_1::Q4_1Matrix;

/// A linear layer `y = x Wᵀ` whose weight may be quantized.
pub(crate) enum Linear {
    /// Any weight candle multiplies natively (dense, or a quantized type it vectorizes).
    Candle(QMatMul),
    /// Q4_1 weights, through our vectorized kernel (candle's is scalar).
    Q4_1(Q4_1Matrix),
}

impl Linear {
    /// A layer over a GGUF tensor of shape (out, in).
    pub(crate) fn from_qtensor(weight: QTensor) -> Result<Self, ModelError> {
        if weight.dtype() == GgmlDType::Q4_1 {
            return Ok(Self::Q4_1(Q4_1Matrix::from_qtensor(weight)?));
        }
        Ok(Self::Candle(QMatMul::from_qtensor(weight)?))
    }

    /// A layer over a GGUF tensor that is also used elsewhere (tied embeddings).
    pub(crate) fn from_shared_qtensor(weight: std::sync::Arc<QTensor>) -> Result<Self, ModelError> {
        Ok(Self::Candle(QMatMul::from_arc(weight)?))
    }

    /// A layer over a dense (out, in) tensor.
    pub(crate) fn from_dense(weight: Tensor) -> Self {
        Self::Candle(QMatMul::Tensor(weight))
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Candle(m) => m.forward(xs),
            Self::Q4_1(m) => m.forward(xs),
        }
    }

    /// Bytes its weight takes in memory.
    fn bytes(&self) -> u64 {
        match self {
            Self::Candle(QMatMul::QTensor(q)) => q.storage_size_in_bytes() as u64,
            Self::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => tensor_bytes(t),
            Self::Q4_1(m) => m.bytes(),
        }
    }
}

/// Bytes a tensor's elements take in memory.
pub(crate) fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// The token embedding table, kept quantized when it comes from a GGUF file.
pub(crate) enum Embedding {
    /// Rows are dequantized on lookup, so the table stays compact.
    Quantized(std::sync::Arc<QTensor>),
    /// A dense (vocab, hidden) table.
    Dense(Tensor),
}

impl Embedding {
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Quantized(t) => t.embedding(ids),
            Self::Dense(t) => {
                let mut dims = ids.dims().to_vec();
                dims.push(t.dim(1)?);
                t.embedding(&ids.flatten_all()?)?.reshape(dims)
            }
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Self::Quantized(q) => q.storage_size_in_bytes() as u64,
            Self::Dense(t) => tensor_bytes(t),
        }
    }
}

/// One decoder layer, with q/k/v and gate/up fused into single matmuls.
pub(crate) struct Layer {
    pub(crate) attn_norm: Tensor,
    pub(crate) qkv: Linear,
    pub(crate) attn_out: Linear,
    pub(crate) ffn_norm: Tensor,
    pub(crate) gate_up: Linear,
    pub(crate) down: Linear,
}

impl Layer {
    fn bytes(&self) -> u64 {
        let linears = [&self.qkv, &self.attn_out, &self.gate_up, &self.down];
        tensor_bytes(&self.attn_norm) + tensor_bytes(&self.ffn_norm) + linears.iter().map(|l| l.bytes()).sum::<u64>()
    }
}

/// A loaded Llama-family decoder, optionally with a LoRA adapter. The weights
/// are shared: [`Llama::with_adapter`] copies no base weight.
pub struct Llama {
    cfg: LlamaConfig,
    embedding: Arc<Embedding>,
    layers: Arc<[Layer]>,
    norm: Tensor,
    lm_head: Arc<Linear>,
    cos: Tensor,
    sin: Tensor,
    adapter: Option<Arc<Adapter>>,
}

/// Per-layer key/value cache of one generation.
pub struct KvCache {
    layers: Vec<candle_nn::kv_cache::KvCache>,
    len: usize,
}

impl KvCache {
    /// Number of positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Llama {
    /// Assembles a model from its parts (used by the GGUF and safetensors loaders).
    pub(crate) fn new(
        cfg: LlamaConfig,
        embedding: Embedding,
        layers: Vec<Layer>,
        norm: Tensor,
        lm_head: Linear,
    ) -> Result<Self, ModelError> {
        let (cos, sin) = rope_tables(&cfg)?;
        Ok(Self {
            cfg,
            embedding: Arc::new(embedding),
            layers: layers.into(),
            norm,
            lm_head: Arc::new(lm_head),
            cos,
            sin,
            adapter: None,
        })
    }

    /// Bytes of memory this model holds that no other model shares: its
    /// adapter's if it has one (the base weights are shared, see
    /// [`Llama::with_adapter`]), else every weight and table.
    pub fn own_weight_bytes(&self) -> u64 {
        if let Some(adapter) = &self.adapter {
            return adapter.bytes();
        }
        // A tied head is the embedding table itself.
        let head = if self.cfg.tie_word_embeddings { 0 } else { self.lm_head.bytes() };
        let tables = [&self.norm, &self.cos, &self.sin].into_iter().map(tensor_bytes).sum::<u64>();
        self.embedding.bytes() + self.layers.iter().map(Layer::bytes).sum::<u64>() + head + tables
    }

    /// This decoder's weights with `adapter` applied (replacing any adapter it has).
    pub fn with_adapter(&self, adapter: Adapter) -> Llama {
        Llama {
            cfg: self.cfg.clone(),
            embedding: self.embedding.clone(),
            layers: self.layers.clone(),
            norm: self.norm.clone(),
            lm_head: self.lm_head.clone(),
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            adapter: Some(Arc::new(adapter)),
        }
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// An empty cache sized for `capacity` positions (it grows if needed).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let capacity = capacity.clamp(1, self.cfg.context_length);
        let layers = (0..self.cfg.num_layers).map(|_| candle_nn::kv_cache::KvCache::new(2, capacity)).collect();
        KvCache { layers, len: 0 }
    }

    /// Runs `tokens` (appended after what `cache` holds) through the model and
    /// returns the logits: of the last position (shape `(vocab,)`), or of every
    /// position (shape `(tokens, vocab)`) when `all_positions` is set.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, all_positions: bool) -> Result<Tensor, ModelError> {
        let seq = tokens.len();
        if seq == 0 {
            return Err(ModelError::EmptyPrompt);
        }
        if cache.len + seq > self.cfg.context_length {
            return Err(ModelError::PromptTooLong {
                tokens: cache.len + seq,
                context: self.cfg.context_length,
                reserved: 0,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(ModelError::Tokenizer(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        let ids = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        let mut xs = self.embedding.forward(&ids)?;
        let mask = causal_mask(seq, cache.len)?;
        let cos = self.cos.narrow(0, cache.len, seq)?;
        let sin = self.sin.narrow(0, cache.len, seq)?;
        let no_adapter = LayerAdapter::default();
        for (i, (layer, kv)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            let adapter = self.adapter.as_ref().map_or(&no_adapter, |a| &a.layers[i]);
            xs = self.layer_forward(layer, adapter, &xs, kv, mask.as_ref(), &cos, &sin)?;
        }
        cache.len += seq;
        let xs = if all_positions { xs } else { xs.narrow(1, seq - 1, 1)? };
        let xs = ops::rms_norm(&xs, &self.norm, self.cfg.rms_norm_eps as f32)?;
        let logits = self.lm_head.forward(&xs)?.squeeze(0)?;
        Ok(if all_positions { logits } else { logits.squeeze(0)? })
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        layer: &Layer,
        adapter: &LayerAdapter,
        xs: &Tensor,
        kv: &mut candle_nn::kv_cache::KvCache,
        mask: Option<&Tensor>,
        cos: &Tensor,
        sin: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let eps = cfg.rms_norm_eps as f32;
        let (b, seq, _) = xs.dims3()?;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);

        let h = ops::rms_norm(xs, &layer.attn_norm, eps)?;
        let qkv = adapted(layer.qkv.forward(&h)?, adapter.qkv.as_ref(), &h)?;
        let heads = |start: usize, n: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(D::Minus1, start * hd, n * hd)?.reshape((b, seq, n, hd))?.transpose(1, 2)?.contiguous()
        };
        let q = self.rope(&heads(0, nh)?, cos, sin)?;
        let k = self.rope(&heads(nh, nkv)?, cos, sin)?;
        let v = heads(nh + nkv, nkv)?;
        // The attention operands (Q, K, V and the probabilities) are rounded to f16 and
        // multiplied with f32 accumulation: the numerics of llama.cpp's default F16 KV
        // cache on its decode path, kept in f32 storage so no conversion runs per step.
        let (k, v) = kv.append(&round_f16(&k)?, &round_f16(&v)?)?;
        let total = k.dim(2)?;

        // Grouped-query attention without copying K/V: the query heads that share a
        // KV head are stacked along the sequence axis.
        let group = nh / nkv;
        let q = round_f16(&q.reshape((b, nkv, group * seq, hd))?)?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let scores = match mask {
            Some(mask) => scores.reshape((b, nkv, group, seq, total))?.broadcast_add(mask)?.reshape((
                b,
                nkv,
                group * seq,
                total,
            ))?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let attn =
            round_f16(&probs)?.matmul(&v)?.reshape((b, nh, seq, hd))?.transpose(1, 2)?.reshape((b, seq, nh * hd))?;
        let xs = (xs + adapted(layer.attn_out.forward(&attn)?, adapter.attn_out.as_ref(), &attn)?)?;

        let h = ops::rms_norm(&xs, &layer.ffn_norm, eps)?;
        let gate_up = adapted(layer.gate_up.forward(&h)?, adapter.gate_up.as_ref(), &h)?;
        let inter = cfg.intermediate_size;
        let act = (candle_nn::ops::silu(&gate_up.narrow(D::Minus1, 0, inter)?)?
            * gate_up.narrow(D::Minus1, inter, inter)?)?;
        xs + adapted(layer.down.forward(&act)?, adapter.down.as_ref(), &act)?
    }

    fn rope(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        if self.cfg.rope_interleaved {
            candle_nn::rotary_emb::rope_i(xs, cos, sin)
        } else {
            candle_nn::rotary_emb::rope(xs, cos, sin)
        }
    }
}

/// Concatenates (out_i, in) weights along the output axis, for fused projections.
/// Quantized rows are whole blocks, so raw bytes concatenate losslessly.
pub(crate) fn concat_rows(parts: &[QTensor]) -> Result<QTensor, ModelError> {
    let dtype = parts[0].dtype();
    let cols = parts[0].shape().dims2()?.1;
    let mut rows = 0;
    let mut bytes = Vec::new();
    for p in parts {
        let (r, c) = p.shape().dims2()?;
        if p.dtype() != dtype || c != cols {
            return Err(ModelError::Unsupported(format!(
                "fusing projections of different types or widths ({:?} {c} vs {dtype:?} {cols})",
                p.dtype()
            )));
        }
        rows += r;
        bytes.extend_from_slice(&p.data()?);
    }
    if matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
        let dense: Vec<Tensor> =
            parts.iter().map(|p| p.dequantize(&Device::Cpu)).collect::<candle_core::Result<_>>()?;
        return Ok(QTensor::quantize(&Tensor::cat(&dense, 0)?, GgmlDType::F32)?);
    }
    let storage = candle_core::quantized::QStorage::from_data(std::borrow::Cow::Owned(bytes), &Device::Cpu, dtype)?;
    Ok(QTensor::new(storage, (rows, cols))?)
}

/// `base_out` plus the adapter's update of `xs`, if the projection is adapted.
fn adapted(base_out: Tensor, update: Option<&LowRank>, xs: &Tensor) -> candle_core::Result<Tensor> {
    match update {
        Some(update) => update.add_to(base_out, xs),
        None => Ok(base_out),
    }
}

/// Rounds through f16 (llama.cpp's K/V cache precision).
fn round_f16(xs: &Tensor) -> candle_core::Result<Tensor> {
    xs.to_dtype(DType::F16)?.to_dtype(DType::F32)
}

/// cos/sin tables of the rotary embedding for every position of the context.
///
/// The angles are computed as ggml does (position × scale^i by repeated f32
/// multiplication, scale = theta^(-2/d)), so they round exactly like llama.cpp's.
pub(crate) fn rope_tables(cfg: &LlamaConfig) -> candle_core::Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let scale = cfg.rope_theta.powf(-2.0 / cfg.head_dim as f32);
    let mut cos = Vec::with_capacity(cfg.context_length * half);
    let mut sin = Vec::with_capacity(cfg.context_length * half);
    for pos in 0..cfg.context_length {
        let mut angle = pos as f32;
        for _ in 0..half {
            cos.push(angle.cos());
            sin.push(angle.sin());
            angle *= scale;
        }
    }
    let shape = (cfg.context_length, half);
    Ok((Tensor::from_vec(cos, shape, &Device::Cpu)?, Tensor::from_vec(sin, shape, &Device::Cpu)?))
}

/// The additive causal mask for `seq` new positions after `past` cached ones,
/// or `None` for a single position (it may attend to everything).
fn causal_mask(seq: usize, past: usize) -> candle_core::Result<Option<Tensor>> {
    if seq == 1 {
        return Ok(None);
    }
    let total = past + seq;
    let mask: Vec<f32> =
        (0..seq).flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (seq, total), &Device::Cpu).map(Some)
}
