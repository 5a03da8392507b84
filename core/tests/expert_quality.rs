//! CI check of the committed experts and gate on a small, reproducible sample of
//! the held-out test splits (the first 4 KiB of each domain's test split and the
//! first 50 held-out arithmetic problems; the full measurement is
//! `moe-edge eval`, see models/quality.json), against the bars:
//! - specialization: on its own domain each expert has the lowest bits per byte
//!   of all experts;
//! - the experts of at least half of the domains beat the base model on their
//!   own domain;
//! - the arithmetic expert answers ≥ 90 % of all 500 held-out problems
//!   exactly (it is small and fast), above the base on the sample;
//! - the sample agrees with models/quality.json (bits per byte within 0.35);
//! - gate: top-1 accuracy ≥ 95 % on held-out labelled snippets.
//!
//! Needs the corpora (`core/scripts/fetch-corpora.sh`, run by `.ci/setup.sh`)
//! and the base model (`models/fetch-base-model.sh`).
#![cfg(feature = "train")]

mod common;

use std::path::{Path, PathBuf};

use moe_edge::experts::DOMAINS;
use moe_edge::experts::arithmetic::split_problems;
use moe_edge::experts::corpus::{self, Split};
use moe_edge::experts::eval::{arithmetic_exact_match, bits_per_byte};
use moe_edge::experts::gate_train::{GateTrainOptions, gate_accuracy, labelled_snippets};
use moe_edge::gate::Gate;
use moe_edge::model::LocalModel;

const SAMPLE_BYTES: usize = 4096;
const SAMPLE_PROBLEMS: usize = 50;

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn test_texts(full: bool) -> Vec<String> {
    let cache = corpus::cache_dir();
    DOMAINS
        .iter()
        .map(|d| {
            let text =
                corpus::read_split(&cache, d, Split::Test).expect("corpora fetched (core/scripts/fetch-corpora.sh)");
            if full { text } else { corpus::prefix_lines(&text, SAMPLE_BYTES).to_owned() }
        })
        .collect()
}

#[test]
fn committed_experts_meet_the_bars_on_a_sample() {
    let Some(base_path) = common::base_model() else { return };
    let base = LocalModel::load(&base_path).unwrap();
    let texts = test_texts(false);
    let problems: Vec<_> = split_problems(Split::Test).into_iter().take(SAMPLE_PROBLEMS).collect();
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(models().join("quality.json")).unwrap()).unwrap();
    let measure = |model: &LocalModel| -> Vec<f64> {
        texts.iter().map(|t| bits_per_byte(model, t, 256, &mut |_| {}).unwrap()).collect()
    };
    let base_bits = measure(&base);
    let mut bits = Vec::new(); // bits[expert][domain]
    for expert in DOMAINS {
        let dir = models().join("experts").join(expert);
        let model = LocalModel::load_expert(&dir, &base).unwrap();
        bits.push(measure(&model));
        if expert == "arithmetic" {
            let em = arithmetic_exact_match(&model, &problems, 192, &mut |_| {}).unwrap();
            let recorded = table["arithmetic_exact_match"][4].as_f64().unwrap();
            eprintln!("arithmetic exact match: expert {} (recorded {recorded})", em.rate);
            assert!((em.rate - recorded).abs() <= 0.15, "sample exact match {} vs recorded {recorded}", em.rate);
        }
    }
    let mut beat_base = 0;
    for (d, domain) in DOMAINS.iter().enumerate() {
        eprintln!(
            "{domain}: bits/byte of each expert {:?}, base {}",
            bits.iter().map(|b| b[d]).collect::<Vec<_>>(),
            base_bits[d]
        );
        for (e, other) in DOMAINS.iter().enumerate() {
            if e != d {
                assert!(bits[d][d] < bits[e][d], "{domain}: own expert {} vs {other} {}", bits[d][d], bits[e][d]);
            }
        }
        let recorded = table["bits_per_byte"][d + 1][d].as_f64().unwrap();
        assert!((bits[d][d] - recorded).abs() < 0.35, "{domain}: sample {} vs recorded {recorded}", bits[d][d]);
        beat_base += usize::from(bits[d][d] < base_bits[d]);
    }
    assert!(2 * beat_base >= DOMAINS.len(), "only {beat_base} of {} experts beat the base model", DOMAINS.len());
}

#[test]
fn arithmetic_expert_answers_nine_in_ten_exactly() {
    let Some(base_path) = common::base_model() else { return };
    let base = LocalModel::load(&base_path).unwrap();
    let problems = split_problems(Split::Test);
    let expert = LocalModel::load_expert(&models().join("experts/arithmetic"), &base).unwrap();
    let base_rate = arithmetic_exact_match(&base, &problems[..SAMPLE_PROBLEMS], 32, &mut |_| {}).unwrap().rate;
    let rate = arithmetic_exact_match(&expert, &problems, 192, &mut |_| {}).unwrap().rate;
    assert!(rate >= 0.9 && rate > base_rate, "arithmetic exact match {rate} (base {base_rate})");
}

#[test]
fn gate_is_accurate_on_held_out_snippets() {
    let texts = test_texts(true);
    let strs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let opts = GateTrainOptions::default();
    let snippets = labelled_snippets(&strs, opts.test_per_domain, opts.seed + 1);
    let gate = Gate::load(&models().join("gate")).unwrap();
    let accuracy = gate_accuracy(&gate, &snippets).unwrap();
    assert!(accuracy >= 0.95, "gate top-1 accuracy {accuracy}");
}
