//! Streaming generation on a loaded model: prompt → tokens → prefill → decode
//! loop with sampling, stop conditions, cancellation and a final report.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::ModelError;
use super::chat::{ChatMessage, ChatTemplate};
use super::llama::Llama;
use super::load::{LoadedModel, load};
use super::lora::{Adapter, is_adapter_dir};
use super::sampling::{Sampler, SamplingOptions};
use super::stream::{StopMatcher, Utf8Decoder};
use super::tokenizer::Tokenizer;

/// Prompt tokens run through the model per forward pass during prefill; bounds the
/// attention scratch memory and lets cancellation interrupt a long prompt.
const PREFILL_CHUNK: usize = 512;

/// Options of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateOptions {
    /// How tokens are drawn.
    pub sampling: SamplingOptions,
    /// At most this many new tokens.
    pub max_tokens: usize,
    /// Generation stops before any of these strings (they are not emitted).
    pub stop: Vec<String>,
    /// Wrap the prompt as a user turn in the model's chat template. A model
    /// without one (the small experts trained from scratch on plain text) gets the prompt as is.
    pub chat: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { sampling: SamplingOptions::default(), max_tokens: 256, stop: Vec::new(), chat: true }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-sequence token.
    EndOfSequence,
    /// A stop string appeared.
    StopString,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context window is full.
    ContextFull,
    /// The caller cancelled.
    Cancelled,
}

/// Figures about one finished generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationReport {
    /// Tokens in the (templated) prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (including a final end-of-sequence token).
    pub generated_tokens: usize,
    /// From the call until the first generated token was known.
    pub time_to_first_token: Duration,
    /// Prompt tokens per second during prefill.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second after the first one.
    pub decode_tokens_per_s: f64,
    /// Why it ended.
    pub stop_reason: StopReason,
}

/// A cancellation flag shared with other threads; cancelling stops decoding
/// before the next token.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A fresh, un-cancelled token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A model ready to generate on this device.
pub struct LocalModel {
    llama: Llama,
    tokenizer: Tokenizer,
    chat_template: Option<ChatTemplate>,
}

