//! Quality measurements that work for any [`LocalModel`], whatever its
//! tokenizer: bits per byte on held-out text and exact match on arithmetic.

use candle_core::D;
use serde::{Deserialize, Serialize};

use super::ExpertError;
use super::arithmetic::{Problem, parse_answer};
use crate::model::{CancelToken, GenerateOptions, LocalModel, SamplingOptions};

/// Total negative log-likelihood of `text` in bits divided by its UTF-8 byte count.
///
/// The text is tokenized with the model's own tokenizer and scored in
/// consecutive windows of at most `window` tokens (capped by the model's
/// context); each window starts with the model's BOS token (or its first
/// end-of-text token) as context, and every text token is scored exactly once.
pub fn bits_per_byte(
    model: &LocalModel,
    text: &str,
    window: usize,
    on_progress: &mut dyn FnMut(f32),
) -> Result<f64, ExpertError> {
    if text.is_empty() {
        return Err(ExpertError::Invalid("cannot measure bits per byte of empty text".into()));
    }
    let tokenizer = model.tokenizer();
    let start = tokenizer
        .bos_id()
        .or_else(|| tokenizer.eos_ids().first().copied())
        .ok_or_else(|| ExpertError::Invalid("the model has neither a BOS nor an end-of-text token".into()))?;
    let ids = tokenizer.encode(text, false)?;
    let window = window.min(model.llama().config().context_length);
    if window < 2 {
        return Err(ExpertError::Invalid("the window must hold at least 2 tokens".into()));
    }
    let mut nats = 0f64;
    let chunks: Vec<&[u32]> = ids.chunks(window - 1).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut input = Vec::with_capacity(chunk.len() + 1);
        input.push(start);
        input.extend_from_slice(chunk);
        let mut cache = model.llama().new_cache(input.len());
        let logits = model.llama().forward(&input[..chunk.len()], &mut cache, true)?;
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
        for (row, &target) in log_probs.iter().zip(chunk.iter()) {
            nats -= f64::from(row[target as usize]);
        }
        on_progress((i + 1) as f32 / chunks.len() as f32);
    }
    Ok(nats / std::f64::consts::LN_2 / text.len() as f64)
}

/// Outcome of the arithmetic benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExactMatch {
    /// Fraction of problems answered exactly.
    pub rate: f64,
    /// Problems asked.
    pub problems: usize,
    /// Up to five wrong answers (prompt, generated), for inspection.
    pub wrong_examples: Vec<(String, String)>,
}

/// Greedy answers to `problems` (plain prompt, no chat template, stop at the
/// first newline after `max_tokens` at most), scored by [`parse_answer`].
pub fn arithmetic_exact_match(
    model: &LocalModel,
    problems: &[Problem],
    max_tokens: usize,
    on_progress: &mut dyn FnMut(f32),
) -> Result<ExactMatch, ExpertError> {
    let options =
        GenerateOptions { sampling: SamplingOptions::greedy(), max_tokens, stop: vec!["\n".into()], chat: false };
    let cancel = CancelToken::new();
    let mut correct = 0;
    let mut wrong_examples = Vec::new();
    for (i, p) in problems.iter().enumerate() {
        let mut out = String::new();
        model.generate(&p.prompt(), &options, &mut |t| out.push_str(t), &cancel)?;
        if parse_answer(&out) == Some(p.answer()) {
            correct += 1;
        } else if wrong_examples.len() < 5 {
            wrong_examples.push((p.prompt(), out));
        }
        on_progress((i + 1) as f32 / problems.len() as f32);
    }
    let rate = if problems.is_empty() { 0.0 } else { correct as f64 / problems.len() as f64 };
    Ok(ExactMatch { rate, problems: problems.len(), wrong_examples })
}

/// The 0–10 quality of a model on a domain.
///
/// Text domains: `10 · 2^(−bits per byte)`, i.e. ten times the geometric-mean
/// probability the model gives each byte of held-out text (tokenizer
/// independent; 0.5 bit/byte → 7.1, 1 → 5, 2 → 2.5). Arithmetic: ten times the
/// exact-match rate, since a worked answer is only useful when its result is right.
pub fn quality(domain: &str, bits_per_byte: f64, exact_match: f64) -> f64 {
    if domain == "arithmetic" { 10.0 * exact_match } else { 10.0 * (-bits_per_byte).exp2() }
}

/// The mapping of [`quality`], as written into `quality.json`.
pub const QUALITY_MAPPING: &str = "text domains (prose, definitions, code): quality = 10 * 2^(-bits_per_byte), \
i.e. ten times the geometric-mean probability per byte of the held-out test text; arithmetic: quality = 10 * \
arithmetic_exact_match (greedy answers to the 500 held-out problems).";
