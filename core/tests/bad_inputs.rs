//! Bad inputs give typed errors with clear messages, never panics or hangs.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use moe_edge::model::{CancelToken, GenerateOptions, LocalModel, ModelError, SamplingOptions};

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("moe-edge-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::File::create(&path).unwrap().write_all(bytes).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_err(path: &Path) -> ModelError {
    match LocalModel::load(path) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => {
            println!("{}: {e}", path.display());
            e
        }
    }
}

#[test]
fn missing_file_is_an_io_error() {
    let e = load_err(Path::new("/nonexistent/moe-edge/model.gguf"));
    assert!(matches!(e, ModelError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/moe-edge/model.gguf"));
}

#[test]
fn wrong_magic_is_rejected() {
    let dir = Scratch::new("magic");
    let e = load_err(&dir.file("model.gguf", b"GGML\x01\x00\x00\x00 not a gguf file"));
    assert!(matches!(e, ModelError::NotGguf { .. }), "{e:?}");
    let e = load_err(&dir.file("empty.gguf", b""));
    assert!(matches!(e, ModelError::NotGguf { .. }), "{e:?}");
}

#[test]
fn truncated_gguf_is_reported_as_truncated() {
    let Some(model) = common::base_model() else { return };
    let bytes = std::fs::read(&model).unwrap();
    let dir = Scratch::new("truncated");
    // Cut inside the header (the vocabulary metadata) and inside the tensor data.
    for cut in [64, 200_000, bytes.len() / 2, bytes.len() - 1] {
        let e = load_err(&dir.file("cut.gguf", &bytes[..cut]));
        assert!(matches!(e, ModelError::Truncated { .. }), "cut at {cut}: {e:?}");
    }
}

#[test]
fn corrupt_header_values_give_typed_errors() {
    let Some(model) = common::base_model() else { return };
    let mut bytes = std::fs::read(&model).unwrap()[..4096].to_vec();
    // Tensor count (u64 after magic and version) set absurdly high.
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let dir = Scratch::new("corrupt");
    let e = load_err(&dir.file("corrupt.gguf", &bytes));
    assert!(matches!(e, ModelError::Truncated { .. } | ModelError::Invalid { .. }), "{e:?}");
}

#[test]
fn config_json_with_missing_fields_is_invalid() {
    let dir = Scratch::new("config");
    dir.file(
        "config.json",
        br#"{"vocab_size": 10, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 32}"#,
    );
    let e = load_err(&dir.0);
    assert!(matches!(e, ModelError::Invalid { .. }), "{e:?}");
    assert!(e.to_string().contains("hidden_size"), "{e}");

    dir.file(
        "config.json",
        br#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 32}"#,
    );
    let e = load_err(&dir.0);
    assert!(e.to_string().contains("rope_theta"), "{e}");

    dir.file("config.json", b"{ not json");
    assert!(matches!(load_err(&dir.0), ModelError::Invalid { .. }));
}

#[test]
fn empty_huge_and_bad_option_prompts_are_typed_errors() {
    let Some(path) = common::base_model() else { return };
    let model = LocalModel::load(&path).unwrap();
    let run =
        |prompt: &str, options: &GenerateOptions| model.generate(prompt, options, &mut |_| {}, &CancelToken::new());
    let chat = GenerateOptions { max_tokens: 4, ..GenerateOptions::default() };
    let plain = GenerateOptions { chat: false, ..chat.clone() };
    for options in [&chat, &plain] {
        for prompt in ["", "   \n\t "] {
            assert!(matches!(run(prompt, options), Err(ModelError::EmptyPrompt)), "{prompt:?}");
        }
    }
    // Over the 8192-token context: a typed error before any compute.
    let long = "hello ".repeat(9000);
    match run(&long, &plain) {
        Err(e @ ModelError::PromptTooLong { tokens, context: 8192, .. }) => {
            assert!(tokens > 8192);
            println!("{e}");
        }
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
    // A 4 MB prompt: same error, no crash.
    let huge = "word ".repeat(800_000);
    assert!(matches!(run(&huge, &plain), Err(ModelError::PromptTooLong { .. })));

    let bad = GenerateOptions { sampling: SamplingOptions { top_p: 2.0, ..SamplingOptions::default() }, ..plain };
    assert!(matches!(run("hi", &bad), Err(ModelError::InvalidOption(_))));
}
