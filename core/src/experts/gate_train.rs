//! Training the gating network of [`crate::gate`] on labelled snippets of the
//! domain corpora (training split for learning, test split for accuracy).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::ExpertError;
use crate::gate::{EMBED, FC1_BIAS, FC1_WEIGHT, FC2_BIAS, FC2_WEIGHT, Gate, GateConfig};

/// Hyper-parameters of gate training.
#[derive(Debug, Clone, PartialEq)]
pub struct GateTrainOptions {
    /// Embedding width.
    pub embedding_dim: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Training snippets per domain.
    pub train_per_domain: usize,
    /// Held-out snippets per domain.
    pub test_per_domain: usize,
    /// Optimizer steps.
    pub steps: usize,
    /// Snippets per step.
    pub batch: usize,
    /// Learning rate.
    pub lr: f64,
    /// Seed of snippet sampling and initialisation.
    pub seed: u64,
}

impl Default for GateTrainOptions {
    fn default() -> Self {
        Self {
            embedding_dim: 32,
            hidden: 64,
            train_per_domain: 4_000,
            test_per_domain: 500,
            steps: 800,
            batch: 256,
            lr: 1e-2,
            seed: 7,
        }
    }
}

/// A random snippet of `text`: from a line start, 16 to 400 bytes, cut at a character boundary.
pub fn snippet(text: &str, rng: &mut StdRng) -> String {
    let len = rng.random_range(16..=400usize).min(text.len());
    let mut start = rng.random_range(0..=text.len() - len);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    start = text[..start].rfind('\n').map_or(0, |nl| nl + 1);
    let mut end = (start + len).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[start..end].to_owned()
}

/// Labelled snippets: `per_domain` of each of `texts` (label = index).
pub fn labelled_snippets(texts: &[&str], per_domain: usize, seed: u64) -> Vec<(String, usize)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (label, text) in texts.iter().enumerate() {
        let mut n = 0;
        while n < per_domain {
            let s = snippet(text, &mut rng);
            if !s.trim().is_empty() {
                out.push((s, label));
                n += 1;
            }
        }
    }
    out
}

/// Trains the gate on `train` snippets and writes `config.json`,
/// `gate.safetensors` and `tokenizer.json` to `out`. Returns the top-1
/// accuracy of the saved gate (loaded back through [`Gate::load`]) on `test`.
pub fn train_gate(
    domains: &[String],
    train: &[(String, usize)],
    test: &[(String, usize)],
    tokenizer_path: &Path,
    out: &Path,
    opts: &GateTrainOptions,
    on_step: &mut dyn FnMut(usize, f32),
) -> Result<f64, ExpertError> {
    let tokenizer =
        tokenizers::Tokenizer::from_file(tokenizer_path).map_err(|e| ExpertError::Tokenizer(e.to_string()))?;
    let vocab = tokenizer.get_vocab_size(true);
    let encode = |s: &str| -> Result<Vec<u32>, ExpertError> {
        Ok(tokenizer.encode_fast(s, false).map_err(|e| ExpertError::Tokenizer(e.to_string()))?.get_ids().to_vec())
    };
    let train_ids: Vec<(Vec<u32>, usize)> =
        train.iter().map(|(s, l)| Ok((encode(s)?, *l))).collect::<Result<_, ExpertError>>()?;
    let (d, h, n) = (opts.embedding_dim, opts.hidden, domains.len());
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut init = |rows: usize, cols: usize, scale: f32| -> Result<Var, ExpertError> {
        let data: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-scale..scale)).collect();
        Ok(Var::from_vec(data, (rows, cols), &Device::Cpu)?)
    };
    let embed = init(vocab, d, 0.5)?;
    let fc1_w = init(h, d, 1.0 / (d as f32).sqrt())?;
    let fc1_b = Var::zeros(h, candle_core::DType::F32, &Device::Cpu)?;
    let fc2_w = init(n, h, 1.0 / (h as f32).sqrt())?;
    let fc2_b = Var::zeros(n, candle_core::DType::F32, &Device::Cpu)?;
    let params = ParamsAdamW { lr: opts.lr, weight_decay: 1e-4, ..Default::default() };
    let mut opt = AdamW::new(vec![embed.clone(), fc1_w.clone(), fc1_b.clone(), fc2_w.clone(), fc2_b.clone()], params)?;
    for step in 0..opts.steps {
        let mut bag = vec![0f32; opts.batch * vocab];
        let mut labels = Vec::with_capacity(opts.batch);
        for row in 0..opts.batch {
            let (ids, label) = &train_ids[rng.random_range(0..train_ids.len())];
            for &id in ids {
                bag[row * vocab + id as usize] += 1.0 / ids.len().max(1) as f32;
            }
            labels.push(*label as u32);
        }
        let bag = Tensor::from_vec(bag, (opts.batch, vocab), &Device::Cpu)?;
        let hidden = bag.matmul(embed.as_tensor())?.matmul(&fc1_w.t()?)?.broadcast_add(fc1_b.as_tensor())?.relu()?;
        let logits = hidden.matmul(&fc2_w.t()?)?.broadcast_add(fc2_b.as_tensor())?;
        let labels = Tensor::new(labels, &Device::Cpu)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
        opt.set_learning_rate(opts.lr * (1.0 - step as f64 / opts.steps as f64).max(0.05));
        opt.backward_step(&loss)?;
        on_step(step + 1, loss.to_scalar::<f32>()?);
    }
    std::fs::create_dir_all(out).map_err(|e| ExpertError::io(out, e))?;
    let tensors: HashMap<String, Tensor> =
        [(EMBED, &embed), (FC1_WEIGHT, &fc1_w), (FC1_BIAS, &fc1_b), (FC2_WEIGHT, &fc2_w), (FC2_BIAS, &fc2_b)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.as_tensor().clone()))
            .collect();
    candle_core::safetensors::save(&tensors, out.join("gate.safetensors"))?;
    let config = GateConfig { domains: domains.to_vec(), embedding_dim: d, hidden: h, max_bytes: 4096 };
    let config_path = out.join("config.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).expect("serializable") + "\n")
        .map_err(|e| ExpertError::io(&config_path, e))?;
    let tok_target = out.join("tokenizer.json");
    if tokenizer_path != tok_target {
        std::fs::copy(tokenizer_path, &tok_target).map_err(|e| ExpertError::io(&tok_target, e))?;
    }
    let gate = Gate::load(out)?;
    gate_accuracy(&gate, test)
}

/// Top-1 accuracy of `gate` on labelled snippets.
pub fn gate_accuracy(gate: &Gate, snippets: &[(String, usize)]) -> Result<f64, ExpertError> {
    let mut correct = 0;
    for (text, label) in snippets {
        let p = gate.probabilities(text)?;
        let best = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
        if best == Some(*label) {
            correct += 1;
        }
    }
    Ok(correct as f64 / snippets.len().max(1) as f64)
}
