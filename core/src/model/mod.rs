//! The on-device model runtime on candle: GGUF and safetensors loading, the
//! tokenizer, chat templates, sampling, the KV cache and streaming generation.

mod chat;
mod config;
mod error;
mod generate;
mod gguf;
pub(crate) mod llama;
mod load;
pub mod lora;
mod ops;
pub mod q4_1;
mod sampling;
mod stream;
pub mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate};
pub use config::LlamaConfig;
pub use error::ModelError;
pub use generate::{CancelToken, GenerateOptions, GenerationReport, LocalModel, StopReason};
pub use gguf::GgufFile;
pub use llama::{KvCache, Llama};
pub use lora::Adapter;
pub use sampling::{Sampler, SamplingOptions, argmax};
pub use stream::{StopCheck, StopMatcher, Utf8Decoder};
pub use tokenizer::Tokenizer;
