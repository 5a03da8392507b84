//! The cost model and the observation encoding, shared by the simulator and
//! the runtime so that a policy sees the same numbers in both.
//!
//! # Reward
//!
//! A request's reward is the sum over its subtasks of
//!
//! ```text
//! r = Q(e, gate) − λ_E · w(battery) · E_phone − λ_S · T_edge − P · [latency > deadline]
//!
//! Q(e, gate)  = Σ_d gate[d] · quality[e][d]                (0–10, from models/quality.json)
//! E_phone     = phone energy in J: P_cmp · T_compute on the phone, or, when offloaded,
//!               β_radio · latency + α_up · goodput · T_uplink  (radio power model)
//! T_edge      = seconds of edge compute the subtask occupies (the paper's compute cost:
//!               generated tokens × a per-token coefficient, here 1 / edge tokens/s)
//! w(battery)  = 0.25 while charging, else 1 + 2 · (1 − battery)
//! deadline    = 2 s + output tokens / 10 tokens/s    (the answer's realised length:
//!               the time its reader needs; the runtime can only use its estimate)
//! latency     = [RTT + T_uplink + T_downlink] + T_work · (1 + jobs ahead)
//! T_work      = prompt / (3.30 · v) + output / v,   v = tokens/s · (1 − load) [· (1 − 0.44 · thermal) on the phone]
//! ```
//!
//! with λ_E = [`LAMBDA_ENERGY`], λ_S = [`LAMBDA_EDGE`], P = [`MISS_PENALTY`].
//! The weights λ and P state a preference (how many quality points a joule, an
//! edge-second and a late answer are worth); they are not physical constants.
//! They were revised once, after a first short run showed that the initial
//! weights (λ_E = 0.05/J, λ_S = 0.1/s) made energy outweigh the whole 0–10
//! quality scale and most request rewards negative for every method; never to
//! change the ranking of the methods.
//!
//! # Encoding
//!
//! Each subtask is encoded as one feature row per (model, node) pair, with a
//! mask of the pairs that exist (the node hosts the model and is reachable).
//! Pair `(m, n)` sits at index `n * MAX_MODELS + m`. The features are the
//! phone's own estimate of that pair's quality, latency and costs (from the
//! observation only: expected output length, measured goodput), plus how much
//! of the request is still to come and how much estimated reward the later
//! subtasks would lose if this one joined the pair's node (they queue behind it).

use super::{DeviceState, NodeState, Observation, Placement, PolicyError, QualityTable};

/// Most nodes (the phone plus edge servers) an observation may hold.
pub const MAX_NODES: usize = 6;
/// Most models ("base" plus domain experts) a quality table may hold.
pub const MAX_MODELS: usize = 6;
/// Most domains a quality table may hold.
pub const MAX_DOMAINS: usize = 6;
/// Number of (model, node) pairs in an encoded subtask.
pub const MAX_PAIRS: usize = MAX_NODES * MAX_MODELS;
/// Features per (model, node) pair.
pub const PAIR_FEATURES: usize = 18;

