//! `moe-edge train-policy`: trains the SAC placement actor in the edge-network
//! simulator, evaluates it against the baselines and the upper bound on
//! held-out scenarios, and writes the actor, a results JSON and two charts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use moe_edge::plot::{Series, bar_chart, line_chart};
use moe_edge::policy::sac::{EpisodeLog, SacConfig, Trainer};
use moe_edge::policy::sim::{Evaluation, ScenarioConfig, evaluate};
use moe_edge::policy::{ACTOR_FILE, Greedy, LocalOnly, Policy, QUALITY_FILE, QualityTable, RandomPolicy, SacActor};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Arguments of `moe-edge train-policy`.
#[derive(Args)]
pub struct TrainPolicyArgs {
    /// Directory holding quality.json; the actor is written there as policy.safetensors.
    #[arg(long, default_value = "models")]
    models_dir: PathBuf,
    /// Quality table to train on (default: <models-dir>/quality.json).
    #[arg(long)]
    quality: Option<PathBuf>,
    /// Train on a synthetic quality table with this seed instead (development only).
    #[arg(long, conflicts_with = "quality")]
    synthetic_quality: Option<u64>,
    /// Where the actor goes (default: <models-dir>/policy.safetensors).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directory for the results JSON and the two charts.
    #[arg(long, default_value = "models/policy-training")]
    results_dir: PathBuf,
    /// Training episodes (each of --requests-per-episode requests).
    #[arg(long)]
    episodes: Option<usize>,
    /// Requests per episode.
    #[arg(long)]
    requests_per_episode: Option<usize>,
    /// Discount between the subtasks of a request (default 1: the whole request's reward).
    #[arg(long)]
    gamma: Option<f32>,
    /// Seed of the whole run (initialisation, exploration, training scenarios); < 2^31.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Held-out scenarios for the final evaluation.
    #[arg(long, default_value_t = 1000)]
    eval_scenarios: usize,
    /// Draws per request of the expected-cost oracles (0: leave them out).
    #[arg(long, default_value_t = 64)]
    oracle_samples: usize,
    /// Do not train: evaluate the actor at --out (default models/policy.safetensors) and print the table.
    #[arg(long)]
    evaluate_only: bool,
}

/// Mean over all episodes and over the last tenth, per method (the paper's bar chart).
#[derive(Serialize)]
struct CurveSummary {
    method: String,
    mean_reward: f32,
    final_reward: f32,
}

/// Reads one method's reward from an episode log.
type Metric = fn(&EpisodeLog) -> f32;

/// Everything the run measured.
#[derive(Serialize)]
struct TrainPolicyResult {
    command: String,
    quality: QualityInfo,
    hyper_parameters: SacConfig,
    training_scenarios: String,
    reduced_scenarios: String,
    threads: usize,
    training_seconds: f64,
    actor_path: String,
    actor_bytes: u64,
    held_out: Evaluation,
    held_out_reduced: Evaluation,
    curve_summary: Vec<CurveSummary>,
    episodes: Vec<EpisodeLog>,
}

#[derive(Serialize)]
struct QualityInfo {
    source: String,
    sha256: Option<String>,
    mapping: String,
}

