//! A seeded simulator of the mobile edge network (feature `train`), in the
//! spirit of the paper: per request a random SNR per link gives a Shannon rate
//! for the transfer of prompt and answer, servers have an RTT, a load and a
//! queue, the phone is slower than the servers and pays energy to compute,
//! and quality comes from the quality table. Rewards follow
//! [`super::encode`]'s formula with the *realised* values (the answer's true
//! length, the link's SNR during the transfer), which the policy only sees as
//! estimates.
//!
//! Every draw below comes from a measured or published figure (cited at the
//! constant) or is a stated assumption; nothing here was tuned after seeing
//! how a policy scores.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::encode::{MAX_MODELS, RequestEncoder, deadline_s, normalised, pair_cost, pair_index, reward};
use super::{DeviceState, NodeState, Observation, Placement, Policy, PolicyError, QualityTable, SubtaskInfo};

/// Our measured decode speed of the base model on this 2-core machine, tokens/s
/// (`moe-edge bench`, SmolLM2-135M Q4_1, 2 threads).
pub const MEASURED_DECODE_TOK_S: f32 = 44.5;
/// Phone decode speed range, tokens/s: half to all of [`MEASURED_DECODE_TOK_S`]
/// (phones differ by SoC; an assumption anchored on our measurement).
pub const PHONE_TOK_S: (f32, f32) = (MEASURED_DECODE_TOK_S / 2.0, MEASURED_DECODE_TOK_S);
/// Edge decode speed range, tokens/s: from our own candle runtime (44.5) to
/// llama.cpp on the same 2-core machine with Q4_0 (164, measured side by side,
/// recorded in the project notes); an edge server is at least such a machine.
pub const EDGE_TOK_S: (f32, f32) = (MEASURED_DECODE_TOK_S, 164.0);
/// Channel bandwidth, MHz: one 20 MHz Wi-Fi channel (IEEE 802.11), the
/// narrowest common case.
pub const BANDWIDTH_MHZ: f32 = 20.0;
/// SNR range of a usable link, dB: −5 dB (cell edge, the low end of 5G NR
/// link adaptation) to 30 dB (a good Wi-Fi link; 25 dB+ is the usual
/// voice-grade Wi-Fi design target).
pub const SNR_DB: (f32, f32) = (-5.0, 30.0);
/// Change of the SNR between the probe and the transfer, dB (standard
/// deviation): 4 dB, the shadow-fading σ of 3GPP TR 38.901 UMi line-of-sight.
pub const SNR_FADING_DB: f32 = 4.0;
/// Round-trip time range to an edge server, ms: a few ms on Wi-Fi to tens of
/// ms on 5G (Narayanan et al., "A variegated look at 5G in the wild",
/// SIGCOMM 2021, report 5G RTTs of roughly 20–60 ms to nearby servers).
pub const RTT_MS: (f32, f32) = (5.0, 60.0);
/// Background load of an edge server: 0 to 80 % busy (assumption).
pub const EDGE_LOAD: (f32, f32) = (0.0, 0.8);
/// Requests queued ahead on an edge server: 0 to this many (assumption).
pub const EDGE_QUEUE_MAX: u32 = 4;
/// Prompt length range of a subtask, tokens (assumption; fits the base model's 2048-token window).
pub const PROMPT_TOKENS: (usize, usize) = (16, 1024);
/// Expected answer length range, tokens (assumption).
pub const OUTPUT_TOKENS: (usize, usize) = (16, 512);
/// Spread of the realised answer length around the expected one: log-normal
/// with this σ (assumption: the phone predicts the length to about ±30 %).
pub const OUTPUT_SPREAD: f32 = 0.3;
/// How sharply the gate singles out a subtask's main domain: logit boost of
/// the main domain over standard-normal noise (assumption).
pub const GATE_SHARPNESS: f32 = 3.0;
/// Probability that the phone is charging (assumption).
pub const CHARGING_PROB: f64 = 0.3;

/// What kind of network a scenario is drawn from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScenarioConfig {
    /// Edge servers within reach.
    pub servers: usize,
    /// Subtasks per request: 1 ..= this.
    pub max_subtasks: usize,
    /// Probability that the phone hosts a given domain expert (it always hosts "base").
    pub phone_expert_prob: f64,
    /// Probability that a server hosts a given model (each server hosts at least one).
    pub server_model_prob: f64,
}