/// Prefill runs this many times faster than decode: 147 / 44.5 tokens/s,
/// measured with `moe-edge bench` (SmolLM2-135M Q4_1, 2 threads, 512-token prompt).
pub const PREFILL_OVER_DECODE: f32 = 147.0 / 44.5;
/// Phone power while running a model: 5 W. An assumption, not a measurement
/// here: the middle of the 3–8 W sustained envelope of phone SoCs; the
/// on-device LLM studies we read (MELT, arXiv 2403.12844; Tummalapalli et al.,
/// arXiv 2603.23640) report power per platform but we measured none ourselves.
pub const PHONE_POWER_W: f32 = 5.0;
/// Throughput lost when the phone is fully throttled: 44 % (iPhone 16 Pro,
/// sustained LLM decoding, Tummalapalli et al., arXiv 2603.23640).
pub const THROTTLE_LOSS: f32 = 0.44;
/// Radio power while connected (β) in W: 1.288 W, LTE, Huang et al.,
/// "A close examination of performance and power characteristics of 4G LTE
/// networks", MobiSys 2012 (Wi-Fi is lower, 0.133 W; we take the cellular figure).
pub const RADIO_BASE_W: f32 = 1.288;
/// Extra radio power per Mbit/s of uplink throughput (α_u) in W: 0.438 W,
/// same LTE model (Huang et al., MobiSys 2012).
pub const RADIO_UP_W_PER_MBPS: f32 = 0.438;
/// Bytes on the wire per token of text: about 4 characters of English per BPE
/// token (OpenAI's tokenizer guide), UTF-8, plus framing rounded up to 6.
pub const BYTES_PER_TOKEN: f32 = 6.0;
/// Fixed part of the deadline, in s: the 2-second response-time guideline for
/// interactive systems (R. B. Miller, "Response time in man-computer
/// conversational transactions", AFIPS 1968).
pub const DEADLINE_BASE_S: f32 = 2.0;
/// Streaming speed the deadline asks for, in tokens/s: 10 tokens/s ≈ 7.5
/// words/s, above adult silent reading speed (238 words/min, Brysbaert,
/// J. Memory and Language 2019), so the text stays ahead of the reader.
pub const DEADLINE_TOKENS_PER_S: f32 = 10.0;
/// Quality points per joule of phone energy (preference weight): a 100 J
/// answer (20 s of on-phone compute, about 0.2 % of a 15 Wh battery) costs one
/// quality point at full battery, three when the battery is nearly empty.
pub const LAMBDA_ENERGY: f32 = 0.01;
/// Quality points per second of edge compute (preference weight): a busy
/// edge server's time is cheaper than the phone's battery, not free.
pub const LAMBDA_EDGE: f32 = 0.05;
/// Quality points lost by a subtask that misses its deadline (preference weight).
pub const MISS_PENALTY: f32 = 5.0;

/// The costs of running one subtask with one (model, node) pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairCost {
    /// Seconds from the decision to the last token.
    pub latency_s: f32,
    /// Joules the phone spends (compute or radio).
    pub phone_energy_j: f32,
    /// Seconds of edge compute the subtask occupies (0 on the phone).
    pub edge_s: f32,
    /// Seconds of the latency spent on the link (uplink and downlink; 0 on the phone).
    pub transfer_s: f32,
    /// Seconds of the latency that grow with the answer's length (decoding
    /// it, behind the jobs ahead, and sending it back).
    pub output_s: f32,
}

/// The deadline of an answer `output_tokens` long, in seconds: 2 s to start,
/// then the time a reader needs for it.
pub fn deadline_s(output_tokens: f32) -> f32 {
    DEADLINE_BASE_S + output_tokens / DEADLINE_TOKENS_PER_S
}

/// How much a joule of phone energy weighs given the battery.
pub fn battery_weight(device: &DeviceState) -> f32 {
    if device.charging { 0.25 } else { 1.0 + 2.0 * (1.0 - device.battery) }
}

/// Costs of running a subtask on `node` (index `node_index`; 0 is the phone).
/// The simulator passes realised values (output length, goodput); the runtime
/// passes its estimates. `jobs_ahead` counts the node's queue plus this
/// request's subtasks already placed there.
pub fn pair_cost(
    node_index: usize,
    node: &NodeState,
    device: &DeviceState,
    prompt_tokens: f32,
    output_tokens: f32,
    goodput_mbps: f32,
    jobs_ahead: u32,
) -> PairCost {
    let mut speed = node.tokens_per_s * (1.0 - node.load).max(0.05);
    if node_index == 0 {
        speed *= 1.0 - THROTTLE_LOSS * device.thermal;
    }
    let work_s = prompt_tokens / (PREFILL_OVER_DECODE * speed) + output_tokens / speed;
    let compute_s = work_s * (1.0 + jobs_ahead as f32);
    let decode_s = output_tokens / speed * (1.0 + jobs_ahead as f32);
    if node_index == 0 {
        return PairCost {
            latency_s: compute_s,
            phone_energy_j: PHONE_POWER_W * work_s,
            edge_s: 0.0,
            transfer_s: 0.0,
            output_s: decode_s,
        };
    }
    let bits_per_token = BYTES_PER_TOKEN * 8.0;
    let rate_bps = goodput_mbps.max(1e-3) * 1e6;
    let up_s = prompt_tokens * bits_per_token / rate_bps;
    let down_s = output_tokens * bits_per_token / rate_bps;
    let latency_s = node.rtt_ms / 1000.0 + up_s + down_s + compute_s;
    let phone_energy_j = RADIO_BASE_W * latency_s + RADIO_UP_W_PER_MBPS * goodput_mbps * up_s;
    PairCost { latency_s, phone_energy_j, edge_s: work_s, transfer_s: up_s + down_s, output_s: decode_s + down_s }
}

