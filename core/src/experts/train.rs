//! The expert training loop: AdamW (no weight decay on norms), linear warm-up
//! then cosine decay, gradient clipping by global norm, seeded batches,
//! periodic validation and checkpoints, and a loss-curve PNG.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::ExpertError;

/// Hyper-parameters of one training run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// Optimizer steps.
    pub steps: usize,
    /// Sequences per step (each `context_length` tokens).
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: usize,
    /// The cosine decays to `lr × min_lr_ratio`.
    pub min_lr_ratio: f64,
    /// AdamW decoupled weight decay (matrices only).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this.
    pub clip_norm: f64,
    /// Seed of the batch sampler.
    pub seed: u64,
    /// Validate every this many steps (and at the end).
    pub eval_every: usize,
    /// Validation sequences.
    pub eval_sequences: usize,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            steps: 1_000,
            batch: 16,
            lr: 2e-3,
            warmup: 50,
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            clip_norm: 1.0,
            seed: 1,
            eval_every: 100,
            eval_sequences: 32,
            checkpoint_every: 250,
        }
    }
}

impl TrainOptions {
    /// The learning rate at `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = (self.steps - self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        let min = self.lr * self.min_lr_ratio;
        min + 0.5 * (self.lr - min) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// What one step reports to the caller (for a progress bar).
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// Steps done.
    pub step: usize,
    /// Training loss of this step (nats per token).
    pub loss: f32,
    /// Latest validation loss, if any yet.
    pub valid_loss: Option<f32>,
    /// Learning rate used.
    pub lr: f64,
}

/// Loss curves of a run.
#[derive(Debug, Clone, Default)]
pub struct TrainReport {
    /// (step, training loss).
    pub train: Vec<(usize, f32)>,
    /// (step, validation loss).
    pub valid: Vec<(usize, f32)>,
    /// Tokens seen.
    pub tokens: usize,
}

/// Where a run writes: the final expert, checkpoints, the loss curve.
#[derive(Debug, Clone)]
pub struct TrainPaths {
    /// Final expert directory (HF layout).
    pub out: PathBuf,
    /// Checkpoint directory.
    pub checkpoints: PathBuf,
    /// A `tokenizer.json` copied next to the final weights (standalone models;
    /// an adapter uses its base model's).
    pub tokenizer: Option<PathBuf>,
    /// Loss curve PNG, if wanted.
    pub loss_png: Option<PathBuf>,
}

/// A model the training loop optimizes: a small Llama from scratch, or a LoRA
/// adapter over the base model.
pub trait Trainable {
    /// Named variables; names ending in `norm.weight` get no weight decay.
    fn vars(&self) -> &[(String, Var)];
    /// Training window in tokens.
    fn context_length(&self) -> usize;
    /// Mean next-token cross-entropy (nats) of token windows `(batch, seq + 1)`.
    fn loss(&self, ids: &Tensor) -> Result<Tensor, ExpertError>;
    /// Writes the trained weights (and their configuration) into `dir`.
    fn save(&self, dir: &Path) -> Result<(), ExpertError>;

