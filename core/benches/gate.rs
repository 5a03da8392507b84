//! Gate latency: tokenizing and scoring a 256-token prompt on one thread
//! (the bar is ≤ 1 ms per prompt).

use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use moe_edge::gate::Gate;

fn gate(c: &mut Criterion) {
    let gate = Gate::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/gate")).expect("committed gate");
    // Grow a mixed-domain prompt until it is exactly 256 gate tokens long.
    let unit = "Define the word ossify; then compute 482+97 and write def f(x): return x * 2 in Python. ";
    let mut text = String::new();
    while gate.token_ids(&text).unwrap().len() < 256 {
        text.push_str(unit);
    }
    let ids = gate.token_ids(&text).unwrap()[..256].to_vec();
    let text = gate.token_ids(&text).map(|_| text).unwrap();
    c.bench_function("gate/probabilities 256-token prompt (tokenize + score)", |b| {
        b.iter(|| gate.probabilities(std::hint::black_box(&text)).unwrap())
    });
    c.bench_function("gate/probabilities_of_ids 256 ids (score only)", |b| {
        b.iter(|| gate.probabilities_of_ids(std::hint::black_box(&ids)).unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = gate
}
criterion_main!(benches);
