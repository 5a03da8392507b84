//! LoRA adapters over the base model: the training forward and the runtime give
//! the same logits on a saved adapter, a few training steps lower the loss, and
//! malformed adapters are refused with typed errors.
#![cfg(feature = "train")]

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::Optimizer;
use moe_edge::experts::lora::{LoraShape, LoraTrainModel};
use moe_edge::experts::train::Trainable;
use moe_edge::model::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use moe_edge::model::{LocalModel, ModelError};

/// Tolerance on the mean |logit difference|: the runtime multiplies Q4_1
/// weights with activations quantized to 8 bits (as llama.cpp does) and rounds
/// attention operands to f16, while the training forward runs the dequantized
/// weights in f32; over 30 layers that moves logits by about 0.25 on average
/// (measured), whether or not an adapter is applied.
const MEAN_LOGIT_TOLERANCE: f32 = 0.5;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moe-edge-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn runtime_logits(model: &LocalModel, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.llama().new_cache(ids.len());
    model.llama().forward(ids, &mut cache, true).unwrap().to_vec2().unwrap()
}

fn mean_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let n = a.iter().map(Vec::len).sum::<usize>() as f32;
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).sum::<f32>() / n
}

/// Mean negative log-likelihood (nats) of each next token of `ids` under `logits`.
fn nll(logits: &[Vec<f32>], ids: &[u32]) -> f32 {
    let total: f32 = ids[1..]
        .iter()
        .zip(logits)
        .map(|(&target, row)| {
            let max = row.iter().copied().fold(f32::MIN, f32::max);
            let log_z = row.iter().map(|x| (x - max).exp()).sum::<f32>().ln() + max;
            log_z - row[target as usize]
        })
        .sum();
    total / (ids.len() - 1) as f32
}

fn saved_adapter(base: &Path, name: &str) -> (LoraTrainModel, PathBuf) {
    let model = LoraTrainModel::new(base, LoraShape { rank: 4, alpha: 8.0, context_length: 24 }, 1).unwrap();
    model.perturb(2, 0.2).unwrap();
    let dir = temp_dir(name);
    model.save(&dir).unwrap();
    (model, dir)
}

#[test]
fn training_forward_and_runtime_agree_on_a_saved_adapter() {
    let Some(base_path) = common::base_model() else { return };
    let (model, dir) = saved_adapter(&base_path, "lora-logits");
    let base = LocalModel::load(&base_path).unwrap();
    let adapted = base.with_adapter(&dir).unwrap();
    let question = "What is gravity?";
    assert_eq!(adapted.render_prompt(question, true).unwrap(), base.render_prompt(question, true).unwrap());
    let ids = base.tokenizer().encode("Gravity: the force that attracts a body toward the centre", true).unwrap();

    let trained: Vec<Vec<f32>> = model
        .forward(&Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap())
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    let runtime = runtime_logits(&adapted, &ids);
    let effect = mean_difference(&runtime, &runtime_logits(&base, &ids));
    let difference = mean_difference(&trained, &runtime);
    let (nll_trained, nll_runtime) = (nll(&trained, &ids), nll(&runtime, &ids));
    eprintln!(
        "mean |logit change| by the adapter {effect}; training forward vs runtime {difference}; \
         next-token loss {nll_trained} vs {nll_runtime}"
    );
    assert!(effect > 2.0 * MEAN_LOGIT_TOLERANCE, "the adapter must visibly change the logits ({effect})");
    assert!(difference < MEAN_LOGIT_TOLERANCE, "training forward and runtime differ by {difference} on average");
    assert!((nll_trained - nll_runtime).abs() < 0.03 * nll_runtime, "losses {nll_trained} vs {nll_runtime}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_few_adapter_steps_lower_the_loss_on_a_repeated_text() {
    let Some(base_path) = common::base_model() else { return };
    let model = LoraTrainModel::new(&base_path, LoraShape { rank: 4, alpha: 8.0, context_length: 16 }, 3).unwrap();
    let tokenizer = LocalModel::load(&base_path).unwrap().tokenizer().clone();
    let ids = tokenizer.encode("zq7 blorp wix: a made-up word, defined here to be learned quickly", false).unwrap();
    let window = Tensor::new(&ids[..17], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let vars: Vec<_> = model.vars().iter().map(|(_, v)| v.clone()).collect();
    let mut opt = candle_nn::AdamW::new(vars, candle_nn::ParamsAdamW { lr: 1e-2, ..Default::default() }).unwrap();
    let first = model.loss(&window).unwrap().to_scalar::<f32>().unwrap();
    for _ in 0..4 {
        let loss = model.loss(&window).unwrap();
        opt.backward_step(&loss).unwrap();
    }
    let last = model.loss(&window).unwrap().to_scalar::<f32>().unwrap();
    eprintln!("loss {first} -> {last}");
    assert!(last < 0.9 * first, "loss went from {first} to {last}");
}

#[test]
fn malformed_adapters_are_refused_with_typed_errors() {
    let Some(base_path) = common::base_model() else { return };
    let (_, dir) = saved_adapter(&base_path, "lora-bad");
    let base = LocalModel::load(&base_path).unwrap();
    let config = std::fs::read_to_string(dir.join(ADAPTER_CONFIG)).unwrap();

    std::fs::write(dir.join(ADAPTER_CONFIG), config.replace("\"v_proj\"", "\"q_proj\"")).unwrap();
    assert!(matches!(base.with_adapter(&dir), Err(ModelError::Unsupported(_))));
    std::fs::write(dir.join(ADAPTER_CONFIG), "{ not json").unwrap();
    assert!(matches!(base.with_adapter(&dir), Err(ModelError::Invalid { .. })));
    std::fs::write(dir.join(ADAPTER_CONFIG), &config).unwrap();
    assert!(matches!(LocalModel::load(&dir), Err(ModelError::Invalid { .. })), "an adapter is not a model");
    std::fs::write(dir.join(ADAPTER_WEIGHTS), b"truncated").unwrap();
    assert!(matches!(base.with_adapter(&dir), Err(ModelError::Invalid { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(base.with_adapter(&dir), Err(ModelError::Io { .. })));
}

#[cfg(feature = "server")]
#[test]
fn an_edge_server_hosts_an_adapter_only_with_the_base() {
    use moe_edge::server::{EdgeConfig, ExpertEntry, ServerError, ServerSettings, load_experts};
    let Some(base_path) = common::base_model() else { return };
    let (_, dir) = saved_adapter(&base_path, "lora-server");
    let entry = |id: &str, path: &Path| ExpertEntry { id: id.into(), path: path.to_path_buf() };
    let config = |experts| EdgeConfig {
        state_dir: dir.join("state"),
        settings: ServerSettings { tokens: vec!["t".into()], ..ServerSettings::default() },
        experts,
    };
    let alone = config(vec![entry("prose", &dir)]);
    assert!(matches!(load_experts(&alone, &mut |_, _| {}), Err(ServerError::Config(_))));
    // The adapter may come first: the base is loaded before it either way.
    let hosted = load_experts(&config(vec![entry("prose", &dir), entry("base", &base_path)]), &mut |_, _| {}).unwrap();
    assert_eq!(hosted.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["prose", "base"]);
    assert!(
        hosted.iter().all(|(_, model)| model.chat_template().is_some()),
        "an adapter keeps the base's chat template"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