    /// Number of trained parameters.
    fn parameter_count(&self) -> usize {
        self.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// Trains `model` on `train_ids`, validating on `valid_ids`.
pub fn train(
    model: &dyn Trainable,
    train_ids: &[u32],
    valid_ids: &[u32],
    opts: &TrainOptions,
    paths: &TrainPaths,
    on_step: &mut dyn FnMut(StepInfo),
) -> Result<TrainReport, ExpertError> {
    let seq = model.context_length() + 1;
    if train_ids.len() <= seq || valid_ids.len() <= seq {
        return Err(ExpertError::Invalid(format!("need more than {seq} training and validation tokens")));
    }
    if opts.steps == 0 || opts.batch == 0 || opts.warmup > opts.steps || opts.eval_every == 0 {
        return Err(ExpertError::Invalid(format!("bad options {opts:?}")));
    }
    let (decayed, plain): (Vec<Var>, Vec<Var>) = {
        let (d, p): (Vec<_>, Vec<_>) = model.vars().iter().partition(|(n, _)| !n.ends_with("norm.weight"));
        (d.into_iter().map(|(_, v)| v.clone()).collect(), p.into_iter().map(|(_, v)| v.clone()).collect())
    };
    let params = |wd| ParamsAdamW { lr: opts.lr, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: wd };
    let mut opt_decayed = AdamW::new(decayed, params(opts.weight_decay))?;
    let mut opt_plain = AdamW::new(plain, params(0.0))?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let valid_batch = fixed_windows(valid_ids, seq, opts.eval_sequences)?;
    let mut report = TrainReport::default();
    let mut valid_loss = None;
    for step in 0..opts.steps {
        let lr = opts.lr_at(step);
        opt_decayed.set_learning_rate(lr);
        opt_plain.set_learning_rate(lr);
        let batch = random_windows(train_ids, seq, opts.batch, &mut rng)?;
        let loss = model.loss(&batch)?;
        let mut grads = loss.backward()?;
        clip_global_norm(model, &mut grads, opts.clip_norm)?;
        opt_decayed.step(&grads)?;
        opt_plain.step(&grads)?;
        let loss = loss.to_scalar::<f32>()?;
        if !loss.is_finite() {
            return Err(ExpertError::Invalid(format!("loss became {loss} at step {step}; lower the learning rate")));
        }
        report.train.push((step + 1, loss));
        report.tokens += opts.batch * (seq - 1);
        let done = step + 1;
        if done % opts.eval_every == 0 || done == opts.steps {
            let v = evaluate(model, &valid_batch)?;
            report.valid.push((done, v));
            valid_loss = Some(v);
        }
        if (opts.checkpoint_every > 0 && done % opts.checkpoint_every == 0) || done == opts.steps {
            model.save(&paths.checkpoints)?;
        }
        on_step(StepInfo { step: done, loss, valid_loss, lr });
    }
    model.save(&paths.out)?;
    if let Some(tokenizer) = &paths.tokenizer {
        let target = paths.out.join("tokenizer.json");
        if *tokenizer != target {
            std::fs::copy(tokenizer, &target).map_err(|e| ExpertError::io(&target, e))?;
        }
    }
    if let Some(png) = &paths.loss_png {
        plot_losses(png, &report)?;
    }
    Ok(report)
}

/// Mean validation loss over `batch`, in chunks of 8 sequences.
pub fn evaluate(model: &dyn Trainable, batch: &Tensor) -> Result<f32, ExpertError> {
    let n = batch.dim(0)?;
    let mut total = 0.0;
    let mut start = 0;
    while start < n {
        let len = 8.min(n - start);
        total += model.loss(&batch.narrow(0, start, len)?)?.to_scalar::<f32>()? * len as f32;
        start += len;
    }
    Ok(total / n as f32)
}

/// Scales the gradients so that their global L2 norm is at most `max_norm`.
fn clip_global_norm(
    model: &dyn Trainable,
    grads: &mut candle_core::backprop::GradStore,
    max_norm: f64,
) -> Result<f64, ExpertError> {
    let mut sum = 0f64;
    for (_, var) in model.vars() {
        if let Some(g) = grads.get(var.as_tensor()) {
            sum += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = sum.sqrt();
    if norm > max_norm {
        let scale = max_norm / norm;
        for (_, var) in model.vars() {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// `count` windows of `seq` tokens at random offsets.
fn random_windows(ids: &[u32], seq: usize, count: usize, rng: &mut StdRng) -> Result<Tensor, ExpertError> {
    let mut data = Vec::with_capacity(count * seq);
    for _ in 0..count {
        let start = rng.random_range(0..=ids.len() - seq);
        data.extend_from_slice(&ids[start..start + seq]);
    }
    Ok(Tensor::from_vec(data, (count, seq), &Device::Cpu)?)
}

/// `count` evenly spaced windows of `seq` tokens (fewer if the data is short).
pub fn fixed_windows(ids: &[u32], seq: usize, count: usize) -> Result<Tensor, ExpertError> {
    let available = ids.len() / seq;
    let count = count.min(available).max(1);
    let stride = available / count;
    let mut data = Vec::with_capacity(count * seq);
    for i in 0..count {
        let start = i * stride * seq;
        data.extend_from_slice(&ids[start..start + seq]);
    }
    Ok(Tensor::from_vec(data, (count, seq), &Device::Cpu)?)
}

/// Draws the training (smoothed over 20 steps) and validation losses.
pub fn plot_losses(path: &Path, report: &TrainReport) -> Result<(), ExpertError> {
    let window = 20;
    let smoothed: Vec<(f64, f64)> = report
        .train
        .iter()
        .enumerate()
        .map(|(i, &(step, _))| {
            let from = i.saturating_sub(window - 1);
            let slice = &report.train[from..=i];
            (step as f64, slice.iter().map(|&(_, l)| f64::from(l)).sum::<f64>() / slice.len() as f64)
        })
        .collect();
    let valid = report.valid.iter().map(|&(s, l)| (s as f64, f64::from(l))).collect();
    let series = vec![
        crate::plot::Series { name: "train (mean of 20 steps)".into(), points: smoothed },
        crate::plot::Series { name: "validation".into(), points: valid },
    ];
    crate::plot::line_chart(path, "expert training loss", "step", "cross-entropy (nats/token)", &series)?;
    Ok(())
}

/// Token ids of `text`, encoded in parallel chunks cut at line ends.
///
/// Every document starts with the end-of-text token, as every prompt does at
/// inference (the tokenizer adds it as BOS). The whole text is one document,
/// unless `document_start` is set: then each line starting with it begins a
/// new document (`Q: ` for the arithmetic problems, whose answer line belongs
/// to the question's document, as at inference).
pub fn encode_text(
    tokenizer: &tokenizers::Tokenizer,
    text: &str,
    document_start: Option<&str>,
) -> Result<Vec<u32>, ExpertError> {
    let bos = tokenizer
        .token_to_id(super::bpe::END_OF_TEXT)
        .ok_or_else(|| ExpertError::Tokenizer(format!("the tokenizer has no {}", super::bpe::END_OF_TEXT)))?;
    let mut chunks: Vec<&str> = Vec::new();
    match document_start {
        Some(start) => {
            let mut from = 0;
            for (at, _) in text.match_indices('\n') {
                if text[at + 1..].starts_with(start) {
                    chunks.push(&text[from..at + 1]);
                    from = at + 1;
                }
            }
            if from < text.len() {
                chunks.push(&text[from..]);
            }
        }
        None => {
            let mut rest = text;
            while !rest.is_empty() {
                let piece = super::corpus::prefix_lines(rest, 1 << 16);
                let piece = if piece.is_empty() { rest } else { piece };
                chunks.push(piece);
                rest = &rest[piece.len()..];
            }
        }
    }
    let encodings = tokenizer.encode_batch_fast(chunks, false).map_err(|e| ExpertError::Tokenizer(e.to_string()))?;
    let mut ids = Vec::with_capacity(text.len() / 2);
    for (i, e) in encodings.iter().enumerate() {
        if i == 0 || document_start.is_some() {
            ids.push(bos);
        }
        ids.extend_from_slice(e.get_ids());
    }
    Ok(ids)
}
