//! Streaming generation on the base model: UTF-8 safe pieces, stop conditions,
//! seeds, cancellation from another thread, and concurrent use.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use moe_edge::model::{CancelToken, GenerateOptions, LocalModel, SamplingOptions, StopReason, argmax};

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions { sampling: SamplingOptions::greedy(), max_tokens, stop: Vec::new(), chat: true }
}

/// Runs `generate` and returns the pieces it streamed.
fn stream(
    model: &LocalModel,
    prompt: &str,
    options: &GenerateOptions,
) -> (Vec<String>, moe_edge::model::GenerationReport) {
    let mut pieces = Vec::new();
    let report = model.generate(prompt, options, &mut |p| pieces.push(p.to_owned()), &CancelToken::new()).unwrap();
    (pieces, report)
}

/// The greedy continuation computed without the streaming layer: forward, argmax,
/// decode all ids at once at the end.
fn reference_greedy_text(model: &LocalModel, prompt: &str, max_tokens: usize) -> String {
    let llama = model.llama();
    let ids = model.prompt_tokens(prompt, true).unwrap();
    let mut cache = llama.new_cache(ids.len() + max_tokens);
    let mut logits = llama.forward(&ids, &mut cache, false).unwrap();
    let mut out = Vec::new();
    for _ in 0..max_tokens {
        let token = argmax(&logits.to_vec1::<f32>().unwrap());
        if model.tokenizer().eos_ids().contains(&token) {
            break;
        }
        out.push(token);
        logits = llama.forward(&[token], &mut cache, false).unwrap();
    }
    model.tokenizer().decode(&out).unwrap()
}

#[test]
fn utf8_stream_with_emoji_and_cjk_is_lossless() {
    let Some(path) = common::base_model() else { return };
    let model = LocalModel::load(&path).unwrap();
    for prompt in
        ["Repeat exactly: 🦀🚀🎉 東京 漢字 かな 한국어", "Translate to Chinese and Japanese: good morning, friend 👋"]
    {
        let (pieces, report) = stream(&model, prompt, &greedy(48));
        let streamed = pieces.concat();
        println!("{prompt:?} -> {streamed:?} ({} pieces, {:?})", pieces.len(), report.stop_reason);
        assert!(pieces.iter().all(|p| !p.is_empty()));
        assert!(!streamed.is_ascii(), "expected non-ASCII output for {prompt:?}");
        assert_eq!(streamed, reference_greedy_text(&model, prompt, 48));
    }
    // Token by token, a multi-byte character split over several tokens is held back.
    let text = "🦀🚀 東京 漢字";
    let ids = model.tokenizer().encode(text, false).unwrap();
    assert!(ids.len() > text.chars().count() / 2);
    let mut decoder = moe_edge::model::Utf8Decoder::default();
    let joined: String = ids.iter().map(|&id| decoder.push(model.tokenizer().token_bytes(id))).collect();
    assert_eq!(joined + &decoder.finish(), text);
}

#[test]
fn stops_seeds_and_reports() {
    let Some(path) = common::base_model() else { return };
    let model = LocalModel::load(&path).unwrap();
    let prompt = "What is the capital of France? Answer in one sentence.";
    let (pieces, report) = stream(&model, prompt, &greedy(64));
    // Expected values from llama.cpp (fixtures/golden/smollm2-135m-q4_1.json): the greedy
    // text up to its first EOS, and `n_prompt_tokens` of the same chat prompt.
    assert_eq!(pieces.concat(), "The capital of France is Paris.");
    assert_eq!(report.stop_reason, StopReason::EndOfSequence);
    assert_eq!(report.prompt_tokens, 42);
    assert!(report.prefill_tokens_per_s > 0.0 && report.decode_tokens_per_s > 0.0);
    assert!(report.time_to_first_token.as_nanos() > 0);

    let with_stop = GenerateOptions { stop: vec![" Paris".into()], ..greedy(64) };
    let (pieces, report) = stream(&model, prompt, &with_stop);
    assert_eq!((pieces.concat().as_str(), report.stop_reason), ("The capital of France is", StopReason::StopString));

    let (_, report) = stream(&model, prompt, &greedy(3));
    assert_eq!((report.generated_tokens, report.stop_reason), (3, StopReason::MaxTokens));

    let sampled = |seed| {
        let options = GenerateOptions {
            sampling: SamplingOptions { temperature: 1.0, seed, ..SamplingOptions::default() },
            max_tokens: 24,
            ..GenerateOptions::default()
        };
        stream(&model, "Write a short poem about the sea.", &options).0.concat()
    };
    assert_eq!(sampled(11), sampled(11), "same seed, same text");
    assert_ne!(sampled(11), sampled(12), "another seed, another text");
}

#[test]
fn cancel_from_another_thread_stops_within_one_token() {
    let Some(path) = common::base_model() else { return };
    let model = LocalModel::load(&path).unwrap();
    let cancel = CancelToken::new();
    let streamed = AtomicUsize::new(0);
    let options = GenerateOptions { chat: false, ..greedy(4000) };
    let (report, seen_at_cancel) = std::thread::scope(|s| {
        let canceller = s.spawn(|| {
            while streamed.load(Ordering::SeqCst) < 5 {
                std::thread::yield_now();
            }
            let seen = streamed.load(Ordering::SeqCst);
            cancel.cancel();
            (seen, Instant::now())
        });
        let report = model
            .generate(
                "Count from one to one thousand: one, two, three,",
                &options,
                &mut |_| {
                    streamed.fetch_add(1, Ordering::SeqCst);
                },
                &cancel,
            )
            .unwrap();
        let returned = Instant::now();
        let (seen, cancelled_at) = canceller.join().unwrap();
        assert!(returned >= cancelled_at);
        (report, seen)
    });
    println!("pieces seen at cancel: {seen_at_cancel}, tokens generated: {}", report.generated_tokens);
    assert_eq!(report.stop_reason, StopReason::Cancelled);
    // Each piece is at least one token; at the moment of cancelling at most one more
    // forward pass can be in flight, so at most one token follows the cancel.
    assert!(report.generated_tokens <= seen_at_cancel + 1, "{} tokens after {seen_at_cancel}", report.generated_tokens);
}

#[test]
fn one_model_serves_several_threads_at_once() {
    let Some(path) = common::base_model() else { return };
    let model = LocalModel::load(&path).unwrap();
    let prompts = ["Name three colours.", "What is 2 + 2?", "Say hello in French."];
    let alone: Vec<String> = prompts.iter().map(|p| stream(&model, p, &greedy(16)).0.concat()).collect();
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts.iter().map(|p| s.spawn(|| stream(&model, p, &greedy(16)).0.concat())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(alone, together);
}
