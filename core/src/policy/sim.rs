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

use super::encode::{MAX_MODELS, MAX_NODES, RequestEncoder, normalised, pair_cost, pair_index, reward};
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
/// Range of the answer cap (`max_tokens`) an app asks for, tokens
/// (assumption). The runtime reports the cap as the expected output length.
pub const OUTPUT_TOKENS: (usize, usize) = (16, 512);
/// Median length of an answer left to end on its own, tokens: a log-normal
/// fitted (maximum likelihood, answers at the cap counted as censored) to our
/// measurement of the base model answering 24 everyday prompts 4 times each
/// through its chat template (`moe-edge generate --chat`, temperature 0.8,
/// cap 512): 96 answers of 8 to 512 tokens, 8 at the cap; median 120 tokens,
/// σ of the logarithm 1.17. Reproduce with
/// `core/scripts/answer_lengths.py --samples 4 --max-tokens 512`.
pub const ANSWER_TOKENS_MEDIAN: f32 = 120.0;
/// σ of the logarithm of an answer's length around its prompt's typical
/// length (asking the same prompt again with another seed): 0.56, pooled over
/// the 24 prompts of the measurement above (answers at the cap counted at it).
pub const ANSWER_LOG_SIGMA_WITHIN_PROMPT: f32 = 0.56;
/// σ of the logarithm of a prompt's typical answer length from one prompt to
/// the next: the rest of the measured spread, √(1.17² − 0.56²) = 1.03.
pub const ANSWER_LOG_SIGMA_BETWEEN_PROMPTS: f32 = 1.03;

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

    /// A setup drawn from `seed` between the reduced setting and this one:
    /// 1 ..= `servers` servers, and hosting probabilities drawn between the
    /// reduced setting's and this one's. Training on such setups teaches the
    /// actor the smaller networks its masks allow.
    pub fn varied(&self, seed: u64) -> Self {
        // A stream of its own, apart from the scenario's draws from the same seed.
        let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
        let low = ScenarioConfig::reduced();
        let servers = rng.random_range(1..=self.servers.max(1));
        let mut between = |a: f64, b: f64| if a < b { rng.random_range(a..=b) } else { a };
        ScenarioConfig {
            servers,
            max_subtasks: self.max_subtasks,
            phone_expert_prob: between(low.phone_expert_prob, self.phone_expert_prob),
            server_model_prob: between(low.server_model_prob, self.server_model_prob),
        }
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
    /// Typical answer length of each subtask's prompt, tokens (the median over
    /// re-asking it): what a perfect length predictor would tell the phone.
    /// The phone does not see it; only an oracle yardstick is told it.
    pub typical_output_tokens: Vec<f32>,
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

/// The typical answer length of a prompt, tokens: log-normal around
/// [`ANSWER_TOKENS_MEDIAN`] with σ [`ANSWER_LOG_SIGMA_BETWEEN_PROMPTS`].
fn typical_answer_tokens(rng: &mut StdRng) -> f32 {
    ANSWER_TOKENS_MEDIAN * (ANSWER_LOG_SIGMA_BETWEEN_PROMPTS * normal(rng)).exp()
}

/// A realised answer length to a prompt whose answers are typically `typical`
/// tokens long, capped at `cap` tokens: the model's own length (σ
/// [`ANSWER_LOG_SIGMA_WITHIN_PROMPT`] around `typical`), cut at the cap.
fn answer_tokens(typical: f32, cap: usize, rng: &mut StdRng) -> f32 {
    (typical * (ANSWER_LOG_SIGMA_WITHIN_PROMPT * normal(rng)).exp()).clamp(1.0, cap.max(1) as f32)
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
        let mut typical_output_tokens = Vec::with_capacity(n_sub);
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
            let typical = typical_answer_tokens(&mut rng);
            output_tokens.push(answer_tokens(typical, expected, &mut rng));
            typical_output_tokens.push(typical);
        }
        Scenario {
            obs: Observation { subtasks, nodes, device },
            output_tokens,
            typical_output_tokens,
            goodput_mbps: goodput,
        }
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
        outcome_reward(table, &self.obs, &self.output_tokens, &self.goodput_mbps, s, i, placed)
    }

    /// The upper bound: exhaustive search over every combination of available
    /// pairs for the whole request, scored with the realised costs.
    pub fn upper_bound(&self, table: &QualityTable) -> Result<f32, PolicyError> {
        let pairs = available_pairs(table, &self.obs)?;
        let (best, _) = best_joint(&pairs, self.obs.subtasks.len(), self.obs.nodes.len(), |s, i, placed| {
            self.pair_reward(table, s, i, placed)
        });
        Ok(best)
    }
}

