//! Discrete Soft Actor-Critic with action masking, in candle (feature `train`).
//!
//! One readable file in the style of CleanRL's `sac_atari.py`
//! (Christodoulou, "Soft Actor-Critic for Discrete Action Settings", 2019):
//! an actor π(a|s), twin soft Q critics Q₁, Q₂ with target copies updated by
//! Polyak averaging, an automatically tuned entropy temperature α, and a
//! replay buffer. Every hyper-parameter is in [`SacConfig`].
//!
//! **State and action.** A state is one subtask of a request, encoded as a
//! feature row per (model, node) pair with a mask ([`super::encode`]); an
//! action is one available pair. Actor and critics are each one small MLP
//! applied to every pair's row, so `π(·|s) = softmax` over the available
//! pairs' outputs and `Q(s, ·)` is the critic's output per pair; unavailable
//! pairs get probability 0 and are left out of every sum. A request of k
//! subtasks is an episode of k steps (the next state is the next subtask,
//! which sees where this one went); the last step is terminal.
//!
//! **Losses** (B = batch, A(s) = available pairs of s):
//!
//! ```text
//! V(s')       = Σ_{a∈A(s')} π(a|s') · (min_i Q̄_i(s', a) − α log π(a|s'))
//! y           = r + γ (1 − done) V(s')
//! L_Q         = mean_B (Q₁(s, a) − y)² + (Q₂(s, a) − y)²
//! L_π         = mean_B Σ_{a∈A(s)} π(a|s) · (α log π(a|s) − min_i Q_i(s, a))
//! L_α         = mean_B log α · (H(π(·|s)) − H̄(s)),   H̄(s) = κ · ln |A(s)|
//! Q̄_i        ← τ Q_i + (1 − τ) Q̄_i
//! ```
//!
//! At run time the actor's most probable pair is taken ([`super::SacActor`]).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Linear, Module, Optimizer, ParamsAdamW, VarBuilder, VarMap, linear};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::encode::{Encoded, MAX_PAIRS, PAIR_FEATURES, RequestEncoder};
use super::sim::{Scenario, ScenarioConfig, mean_reward_on, mean_upper_bound_on};
use super::{Greedy, LocalOnly, Policy, PolicyError, QualityTable, RandomPolicy, SacActor};

/// Every hyper-parameter of the trainer.
#[derive(Debug, Clone, Serialize)]
pub struct SacConfig {
    /// Seed of network initialisation, exploration and the training scenarios.
    pub seed: u64,
    /// Training episodes; one episode is `requests_per_episode` requests.
    pub episodes: usize,
    /// Requests (each one fresh scenario) per episode.
    pub requests_per_episode: usize,
    /// Replay buffer capacity, in transitions (subtasks).
    pub buffer_size: usize,
    /// Transitions per gradient step.
    pub batch_size: usize,
    /// Discount between the subtasks of one request (requests are
    /// independent). 1 by default: a placement is worth its own reward plus
    /// the later subtasks' rewards, which it changes by crowding their nodes.
    /// With 0 the critic's target is the subtask's own reward (a contextual
    /// bandit), and the actor cannot learn to leave a node to a later subtask.
    pub gamma: f32,
    /// Polyak averaging rate of the target critics.
    pub tau: f32,
    /// Adam learning rate of the actor.
    pub actor_lr: f64,
    /// Adam learning rate of the critics.
    pub critic_lr: f64,
    /// Adam learning rate of log α.
    pub alpha_lr: f64,
    /// Initial entropy temperature α.
    pub initial_alpha: f32,
    /// κ: target entropy as a fraction of the maximum, ln |A(s)|.
    pub target_entropy_scale: f32,
    /// Transitions collected with the random initial actor before learning.
    pub learning_starts: usize,
    /// Gradient steps after each request once learning has started.
    pub updates_per_request: usize,
    /// Width of the actor's two hidden layers (it ships: keep it small).
    pub actor_hidden: usize,
    /// Width of each critic's two hidden layers.
    pub critic_hidden: usize,
    /// Draw each training request's setup at random (1 ..= the configured
    /// number of servers, fewer hosted experts; [`ScenarioConfig::varied`]) so
    /// the actor also learns the smaller setups its masks allow.
    pub vary_setups: bool,
}

