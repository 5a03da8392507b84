//! Expert training: a smoke run on a tiny shape shows the loss going down, and
//! the training forward agrees with the inference runtime (`LocalModel::load`)
//! on the saved weights, for a fresh tiny model and for the committed standalone
//! (arithmetic) expert.
#![cfg(feature = "train")]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use moe_edge::experts::arithmetic::split_problems;
use moe_edge::experts::corpus::Split;
use moe_edge::experts::model::{ExpertConfig, TrainModel};
use moe_edge::experts::train::{TrainOptions, TrainPaths, encode_text, train};
use moe_edge::gate::QUESTION_START;
use moe_edge::model::LocalModel;
use moe_edge::model::lora::is_adapter_dir;

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moe-edge-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn tokenizer() -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(repo("models/tokenizer.json")).expect("committed tokenizer")
}

/// Largest |a − b| between the training forward and the runtime on `ids`.
fn max_logit_difference(dir: &Path, ids: &[u32]) -> f32 {
    let runtime = LocalModel::load(dir).expect("runtime loads the saved expert");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let shape = ExpertConfig {
        vocab_size: cfg["vocab_size"].as_u64().unwrap() as usize,
        hidden_size: cfg["hidden_size"].as_u64().unwrap() as usize,
        intermediate_size: cfg["intermediate_size"].as_u64().unwrap() as usize,
        num_layers: cfg["num_hidden_layers"].as_u64().unwrap() as usize,
        num_heads: cfg["num_attention_heads"].as_u64().unwrap() as usize,
        context_length: cfg["max_position_embeddings"].as_u64().unwrap() as usize,
        rope_theta: cfg["rope_theta"].as_f64().unwrap() as f32,
    };
    let trained = TrainModel::load(shape, &dir.join("model.safetensors")).unwrap();
    let input = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let expected = trained.forward(&input).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    let mut cache = runtime.llama().new_cache(ids.len());
    let got = runtime.llama().forward(ids, &mut cache, true).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!((got.len(), got[0].len()), (expected.len(), expected[0].len()));
    let scale = expected.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.01, "logits are not all ~0 (scale {scale})");
    got.iter().flatten().zip(expected.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// Tolerance on logits: the runtime rounds Q, K, V and the attention
/// probabilities to f16 (relative error 2^-11 ≈ 5e-4 each) and accumulates the
/// RMS norm in f64; through 2–4 layers with logits of magnitude ≲ 20 this gives
/// differences of order 1e-3–1e-2, while any real mismatch (a transposed
/// weight, a wrong rotary layout, a missing norm) changes logits by ≳ 0.1.
const LOGIT_TOLERANCE: f32 = 2e-2;

#[test]
fn smoke_training_lowers_the_loss_and_the_runtime_agrees() {
    let tok = tokenizer();
    let text = |split| split_problems(split).iter().take(400).map(|p| p.document()).collect::<String>();
    let (train_ids, valid_ids) = (
        encode_text(&tok, &text(Split::Train), Some(QUESTION_START)).unwrap(),
        encode_text(&tok, &text(Split::Valid), Some(QUESTION_START)).unwrap(),
    );
    let model = TrainModel::new(ExpertConfig::tiny(tok.get_vocab_size(true)), 3).unwrap();
    let dir = temp_dir("smoke-expert");
    let opts = TrainOptions {
        steps: 40,
        batch: 8,
        lr: 1e-2,
        warmup: 5,
        eval_every: 40,
        eval_sequences: 8,
        ..Default::default()
    };
    let paths = TrainPaths {
        out: dir.join("final"),
        checkpoints: dir.join("checkpoint"),
        tokenizer: Some(repo("models/tokenizer.json")),
        loss_png: Some(dir.join("loss.png")),
    };
    let report = train(&model, &train_ids, &valid_ids, &opts, &paths, &mut |_| {}).unwrap();
    let mean = |s: &[(usize, f32)]| s.iter().map(|x| x.1).sum::<f32>() / s.len() as f32;
    let (first, last) = (mean(&report.train[..5]), mean(&report.train[35..]));
    assert!(last < first - 1.0, "loss should fall by more than 1 nat: {first} -> {last}");
    assert!(report.valid[0].1 < (tok.get_vocab_size(true) as f32).ln() - 1.0, "validation beats uniform");
    assert!(std::fs::read(dir.join("loss.png")).unwrap().starts_with(b"\x89PNG"));
    let mut ids =
        tok.encode_fast(split_problems(Split::Test)[0].document().as_str(), false).unwrap().get_ids().to_vec();
    ids.truncate(64);
    let diff = max_logit_difference(&dir.join("final"), &ids);
    assert!(diff < LOGIT_TOLERANCE, "training and inference logits differ by {diff}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn committed_arithmetic_expert_matches_its_training_forward() {
    // The one standalone expert; the LoRA adapters have their own check in `lora_adapter.rs`.
    let dir = repo("models/experts/arithmetic");
    assert!(!is_adapter_dir(&dir), "the arithmetic expert is a standalone model");
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    // Text of its own domain: off-domain bytes drive the trained expert's logits
    // far beyond the magnitudes the tolerance is derived for.
    let text: String = split_problems(Split::Valid).iter().take(3).map(|p| p.document()).collect();
    let ids = tok.encode_fast(text.as_str(), true).unwrap().get_ids().to_vec();
    let diff = max_logit_difference(&dir, &ids);
    assert!(diff < LOGIT_TOLERANCE, "training and inference logits differ by {diff}");
}

/// Each arithmetic problem is one training document, BOS first, so that the
/// model trains on exactly the ids it sees at inference: the question as the
/// runtime encodes it (with BOS), then the answer line.
#[test]
fn arithmetic_documents_are_encoded_as_at_inference() {
    let tok = tokenizers::Tokenizer::from_file(repo("models/experts/arithmetic/tokenizer.json")).unwrap();
    let problems: Vec<_> = split_problems(Split::Valid).into_iter().take(3).collect();
    let text: String = problems.iter().map(|p| p.document()).collect();
    let ids = encode_text(&tok, &text, Some(QUESTION_START)).unwrap();
    let mut expected = Vec::new();
    for p in &problems {
        let prompt = tok.encode_fast(p.prompt(), true).unwrap().get_ids().to_vec();
        let document = tok.encode_fast(p.document(), true).unwrap().get_ids().to_vec();
        assert!(document.starts_with(&prompt), "the answer continues the prompt's ids");
        expected.extend(document);
    }
    assert_eq!(ids, expected);
    // Without a document start the text is one document: a single BOS.
    let single = encode_text(&tok, &text, None).unwrap();
    assert_eq!(single.iter().filter(|&&id| id == 0).count(), 1);
}
