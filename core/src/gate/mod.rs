//! The phone-side router: the decomposer that splits a prompt into subtasks,
//! the rewriting of arithmetic asked in words into the arithmetic expert's
//! question form, and the gating network that scores how well each domain
//! expert fits a subtask.
//!
//! The gate is an embedding bag followed by a small MLP: the text is tokenized
//! with the experts' byte-level BPE tokenizer, the embeddings of its tokens are
//! averaged, and `softmax(W₂ relu(W₁ mean + b₁) + b₂)` gives one probability per
//! domain. Inference is plain Rust over the weights (no tensor library per call),
//! so a 256-token prompt costs a few microseconds of arithmetic after tokenizing.
//!
//! Files in the gate directory (e.g. `models/gate/`): `config.json`
//! ([`GateConfig`]), `gate.safetensors` (tensors [`EMBED`], [`FC1_WEIGHT`],
//! [`FC1_BIAS`], [`FC2_WEIGHT`], [`FC2_BIAS`]) and `tokenizer.json`.

mod arithmetic;
mod decompose;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use arithmetic::{ARITHMETIC_EXPERT, QUESTION_START, arithmetic_question, question};
pub use decompose::{Subtask, decompose};

/// Name of the (vocab, dim) embedding table in `gate.safetensors`.
pub const EMBED: &str = "embed";
/// Name of the (hidden, dim) first layer weight.
pub const FC1_WEIGHT: &str = "fc1.weight";
/// Name of the (hidden,) first layer bias.
pub const FC1_BIAS: &str = "fc1.bias";
/// Name of the (domains, hidden) output layer weight.
pub const FC2_WEIGHT: &str = "fc2.weight";
/// Name of the (domains,) output layer bias.
pub const FC2_BIAS: &str = "fc2.bias";

/// Everything that can go wrong when loading or running the gate.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// A gate file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A gate file is readable but malformed (bad JSON, missing tensor, wrong shape).
    #[error("invalid gate file {path}: {detail}")]
    Invalid {
        /// The file that failed.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The tokenizer failed on the text.
    #[error("gate tokenizer: {0}")]
    Tokenizer(String),
    /// The text has no tokens (empty or blank).
    #[error("the text to score is empty")]
    EmptyText,
}

/// The gate's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateConfig {
    /// Domain ids in output order.
    pub domains: Vec<String>,
    /// Width of the token embeddings.
    pub embedding_dim: usize,
    /// Width of the hidden layer.
    pub hidden: usize,
    /// Only this many leading bytes of a text are scored (bounds the cost of huge inputs).
    pub max_bytes: usize,
}

/// The trained gating network. `Send + Sync`; scoring takes `&self`.
pub struct Gate {
    config: GateConfig,
    tokenizer: tokenizers::Tokenizer,
    vocab: usize,
    embed: Vec<f32>,
    fc1_w: Vec<f32>,
    fc1_b: Vec<f32>,
    fc2_w: Vec<f32>,
    fc2_b: Vec<f32>,
}

