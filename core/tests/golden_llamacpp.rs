//! Golden test against llama.cpp on the base model (SmolLM2-135M-Instruct Q4_1).
//!
//! The expected values in `fixtures/golden/smollm2-135m-q4_1.json` (and the full
//! logits vector next to it) were produced once with llama-cpp-python 0.3.36 by
//! `python core/scripts/golden_reference.py` (2 threads, n_batch 512, F16 KV
//! cache, greedy argmax over raw logits); the fixture's README says more.
//!
//! Checked: the chat template renders the identical prompt string, the tokenizer
//! gives the identical ids, our top-5 next-token ids equal llama.cpp's in order,
//! every logit agrees within `MAX_LOGIT_DIFF` (and on average within
//! `MEAN_LOGIT_DIFF`), and the 32-token greedy
//! continuation is identical.

mod common;

use moe_edge::model::{LocalModel, argmax};
use serde::Deserialize;

/// Largest allowed |ours − llama.cpp| over the whole logits vector, and the
/// largest allowed mean |ours − llama.cpp|.
///
/// Justification, measured by `golden_reference.py` and stored in the fixture
/// (`llama_cpp_self_sensitivity`): llama.cpp's own logits for this prompt move by
/// up to 0.84 (mean 0.14) when it evaluates the prompt token by token instead of
/// in one batch, because its kernels round differently on the two paths; this
/// 30-layer model amplifies last-bit differences. A second implementation cannot
/// be held closer than llama.cpp is to itself, so the bounds are that spread plus
/// about 20 %. The sharp checks are the exact top-5 order and the exact greedy
/// continuation.
const MAX_LOGIT_DIFF: f32 = 1.0;
/// See [`MAX_LOGIT_DIFF`].
const MEAN_LOGIT_DIFF: f64 = 0.2;

#[derive(Deserialize)]
struct Golden {
    messages: Vec<Message>,
    rendered_prompt: String,
    prompt_ids: Vec<u32>,
    top20_ids: Vec<u32>,
    vocab_size: usize,
    greedy_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Message {
    content: String,
}

fn golden() -> Golden {
    let text = std::fs::read_to_string(common::fixture("golden/smollm2-135m-q4_1.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn reference_logits(vocab: usize) -> Vec<f32> {
    let bytes = std::fs::read(common::fixture("golden/smollm2-135m-q4_1.logits.f32")).unwrap();
    assert_eq!(bytes.len(), vocab * 4);
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn top_k(logits: &[f32], k: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    ids.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    ids.truncate(k);
    ids
}

#[test]
fn matches_llama_cpp_on_the_base_model() {
    let Some(path) = common::base_model() else { return };
    let golden = golden();
    let model = LocalModel::load(&path).unwrap();

    let user = &golden.messages[0].content;
    assert_eq!(model.render_prompt(user, true).unwrap(), golden.rendered_prompt, "chat template rendering");
    let ids = model.prompt_tokens(user, true).unwrap();
    assert_eq!(ids, golden.prompt_ids, "prompt tokenization");

    let llama = model.llama();
    let mut cache = llama.new_cache(ids.len() + golden.greedy_ids.len());
    let logits = llama.forward(&ids, &mut cache, false).unwrap().to_vec1::<f32>().unwrap();
    let reference = reference_logits(golden.vocab_size);
    assert_eq!(logits.len(), reference.len());
    let max_diff = logits.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let mean_diff =
        logits.iter().zip(&reference).map(|(a, b)| f64::from((a - b).abs())).sum::<f64>() / logits.len() as f64;
    println!("logits vs llama.cpp: max |diff| {max_diff:.5}, mean |diff| {mean_diff:.6}");

    let mut greedy = vec![argmax(&logits)];
    while greedy.len() < golden.greedy_ids.len() {
        let step = llama.forward(&greedy[greedy.len() - 1..], &mut cache, false).unwrap();
        greedy.push(argmax(&step.to_vec1::<f32>().unwrap()));
    }
    println!("top-5 ours {:?} llama.cpp {:?}", top_k(&logits, 5), &golden.top20_ids[..5]);
    println!("greedy ours {greedy:?}");
    assert_eq!(top_k(&logits, 5), golden.top20_ids[..5], "top-5 next-token ids");
    assert!(max_diff <= MAX_LOGIT_DIFF, "max logit difference {max_diff} > {MAX_LOGIT_DIFF}");
    assert!(mean_diff <= MEAN_LOGIT_DIFF, "mean logit difference {mean_diff} > {MEAN_LOGIT_DIFF}");
    assert_eq!(greedy, golden.greedy_ids, "32-token greedy continuation");
}
