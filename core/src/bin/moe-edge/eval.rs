//! `moe-edge eval`: the quality table. For every model (the base model and each
//! expert) and every domain: bits per byte on the held-out test split, and the
//! exact-match rate on the held-out arithmetic problems. Writes
//! `models/quality.json` and a heat map PNG next to it.
//!
//! Each model's row is also saved under `<cache>/eval/<id>.json`, so the slow
//! base-model row can be measured once (`--models base`) while experts train,
//! and reused (`--reuse`) when the table is assembled.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use moe_edge::experts::arithmetic::{TEST_PROBLEMS, split_problems};
use moe_edge::experts::corpus::{self, Split};
use moe_edge::experts::eval::{QUALITY_MAPPING, arithmetic_exact_match, bits_per_byte, quality};
use moe_edge::experts::{DOMAINS, ExpertError};
use moe_edge::model::LocalModel;
use moe_edge::model::lora::is_adapter_dir;
use serde::{Deserialize, Serialize};

/// Arguments of `moe-edge eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// Models to measure: `base` and/or expert ids (default: all).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// The base model (default: $MOE_EDGE_BASE_MODEL).
    #[arg(long)]
    base: Option<PathBuf>,
    /// Directory holding `experts/<id>/`; `quality.json` and `quality.png` are written here.
    #[arg(long, default_value = "models")]
    models_dir: PathBuf,
    /// Bytes of each domain's test split scored (cut at a line end).
    #[arg(long, default_value_t = 16_384)]
    test_bytes: usize,
    /// Held-out arithmetic problems asked.
    #[arg(long, default_value_t = TEST_PROBLEMS)]
    problems: usize,
    /// Scoring window in tokens.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Reuse saved rows measured with the same settings.
    #[arg(long)]
    reuse: bool,
    /// Re-measure only the bits per byte on these domains, keeping each model's
    /// other columns and exact match from its saved row (when a domain's test
    /// text changed but the models did not).
    #[arg(long, value_delimiter = ',')]
    domains: Option<Vec<String>>,
    /// Only measure and save rows; do not write quality.json.
    #[arg(long)]
    rows_only: bool,
    /// Cache directory (default: $MOE_EDGE_CACHE or ~/.cache/moe-edge).
    #[arg(long)]
    cache: Option<PathBuf>,
}

/// One model's measurements.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Row {
    model: String,
    bits_per_byte: Vec<f64>,
    arithmetic_exact_match: f64,
    test_bytes: usize,
    problems: usize,
    window: usize,
    wrong_examples: Vec<(String, String)>,
}

/// Runs the subcommand.
pub fn run(args: EvalArgs) -> Result<()> {
    let cache = args.cache.clone().unwrap_or_else(corpus::cache_dir);
    let all: Vec<String> = std::iter::once("base".to_string()).chain(DOMAINS.iter().map(|d| d.to_string())).collect();
    let models = args.models.clone().unwrap_or_else(|| all.clone());
    let rows_dir = cache.join("eval");
    std::fs::create_dir_all(&rows_dir)?;
    let texts: Vec<String> = DOMAINS
        .iter()
        .map(|d| {
            corpus::read_split(&cache, d, Split::Test).map(|t| corpus::prefix_lines(&t, args.test_bytes).to_owned())
        })
        .collect::<Result<_, ExpertError>>()?;
    let problems: Vec<_> = split_problems(Split::Test).into_iter().take(args.problems).collect();
    for id in &models {
        let row_path = rows_dir.join(format!("{id}.json"));
        if let Some(domains) = &args.domains {
            let saved = read_row(&row_path)?.with_context(|| format!("--domains needs a saved row of {id}"))?;
            let row = remeasure(id, &args, &texts, domains, saved)?;
            std::fs::write(&row_path, serde_json::to_string_pretty(&row)? + "\n")?;
            eprintln!("{id}: bits/byte {:?}", row.bits_per_byte);
            continue;
        }
        if args.reuse
            && let Some(row) = read_row(&row_path)?
            && (row.test_bytes, row.problems, row.window) == (args.test_bytes, problems.len(), args.window)
        {
            eprintln!("{id}: reusing {}", row_path.display());
            continue;
        }
        let row = measure(id, &args, &texts, &problems)?;
        std::fs::write(&row_path, serde_json::to_string_pretty(&row)? + "\n")?;
        eprintln!("{id}: bits/byte {:?}, arithmetic exact match {:.3}", row.bits_per_byte, row.arithmetic_exact_match);
    }
    if args.rows_only {
        return Ok(());
    }
    let rows = all
        .iter()
        .map(|id| {
            read_row(&rows_dir.join(format!("{id}.json")))?.with_context(|| format!("no measurements of {id} yet"))
        })
        .collect::<Result<Vec<Row>>>()?;
    write_table(&args, &rows)
}

fn read_row(path: &Path) -> Result<Option<Row>> {
    if !path.is_file() {
        return Ok(None);
    }
    Ok(Some(serde_json::from_str(&std::fs::read_to_string(path)?)?))
}