impl LocalModel {
    /// Loads a GGUF file or an HF safetensors directory.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::load_with_progress(path, &mut |_| {})
    }

    /// Like [`LocalModel::load`], reporting progress in `[0, 1]`.
    pub fn load_with_progress(path: &Path, progress: &mut dyn FnMut(f32)) -> Result<Self, ModelError> {
        let LoadedModel { llama, tokenizer, chat_template } = load(path, progress)?;
        Ok(Self { llama, tokenizer, chat_template })
    }

    /// This model with the LoRA adapter in `dir` applied, sharing the base weights.
    /// The adapted model keeps the base's chat template: an adapter refines an
    /// instruction-tuned base, which still answers requests in its chat format
    /// (a plain-text prompt would make it continue the text in its domain's style).
    pub fn with_adapter(&self, dir: &Path) -> Result<Self, ModelError> {
        let adapter = Adapter::load(dir, self.llama.config())?;
        Ok(Self {
            llama: self.llama.with_adapter(adapter),
            tokenizer: self.tokenizer.clone(),
            chat_template: self.chat_template.clone(),
        })
    }

    /// Loads an expert directory: a LoRA adapter over `base`, or a standalone model.
    pub fn load_expert(dir: &Path, base: &LocalModel) -> Result<Self, ModelError> {
        if is_adapter_dir(dir) { base.with_adapter(dir) } else { Self::load(dir) }
    }

    /// The decoder.
    pub fn llama(&self) -> &Llama {
        &self.llama
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The exact text fed to the model for `prompt`: templated in chat mode when
    /// the model has a chat template, the prompt as is otherwise.
    pub fn render_prompt(&self, prompt: &str, chat: bool) -> Result<String, ModelError> {
        if prompt.trim().is_empty() {
            return Err(ModelError::EmptyPrompt);
        }
        match &self.chat_template {
            Some(template) if chat => template.render(&[ChatMessage::new("user", prompt)], true),
            _ => Ok(prompt.to_owned()),
        }
    }

    /// The token ids fed to the model for `prompt`.
    pub fn prompt_tokens(&self, prompt: &str, chat: bool) -> Result<Vec<u32>, ModelError> {
        let text = self.render_prompt(prompt, chat)?;
        let tokens = self.tokenizer.encode(&text, self.tokenizer.add_bos_default())?;
        if tokens.is_empty() {
            return Err(ModelError::EmptyPrompt);
        }
        Ok(tokens)
    }

    /// Generates a continuation of `prompt`, calling `on_text` with each new piece
    /// of text (always whole UTF-8 characters), until a stop condition or
    /// cancellation through `cancel`.
    pub fn generate(
        &self,
        prompt: &str,
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
        cancel: &CancelToken,
    ) -> Result<GenerationReport, ModelError> {
        let start = Instant::now();
        let tokens = self.prompt_tokens(prompt, options.chat)?;
        self.generate_from_tokens(&tokens, options, on_text, cancel, start)
    }

    /// [`LocalModel::generate`] from already tokenized input; `start` is when the
    /// request arrived (for time to first token).
    pub fn generate_from_tokens(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
        cancel: &CancelToken,
        start: Instant,
    ) -> Result<GenerationReport, ModelError> {
        let context = self.llama.config().context_length;
        if prompt.is_empty() {
            return Err(ModelError::EmptyPrompt);
        }
        if prompt.len() >= context {
            return Err(ModelError::PromptTooLong { tokens: prompt.len(), context, reserved: 1 });
        }
        let mut sampler = Sampler::new(options.sampling.clone())?;
        let budget = options.max_tokens.min(context - prompt.len());
        let mut cache = self.llama.new_cache(prompt.len() + budget);
        let mut report = GenerationReport {
            prompt_tokens: prompt.len(),
            generated_tokens: 0,
            time_to_first_token: Duration::ZERO,
            prefill_tokens_per_s: 0.0,
            decode_tokens_per_s: 0.0,
            stop_reason: StopReason::MaxTokens,
        };
        if options.max_tokens == 0 {
            return Ok(report);
        }

        let prefill_start = Instant::now();
        let mut logits = None;
        for chunk in prompt.chunks(PREFILL_CHUNK) {
            if cancel.is_cancelled() {
                report.stop_reason = StopReason::Cancelled;
                return Ok(report);
            }
            logits = Some(self.llama.forward(chunk, &mut cache, false)?);
        }
        let prefill_time = prefill_start.elapsed();
        report.prefill_tokens_per_s = prompt.len() as f64 / prefill_time.as_secs_f64().max(1e-9);

        let mut history = prompt.to_vec();
        let mut utf8 = Utf8Decoder::default();
        let mut stops = StopMatcher::new(&options.stop);
        let eos = self.tokenizer.eos_ids();
        let mut decode_start = Instant::now();
        let mut emit = |text: String, stops: &mut StopMatcher| -> bool {
            let check = stops.push(&text);
            if !check.emit.is_empty() {
                on_text(&check.emit);
            }
            check.stopped
        };
        loop {
            let mut values = match logits.take() {
                Some(l) => l.to_vec1::<f32>()?,
                None => break,
            };
            let token = sampler.sample(&mut values, &history);
            report.generated_tokens += 1;
            if report.generated_tokens == 1 {
                report.time_to_first_token = start.elapsed();
                decode_start = Instant::now();
            }
            history.push(token);
            if eos.contains(&token) {
                report.stop_reason = StopReason::EndOfSequence;
                break;
            }
            if emit(utf8.push(self.tokenizer.token_bytes(token)), &mut stops) {
                report.stop_reason = StopReason::StopString;
                break;
            }
            if report.generated_tokens >= options.max_tokens {
                report.stop_reason = StopReason::MaxTokens;
                break;
            }
            if cache.len() >= context {
                report.stop_reason = StopReason::ContextFull;
                break;
            }
            if cancel.is_cancelled() {
                report.stop_reason = StopReason::Cancelled;
                break;
            }
            logits = Some(self.llama.forward(&[token], &mut cache, false)?);
        }
        if report.stop_reason != StopReason::StopString {
            let tail = utf8.finish();
            emit(tail, &mut stops);
            let held = stops.finish();
            if !held.is_empty() {
                on_text(&held);
            }
        }
        let decoded = report.generated_tokens.saturating_sub(1);
        report.decode_tokens_per_s = decoded as f64 / decode_start.elapsed().as_secs_f64().max(1e-9);
        Ok(report)
    }
}
