//! Criterion bench of one SAC placement decision with the committed actor
//! (`models/policy.safetensors`), plain-Rust inference on the calling thread.
//! The quality table's values do not change the work done, so a synthetic one
//! keeps the bench independent of `models/quality.json`.
//!
//! `cargo bench -p moe-edge --bench policy`

use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use moe_edge::policy::{ACTOR_FILE, DeviceState, NodeState, Observation, Policy, QualityTable, SacActor, SubtaskInfo};

fn observation(subtasks: usize) -> Observation {
    let server = |rtt: f32, goodput: f32, hosted: &[&str]| NodeState {
        rtt_ms: rtt,
        goodput_mbps: goodput,
        load: 0.3,
        queue: 1,
        hosted: hosted.iter().map(|s| s.to_string()).collect(),
        tokens_per_s: 120.0,
    };
    let mut nodes = vec![NodeState { tokens_per_s: 44.5, ..server(0.0, 0.0, &["base"]) }];
    nodes.push(server(12.0, 90.0, &["base", "prose", "code"]));
    nodes.push(server(35.0, 40.0, &["definitions", "arithmetic"]));
    nodes.push(server(20.0, 150.0, &["code", "arithmetic", "prose"]));
    Observation {
        subtasks: (0..subtasks)
            .map(|i| SubtaskInfo {
                gate: vec![0.1, 0.1, 0.1, 0.1]
                    .into_iter()
                    .enumerate()
                    .map(|(d, p)| if d == i % 4 { 0.7 } else { p })
                    .collect(),
                prompt_tokens: 200,
                expected_output_tokens: 128,
            })
            .collect(),
        nodes,
        device: DeviceState { battery: 0.6, charging: false, thermal: 0.2 },
    }
}

fn decide(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(ACTOR_FILE);
    let actor = SacActor::load(&path, QualityTable::synthetic(1)).unwrap_or_else(|e| panic!("{e}"));
    for n in [1, 3] {
        let obs = observation(n);
        c.bench_function(&format!("sac decide ({n} subtask(s), 3 servers)"), |b| {
            b.iter(|| actor.decide(&obs).unwrap())
        });
    }
}

criterion_group!(benches, decide);
criterion_main!(benches);