fn bar(len: u64, prefix: String) -> Result<ProgressBar> {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {percent}% {msg} {elapsed}")?.progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    Ok(bar)
}

/// The model `id`: the base, an adapter over it, or a standalone expert.
fn load_model(id: &str, args: &EvalArgs) -> Result<LocalModel> {
    let base_path = || {
        args.base
            .clone()
            .or_else(|| std::env::var_os("MOE_EDGE_BASE_MODEL").map(PathBuf::from))
            .context("set MOE_EDGE_BASE_MODEL or --base (models/fetch-base-model.sh fetches it)")
    };
    let dir = args.models_dir.join("experts").join(id);
    Ok(if id == "base" {
        LocalModel::load(&base_path()?)?
    } else if is_adapter_dir(&dir) {
        LocalModel::load(&base_path()?)?.with_adapter(&dir).with_context(|| format!("loading {}", dir.display()))?
    } else {
        LocalModel::load(&dir).with_context(|| format!("loading {}", dir.display()))?
    })
}

/// Bits per byte of `model` on one domain's test text, with a progress bar.
fn domain_bits(id: &str, model: &LocalModel, domain: &str, text: &str, window: usize) -> Result<f64> {
    let bar = bar(1000, format!("{id} on {domain}"))?;
    let bits = bits_per_byte(model, text, window, &mut |f| bar.set_position((f * 1000.0) as u64))?;
    bar.finish_and_clear();
    Ok(bits)
}

fn measure(
    id: &str,
    args: &EvalArgs,
    texts: &[String],
    problems: &[moe_edge::experts::arithmetic::Problem],
) -> Result<Row> {
    let model = load_model(id, args)?;
    // The arithmetic expert writes a worked answer (about 60 tokens for 3 digits);
    // any other model answers directly, for which 32 tokens leave room to restate the problem.
    let max_tokens = if id == "arithmetic" { 192 } else { 32 };
    let bits = DOMAINS
        .iter()
        .zip(texts)
        .map(|(domain, text)| domain_bits(id, &model, domain, text, args.window))
        .collect::<Result<Vec<_>>>()?;
    let bar = bar(problems.len() as u64, format!("{id} arithmetic"))?;
    let mut done = 0;
    let em = arithmetic_exact_match(&model, problems, max_tokens, &mut |_| {
        done += 1;
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    Ok(Row {
        model: id.to_owned(),
        bits_per_byte: bits,
        arithmetic_exact_match: em.rate,
        test_bytes: args.test_bytes,
        problems: problems.len(),
        window: args.window,
        wrong_examples: em.wrong_examples,
    })
}

/// `saved` with its bits per byte on `domains` measured again.
fn remeasure(id: &str, args: &EvalArgs, texts: &[String], domains: &[String], saved: Row) -> Result<Row> {
    anyhow::ensure!(
        (saved.test_bytes, saved.window) == (args.test_bytes, args.window),
        "the saved row of {id} was measured with other settings; measure it whole"
    );
    let model = load_model(id, args)?;
    let mut row = saved;
    for domain in domains {
        let i = DOMAINS.iter().position(|d| d == domain).with_context(|| format!("unknown domain {domain:?}"))?;
        row.bits_per_byte[i] = domain_bits(id, &model, domain, &texts[i], args.window)?;
    }
    Ok(row)
}

fn write_table(args: &EvalArgs, rows: &[Row]) -> Result<()> {
    let domains: Vec<String> = DOMAINS.iter().map(|d| d.to_string()).collect();
    let models: Vec<String> = rows.iter().map(|r| r.model.clone()).collect();
    let round = |v: f64| (v * 1e4).round() / 1e4;
    let quality_rows: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            DOMAINS.iter().zip(&r.bits_per_byte).map(|(d, &b)| round(quality(d, b, r.arithmetic_exact_match))).collect()
        })
        .collect();
    let command = format!(
        "moe-edge eval --test-bytes {} --problems {} --window {}",
        args.test_bytes, rows[0].problems, args.window
    );
    let table = serde_json::json!({
        "domains": domains,
        "models": models,
        "quality": quality_rows,
        "bits_per_byte": rows.iter().map(|r| r.bits_per_byte.iter().map(|&b| round(b)).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "arithmetic_exact_match": rows.iter().map(|r| round(r.arithmetic_exact_match)).collect::<Vec<_>>(),
        "mapping": QUALITY_MAPPING,
        "measured": {
            "test_bytes_per_domain": args.test_bytes,
            "arithmetic_problems": rows[0].problems,
            "command": command,
        },
    });
    let out = args.models_dir.join("quality.json");
    std::fs::write(&out, serde_json::to_string_pretty(&table)? + "\n")?;
    let png = args.models_dir.join("quality.png");
    moe_edge::plot::heat_map(&png, "quality (0-10) per model and domain", &models, &domains, &quality_rows)?;
    println!("{}", serde_json::to_string_pretty(&table)?);
    eprintln!("wrote {} and {}", out.display(), png.display());
    Ok(())
}