/// The reward of one subtask whose answer is `output_tokens` long (see the
/// module docs for the formula).
pub fn reward(quality: f32, cost: &PairCost, output_tokens: f32, device: &DeviceState) -> f32 {
    let missed = if cost.latency_s > deadline_s(output_tokens) { MISS_PENALTY } else { 0.0 };
    quality - LAMBDA_ENERGY * battery_weight(device) * cost.phone_energy_j - LAMBDA_EDGE * cost.edge_s - missed
}

/// Index of pair (model `m`, node `n`) in an encoded subtask.
pub fn pair_index(m: usize, n: usize) -> usize {
    n * MAX_MODELS + m
}

/// One subtask, encoded: a feature row and an availability flag per pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Features of pair `i` (zeros where unavailable).
    pub features: [[f32; PAIR_FEATURES]; MAX_PAIRS],
    /// Whether pair `i` can be chosen.
    pub mask: [bool; MAX_PAIRS],
}

impl Encoded {
    /// Indices of the available pairs.
    pub fn available(&self) -> impl Iterator<Item = usize> + '_ {
        self.mask.iter().enumerate().filter(|(_, ok)| **ok).map(|(i, _)| i)
    }
}

/// Encodes the subtasks of one request in order, tracking how many of them
/// each node already has (a later subtask sees the earlier placements).
pub struct RequestEncoder<'a> {
    table: &'a QualityTable,
    obs: &'a Observation,
    /// `hosted[n][m]`: node `n` is reachable and hosts model `m`.
    hosted: [[bool; MAX_MODELS]; MAX_NODES],
    /// Subtasks of this request already placed on each node.
    placed: [u32; MAX_NODES],
}

impl<'a> RequestEncoder<'a> {
    /// Checks the observation against the table and the size limits.
    pub fn new(table: &'a QualityTable, obs: &'a Observation) -> Result<Self, PolicyError> {
        validate(table, obs)?;
        let mut hosted = [[false; MAX_MODELS]; MAX_NODES];
        for (n, node) in obs.nodes.iter().enumerate() {
            if n == 0 || node.goodput_mbps > 0.0 {
                for m in node.hosted.iter().filter_map(|id| table.model_index(id)) {
                    hosted[n][m] = true;
                }
            }
        }
        Ok(RequestEncoder { table, obs, hosted, placed: [0; MAX_NODES] })
    }

    /// The quality table in use.
    pub fn table(&self) -> &QualityTable {
        self.table
    }

    /// The observation being encoded.
    pub fn observation(&self) -> &Observation {
        self.obs
    }

    /// Whether node `n` can run model `m`.
    pub fn hosts(&self, n: usize, m: usize) -> bool {
        self.hosted.get(n).is_some_and(|row| row[m])
    }

