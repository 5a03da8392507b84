//! The baseline policies the SAC actor is compared with. (The upper bound
//! needs the realised costs, so it lives in the simulator.)

use std::sync::Mutex;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IteratorRandom;

use super::encode::{MAX_MODELS, RequestEncoder, normalised, pair_index};
use super::{Observation, Placement, Policy, PolicyError, QualityTable};

/// Only what the phone hosts: for each subtask, the phone's model with the
/// best expected quality (the paper's "without edge network support").
pub struct LocalOnly {
    table: QualityTable,
}

impl LocalOnly {
    /// A local-only policy over `table`.
    pub fn new(table: QualityTable) -> Self {
        LocalOnly { table }
    }
}

impl Policy for LocalOnly {
    fn name(&self) -> &str {
        "local-only"
    }

    fn decide(&self, obs: &Observation) -> Result<Vec<Placement>, PolicyError> {
        RequestEncoder::new(&self.table, obs)?.decide_all(|e, s, _| {
            let gate = normalised(&e.observation().subtasks[s].gate);
            (0..self.table.models.len())
                .filter(|&m| e.hosts(0, m))
                .max_by(|&a, &b| {
                    self.table.expected_quality(a, &gate).total_cmp(&self.table.expected_quality(b, &gate))
                })
                .map(|m| pair_index(m, 0))
        })
    }
}

/// Uniformly random among the available pairs, from a seeded stream.
pub struct RandomPolicy {
    table: QualityTable,
    rng: Mutex<StdRng>,
}

impl RandomPolicy {
    /// A random policy over `table` whose choices follow from `seed`.
    pub fn new(table: QualityTable, seed: u64) -> Self {
        RandomPolicy { table, rng: Mutex::new(StdRng::seed_from_u64(seed)) }
    }
}

impl Policy for RandomPolicy {
    fn name(&self) -> &str {
        "random"
    }

    fn decide(&self, obs: &Observation) -> Result<Vec<Placement>, PolicyError> {
        // A poisoned lock only means another caller panicked mid-draw; the stream is still usable.
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let rng: &mut StdRng = &mut rng;
        RequestEncoder::new(&self.table, obs)?.decide_all(|_, _, enc| enc.available().choose(&mut *rng))
    }
}

/// The gate's top-1 expert on the best-rate node that hosts it: the edge
/// server with the highest measured goodput, or the phone if no server hosts
/// it. If no node hosts that expert, the base model the same way; if neither
/// is hosted anywhere, the available pair of best expected quality.
pub struct Greedy {
    table: QualityTable,
}

impl Greedy {
    /// A greedy policy over `table`.
    pub fn new(table: QualityTable) -> Self {
        Greedy { table }
    }
}

impl Policy for Greedy {
    fn name(&self) -> &str {
        "greedy"
    }

    fn decide(&self, obs: &Observation) -> Result<Vec<Placement>, PolicyError> {
        let t = &self.table;
        RequestEncoder::new(t, obs)?.decide_all(|e, s, enc| {
            let gate = normalised(&e.observation().subtasks[s].gate);
            let top = (0..gate.len()).max_by(|&a, &b| gate[a].total_cmp(&gate[b]))?;
            let nodes = &e.observation().nodes;
            let best_node = |m: usize| {
                (1..nodes.len())
                    .filter(|&n| e.hosts(n, m))
                    .max_by(|&a, &b| nodes[a].goodput_mbps.total_cmp(&nodes[b].goodput_mbps))
                    .or(e.hosts(0, m).then_some(0))
            };
            [t.model_index(&t.domains[top]), t.model_index("base")]
                .into_iter()
                .flatten()
                .find_map(|m| best_node(m).map(|n| pair_index(m, n)))
                .or_else(|| {
                    enc.available().max_by(|&a, &b| {
                        t.expected_quality(a % MAX_MODELS, &gate).total_cmp(&t.expected_quality(b % MAX_MODELS, &gate))
                    })
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{DeviceState, NodeState, SubtaskInfo};

    fn obs() -> Observation {
        let node = |g: f32, hosted: &[&str]| NodeState {
            rtt_ms: if g > 0.0 { 10.0 } else { 0.0 },
            goodput_mbps: g,
            load: 0.0,
            queue: 0,
            hosted: hosted.iter().map(|s| s.to_string()).collect(),
            tokens_per_s: 50.0,
        };
        Observation {
            subtasks: vec![
                SubtaskInfo { gate: vec![0.05, 0.05, 0.85, 0.05], prompt_tokens: 80, expected_output_tokens: 40 },
                SubtaskInfo { gate: vec![0.05, 0.05, 0.05, 0.85], prompt_tokens: 80, expected_output_tokens: 40 },
            ],
            nodes: vec![node(0.0, &["base"]), node(20.0, &["code", "base"]), node(80.0, &["code"])],
            device: DeviceState::default(),
        }
    }

    #[test]
    fn local_only_stays_on_the_phone() {
        let p = LocalOnly::new(QualityTable::synthetic(1)).decide(&obs()).unwrap();
        assert!(p.iter().all(|p| p.node == 0 && p.expert == "base"));
    }

    #[test]
    fn greedy_takes_top_expert_on_fastest_link_else_base() {
        let p = Greedy::new(QualityTable::synthetic(1)).decide(&obs()).unwrap();
        assert_eq!(p[0], Placement { expert: "code".into(), node: 2 });
        assert_eq!(p[1], Placement { expert: "base".into(), node: 1 });
        let mut o = obs();
        o.nodes[2].hosted.clear();
        o.nodes[1].hosted = vec!["prose".into()];
        let p = Greedy::new(QualityTable::synthetic(1)).decide(&o).unwrap();
        assert_eq!(p[1], Placement { expert: "base".into(), node: 0 }, "phone when no server hosts it");
    }

    #[test]
    fn random_is_seeded_and_only_picks_hosted_pairs() {
        let o = obs();
        let a = RandomPolicy::new(QualityTable::synthetic(1), 9);
        let b = RandomPolicy::new(QualityTable::synthetic(1), 9);
        let runs: Vec<_> = (0..20).map(|_| a.decide(&o).unwrap()).collect();
        assert_eq!(runs, (0..20).map(|_| b.decide(&o).unwrap()).collect::<Vec<_>>());
        assert!(runs.iter().flatten().all(|p| o.nodes[p.node].hosted.contains(&p.expert)));
        assert!(runs.iter().flatten().any(|p| p.node != 0), "random never left the phone in 40 draws");
    }

    #[test]
    fn no_hosted_pair_is_an_error() {
        let mut o = obs();
        for n in &mut o.nodes {
            n.hosted = vec!["nobody".into()];
        }
        let p = LocalOnly::new(QualityTable::synthetic(1));
        assert!(matches!(p.decide(&o), Err(PolicyError::NoAvailablePair(0))));
    }
}
