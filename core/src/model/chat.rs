//! Chat templates (Jinja, as shipped in GGUF metadata or `tokenizer_config.json`),
//! rendered with minijinja.

use minijinja::{Environment, ErrorKind, Value, context};
use serde::Serialize;

use super::ModelError;
use super::tokenizer::Tokenizer;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` come from `tokenizer`.
    pub fn new(source: &str, tokenizer: &Tokenizer) -> Result<Self, ModelError> {
        let mut env = Environment::new();
        // HF transformers and llama-cpp-python render templates with these two set.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // HF templates call Python string methods (`.strip()`, `.startswith()`...).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned(TEMPLATE_NAME, source.to_owned()).map_err(|e| ModelError::Template(e.to_string()))?;
        let token_text = |id: Option<u32>| id.map(|id| String::from_utf8_lossy(tokenizer.token_bytes(id)).into_owned());
        Ok(Self {
            env,
            bos_token: token_text(tokenizer.bos_id()).unwrap_or_default(),
            eos_token: token_text(tokenizer.eos_ids().first().copied()).unwrap_or_default(),
        })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the
    /// assistant's answer starts.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, ModelError> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| ModelError::Template(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| ModelError::Template(e.to_string()))
    }
}
