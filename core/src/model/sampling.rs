//! Choosing the next token from logits: greedy, temperature, top-k, top-p,
//! min-p and a repetition penalty, seeded so the same seed gives the same text.
//!
//! The order follows llama.cpp's default chain: penalties → top-k → top-p →
//! min-p → temperature → draw.

use rand::SeedableRng;
use rand::distr::{Distribution, weighted::WeightedIndex};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::ModelError;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingOptions {
    /// Softmax temperature; `0` means greedy (always the most likely token).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (`0` = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability adds up to `top_p` (`1` = off).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one (`0` = off).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recently seen tokens by this (`1` = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the random draw.
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, repeat_penalty: 1.0, repeat_last_n: 64, seed: 0 }
    }
}

impl SamplingOptions {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, ..Self::default() }
    }

    /// Checks every option is in range.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |what: &str| Err(ModelError::InvalidOption(what.to_owned()));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature must be a finite number ≥ 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p must be in [0, 1]");
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad("repeat_penalty must be a finite number > 0");
        }
        Ok(())
    }
}

/// A seeded sampler.
pub struct Sampler {
    options: SamplingOptions,
    rng: StdRng,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler with its own random state seeded from `options.seed`.
    pub fn new(options: SamplingOptions) -> Result<Self, ModelError> {
        options.validate()?;
        let rng = StdRng::seed_from_u64(options.seed);
        Ok(Self { options, rng, candidates: Vec::new() })
    }

    /// Picks the next token from `logits` (modified in place by the penalty), given
    /// the tokens seen so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let o = &self.options;
        if o.repeat_penalty != 1.0 {
            let start = history.len().saturating_sub(o.repeat_last_n);
            let mut seen = history[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / o.repeat_penalty } else { *l * o.repeat_penalty };
                }
            }
        }
        if o.temperature <= 0.0 {
            return argmax(logits);
        }
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().filter(|(_, l)| !l.is_nan()).map(|(i, &l)| (i as u32, l)));
        if c.is_empty() {
            return 0;
        }
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if o.top_k > 0 && o.top_k < c.len() {
            c.select_nth_unstable_by(o.top_k - 1, by_logit_desc);
            c.truncate(o.top_k);
        }
        let max = c.iter().map(|(_, l)| *l).fold(f32::NEG_INFINITY, f32::max);
        // Probabilities at temperature 1 for the top-p and min-p filters, as llama.cpp does.
        if o.top_p < 1.0 {
            c.sort_unstable_by(by_logit_desc);
            let total: f32 = c.iter().map(|(_, l)| (l - max).exp()).sum();
            let mut cumulative = 0.0;
            let keep = c
                .iter()
                .position(|(_, l)| {
                    cumulative += (l - max).exp() / total;
                    cumulative >= o.top_p
                })
                .map_or(c.len(), |i| i + 1);
            c.truncate(keep);
        }
        if o.min_p > 0.0 {
            // exp(l - max) is p / p_max; the most likely token always stays.
            c.retain(|(_, l)| (l - max).exp() >= o.min_p);
        }
        let scaled: Vec<f32> = c.iter().map(|(_, l)| ((l - max) / o.temperature).exp()).collect();
        match WeightedIndex::new(&scaled) {
            Ok(dist) => c[dist.sample(&mut self.rng)].0,
            Err(_) => c.iter().copied().min_by(by_logit_desc).map_or(0, |(id, _)| id),
        }
    }
}

/// Index of the largest logit (the first one on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_value {
            best = i;
            best_value = l;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9, -1.0]
    }

    #[test]
    fn greedy_picks_the_largest() {
        let mut s = Sampler::new(SamplingOptions::greedy()).unwrap();
        assert_eq!(s.sample(&mut logits(), &[]), 1);
    }

    #[test]
    fn repetition_penalty_changes_the_greedy_choice() {
        let opts = SamplingOptions { repeat_penalty: 1.5, ..SamplingOptions::greedy() };
        let mut s = Sampler::new(opts).unwrap();
        // 3.0 / 1.5 = 2.0 < 2.9: token 4 wins once token 1 was seen.
        assert_eq!(s.sample(&mut logits(), &[1]), 4);
    }

    #[test]
    fn same_seed_same_draws_and_other_seed_differs() {
        let draw = |seed| {
            let opts =
                SamplingOptions { temperature: 1.5, top_k: 0, top_p: 1.0, min_p: 0.0, seed, ..Default::default() };
            let mut s = Sampler::new(opts).unwrap();
            (0..64).map(|_| s.sample(&mut logits(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let opts = SamplingOptions { temperature: 5.0, top_k: 1, ..Default::default() };
        let mut s = Sampler::new(opts).unwrap();
        assert!((0..50).all(|_| s.sample(&mut logits(), &[]) == 1));
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // With a tiny top-p only the top token survives.
        let opts = SamplingOptions { temperature: 1.0, top_k: 0, top_p: 0.01, min_p: 0.0, ..Default::default() };
        let mut s = Sampler::new(opts).unwrap();
        assert!((0..50).all(|_| s.sample(&mut logits(), &[]) == 1));
        // min-p 0.5 keeps tokens with p ≥ 0.5 p_max: ids 1 (3.0), 4 (2.9) and 2 (2.0, e^-1 ≈ 0.37 < 0.5 → out).
        let opts = SamplingOptions { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.5, ..Default::default() };
        let mut s = Sampler::new(opts).unwrap();
        let drawn: std::collections::BTreeSet<u32> = (0..200).map(|_| s.sample(&mut logits(), &[])).collect();
        assert_eq!(drawn, [1, 4].into_iter().collect());
    }

    #[test]
    fn out_of_range_options_are_rejected() {
        for bad in [
            SamplingOptions { temperature: -1.0, ..Default::default() },
            SamplingOptions { top_p: 0.0, ..Default::default() },
            SamplingOptions { min_p: 1.5, ..Default::default() },
            SamplingOptions { repeat_penalty: f32::NAN, ..Default::default() },
        ] {
            assert!(matches!(Sampler::new(bad), Err(ModelError::InvalidOption(_))));
        }
    }
}