    /// Encodes subtask `s` given the placements recorded so far.
    pub fn encode(&self, s: usize) -> Encoded {
        let sub = &self.obs.subtasks[s];
        let device = &self.obs.device;
        // Expected quality is linear in the gate: scale once instead of normalising.
        let gate_sum: f32 = sub.gate.iter().sum();
        let out = sub.expected_output_tokens.max(1) as f32;
        let deadline = deadline_s(out);
        let w = battery_weight(device);
        // What is still to come in this request (later subtasks queue behind this one).
        let later = &self.obs.subtasks[s + 1..];
        let later_subtasks = later.len() as f32 / 2.0;
        let later_output = later.iter().map(|l| l.expected_output_tokens as f32).sum::<f32>() / 1024.0;
        let crowding = self.crowding(s);
        let mut enc = Encoded { features: [[0.0; PAIR_FEATURES]; MAX_PAIRS], mask: [false; MAX_PAIRS] };
        for (n, node) in self.obs.nodes.iter().enumerate() {
            let ahead = node.queue + self.placed[n];
            let cost = pair_cost(n, node, device, sub.prompt_tokens as f32, out, node.goodput_mbps, ahead);
            for m in (0..self.table.models.len()).filter(|&m| self.hosted[n][m]) {
                let i = pair_index(m, n);
                enc.mask[i] = true;
                // Every feature is O(1); the cost terms are in reward points.
                let latency = cost.latency_s.max(1e-3);
                enc.features[i] = [
                    self.table.expected_quality(m, &sub.gate) / gate_sum / 10.0,
                    (cost.latency_s / deadline).min(5.0),
                    if cost.latency_s > deadline { 1.0 } else { 0.0 },
                    LAMBDA_ENERGY * cost.phone_energy_j,
                    LAMBDA_ENERGY * w * cost.phone_energy_j,
                    LAMBDA_EDGE * cost.edge_s,
                    (ahead as f32 / 4.0).min(3.0),
                    if n == 0 { 1.0 } else { 0.0 },
                    w / 3.0,
                    device.thermal,
                    if n == 0 { 0.0 } else { (1.0 + node.goodput_mbps).ln() / 5.0 },
                    out / 512.0,
                    (latency / deadline).ln().clamp(-4.0, 4.0) / 2.0,
                    cost.transfer_s / latency,
                    cost.output_s / latency,
                    later_subtasks,
                    later_output,
                    crowding[n] / 10.0,
                ];
            }
        }
        enc
    }

    /// The estimated reward of subtask `l` (with normalised gate `gate`) on
    /// its best pair of node `n`, as things stand and with one more job there.
    fn best_on_node(&self, l: usize, gate: &[f32], n: usize) -> (f32, f32) {
        let sub = &self.obs.subtasks[l];
        let node = &self.obs.nodes[n];
        let out = sub.expected_output_tokens.max(1) as f32;
        let best_quality = (0..self.table.models.len())
            .filter(|&m| self.hosted[n][m])
            .map(|m| self.table.expected_quality(m, gate))
            .fold(f32::NEG_INFINITY, f32::max);
        let with_ahead = |ahead: u32| {
            let cost = pair_cost(n, node, &self.obs.device, sub.prompt_tokens as f32, out, node.goodput_mbps, ahead);
            best_quality + reward(0.0, &cost, out, &self.obs.device)
        };
        let ahead = node.queue + self.placed[n];
        (with_ahead(ahead), with_ahead(ahead + 1))
    }

    /// Per node, how much estimated reward the subtasks after `s` lose if
    /// subtask `s` joins that node's queue (each later subtask on its own
    /// best pair, with and without the extra job).
    fn crowding(&self, s: usize) -> [f32; MAX_NODES] {
        let nodes = self.obs.nodes.len();
        let mut loss = [0.0; MAX_NODES];
        for l in s + 1..self.obs.subtasks.len() {
            let gate = normalised(&self.obs.subtasks[l].gate);
            let mut now = [f32::NEG_INFINITY; MAX_NODES];
            let mut crowded = [f32::NEG_INFINITY; MAX_NODES];
            for n in (0..nodes).filter(|&n| self.hosted[n].iter().any(|&h| h)) {
                (now[n], crowded[n]) = self.best_on_node(l, &gate, n);
            }
            let best_now = now.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for n in 0..nodes {
                let others = (0..nodes).filter(|&o| o != n).map(|o| now[o]).fold(f32::NEG_INFINITY, f32::max);
                let best_then = crowded[n].max(others);
                if best_now.is_finite() && best_then.is_finite() {
                    loss[n] += best_now - best_then;
                }
            }
        }
        loss
    }

    /// Records that subtask `s` goes to pair `i` and returns its placement.
    pub fn place(&mut self, i: usize) -> Placement {
        let (m, n) = (i % MAX_MODELS, i / MAX_MODELS);
        self.placed[n] += 1;
        Placement { expert: self.table.models[m].clone(), node: n }
    }

