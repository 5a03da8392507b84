//! `moe-edge manifest`: hashes every committed model file under `models/`
//! (experts, standalone or LoRA adapters, gate, tokenizer, and any other model
//! listed by id) into
//! `models/manifest.json`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use moe_edge::experts::DOMAINS;
use moe_edge::manifest::Manifest;
use moe_edge::model::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, is_adapter_dir};

/// Arguments of `moe-edge manifest`.
#[derive(Args)]
pub struct ManifestArgs {
    /// The models directory.
    #[arg(long, default_value = "models")]
    models_dir: PathBuf,
}

/// Runs the subcommand.
pub fn run(args: ManifestArgs) -> Result<()> {
    let dir = &args.models_dir;
    let mut files = Vec::new();
    for domain in DOMAINS {
        let names = if is_adapter_dir(&dir.join("experts").join(domain)) {
            [ADAPTER_CONFIG, ADAPTER_WEIGHTS].as_slice()
        } else {
            ["config.json", "model.safetensors", "tokenizer.json"].as_slice()
        };
        for name in names {
            files.push((domain.to_string(), Some(domain.to_string()), format!("experts/{domain}/{name}")));
        }
    }
    for name in ["config.json", "gate.safetensors", "tokenizer.json"] {
        files.push(("gate".to_string(), None, format!("gate/{name}")));
    }
    files.push(("tokenizer".to_string(), None, "tokenizer.json".to_string()));
    if dir.join("policy.safetensors").is_file() {
        files.push(("policy".to_string(), None, "policy.safetensors".to_string()));
    }
    // Models of other work streams (e.g. the policy actor) are kept when already listed.
    if let Ok(existing) = Manifest::load(dir) {
        for e in existing.entries() {
            if !files.iter().any(|(_, _, f)| f == &e.file) && Path::new(dir).join(&e.file).is_file() {
                files.push((e.id.clone(), e.domain.clone(), e.file.clone()));
            }
        }
    }
    let manifest = Manifest::write(dir, &files)?;
    for e in manifest.entries() {
        println!("{:<12} {:>9} {}  {}", e.id, e.size, &e.sha256[..16], e.file);
    }
    Ok(())
}