impl Gate {
    /// Loads the gate from `dir` (`config.json`, `gate.safetensors`, `tokenizer.json`).
    pub fn load(dir: &Path) -> Result<Gate, GateError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|source| GateError::Io { path: config_path.clone(), source })?;
        let config: GateConfig = serde_json::from_str(&text).map_err(|e| invalid(&config_path, e))?;
        if config.domains.is_empty() || config.embedding_dim == 0 || config.hidden == 0 || config.max_bytes == 0 {
            return Err(invalid(&config_path, "domains, embedding_dim, hidden and max_bytes must be non-empty"));
        }
        let tokenizer_path = dir.join("tokenizer.json");
        let bytes =
            std::fs::read(&tokenizer_path).map_err(|source| GateError::Io { path: tokenizer_path.clone(), source })?;
        let tokenizer = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| invalid(&tokenizer_path, e))?;
        let vocab = tokenizer.get_vocab_size(true);

        let weights_path = dir.join("gate.safetensors");
        let tensors = candle_core::safetensors::load(&weights_path, &candle_core::Device::Cpu)
            .map_err(|e| invalid(&weights_path, e))?;
        let (d, h, n) = (config.embedding_dim, config.hidden, config.domains.len());
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, GateError> {
            let t = tensors.get(name).ok_or_else(|| invalid(&weights_path, format!("missing tensor {name}")))?;
            if t.dims() != shape {
                return Err(invalid(
                    &weights_path,
                    format!("tensor {name} has shape {:?}, expected {shape:?}", t.dims()),
                ));
            }
            let values = t
                .to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| invalid(&weights_path, e))?;
            if values.iter().any(|v| !v.is_finite()) {
                return Err(invalid(&weights_path, format!("tensor {name} has non-finite values")));
            }
            Ok(values)
        };
        Ok(Gate {
            embed: get(EMBED, &[vocab, d])?,
            fc1_w: get(FC1_WEIGHT, &[h, d])?,
            fc1_b: get(FC1_BIAS, &[h])?,
            fc2_w: get(FC2_WEIGHT, &[n, h])?,
            fc2_b: get(FC2_BIAS, &[n])?,
            config,
            tokenizer,
            vocab,
        })
    }

    /// Domain ids, in the order of [`Gate::probabilities`].
    pub fn domains(&self) -> &[String] {
        &self.config.domains
    }

    /// The gate's configuration.
    pub fn config(&self) -> &GateConfig {
        &self.config
    }

    /// Token ids the gate sees for `text`: the tokens of its first
    /// `max_bytes` bytes (cut at a character boundary).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, GateError> {
        let mut end = text.len().min(self.config.max_bytes);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let encoding =
            self.tokenizer.encode_fast(&text[..end], false).map_err(|e| GateError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// One probability per domain (in [`Gate::domains`] order), summing to 1.
    pub fn probabilities(&self, text: &str) -> Result<Vec<f32>, GateError> {
        if text.trim().is_empty() {
            return Err(GateError::EmptyText);
        }
        let ids = self.token_ids(text)?;
        self.probabilities_of_ids(&ids)
    }

    /// [`Gate::probabilities`] of already tokenized text.
    pub fn probabilities_of_ids(&self, ids: &[u32]) -> Result<Vec<f32>, GateError> {
        if ids.is_empty() {
            return Err(GateError::EmptyText);
        }
        let d = self.config.embedding_dim;
        let mut bag = vec![0f32; d];
        for &id in ids {
            let id = id as usize;
            if id >= self.vocab {
                return Err(GateError::Tokenizer(format!(
                    "token id {id} outside the gate's vocabulary of {}",
                    self.vocab
                )));
            }
            bag.iter_mut().zip(&self.embed[id * d..(id + 1) * d]).for_each(|(b, e)| *b += e);
        }
        let scale = 1.0 / ids.len() as f32;
        bag.iter_mut().for_each(|b| *b *= scale);
        let hidden: Vec<f32> =
            self.fc1_b.iter().zip(self.fc1_w.chunks_exact(d)).map(|(b, row)| (b + dot(row, &bag)).max(0.0)).collect();
        let logits: Vec<f32> = self
            .fc2_b
            .iter()
            .zip(self.fc2_w.chunks_exact(self.config.hidden))
            .map(|(b, row)| b + dot(row, &hidden))
            .collect();
        Ok(softmax(&logits))
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Numerically stable softmax.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

fn invalid(path: &Path, detail: impl ToString) -> GateError {
    GateError::Invalid { path: path.to_owned(), detail: detail.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 999.0, -1000.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[0] > p[1] && p[1] > p[2]);
    }

    #[test]
    fn missing_directory_is_an_io_error() {
        let err = Gate::load(Path::new("/nonexistent/moe-edge-gate")).err().expect("must fail");
        assert!(matches!(err, GateError::Io { .. }), "{err}");
    }
}
