//! CI check of the committed experts and gate on a small, reproducible sample of
//! the held-out test splits (the first 4 KiB of each domain's test split and the
//! first 50 held-out arithmetic problems; the full measurement is
//! `moe-edge eval`, see models/quality.json):
//! - specialization: on its own domain each expert has the lowest bits per byte
//!   of all experts;
//! - the sample agrees with models/quality.json (bits per byte within 0.35);
//! - gate: top-1 accuracy ≥ 95 % on held-out labelled snippets.
//!
//! Needs the corpora (`core/scripts/fetch-corpora.sh`, run by `.ci/setup.sh`).
#![cfg(feature = "train")]

use std::path::{Path, PathBuf};

use moe_edge::experts::DOMAINS;
use moe_edge::experts::arithmetic::split_problems;
use moe_edge::experts::corpus::{self, Split};
use moe_edge::experts::eval::{arithmetic_exact_match, bits_per_byte};
use moe_edge::experts::gate_train::{GateTrainOptions, gate_accuracy, labelled_snippets};
use moe_edge::gate::Gate;
use moe_edge::model::LocalModel;

const SAMPLE_BYTES: usize = 4096;

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
    let texts = test_texts(false);
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(models().join("quality.json")).unwrap()).unwrap();
    let mut bits = Vec::new(); // bits[expert][domain]
    for expert in DOMAINS {
        let model = LocalModel::load(&models().join("experts").join(expert)).unwrap();
        bits.push(texts.iter().map(|t| bits_per_byte(&model, t, 256, &mut |_| {}).unwrap()).collect::<Vec<f64>>());
        if expert == "arithmetic" {
            let problems: Vec<_> = split_problems(Split::Test).into_iter().take(50).collect();
            let em = arithmetic_exact_match(&model, &problems, 192, &mut |_| {}).unwrap();
            let recorded = table["arithmetic_exact_match"][4].as_f64().unwrap();
            assert!((em.rate - recorded).abs() <= 0.15, "sample exact match {} vs recorded {recorded}", em.rate);
        }
    }
    for (d, domain) in DOMAINS.iter().enumerate() {
        for (e, other) in DOMAINS.iter().enumerate() {
            if e != d {
                assert!(bits[d][d] < bits[e][d], "{domain}: own expert {} vs {other} {}", bits[d][d], bits[e][d]);
            }
        }
        let recorded = table["bits_per_byte"][d + 1][d].as_f64().unwrap();
        assert!((bits[d][d] - recorded).abs() < 0.35, "{domain}: sample {} vs recorded {recorded}", bits[d][d]);
    }
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