impl Default for SacConfig {
    fn default() -> Self {
        SacConfig {
            seed: 1,
            episodes: 400,
            requests_per_episode: 32,
            buffer_size: 100_000,
            batch_size: 128,
            gamma: 1.0,
            tau: 0.005,
            actor_lr: 3e-4,
            critic_lr: 1e-3,
            alpha_lr: 3e-4,
            initial_alpha: 0.2,
            target_entropy_scale: 0.3,
            learning_starts: 1_000,
            updates_per_request: 4,
            actor_hidden: 32,
            critic_hidden: 64,
            vary_setups: true,
        }
    }
}

/// A batch of encoded subtasks, packed: only the available pairs' feature
/// rows are stored (and run through the networks), with their positions
/// `b * MAX_PAIRS + pair` in the `[B, MAX_PAIRS]` grid.
struct Packed {
    rows: Tensor,
    index: Tensor,
    mask: Tensor,
    batch: usize,
}

impl Packed {
    /// Packs states given as (features, mask) slices; `None` is a state left
    /// out entirely (no available pair, all-zero mask row).
    fn new<'a>(
        states: impl Iterator<Item = Option<(&'a [f32], &'a [f32])>>,
        dev: &Device,
    ) -> candle_core::Result<Packed> {
        let (mut rows, mut index, mut mask, mut batch) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for state in states {
            match state {
                Some((features, m)) => {
                    for p in (0..MAX_PAIRS).filter(|&p| m[p] > 0.5) {
                        rows.extend_from_slice(&features[p * PAIR_FEATURES..(p + 1) * PAIR_FEATURES]);
                        index.push((batch * MAX_PAIRS + p) as u32);
                    }
                    mask.extend_from_slice(m);
                }
                None => mask.extend_from_slice(&[0.0; MAX_PAIRS]),
            }
            batch += 1;
        }
        let n = index.len();
        Ok(Packed {
            rows: Tensor::from_vec(rows, (n, PAIR_FEATURES), dev)?,
            index: Tensor::from_vec(index, n, dev)?,
            mask: Tensor::from_vec(mask, (batch, MAX_PAIRS), dev)?,
            batch,
        })
    }

    fn single(enc: &Encoded, dev: &Device) -> candle_core::Result<Packed> {
        let mask: Vec<f32> = enc.mask.iter().map(|&ok| if ok { 1.0 } else { 0.0 }).collect();
        Packed::new(std::iter::once(Some((enc.features.as_flattened(), &mask[..]))), dev)
    }
}

/// A three-layer MLP applied to each available (model, node) pair's feature
/// row; the outputs are laid out on the `[B, MAX_PAIRS]` grid (0 elsewhere).
struct PairMlp {
    l1: Linear,
    l2: Linear,
    l3: Linear,
}

impl PairMlp {
    fn new(vb: VarBuilder, hidden: usize) -> candle_core::Result<Self> {
        Ok(PairMlp {
            l1: linear(PAIR_FEATURES, hidden, vb.pp("l1"))?,
            l2: linear(hidden, hidden, vb.pp("l2"))?,
            l3: linear(hidden, 1, vb.pp("l3"))?,
        })
    }

    fn forward(&self, x: &Packed) -> candle_core::Result<Tensor> {
        let h = self.l1.forward(&x.rows)?.relu()?;
        let h = self.l2.forward(&h)?.relu()?;
        let out = self.l3.forward(&h)?.squeeze(1)?;
        let grid = Tensor::zeros(x.batch * MAX_PAIRS, DType::F32, out.device())?;
        grid.index_add(&x.index, &out, 0)?.reshape((x.batch, MAX_PAIRS))
    }
}