/// The reward of subtask `s` on pair `i` when the answers turn out
/// `output_tokens` long and the links carry `goodput_mbps`, counting `placed`
/// jobs of this request already on each node (and recording this one).
fn outcome_reward(
    table: &QualityTable,
    obs: &Observation,
    output_tokens: &[f32],
    goodput_mbps: &[f32],
    s: usize,
    i: usize,
    placed: &mut [u32],
) -> f32 {
    let (m, n) = (i % MAX_MODELS, i / MAX_MODELS);
    let sub = &obs.subtasks[s];
    let node = &obs.nodes[n];
    let cost = pair_cost(
        n,
        node,
        &obs.device,
        sub.prompt_tokens as f32,
        output_tokens[s],
        goodput_mbps[n],
        node.queue + placed[n],
    );
    placed[n] += 1;
    let quality = table.expected_quality(m, &normalised(&sub.gate));
    reward(quality, &cost, output_tokens[s], &obs.device)
}

/// The pair indices any subtask of `obs` may use (the same for every subtask).
fn available_pairs(table: &QualityTable, obs: &Observation) -> Result<Vec<usize>, PolicyError> {
    let encoder = RequestEncoder::new(table, obs)?;
    let pairs: Vec<usize> = (0..obs.nodes.len())
        .flat_map(|n| (0..table.models.len()).map(move |m| (m, n)))
        .filter(|&(m, n)| encoder.hosts(n, m))
        .map(|(m, n)| pair_index(m, n))
        .collect();
    if pairs.is_empty() && !obs.subtasks.is_empty() {
        return Err(PolicyError::NoAvailablePair(0));
    }
    Ok(pairs)
}

/// Exhaustive search over every assignment of `pairs` to `subtasks` subtasks:
/// the best total of `reward(s, pair, placed)` (subtasks scored in order,
/// `placed` counting this request's jobs per node) and the pairs that reach it.
fn best_joint(
    pairs: &[usize],
    subtasks: usize,
    nodes: usize,
    mut reward: impl FnMut(usize, usize, &mut [u32]) -> f32,
) -> (f32, Vec<usize>) {
    let mut choice = vec![0usize; subtasks];
    let (mut best, mut best_choice) = (f32::NEG_INFINITY, Vec::new());
    let mut placed = vec![0u32; nodes];
    loop {
        placed.iter_mut().for_each(|p| *p = 0);
        let total: f32 = choice.iter().enumerate().map(|(s, &c)| reward(s, pairs[c], &mut placed)).sum();
        if total > best {
            best = total;
            best_choice = choice.iter().map(|&c| pairs[c]).collect();
        }
        // Next combination (odometer order).
        let mut s = 0;
        loop {
            if s == choice.len() {
                return (best, best_choice);
            }
            choice[s] += 1;
            if choice[s] < pairs.len() {
                break;
            }
            choice[s] = 0;
            s += 1;
        }
    }
}

/// The SNR in dB at which a `BANDWIDTH_MHZ` channel carries `mbps` (the
/// inverse of [`shannon_mbps`]).
pub fn snr_db_for(mbps: f32) -> f32 {
    10.0 * (2f32.powf(mbps / BANDWIDTH_MHZ) - 1.0).max(1e-6).log10()
}

/// The best any policy that sees only the observation can do, estimated: for
/// each request, the placement with the highest *expected* reward, where the
/// expectation is over what the phone cannot see (each link's fading around
/// its measured SNR, each answer's length below its cap, drawn as
/// [`Scenario::sample`] draws them), estimated from `samples` draws shared by
/// all candidate placements. `joint` searches every combination for the whole
/// request; otherwise the subtasks are placed one after another, each on its
/// own best pair given the earlier ones (what a per-subtask policy such as the
/// SAC actor can at best do). Far too slow to deploy; a yardstick only.
pub struct ExpectedCostOracle {
    table: QualityTable,
    samples: usize,
    joint: bool,
}

impl ExpectedCostOracle {
    /// An oracle over `table` averaging `samples` draws; `joint` as above.
    pub fn new(table: QualityTable, samples: usize, joint: bool) -> Self {
        ExpectedCostOracle { table, samples: samples.max(1), joint }
    }

    /// The placement with the highest expected reward in `sc` when the oracle
    /// is also told each prompt's typical answer length
    /// ([`Scenario::typical_output_tokens`]), as a perfect length predictor
    /// would tell the phone: the best any policy deciding before the answers
    /// are sampled can do.
    pub fn decide_knowing_typical_lengths(&self, sc: &Scenario) -> Result<Vec<Placement>, PolicyError> {
        self.decide_given(&sc.obs, Some(&sc.typical_output_tokens))
    }