    /// Places every subtask in order with `choose`, which picks an available
    /// pair index from the encoded subtask (or `None` if it cannot).
    pub fn decide_all(
        mut self,
        mut choose: impl FnMut(&Self, usize, &Encoded) -> Option<usize>,
    ) -> Result<Vec<Placement>, PolicyError> {
        let mut placements = Vec::with_capacity(self.obs.subtasks.len());
        for s in 0..self.obs.subtasks.len() {
            let enc = self.encode(s);
            match choose(&self, s, &enc) {
                Some(i) if enc.mask[i] => placements.push(self.place(i)),
                _ => return Err(PolicyError::NoAvailablePair(s)),
            }
        }
        Ok(placements)
    }
}

/// The gate probabilities scaled to sum to 1.
pub fn normalised(gate: &[f32]) -> Vec<f32> {
    let sum: f32 = gate.iter().sum();
    gate.iter().map(|p| p / sum).collect()
}

fn validate(table: &QualityTable, obs: &Observation) -> Result<(), PolicyError> {
    let bad = |msg: String| Err(PolicyError::InvalidObservation(msg));
    if obs.nodes.is_empty() || obs.nodes.len() > MAX_NODES {
        return bad(format!("{} nodes (1..={MAX_NODES} supported, the phone first)", obs.nodes.len()));
    }
    let d = &obs.device;
    if !(0.0..=1.0).contains(&d.battery) || !(0.0..=1.0).contains(&d.thermal) {
        return bad(format!("battery {} and thermal {} must be within 0..=1", d.battery, d.thermal));
    }
    for (n, node) in obs.nodes.iter().enumerate() {
        let finite = [node.rtt_ms, node.goodput_mbps, node.tokens_per_s].iter().all(|v| v.is_finite() && *v >= 0.0);
        if !finite || !(0.0..=1.0).contains(&node.load) || node.tokens_per_s <= 0.0 {
            return bad(format!("node {n}: rtt, goodput must be finite and ≥ 0, tokens/s > 0, load within 0..=1"));
        }
    }
    for (s, sub) in obs.subtasks.iter().enumerate() {
        if sub.gate.len() != table.domains.len() {
            return bad(format!("subtask {s}: {} gate values for {} domains", sub.gate.len(), table.domains.len()));
        }
        if sub.gate.iter().any(|p| !p.is_finite() || *p < 0.0) || sub.gate.iter().sum::<f32>() <= 0.0 {
            return bad(format!("subtask {s}: gate values must be finite, ≥ 0 and not all 0"));
        }
        const MAX_TOKENS: usize = 1 << 20;
        if sub.prompt_tokens > MAX_TOKENS || sub.expected_output_tokens > MAX_TOKENS {
            return bad(format!("subtask {s}: more than {MAX_TOKENS} tokens"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::SubtaskInfo;

    fn node(rtt: f32, goodput: f32, hosted: &[&str], tps: f32) -> NodeState {
        NodeState {
            rtt_ms: rtt,
            goodput_mbps: goodput,
            load: 0.0,
            queue: 0,
            hosted: hosted.iter().map(|s| s.to_string()).collect(),
            tokens_per_s: tps,
        }
    }

    fn obs() -> Observation {
        Observation {
            subtasks: vec![
                SubtaskInfo { gate: vec![0.1, 0.1, 0.7, 0.1], prompt_tokens: 100, expected_output_tokens: 64 },
                SubtaskInfo { gate: vec![0.7, 0.1, 0.1, 0.1], prompt_tokens: 50, expected_output_tokens: 32 },
            ],
            nodes: vec![node(0.0, 0.0, &["base"], 44.5), node(20.0, 50.0, &["code", "unknown"], 100.0)],
            device: DeviceState::default(),
        }
    }

    #[test]
    fn masks_follow_hosting_and_reachability() {
        let table = QualityTable::synthetic(3);
        let o = obs();
        let enc = RequestEncoder::new(&table, &o).unwrap().encode(0);
        let avail: Vec<usize> = enc.available().collect();
        let base = table.model_index("base").unwrap();
        let code = table.model_index("code").unwrap();
        assert_eq!(avail, vec![pair_index(base, 0), pair_index(code, 1)]);
        let mut o2 = o.clone();
        o2.nodes[1].goodput_mbps = 0.0;
        let enc = RequestEncoder::new(&table, &o2).unwrap().encode(0);
        assert_eq!(enc.available().count(), 1);
    }

    #[test]
    fn later_subtasks_see_earlier_placements() {
        let table = QualityTable::synthetic(3);
        let o = obs();
        let code = table.model_index("code").unwrap();
        let mut e = RequestEncoder::new(&table, &o).unwrap();
        let before = e.encode(1).features[pair_index(code, 1)];
        assert_eq!(e.place(pair_index(code, 1)), Placement { expert: "code".into(), node: 1 });
        let after = e.encode(1).features[pair_index(code, 1)];
        assert!(after[1] > before[1], "latency estimate must grow with a job ahead");
    }

    #[test]
    fn crowding_shows_what_later_subtasks_lose() {
        let table = QualityTable::synthetic(3);
        let mut o = obs();
        // A phone this slow misses every deadline: the later subtask belongs on the server.
        o.nodes[0].tokens_per_s = 1.0;
        let (base, code) = (table.model_index("base").unwrap(), table.model_index("code").unwrap());
        let e = RequestEncoder::new(&table, &o).unwrap();
        let crowding = |enc: &Encoded, i: usize| enc.features[i][PAIR_FEATURES - 1];
        let first = e.encode(0);
        assert_eq!(crowding(&first, pair_index(base, 0)), 0.0);
        assert!(crowding(&first, pair_index(code, 1)) > 0.0);
        let last = e.encode(1);
        assert!(last.available().all(|i| crowding(&last, i) == 0.0), "nothing comes after the last subtask");
    }

    #[test]
    fn costs_follow_the_physics() {
        let d = DeviceState::default();
        let phone = node(0.0, 0.0, &["base"], 44.5);
        let c = pair_cost(0, &phone, &d, 0.0, 44.5, 0.0, 0);
        assert!((c.latency_s - 1.0).abs() < 1e-5 && (c.phone_energy_j - PHONE_POWER_W).abs() < 1e-4);
        let hot = DeviceState { thermal: 1.0, ..d };
        assert!(pair_cost(0, &phone, &hot, 0.0, 44.5, 0.0, 0).latency_s > 1.7);
        let server = node(50.0, 10.0, &["code"], 100.0);
        let c = pair_cost(1, &server, &d, 0.0, 100.0, 10.0, 1);
        assert!(c.latency_s > 2.05 && c.edge_s > 0.99 && c.edge_s < 1.01);
        assert!((c.transfer_s - 100.0 * 48.0 / 10e6).abs() < 1e-6 && c.output_s > c.transfer_s);
        let late = PairCost { latency_s: 10.0, phone_energy_j: 0.0, edge_s: 0.0, transfer_s: 0.0, output_s: 0.0 };
        // 10 s is late for 79 tokens (2 s + 7.9 s) and on time for 80.
        assert_eq!(reward(5.0, &late, 79.0, &d), 5.0 - MISS_PENALTY);
        assert_eq!(reward(5.0, &late, 80.0, &d), 5.0);
    }

    #[test]
    fn rejects_malformed_observations() {
        let table = QualityTable::synthetic(3);
        let mut cases = Vec::new();
        let mut o = obs();
        o.subtasks[0].gate.pop();
        cases.push(o);
        let mut o = obs();
        o.nodes.clear();
        cases.push(o);
        let mut o = obs();
        o.nodes = vec![o.nodes[0].clone(); MAX_NODES + 1];
        cases.push(o);
        let mut o = obs();
        o.device.battery = f32::NAN;
        cases.push(o);
        let mut o = obs();
        o.nodes[1].tokens_per_s = 0.0;
        cases.push(o);
        let mut o = obs();
        o.subtasks[1].gate = vec![0.0; 4];
        cases.push(o);
        for o in &cases {
            assert!(matches!(RequestEncoder::new(&table, o), Err(PolicyError::InvalidObservation(_))), "{o:?}");
        }
    }
}