/// Masked log-probabilities and probabilities of the actor: `[B, P]` each.
fn policy(actor: &PairMlp, x: &Packed) -> candle_core::Result<(Tensor, Tensor)> {
    // Unavailable pairs get a logit of −1e9: probability exactly 0, no NaN.
    let logits = (actor.forward(x)? + ((&x.mask - 1.0)? * 1e9)?)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let p = logp.exp()?;
    Ok((logp, p))
}

/// Fixed-size FIFO of transitions. States are stored once, in order: the next
/// state of transition `i` is state `i + 1` unless `i` ended its request.
struct Replay {
    capacity: usize,
    states: Vec<f32>,
    masks: Vec<f32>,
    actions: Vec<u32>,
    rewards: Vec<f32>,
    dones: Vec<f32>,
    len: usize,
    head: usize,
}

/// One sampled batch, as tensors.
struct Batch {
    s: Packed,
    a: Tensor,
    r: Tensor,
    s2: Packed,
    done: Tensor,
    target_entropy: Tensor,
}

impl Replay {
    fn new(capacity: usize) -> Self {
        Replay {
            capacity,
            states: vec![0.0; capacity * MAX_PAIRS * PAIR_FEATURES],
            masks: vec![0.0; capacity * MAX_PAIRS],
            actions: vec![0; capacity],
            rewards: vec![0.0; capacity],
            dones: vec![1.0; capacity],
            len: 0,
            head: 0,
        }
    }

    fn push(&mut self, enc: &Encoded, action: usize, reward: f32, done: bool) {
        let i = self.head;
        let row = MAX_PAIRS * PAIR_FEATURES;
        self.states[i * row..(i + 1) * row].copy_from_slice(enc.features.as_flattened());
        for (dst, &ok) in self.masks[i * MAX_PAIRS..(i + 1) * MAX_PAIRS].iter_mut().zip(&enc.mask) {
            *dst = if ok { 1.0 } else { 0.0 };
        }
        self.actions[i] = action as u32;
        self.rewards[i] = reward;
        self.dones[i] = if done { 1.0 } else { 0.0 };
        self.head = (self.head + 1) % self.capacity;
        self.len = (self.len + 1).min(self.capacity);
    }

    fn state(&self, i: usize) -> (&[f32], &[f32]) {
        let row = MAX_PAIRS * PAIR_FEATURES;
        (&self.states[i * row..(i + 1) * row], &self.masks[i * MAX_PAIRS..(i + 1) * MAX_PAIRS])
    }

    /// Samples `n` transitions; their next states only if `with_next` (γ > 0).
    fn sample(
        &self,
        rng: &mut StdRng,
        n: usize,
        kappa: f32,
        with_next: bool,
        dev: &Device,
    ) -> candle_core::Result<Batch> {
        let picks: Vec<usize> = (0..n).map(|_| rng.random_range(0..self.len)).collect();
        let done = |i: usize| !with_next || self.dones[i] > 0.5;
        // A terminal transition's next state is left out: it is multiplied by 1 − done = 0.
        let next = picks.iter().map(|&i| (!done(i)).then(|| self.state((i + 1) % self.capacity)));
        let entropy = |i: usize| kappa * self.state(i).1.iter().sum::<f32>().max(1.0).ln();
        Ok(Batch {
            s: Packed::new(picks.iter().map(|&i| Some(self.state(i))), dev)?,
            a: Tensor::from_vec(picks.iter().map(|&i| self.actions[i]).collect::<Vec<_>>(), (n, 1), dev)?,
            r: Tensor::from_vec(picks.iter().map(|&i| self.rewards[i]).collect::<Vec<_>>(), n, dev)?,
            s2: Packed::new(next, dev)?,
            done: Tensor::from_vec(picks.iter().map(|&i| self.dones[i]).collect::<Vec<_>>(), n, dev)?,
            target_entropy: Tensor::from_vec(picks.iter().map(|&i| entropy(i)).collect::<Vec<_>>(), n, dev)?,
        })
    }
}

