//! Typed errors of the model runtime.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model or generating with it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model file (or a file next to it) could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file does not start with the GGUF magic bytes.
    #[error("{path} is not a GGUF file (first bytes {found:02x?})")]
    NotGguf {
        /// The file that failed.
        path: PathBuf,
        /// The first bytes found instead of `GGUF`.
        found: Vec<u8>,
    },
    /// The file ends before the data its header announces.
    #[error("{path} is truncated: {detail}")]
    Truncated {
        /// The file that failed.
        path: PathBuf,
        /// What was missing.
        detail: String,
    },
    /// The file is readable but its content is not a usable model
    /// (missing metadata or tensors, bad shapes, malformed config.json).
    #[error("invalid model {path}: {detail}")]
    Invalid {
        /// The file that failed.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The model uses an architecture or tensor type this runtime does not implement.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// The tokenizer could not be built, or failed to encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be parsed or rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// The prompt is empty (after applying the chat template, if any).
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The prompt does not fit the model's context window.
    #[error(
        "the prompt has {tokens} tokens but the context window holds {context} (including {reserved} reserved for the answer)"
    )]
    PromptTooLong {
        /// Tokens in the prompt.
        tokens: usize,
        /// The context window in tokens.
        context: usize,
        /// Tokens kept free for generation.
        reserved: usize,
    },
    /// A sampling option is out of range.
    #[error("invalid sampling option: {0}")]
    InvalidOption(String),
    /// A tensor computation failed.
    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

impl ModelError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    /// An [`ModelError::Invalid`] for `path`.
    pub(crate) fn invalid(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Self::Invalid { path: path.into(), detail: detail.into() }
    }
}
