//! The errors an app can act on. Everything the core reports is mapped onto one
//! of these; the message keeps the detail.

use moe_edge::engine::EngineError;
use moe_edge::model::ModelError;
use moe_edge::offload::OffloadError;

/// Why a call failed. Kotlin sees `MoeException.<Variant>`, Swift `MoeError.<variant>`;
/// each carries a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum MoeError {
    /// An argument is out of range or malformed (prompt, option, config, device state).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A model file is missing, unreadable or not a usable model.
    #[error("model load failed: {0}")]
    ModelLoad(String),
    /// An edge server could not be reached or failed mid-request.
    #[error("network: {0}")]
    Network(String),
    /// The engine cannot take this request now (memory budget in use); retry later.
    #[error("busy: {0}")]
    Busy(String),
    /// The caller cancelled the generation.
    #[error("cancelled")]
    Cancelled,
    /// Anything else, including a failing listener and internal errors.
    #[error("{0}")]
    Other(String),
}

impl MoeError {
    /// Maps a model error met while loading a model.
    pub(crate) fn from_load(error: ModelError) -> Self {
        Self::ModelLoad(error.to_string())
    }

    /// Maps a model error met while generating.
    pub(crate) fn from_generate(error: ModelError) -> Self {
        match error {
            ModelError::EmptyPrompt | ModelError::PromptTooLong { .. } | ModelError::InvalidOption(_) => {
                Self::InvalidInput(error.to_string())
            }
            ModelError::Io { .. }
            | ModelError::NotGguf { .. }
            | ModelError::Truncated { .. }
            | ModelError::Invalid { .. }
            | ModelError::Unsupported(_) => Self::ModelLoad(error.to_string()),
            ModelError::Tokenizer(_) | ModelError::Template(_) | ModelError::Compute(_) => {
                Self::Other(error.to_string())
            }
        }
    }
}

impl MoeError {
    /// Maps an error of starting the engine: models that do not load, an invalid
    /// edge-server configuration.
    pub(crate) fn from_engine_start(error: EngineError) -> Self {
        match error {
            EngineError::Offload(OffloadError::Config(_)) => Self::InvalidInput(error.to_string()),
            EngineError::Model(e) => Self::from_load(e),
            EngineError::Gate(_) | EngineError::Policy(_) => Self::ModelLoad(error.to_string()),
            other => Self::from_engine(other),
        }
    }

    /// Maps an error of a generation.
    pub(crate) fn from_engine(error: EngineError) -> Self {
        match error {
            EngineError::EmptyPrompt => Self::InvalidInput(error.to_string()),
            EngineError::Model(e) => Self::from_generate(e),
            EngineError::Cancelled => Self::Cancelled,
            // generate() answers with the base model instead; kept for completeness.
            EngineError::OverMemoryBudget { .. } => Self::Busy(error.to_string()),
            EngineError::Offload(_) => Self::Network(error.to_string()),
            EngineError::Manifest(_) => Self::ModelLoad(error.to_string()),
            EngineError::Gate(_) | EngineError::Policy(_) | EngineError::Placement { .. } | EngineError::Runtime(_) => {
                Self::Other(error.to_string())
            }
        }
    }
}

/// An exception thrown by a Kotlin or Swift listener that is not a `MoeError`.
impl From<uniffi::UnexpectedUniFFICallbackError> for MoeError {
    fn from(error: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Other(format!("listener failed: {}", error.reason))
    }
}

/// Runs `f`, turning a panic into [`MoeError::Other`] so that none crosses the FFI boundary.
pub(crate) fn no_panic<T>(f: impl FnOnce() -> Result<T, MoeError>) -> Result<T, MoeError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Err(MoeError::Other(format!("internal error: {what}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_other() {
        let caught = no_panic::<()>(|| panic!("boom {}", 7));
        assert_eq!(caught, Err(MoeError::Other("internal error: boom 7".into())));
        assert_eq!(no_panic(|| Ok(3)), Ok(3));
    }

    #[test]
    fn model_errors_map_to_actionable_kinds() {
        assert!(matches!(MoeError::from_generate(ModelError::EmptyPrompt), MoeError::InvalidInput(_)));
        assert!(matches!(
            MoeError::from_generate(ModelError::InvalidOption("top_p".into())),
            MoeError::InvalidInput(m) if m.contains("top_p")
        ));
        assert!(matches!(MoeError::from_generate(ModelError::Unsupported("x".into())), MoeError::ModelLoad(_)));
        assert!(matches!(MoeError::from_generate(ModelError::Template("x".into())), MoeError::Other(_)));
        let callback = uniffi::UnexpectedUniFFICallbackError::new("java.lang.IllegalStateException: gone");
        assert_eq!(
            MoeError::from(callback),
            MoeError::Other("listener failed: java.lang.IllegalStateException: gone".into())
        );
    }
}
