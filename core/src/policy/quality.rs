//! The quality table: how good each model's answers are in each domain
//! (`models/quality.json`, measured by the experts issue).

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::PolicyError;
use super::encode::{MAX_DOMAINS, MAX_MODELS};

/// Quality (0–10) of every model in every domain, with the raw measurements
/// it was derived from. Row `m` of [`QualityTable::quality`] belongs to
/// `models[m]`, column `d` to `domains[d]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityTable {
    /// Domain ids, in the gate's output order.
    pub domains: Vec<String>,
    /// Model ids ("base" and one per domain expert).
    pub models: Vec<String>,
    /// `quality[m][d]`: score 0–10 of model `m` on domain `d`.
    pub quality: Vec<Vec<f32>>,
    /// `bits_per_byte[m][d]`: the raw measurement behind the score.
    #[serde(default)]
    pub bits_per_byte: Vec<Vec<f32>>,
    /// Exact-match rate on arithmetic problems, per model.
    #[serde(default)]
    pub arithmetic_exact_match: Vec<f32>,
    /// How quality is derived from the raw numbers.
    #[serde(default)]
    pub mapping: String,
    /// How and on what the numbers were measured.
    #[serde(default)]
    pub measured: serde_json::Value,
}

impl QualityTable {
    /// Reads and checks a `quality.json`.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| PolicyError::Io { path: path.to_path_buf(), source })?;
        let table: QualityTable = serde_json::from_str(&text)
            .map_err(|e| PolicyError::InvalidQuality { path: path.to_path_buf(), detail: e.to_string() })?;
        table.validate().map_err(|detail| PolicyError::InvalidQuality { path: path.to_path_buf(), detail })?;
        Ok(table)
    }

    /// A plausible random table with "base" and four domain experts, for
    /// development and tests only: each expert scores 6–9 in its own domain and
    /// 1–4 elsewhere, the base model 3–5 everywhere.
    pub fn synthetic(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let domains: Vec<String> = ["prose", "definitions", "code", "arithmetic"].map(String::from).to_vec();
        let mut models = vec!["base".to_string()];
        models.extend(domains.iter().cloned());
        let quality = models
            .iter()
            .map(|m| {
                domains
                    .iter()
                    .map(|d| match m.as_str() {
                        "base" => rng.random_range(3.0..5.0),
                        _ if m == d => rng.random_range(6.0..9.0),
                        _ => rng.random_range(1.0..4.0),
                    })
                    .collect()
            })
            .collect();
        QualityTable {
            domains,
            models,
            quality,
            bits_per_byte: Vec::new(),
            arithmetic_exact_match: Vec::new(),
            mapping: format!("synthetic (seed {seed}), not measured"),
            measured: serde_json::Value::Null,
        }
    }

    /// Index of a model id in [`QualityTable::models`].
    pub fn model_index(&self, id: &str) -> Option<usize> {
        self.models.iter().position(|m| m == id)
    }

    /// Expected quality of model `m` on a subtask whose domain mix the gate
    /// reports as `gate`: `Σ_d gate[d] · quality[m][d]`.
    pub fn expected_quality(&self, m: usize, gate: &[f32]) -> f32 {
        self.quality[m].iter().zip(gate).map(|(q, p)| q * p).sum()
    }

    /// Checks shapes and ranges; the message says what is wrong.
    fn validate(&self) -> Result<(), String> {
        if self.domains.is_empty() || self.domains.len() > MAX_DOMAINS {
            return Err(format!("{} domains (1..={MAX_DOMAINS} supported)", self.domains.len()));
        }
        if self.models.is_empty() || self.models.len() > MAX_MODELS {
            return Err(format!("{} models (1..={MAX_MODELS} supported)", self.models.len()));
        }
        if self.quality.len() != self.models.len() {
            return Err(format!("{} quality rows for {} models", self.quality.len(), self.models.len()));
        }
        for (m, row) in self.quality.iter().enumerate() {
            if row.len() != self.domains.len() {
                return Err(format!("quality row {m} has {} values for {} domains", row.len(), self.domains.len()));
            }
            if let Some(q) = row.iter().find(|q| !(0.0..=10.0).contains(*q)) {
                return Err(format!("quality {q} of model {} is outside 0..=10", self.models[m]));
            }
        }
        for (i, id) in self.models.iter().enumerate() {
            if self.models[..i].contains(id) {
                return Err(format!("model {id} is listed twice"));
            }
        }
        Ok(())
    }

    /// A table built in memory, checked like a loaded one.
    pub fn checked(self) -> Result<Self, PolicyError> {
        self.validate().map_err(|detail| PolicyError::InvalidQuality { path: PathBuf::new(), detail })?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_is_valid_and_seeded() {
        let a = QualityTable::synthetic(7);
        assert_eq!(a, QualityTable::synthetic(7));
        assert_ne!(a.quality, QualityTable::synthetic(8).quality);
        let a = a.checked().unwrap();
        let code = a.model_index("code").unwrap();
        let base = a.model_index("base").unwrap();
        let gate = [0.0, 0.0, 1.0, 0.0];
        assert!(a.expected_quality(code, &gate) > a.expected_quality(base, &gate));
    }

    #[test]
    fn load_rejects_bad_tables() {
        let dir = std::env::temp_dir().join(format!("moe-edge-quality-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("quality.json");
        let good = QualityTable::synthetic(1);
        std::fs::write(&path, serde_json::to_string(&good).unwrap()).unwrap();
        assert_eq!(QualityTable::load(&path).unwrap(), good);
        let mut bad = good.clone();
        bad.quality[1].pop();
        std::fs::write(&path, serde_json::to_string(&bad).unwrap()).unwrap();
        assert!(matches!(QualityTable::load(&path), Err(PolicyError::InvalidQuality { .. })));
        let mut bad = good.clone();
        bad.quality[0][0] = 11.0;
        std::fs::write(&path, serde_json::to_string(&bad).unwrap()).unwrap();
        assert!(matches!(QualityTable::load(&path), Err(PolicyError::InvalidQuality { .. })));
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(QualityTable::load(&path), Err(PolicyError::InvalidQuality { .. })));
        assert!(matches!(QualityTable::load(&dir.join("missing.json")), Err(PolicyError::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