/// Mean request reward of every method on one episode's requests.
#[derive(Debug, Clone, Serialize)]
pub struct EpisodeLog {
    /// Episode number, from 0.
    pub episode: usize,
    /// The actor while training (sampling its distribution).
    pub sac_sampled: f32,
    /// The actor as deployed (most probable pair), after this episode's updates.
    pub sac: f32,
    /// Exhaustive search with the realised costs.
    pub upper_bound: f32,
    /// Phone only.
    pub local_only: f32,
    /// Uniformly random pair.
    pub random: f32,
    /// Gate top-1 expert on the best-rate node.
    pub greedy: f32,
    /// Entropy temperature α at the end of the episode.
    pub alpha: f32,
    /// Mean critic loss over the episode's updates (0 before learning starts).
    pub critic_loss: f32,
}

/// The trainer's networks, optimisers and replay buffer.
pub struct Trainer {
    cfg: SacConfig,
    table: QualityTable,
    scenarios: ScenarioConfig,
    dev: Device,
    rng: StdRng,
    actor_vars: VarMap,
    actor: PairMlp,
    critics: [PairMlp; 2],
    targets: [PairMlp; 2],
    critic_vars: [VarMap; 2],
    target_vars: [VarMap; 2],
    log_alpha: Var,
    actor_opt: AdamW,
    critic_opt: AdamW,
    alpha_opt: AdamW,
    replay: Replay,
    episode: usize,
}

/// Copies `src`'s variables into `dst`, scaled: `dst ← tau · src + (1 − tau) · dst`.
fn polyak(src: &VarMap, dst: &VarMap, tau: f64) -> candle_core::Result<()> {
    let src = src.data().lock().expect("var map lock");
    let dst = dst.data().lock().expect("var map lock");
    for (name, d) in dst.iter() {
        let s = src.get(name).expect("target and online networks share names");
        d.set(&((s.as_tensor() * tau)? + (d.as_tensor() * (1.0 - tau))?)?)?;
    }
    Ok(())
}

/// Re-initialises every layer from `rng` (candle's CPU generator cannot be
/// seeded): weights and biases uniform in ±1/√fan_in, as candle's `linear` does.
fn seeded_init(vars: &VarMap, rng: &mut StdRng) -> candle_core::Result<()> {
    let data = vars.data().lock().expect("var map lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let layer = name.rsplit_once('.').map_or(name.as_str(), |(l, _)| l);
        let fan_in = data.get(&format!("{layer}.weight")).map_or(1, |w| w.dims()[1]);
        let bound = 1.0 / (fan_in as f32).sqrt();
        let values: Vec<f32> = (0..var.elem_count()).map(|_| rng.random_range(-bound..bound)).collect();
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?)?;
    }
    Ok(())
}

fn adam(vars: Vec<Var>, lr: f64) -> candle_core::Result<AdamW> {
    AdamW::new(vars, ParamsAdamW { lr, weight_decay: 0.0, ..Default::default() })
}

impl Trainer {
    /// Fresh networks for training on scenarios drawn from `scenarios`.
    pub fn new(table: QualityTable, scenarios: ScenarioConfig, cfg: SacConfig) -> Result<Self, PolicyError> {
        if cfg.seed >= 1 << 31
            || cfg.buffer_size < cfg.batch_size
            || cfg.batch_size == 0
            || cfg.requests_per_episode == 0
        {
            return Err(PolicyError::InvalidConfig(format!(
                "bad SAC config: seed must be < 2^31, 0 < batch_size <= buffer_size, requests_per_episode > 0 ({cfg:?})"
            )));
        }
        let dev = Device::Cpu;
        let net = |vars: &VarMap, hidden: usize| PairMlp::new(VarBuilder::from_varmap(vars, DType::F32, &dev), hidden);
        let actor_vars = VarMap::new();
        let actor = net(&actor_vars, cfg.actor_hidden)?;
        let critic_vars = [VarMap::new(), VarMap::new()];
        let target_vars = [VarMap::new(), VarMap::new()];
        let critics = [net(&critic_vars[0], cfg.critic_hidden)?, net(&critic_vars[1], cfg.critic_hidden)?];
        let targets = [net(&target_vars[0], cfg.critic_hidden)?, net(&target_vars[1], cfg.critic_hidden)?];
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        seeded_init(&actor_vars, &mut rng)?;
        for i in 0..2 {
            seeded_init(&critic_vars[i], &mut rng)?;
            polyak(&critic_vars[i], &target_vars[i], 1.0)?;
        }
        let log_alpha = Var::new(&[cfg.initial_alpha.ln()], &dev)?;
        let critic_params = critic_vars.iter().flat_map(|v| v.all_vars()).collect();
        Ok(Trainer {
            actor_opt: adam(actor_vars.all_vars(), cfg.actor_lr)?,
            critic_opt: adam(critic_params, cfg.critic_lr)?,
            alpha_opt: adam(vec![log_alpha.clone()], cfg.alpha_lr)?,
            rng,
            replay: Replay::new(cfg.buffer_size),
            cfg,
            table,
            scenarios,
            dev,
            actor_vars,
            actor,
            critics,
            targets,
            critic_vars,
            target_vars,
            log_alpha,
            episode: 0,
        })
    }