    /// `samples` draws of (answer length per subtask, goodput per node) given
    /// `obs`, and given each prompt's typical answer length if known.
    fn draws(&self, obs: &Observation, typical: Option<&[f32]>) -> Vec<(Vec<f32>, Vec<f32>)> {
        // Fixed seed: the same observation always gets the same draws.
        let mut rng = StdRng::seed_from_u64(0x0c05_7e57);
        (0..self.samples)
            .map(|_| {
                let out = obs
                    .subtasks
                    .iter()
                    .enumerate()
                    .map(|(s, sub)| {
                        let typical = typical.map_or_else(|| typical_answer_tokens(&mut rng), |t| t[s]);
                        answer_tokens(typical, sub.expected_output_tokens, &mut rng)
                    })
                    .collect();
                let goodput = obs
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(n, node)| {
                        if n == 0 || node.goodput_mbps <= 0.0 {
                            node.goodput_mbps
                        } else {
                            shannon_mbps(snr_db_for(node.goodput_mbps) + SNR_FADING_DB * normal(&mut rng))
                        }
                    })
                    .collect();
                (out, goodput)
            })
            .collect()
    }

    /// The placement with the highest expected reward given `obs` and, if
    /// known, each prompt's typical answer length.
    fn decide_given(&self, obs: &Observation, typical: Option<&[f32]>) -> Result<Vec<Placement>, PolicyError> {
        let t = &self.table;
        let pairs = available_pairs(t, obs)?;
        let draws = self.draws(obs, typical);
        let nodes = obs.nodes.len();
        // Mean reward over the draws of subtask `s` on pair `i` with `placed` jobs ahead.
        let expected = |s: usize, i: usize, placed: &mut [u32]| {
            let mut scratch = [0u32; MAX_NODES];
            let sum: f32 = draws
                .iter()
                .map(|(out, goodput)| {
                    scratch[..nodes].copy_from_slice(placed);
                    outcome_reward(t, obs, out, goodput, s, i, &mut scratch[..nodes])
                })
                .sum();
            placed[i / MAX_MODELS] += 1;
            sum / draws.len() as f32
        };
        let chosen = if self.joint {
            best_joint(&pairs, obs.subtasks.len(), nodes, expected).1
        } else {
            let mut placed = vec![0u32; nodes];
            let mut chosen = Vec::with_capacity(obs.subtasks.len());
            for s in 0..obs.subtasks.len() {
                let score = |i: usize| expected(s, i, &mut placed.clone());
                let best = pairs.iter().copied().max_by(|&a, &b| score(a).total_cmp(&score(b)));
                let best = best.ok_or(PolicyError::NoAvailablePair(s))?;
                placed[best / MAX_MODELS] += 1;
                chosen.push(best);
            }
            chosen
        };
        let mut encoder = RequestEncoder::new(t, obs)?;
        Ok(chosen.into_iter().map(|i| encoder.place(i)).collect())
    }
}

impl Policy for ExpectedCostOracle {
    fn name(&self) -> &str {
        if self.joint { "expected-cost oracle" } else { "expected-cost oracle (per subtask)" }
    }

    fn decide(&self, obs: &Observation) -> Result<Vec<Placement>, PolicyError> {
        self.decide_given(obs, None)
    }
}

/// Mean request reward of a policy over the given scenarios.
pub fn mean_reward_on(table: &QualityTable, scenarios: &[Scenario], policy: &dyn Policy) -> Result<f32, PolicyError> {
    mean_reward_deciding(table, scenarios, |sc| policy.decide(&sc.obs))
}

/// Mean request reward over `scenarios` of the placements `decide` makes.
fn mean_reward_deciding(
    table: &QualityTable,
    scenarios: &[Scenario],
    decide: impl Fn(&Scenario) -> Result<Vec<Placement>, PolicyError>,
) -> Result<f32, PolicyError> {
    let mut sum = 0.0f64;
    for sc in scenarios {
        sum += sc.subtask_rewards(table, &decide(sc)?)?.iter().sum::<f32>() as f64;
    }
    Ok((sum / scenarios.len().max(1) as f64) as f32)
}