impl ScenarioConfig {
    /// The setting the actor is trained on: 3 servers, up to 3 subtasks.
    pub fn training() -> Self {
        ScenarioConfig { servers: 3, max_subtasks: 3, phone_expert_prob: 0.25, server_model_prob: 0.5 }
    }

    /// Fewer servers and experts than in training: 1 server hosting fewer
    /// models, and the phone with the base model only.
    pub fn reduced() -> Self {
        ScenarioConfig { servers: 1, max_subtasks: 3, phone_expert_prob: 0.0, server_model_prob: 0.3 }
    }
}

/// One request in one network state: what the phone observes, and what
/// actually happens (the realised answer lengths and link rates).
#[derive(Debug, Clone)]
pub struct Scenario {
    /// What the policy sees.
    pub obs: Observation,
    /// Realised answer length per subtask, tokens.
    pub output_tokens: Vec<f32>,
    /// Realised goodput per node during the transfer, Mbit/s (0 for the phone).
    pub goodput_mbps: Vec<f32>,
}

/// Shannon rate in Mbit/s of a `BANDWIDTH_MHZ` channel at `snr_db`.
pub fn shannon_mbps(snr_db: f32) -> f32 {
    BANDWIDTH_MHZ * (1.0 + 10f32.powf(snr_db / 10.0)).log2()
}