    /// The seed of training request `r` (below [`super::sim::EVAL_SEED_BASE`]).
    fn train_seed(&self, r: usize) -> u64 {
        (self.cfg.seed << 32) | r as u64
    }

    /// The current temperature α.
    fn alpha(&self) -> candle_core::Result<f32> {
        self.log_alpha.as_tensor().exp()?.to_vec1::<f32>().map(|v| v[0])
    }

    /// Samples a pair from the actor's distribution for one encoded subtask.
    fn act(&mut self, enc: &Encoded) -> candle_core::Result<usize> {
        let (_, p) = policy(&self.actor, &Packed::single(enc, &self.dev)?)?;
        let p = p.squeeze(0)?.to_vec1::<f32>()?;
        let mut u: f32 = self.rng.random();
        let mut last = 0;
        for i in enc.available() {
            last = i;
            u -= p[i];
            if u <= 0.0 {
                return Ok(i);
            }
        }
        Ok(last)
    }

    /// One gradient step of critics, actor and temperature; returns the critic loss.
    fn update(&mut self) -> candle_core::Result<f32> {
        let gamma = self.cfg.gamma;
        let b = self.replay.sample(
            &mut self.rng,
            self.cfg.batch_size,
            self.cfg.target_entropy_scale,
            gamma > 0.0,
            &self.dev,
        )?;
        let alpha = self.alpha()? as f64;
        // Soft target y = r + γ (1 − done) V(s'), no gradient (y = r when γ = 0).
        let y = if gamma > 0.0 {
            let (logp2, p2) = policy(&self.actor, &b.s2)?;
            let q_next = self.targets[0].forward(&b.s2)?.minimum(&self.targets[1].forward(&b.s2)?)?;
            let v_next = ((p2 * (q_next - (logp2 * alpha)?)?)? * &b.s2.mask)?.sum(1)?;
            let not_done = (1.0 - &b.done)?;
            (&b.r + ((v_next * not_done)? * gamma as f64)?)?.detach()
        } else {
            b.r.clone()
        };
        // Critics.
        let q1 = self.critics[0].forward(&b.s)?;
        let q2 = self.critics[1].forward(&b.s)?;
        let q1a = q1.gather(&b.a, 1)?.squeeze(1)?;
        let q2a = q2.gather(&b.a, 1)?.squeeze(1)?;
        let critic_loss = ((q1a - &y)?.sqr()?.mean_all()? + (q2a - &y)?.sqr()?.mean_all()?)?;
        self.critic_opt.backward_step(&critic_loss)?;
        // Actor, against the critics as they were before this step.
        let q_min = q1.detach().minimum(&q2.detach())?;
        let (logp, p) = policy(&self.actor, &b.s)?;
        let actor_loss = ((&p * ((&logp * alpha)? - q_min)?)? * &b.s.mask)?.sum(1)?.mean_all()?;
        self.actor_opt.backward_step(&actor_loss)?;
        // Temperature: raise α when the entropy is below its target.
        let entropy = ((p * logp)? * &b.s.mask)?.sum(1)?.neg()?.detach();
        let gap = (entropy - &b.target_entropy)?.mean_all()?;
        let alpha_loss = self.log_alpha.as_tensor().broadcast_mul(&gap)?.sum_all()?;
        self.alpha_opt.backward_step(&alpha_loss)?;
        for i in 0..2 {
            polyak(&self.critic_vars[i], &self.target_vars[i], self.cfg.tau as f64)?;
        }
        critic_loss.to_scalar::<f32>()
    }

