//! The on-device model runtime on candle: GGUF and safetensors loading, the
//! tokenizer, chat templates, sampling, the KV cache and streaming generation.

mod error;
pub mod tokenizer;

pub use error::ModelError;
pub use tokenizer::Tokenizer;