fn normal(rng: &mut StdRng) -> f32 {
    // Box–Muller.
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

impl Scenario {
    /// Draws the scenario numbered `seed` (the same seed gives the same scenario).
    pub fn sample(table: &QualityTable, config: &ScenarioConfig, seed: u64) -> Scenario {
        let mut rng = StdRng::seed_from_u64(seed);
        let experts: Vec<&String> = table.models.iter().filter(|m| *m != "base").collect();
        let mut phone_hosted = vec!["base".to_string()];
        phone_hosted
            .extend(experts.iter().filter(|_| rng.random_bool(config.phone_expert_prob)).map(|s| s.to_string()));
        let mut nodes = vec![NodeState {
            rtt_ms: 0.0,
            goodput_mbps: 0.0,
            load: 0.0,
            queue: 0,
            hosted: phone_hosted,
            tokens_per_s: rng.random_range(PHONE_TOK_S.0..PHONE_TOK_S.1),
        }];
        let mut goodput = vec![0.0];
        for _ in 0..config.servers {
            let mut hosted: Vec<String> =
                table.models.iter().filter(|_| rng.random_bool(config.server_model_prob)).cloned().collect();
            if hosted.is_empty() {
                hosted.push(table.models[rng.random_range(0..table.models.len())].clone());
            }
            let snr = rng.random_range(SNR_DB.0..SNR_DB.1);
            let measured = shannon_mbps(snr);
            goodput.push(shannon_mbps(snr + SNR_FADING_DB * normal(&mut rng)));
            nodes.push(NodeState {
                rtt_ms: rng.random_range(RTT_MS.0..RTT_MS.1),
                goodput_mbps: measured,
                load: rng.random_range(EDGE_LOAD.0..EDGE_LOAD.1),
                queue: rng.random_range(0..=EDGE_QUEUE_MAX),
                hosted,
                tokens_per_s: rng.random_range(EDGE_TOK_S.0..EDGE_TOK_S.1),
            });
        }
        let device = DeviceState {
            battery: rng.random_range(0.05..1.0),
            charging: rng.random_bool(CHARGING_PROB),
            thermal: rng.random_range(0.0..1.0),
        };
        let n_sub = rng.random_range(1..=config.max_subtasks);
        let mut subtasks = Vec::with_capacity(n_sub);
        let mut output_tokens = Vec::with_capacity(n_sub);
        for _ in 0..n_sub {
            let main = rng.random_range(0..table.domains.len());
            let logits: Vec<f32> = (0..table.domains.len())
                .map(|d| normal(&mut rng) + if d == main { GATE_SHARPNESS } else { 0.0 })
                .collect();
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let gate = normalised(&logits.iter().map(|l| (l - max).exp()).collect::<Vec<_>>());
            let expected = rng.random_range(OUTPUT_TOKENS.0..=OUTPUT_TOKENS.1);
            subtasks.push(SubtaskInfo {
                gate,
                prompt_tokens: rng.random_range(PROMPT_TOKENS.0..=PROMPT_TOKENS.1),
                expected_output_tokens: expected,
            });
            output_tokens.push((expected as f32 * (OUTPUT_SPREAD * normal(&mut rng)).exp()).max(1.0));
        }
        Scenario { obs: Observation { subtasks, nodes, device }, output_tokens, goodput_mbps: goodput }
    }

    /// The realised reward of each subtask under `placements` (same order as
    /// the subtasks; each subtask sees the earlier ones placed on its node).
    pub fn subtask_rewards(&self, table: &QualityTable, placements: &[Placement]) -> Result<Vec<f32>, PolicyError> {
        if placements.len() != self.obs.subtasks.len() {
            return Err(PolicyError::InvalidObservation(format!(
                "{} placements for {} subtasks",
                placements.len(),
                self.obs.subtasks.len()
            )));
        }
        let mut idx = Vec::with_capacity(placements.len());
        for (s, p) in placements.iter().enumerate() {
            let m = table.model_index(&p.expert);
            let hosted = self.obs.nodes.get(p.node).is_some_and(|n| n.hosted.contains(&p.expert));
            match m {
                Some(m) if hosted && (p.node == 0 || self.obs.nodes[p.node].goodput_mbps > 0.0) => {
                    idx.push(pair_index(m, p.node))
                }
                _ => return Err(PolicyError::NoAvailablePair(s)),
            }
        }
        let mut placed = vec![0u32; self.obs.nodes.len()];
        Ok(idx.iter().enumerate().map(|(s, &i)| self.pair_reward(table, s, i, &mut placed)).collect())
    }

    /// The realised reward of subtask `s` on pair `i`, counting `placed` jobs
    /// of this request already on each node (and recording this one).
    fn pair_reward(&self, table: &QualityTable, s: usize, i: usize, placed: &mut [u32]) -> f32 {
        let (m, n) = (i % MAX_MODELS, i / MAX_MODELS);
        let sub = &self.obs.subtasks[s];
        let node = &self.obs.nodes[n];
        let cost = pair_cost(
            n,
            node,
            &self.obs.device,
            sub.prompt_tokens as f32,
            self.output_tokens[s],
            self.goodput_mbps[n],
            node.queue + placed[n],
        );
        placed[n] += 1;
        let quality = table.expected_quality(m, &normalised(&sub.gate));
        reward(quality, &cost, deadline_s(sub.expected_output_tokens.max(1) as f32), &self.obs.device)
    }

    /// The upper bound: exhaustive search over every combination of available
    /// pairs for the whole request, scored with the realised costs.
    pub fn upper_bound(&self, table: &QualityTable) -> Result<f32, PolicyError> {
        let encoder = RequestEncoder::new(table, &self.obs)?;
        let pairs: Vec<usize> = (0..self.obs.nodes.len())
            .flat_map(|n| (0..table.models.len()).map(move |m| (m, n)))
            .filter(|&(m, n)| encoder.hosts(n, m))
            .map(|(m, n)| pair_index(m, n))
            .collect();
        if pairs.is_empty() && !self.obs.subtasks.is_empty() {
            return Err(PolicyError::NoAvailablePair(0));
        }
        let options = vec![pairs; self.obs.subtasks.len()];
        let mut choice = vec![0usize; options.len()];
        let mut best = f32::NEG_INFINITY;
        loop {
            let mut placed = vec![0u32; self.obs.nodes.len()];
            let total: f32 =
                choice.iter().enumerate().map(|(s, &c)| self.pair_reward(table, s, options[s][c], &mut placed)).sum();
            best = best.max(total);
            // Next combination (odometer order).
            let mut s = 0;
            loop {
                if s == choice.len() {
                    return Ok(best);
                }
                choice[s] += 1;
                if choice[s] < options[s].len() {
                    break;
                }
                choice[s] = 0;
                s += 1;
            }
        }
    }
}

/// Mean request reward of a policy and of the upper bound over the scenarios
/// with the given seeds.
pub fn mean_reward(
    table: &QualityTable,
    config: &ScenarioConfig,
    seeds: impl Iterator<Item = u64>,
    policy: &dyn Policy,
) -> Result<f32, PolicyError> {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for seed in seeds {
        let sc = Scenario::sample(table, config, seed);
        sum += sc.subtask_rewards(table, &policy.decide(&sc.obs)?)?.iter().sum::<f32>() as f64;
        n += 1;
    }
    Ok((sum / n.max(1) as f64) as f32)
}

/// Mean upper-bound request reward over the scenarios with the given seeds.
pub fn mean_upper_bound(
    table: &QualityTable,
    config: &ScenarioConfig,
    seeds: impl Iterator<Item = u64>,
) -> Result<f32, PolicyError> {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for seed in seeds {
        sum += Scenario::sample(table, config, seed).upper_bound(table)? as f64;
        n += 1;
    }
    Ok((sum / n.max(1) as f64) as f32)
}

/// First seed of the held-out evaluation scenarios; training seeds are all below it.
pub const EVAL_SEED_BASE: u64 = 1 << 63;

/// One method's score on the held-out scenarios.
#[derive(Debug, Clone, Serialize)]
pub struct MethodScore {
    /// The policy's name.
    pub name: String,
    /// Mean request reward.
    pub mean_reward: f32,
    /// `mean_reward / upper_bound`.
    pub fraction_of_upper_bound: f32,
}

/// Every method's mean reward on `scenarios` held-out scenarios
/// (seeds `EVAL_SEED_BASE ..`), next to the upper bound's.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Number of scenarios (one request each).
    pub scenarios: usize,
    /// Mean upper-bound request reward.
    pub upper_bound: f32,
    /// One score per policy, in the order given.
    pub methods: Vec<MethodScore>,
}