/// Mean upper-bound request reward over the given scenarios.
pub fn mean_upper_bound_on(table: &QualityTable, scenarios: &[Scenario]) -> Result<f32, PolicyError> {
    let mut sum = 0.0f64;
    for sc in scenarios {
        sum += sc.upper_bound(table)? as f64;
    }
    Ok((sum / scenarios.len().max(1) as f64) as f32)
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

/// Name of the joint expected-cost oracle that is told each prompt's typical
/// answer length ([`ExpectedCostOracle::decide_knowing_typical_lengths`]).
pub const ORACLE_KNOWING_TYPICAL_LENGTHS: &str = "oracle knowing typical lengths";

/// Scores `policies` and the upper bound on `scenarios` held-out scenarios
/// (seeds `EVAL_SEED_BASE ..`). With `oracle_samples > 0` the expected-cost
/// oracles (joint, per subtask, and joint knowing each prompt's typical answer
/// length) are scored after them, each averaging that many draws.
pub fn evaluate(
    table: &QualityTable,
    config: &ScenarioConfig,
    scenarios: usize,
    policies: &[&dyn Policy],
    oracle_samples: usize,
) -> Result<Evaluation, PolicyError> {
    let held_out: Vec<Scenario> =
        (0..scenarios as u64).map(|i| Scenario::sample(table, config, EVAL_SEED_BASE + i)).collect();
    let upper_bound = mean_upper_bound_on(table, &held_out)?;
    let score = |name: &str, mean_reward: f32| MethodScore {
        name: name.to_string(),
        mean_reward,
        fraction_of_upper_bound: mean_reward / upper_bound,
    };
    let mut methods = Vec::with_capacity(policies.len() + 3);
    for p in policies {
        methods.push(score(p.name(), mean_reward_on(table, &held_out, *p)?));
    }
    if oracle_samples > 0 {
        let joint = ExpectedCostOracle::new(table.clone(), oracle_samples, true);
        let sequential = ExpectedCostOracle::new(table.clone(), oracle_samples, false);
        for oracle in [&joint, &sequential] {
            methods.push(score(oracle.name(), mean_reward_on(table, &held_out, oracle)?));
        }
        let knowing = mean_reward_deciding(table, &held_out, |sc| joint.decide_knowing_typical_lengths(sc))?;
        methods.push(score(ORACLE_KNOWING_TYPICAL_LENGTHS, knowing));
    }
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
    fn snr_for_a_rate_inverts_shannon() {
        for snr in [-5.0, 0.0, 12.5, 30.0] {
            assert!((snr_db_for(shannon_mbps(snr)) - snr).abs() < 1e-2, "{snr}");
        }
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
            Box::new(ExpectedCostOracle::new(t.clone(), 8, true)),
            Box::new(ExpectedCostOracle::new(t.clone(), 8, false)),
        ];
        for seed in 0..200 {
            let sc = Scenario::sample(&t, &c, seed);
            let ub = sc.upper_bound(&t).unwrap();
            for p in &policies {
                let r: f32 = sc.subtask_rewards(&t, &p.decide(&sc.obs).unwrap()).unwrap().iter().sum();
                assert!(r <= ub + 1e-4, "{} beat the upper bound on seed {seed}: {r} > {ub}", p.name());
            }
            let knowing = ExpectedCostOracle::new(t.clone(), 8, true).decide_knowing_typical_lengths(&sc).unwrap();
            let r: f32 = sc.subtask_rewards(&t, &knowing).unwrap().iter().sum();
            assert!(r <= ub + 1e-4, "the oracle knowing typical lengths beat the upper bound on seed {seed}");
        }
    }

    #[test]
    fn expected_cost_oracle_beats_the_baselines_and_joint_search_helps() {
        let t = QualityTable::synthetic(1);
        let c = ScenarioConfig::training();
        let scenarios: Vec<Scenario> = (0..150).map(|seed| Scenario::sample(&t, &c, EVAL_SEED_BASE + seed)).collect();
        let joint = mean_reward_on(&t, &scenarios, &ExpectedCostOracle::new(t.clone(), 16, true)).unwrap();
        let sequential = mean_reward_on(&t, &scenarios, &ExpectedCostOracle::new(t.clone(), 16, false)).unwrap();
        let greedy = mean_reward_on(&t, &scenarios, &Greedy::new(t.clone())).unwrap();
        let local = mean_reward_on(&t, &scenarios, &LocalOnly::new(t.clone())).unwrap();
        let upper = mean_upper_bound_on(&t, &scenarios).unwrap();
        let oracle = ExpectedCostOracle::new(t.clone(), 16, true);
        let knowing = mean_reward_deciding(&t, &scenarios, |sc| oracle.decide_knowing_typical_lengths(sc)).unwrap();
        assert!(joint > greedy && joint > local, "oracle {joint} vs greedy {greedy}, local-only {local}");
        assert!(joint >= sequential - 0.05, "joint {joint} well below per-subtask {sequential}");
        assert!(knowing > joint, "knowing typical lengths ({knowing}) did not help the oracle ({joint})");
        assert!(knowing <= upper, "oracle {knowing} above the upper bound {upper}");
    }

    #[test]
    fn varied_setups_stay_between_reduced_and_full() {
        let full = ScenarioConfig::training();
        let servers: Vec<usize> = (0..300).map(|seed| full.varied(seed).servers).collect();
        assert!((1..=full.servers).all(|n| servers.contains(&n)));
        for seed in 0..300 {
            let v = full.varied(seed);
            assert_eq!(v, full.varied(seed));
            assert!((0.0..=full.phone_expert_prob).contains(&v.phone_expert_prob));
            assert!(
                (ScenarioConfig::reduced().server_model_prob..=full.server_model_prob).contains(&v.server_model_prob)
            );
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
