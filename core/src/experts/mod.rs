//! Training and measuring the domain experts and the gate (feature `train`).
//!
//! - [`corpus`]: the domain corpora and their deterministic splits;
//! - [`arithmetic`]: the generated arithmetic domain and its answer format;
//! - [`bpe`]: the experts' byte-level BPE tokenizer;
//! - [`lora`]: the training forward of a LoRA adapter over the frozen base model
//!   and its export in the PEFT layout that `LocalModel::with_adapter` reads;
//! - [`model`]: the training forward of a small Llama (candle autograd) and its
//!   export as an HF-Llama directory that `LocalModel::load` reads;
//! - [`train`]: the training loop (AdamW, warm-up + cosine, clipping, checkpoints);
//! - [`eval`]: bits per byte and arithmetic exact match, for any `LocalModel`;
//! - [`gate_train`]: training the gating network of [`crate::gate`].

pub mod arithmetic;
pub mod bpe;
pub mod corpus;
pub mod eval;
pub mod gate_train;
pub mod lora;
pub mod model;
pub mod train;

use std::path::{Path, PathBuf};

/// The expert domains, in the gate's output order.
pub const DOMAINS: [&str; 4] = ["prose", "definitions", "code", "arithmetic"];

/// Everything that can go wrong while preparing data, training or evaluating.
#[derive(Debug, thiserror::Error)]
pub enum ExpertError {
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The corpora have not been fetched.
    #[error("corpora not found in {0}: run core/scripts/fetch-corpora.sh")]
    MissingCorpora(PathBuf),
    /// The built splits differ from the recorded checksums.
    #[error("corpus splits differ from core/scripts/corpora.sha256: {0}")]
    ChecksumMismatch(String),
    /// A domain id that is not one of [`DOMAINS`].
    #[error("unknown domain {0:?} (known: prose, definitions, code, arithmetic)")]
    UnknownDomain(String),
    /// Bad hyper-parameters or data too small for them.
    #[error("invalid setting: {0}")]
    Invalid(String),
    /// Tokenizer training or use failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The model runtime failed.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// The gate failed to load or run.
    #[error(transparent)]
    Gate(#[from] crate::gate::GateError),
    /// Drawing a chart failed.
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
}

impl ExpertError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_owned(), source }
    }
}