/// Runs `moe-edge train-policy`.
pub fn run(args: TrainPolicyArgs, threads: Option<usize>) -> Result<()> {
    let (table, quality) = match args.synthetic_quality {
        Some(seed) => {
            let t = QualityTable::synthetic(seed);
            let info = QualityInfo { source: format!("synthetic({seed})"), sha256: None, mapping: t.mapping.clone() };
            (t, info)
        }
        None => {
            let path = args.quality.clone().unwrap_or_else(|| args.models_dir.join(QUALITY_FILE));
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let t = QualityTable::load(&path)?;
            let sha = format!("{:x}", Sha256::digest(&bytes));
            (t.clone(), QualityInfo { source: path.display().to_string(), sha256: Some(sha), mapping: t.mapping })
        }
    };
    if args.evaluate_only {
        let actor = args.out.clone().unwrap_or_else(|| args.models_dir.join(ACTOR_FILE));
        let (e, r) = evaluate_held_out(&table, &actor, &args)?;
        print_evaluations(&e, &r);
        return Ok(());
    }
    let mut cfg = SacConfig { seed: args.seed, ..SacConfig::default() };
    cfg.episodes = args.episodes.unwrap_or(cfg.episodes);
    cfg.requests_per_episode = args.requests_per_episode.unwrap_or(cfg.requests_per_episode);
    cfg.gamma = args.gamma.unwrap_or(cfg.gamma);
    anyhow::ensure!(cfg.episodes > 0 && args.eval_scenarios > 0, "--episodes and --eval-scenarios must be positive");
    let train_cfg = ScenarioConfig::training();
    let mut trainer = Trainer::new(table.clone(), train_cfg, cfg.clone())?;

    let bar = ProgressBar::new(cfg.episodes as u64);
    bar.set_style(
        ProgressStyle::with_template("train-policy [{bar:30}] {pos}/{len} episodes {elapsed}/{eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let start = Instant::now();
    let mut logs = Vec::with_capacity(cfg.episodes);
    for _ in 0..cfg.episodes {
        let log = trainer.run_episode()?;
        bar.set_message(format!("sac {:.2} / upper bound {:.2}, α {:.3}", log.sac, log.upper_bound, log.alpha));
        bar.inc(1);
        logs.push(log);
    }
    let training_seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let out = args.out.clone().unwrap_or_else(|| args.models_dir.join(ACTOR_FILE));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    trainer.save_actor(&out)?;
    // Evaluate the actor exactly as shipped: read back from the file.
    let (held_out, held_out_reduced) = evaluate_held_out(&table, &out, &args)?;
    std::fs::create_dir_all(&args.results_dir).with_context(|| format!("creating {}", args.results_dir.display()))?;
    let methods: [(&str, Metric); 5] = [
        ("upper bound", |l| l.upper_bound),
        ("sac", |l| l.sac),
        ("greedy", |l| l.greedy),
        ("random", |l| l.random),
        ("local-only", |l| l.local_only),
    ];
    let tail = (logs.len() / 10).max(1);
    let curve_summary: Vec<CurveSummary> = methods
        .iter()
        .map(|(name, f)| CurveSummary {
            method: name.to_string(),
            mean_reward: logs.iter().map(f).sum::<f32>() / logs.len() as f32,
            final_reward: logs[logs.len() - tail..].iter().map(f).sum::<f32>() / tail as f32,
        })
        .collect();
    // Curves smoothed over a window of episodes so the trend is visible.
    let window = (logs.len() / 50).max(1);
    let series: Vec<Series> = methods
        .iter()
        .map(|(name, f)| Series {
            name: name.to_string(),
            points: (0..logs.len())
                .map(|i| {
                    let lo = i.saturating_sub(window - 1);
                    let v = logs[lo..=i].iter().map(f).sum::<f32>() / (i + 1 - lo) as f32;
                    (i as f64, v as f64)
                })
                .collect(),
        })
        .collect();
    let curve_png = args.results_dir.join("reward-vs-episode.png");
    line_chart(
        &curve_png,
        &format!("Mean request reward per training episode (moving average over {window})"),
        "episode",
        "reward",
        &series,
    )?;
    let bars_png = args.results_dir.join("reward-by-method.png");
    let categories: Vec<String> = curve_summary.iter().map(|c| c.method.clone()).collect();
    bar_chart(
        &bars_png,
        "Mean and final reward per method (training episodes)",
        "reward",
        &categories,
        &[
            ("mean".into(), curve_summary.iter().map(|c| c.mean_reward as f64).collect()),
            ("final".into(), curve_summary.iter().map(|c| c.final_reward as f64).collect()),
        ],
    )?;

    let result = TrainPolicyResult {
        // The program by its name, not its path on this machine.
        command: std::iter::once("moe-edge".to_string()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" "),
        quality,
        hyper_parameters: cfg,
        training_scenarios: format!("{train_cfg:?}"),
        reduced_scenarios: format!("{:?}", ScenarioConfig::reduced()),
        threads: threads.unwrap_or_else(candle_core::utils::get_num_threads),
        training_seconds,
        actor_path: out.display().to_string(),
        actor_bytes: std::fs::metadata(&out)?.len(),
        held_out,
        held_out_reduced,
        curve_summary,
        episodes: logs,
    };
    let json_path = args.results_dir.join("train-policy.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&result)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    print_summary(&result);
    println!("wrote {}, {}, {}, {}", out.display(), json_path.display(), curve_png.display(), bars_png.display());
    Ok(())
}

/// Scores the actor saved at `actor_path`, the baselines and the expected-cost
/// oracles on the held-out scenarios of the training setting and of the reduced one.
fn evaluate_held_out(
    table: &QualityTable,
    actor_path: &Path,
    args: &TrainPolicyArgs,
) -> Result<(Evaluation, Evaluation)> {
    let actor = SacActor::load(actor_path, table.clone())?;
    eprintln!("evaluating on {} held-out scenarios ...", args.eval_scenarios);
    let local = LocalOnly::new(table.clone());
    let random = RandomPolicy::new(table.clone(), args.seed);
    let greedy = Greedy::new(table.clone());
    let policies: [&dyn Policy; 4] = [&actor, &local, &random, &greedy];
    let (n, samples) = (args.eval_scenarios, args.oracle_samples);
    let e = evaluate(table, &ScenarioConfig::training(), n, &policies, samples)?;
    let r = evaluate(table, &ScenarioConfig::reduced(), n, &policies, samples)?;
    Ok((e, r))
}

fn print_summary(r: &TrainPolicyResult) {
    println!("trained in {:.0} s; actor {} bytes", r.training_seconds, r.actor_bytes);
    print_evaluations(&r.held_out, &r.held_out_reduced);
}

fn print_evaluations(held_out: &Evaluation, reduced: &Evaluation) {
    for (label, e) in [("held-out", held_out), ("held-out, fewer servers/experts", reduced)] {
        println!("{label} ({} scenarios): upper bound {:.3}", e.scenarios, e.upper_bound);
        for m in &e.methods {
            println!(
                "  {:<34} {:>8.3}  {:>6.1} % of upper bound",
                m.name,
                m.mean_reward,
                100.0 * m.fraction_of_upper_bound
            );
        }
    }
}