    /// The actor as deployed: plain-Rust inference over the current weights.
    pub fn runtime_actor(&self) -> Result<SacActor, PolicyError> {
        SacActor::from_tensors(&self.actor_tensors(), self.table.clone())
            .map_err(|detail| PolicyError::Tensor(format!("actor weights: {detail}")))
    }

    /// The actor's tensors by name (`l1.weight`, …).
    pub fn actor_tensors(&self) -> HashMap<String, Tensor> {
        let data = self.actor_vars.data().lock().expect("var map lock");
        data.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
    }

    /// The candle actor's probabilities for one encoded subtask (for the
    /// agreement test with the runtime actor).
    pub fn probabilities(&self, enc: &Encoded) -> Result<Vec<f32>, PolicyError> {
        let (_, p) = policy(&self.actor, &Packed::single(enc, &self.dev)?)?;
        Ok(p.squeeze(0)?.to_vec1()?)
    }

    /// Saves the actor as safetensors.
    pub fn save_actor(&self, path: &Path) -> Result<(), PolicyError> {
        self.actor_vars.save(path).map_err(PolicyError::from)
    }

    /// The scenario of training request `r`.
    fn scenario(&self, r: usize) -> Scenario {
        let seed = self.train_seed(r);
        let setup = if self.cfg.vary_setups { self.scenarios.varied(seed) } else { self.scenarios };
        Scenario::sample(&self.table, &setup, seed)
    }

    /// Runs one episode: acts on `requests_per_episode` fresh scenarios,
    /// learns after each request, and scores every method on the same requests.
    pub fn run_episode(&mut self) -> Result<EpisodeLog, PolicyError> {
        let table = self.table.clone();
        let n = self.cfg.requests_per_episode;
        let first = self.episode * n;
        let (mut sampled, mut losses) = (0.0f32, Vec::new());
        let mut requests = Vec::with_capacity(n);
        for r in first..first + n {
            let sc = self.scenario(r);
            let mut encoder = RequestEncoder::new(&table, &sc.obs)?;
            let k = sc.obs.subtasks.len();
            let mut steps = Vec::with_capacity(k);
            let mut placements = Vec::with_capacity(k);
            for s in 0..k {
                let enc = encoder.encode(s);
                let a = self.act(&enc)?;
                placements.push(encoder.place(a));
                steps.push((enc, a));
            }
            let rewards = sc.subtask_rewards(&table, &placements)?;
            sampled += rewards.iter().sum::<f32>();
            for (s, ((enc, a), rew)) in steps.iter().zip(&rewards).enumerate() {
                self.replay.push(enc, *a, *rew, s + 1 == k);
            }
            if self.replay.len >= self.cfg.learning_starts.max(self.cfg.batch_size) {
                for _ in 0..self.cfg.updates_per_request {
                    losses.push(self.update()?);
                }
            }
            requests.push(sc);
        }
        let actor = self.runtime_actor()?;
        let mean = |p: &dyn Policy| mean_reward_on(&table, &requests, p);
        let log = EpisodeLog {
            episode: self.episode,
            sac_sampled: sampled / n as f32,
            sac: mean(&actor)?,
            upper_bound: mean_upper_bound_on(&table, &requests)?,
            local_only: mean(&LocalOnly::new(table.clone()))?,
            random: mean(&RandomPolicy::new(table.clone(), self.cfg.seed ^ first as u64))?,
            greedy: mean(&Greedy::new(table.clone()))?,
            alpha: self.alpha()?,
            critic_loss: if losses.is_empty() { 0.0 } else { losses.iter().sum::<f32>() / losses.len() as f32 },
        };
        self.episode += 1;
        Ok(log)
    }
}