impl Evaluation {
    /// The score of the method called `name`.
    pub fn score(&self, name: &str) -> Option<&MethodScore> {
        self.methods.iter().find(|m| m.name == name)
    }
}

/// Scores `policies` and the upper bound on held-out scenarios.
pub fn evaluate(
    table: &QualityTable,
    config: &ScenarioConfig,
    scenarios: usize,
    policies: &[&dyn Policy],
) -> Result<Evaluation, PolicyError> {
    let seeds = || (0..scenarios as u64).map(|i| EVAL_SEED_BASE + i);
    let upper_bound = mean_upper_bound(table, config, seeds())?;
    let methods = policies
        .iter()
        .map(|p| {
            let mean_reward = mean_reward(table, config, seeds(), *p)?;
            Ok(MethodScore {
                name: p.name().to_string(),
                mean_reward,
                fraction_of_upper_bound: mean_reward / upper_bound,
            })
        })
        .collect::<Result<_, PolicyError>>()?;
    Ok(Evaluation { scenarios, upper_bound, methods })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Greedy, LocalOnly, RandomPolicy};

    #[test]
    fn scenarios_are_seeded() {
        let t = QualityTable::synthetic(1);
        let c = ScenarioConfig::training();
        let a = Scenario::sample(&t, &c, 5);
        assert_eq!(a.obs, Scenario::sample(&t, &c, 5).obs);
        assert_ne!(a.obs, Scenario::sample(&t, &c, 6).obs);
        assert_eq!(a.obs.nodes.len(), 4);
        assert!(a.obs.nodes[0].hosted.contains(&"base".to_string()));
    }

    #[test]
    fn shannon_rate_matches_the_formula() {
        // 20 MHz at 0 dB (SNR 1): 20 · log2(2) = 20 Mbit/s.
        assert!((shannon_mbps(0.0) - 20.0).abs() < 1e-4);
        assert!((shannon_mbps(30.0) - 20.0 * 1001f32.log2()).abs() < 1e-2);
    }

    #[test]
    fn upper_bound_dominates_every_policy() {
        let t = QualityTable::synthetic(1);
        let c = ScenarioConfig::training();
        let policies: Vec<Box<dyn Policy>> = vec![
            Box::new(LocalOnly::new(t.clone())),
            Box::new(Greedy::new(t.clone())),
            Box::new(RandomPolicy::new(t.clone(), 3)),
        ];
        for seed in 0..200 {
            let sc = Scenario::sample(&t, &c, seed);
            let ub = sc.upper_bound(&t).unwrap();
            for p in &policies {
                let r: f32 = sc.subtask_rewards(&t, &p.decide(&sc.obs).unwrap()).unwrap().iter().sum();
                assert!(r <= ub + 1e-4, "{} beat the upper bound on seed {seed}: {r} > {ub}", p.name());
            }
        }
    }

    #[test]
    fn rejects_placements_on_nodes_that_do_not_host_the_expert() {
        let t = QualityTable::synthetic(1);
        let sc = Scenario::sample(&t, &ScenarioConfig::reduced(), 1);
        let wrong: Vec<Placement> =
            sc.obs.subtasks.iter().map(|_| Placement { expert: "nobody".into(), node: 0 }).collect();
        assert!(sc.subtask_rewards(&t, &wrong).is_err());
        assert!(sc.subtask_rewards(&t, &[]).is_err());
    }
}
