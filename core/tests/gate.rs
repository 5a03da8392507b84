//! The committed gate and manifest: the gate loads, scores obvious prompts of
//! each domain correctly, rejects blank text and corrupt files; every committed
//! model file matches its manifest entry.

use std::path::{Path, PathBuf};

use moe_edge::gate::{Gate, GateError};
use moe_edge::manifest::{Manifest, ManifestError};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

#[test]
fn gate_routes_obvious_snippets() {
    let gate = Gate::load(&models().join("gate")).unwrap();
    assert_eq!(gate.domains(), ["prose", "definitions", "code", "arithmetic"]);
    let cases = [
        ("A fool and his money are soon parted.\n\t\t-- Proverb\n%\n", "prose"),
        ("    n 1: a domesticated carnivorous mammal [syn: {dog}, {domestic dog}]\n", "definitions"),
        ("def parse(self, path):\n    with open(path) as f:\n        return json.load(f)\n", "code"),
        ("Q: 482+97\nA:", "arithmetic"),
    ];
    for (text, domain) in cases {
        let p = gate.probabilities(text).unwrap();
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let best = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(gate.domains()[best], domain, "{text:?} -> {p:?}");
    }
    assert!(matches!(gate.probabilities("  \n"), Err(GateError::EmptyText)));
    let huge = "word ".repeat(1_000_000);
    assert_eq!(gate.probabilities(&huge).unwrap().len(), 4, "long input is truncated, not rejected");
}

#[test]
fn corrupt_gate_files_are_typed_errors() {
    let dir = std::env::temp_dir().join(format!("moe-edge-bad-gate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "gate.safetensors"] {
        std::fs::copy(models().join("gate").join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("gate.safetensors"), b"not safetensors").unwrap();
    assert!(matches!(Gate::load(&dir), Err(GateError::Invalid { .. })));
    std::fs::write(dir.join("config.json"), b"{\"domains\": []}").unwrap();
    assert!(matches!(Gate::load(&dir), Err(GateError::Invalid { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_committed_model_matches_the_manifest() {
    let manifest = Manifest::load(&models()).unwrap();
    for id in ["prose", "definitions", "code", "arithmetic", "gate", "tokenizer", "policy"] {
        let path = manifest.verify(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(path.exists());
    }
    assert_eq!(manifest.verify("prose").unwrap(), models().join("experts/prose"));
    assert!(matches!(manifest.verify("nope"), Err(ManifestError::UnknownId(_))));
}
