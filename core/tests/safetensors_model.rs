//! HF-layout models (safetensors + config.json + tokenizer.json): a small random
//! Llama is written to disk, loaded by the runtime, and its logits are checked
//! against a plain-loop reference implementation of the Llama forward pass
//! written here from the architecture's definition.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use moe_edge::model::LocalModel;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const VOCAB: usize = 256;
const HIDDEN: usize = 32;
const INTER: usize = 48;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const EPS: f32 = 1e-5;
const THETA: f32 = 10_000.0;

/// A row-major matrix.
struct Mat {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Mat {
    fn random(rows: usize, cols: usize, rng: &mut StdRng) -> Self {
        let scale = 1.0 / (cols as f32).sqrt();
        Self { rows, cols, data: (0..rows * cols).map(|_| rng.random_range(-scale..scale)).collect() }
    }
    /// y = W x for a vector x of length `cols`.
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        (0..self.rows)
            .map(|r| self.data[r * self.cols..(r + 1) * self.cols].iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }
    fn tensor(&self) -> Tensor {
        Tensor::from_vec(self.data.clone(), (self.rows, self.cols), &Device::Cpu).unwrap()
    }
}

struct LayerWeights {
    input_norm: Vec<f32>,
    q: Mat,
    k: Mat,
    v: Mat,
    o: Mat,
    post_norm: Vec<f32>,
    gate: Mat,
    up: Mat,
    down: Mat,
}

struct Weights {
    embed: Mat,
    layers: Vec<LayerWeights>,
    norm: Vec<f32>,
}

impl Weights {
    fn random(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let norm = |rng: &mut StdRng| (0..HIDDEN).map(|_| rng.random_range(0.5..1.5)).collect::<Vec<f32>>();
        let layers = (0..LAYERS)
            .map(|_| LayerWeights {
                input_norm: norm(&mut rng),
                q: Mat::random(HEADS * HEAD_DIM, HIDDEN, &mut rng),
                k: Mat::random(KV_HEADS * HEAD_DIM, HIDDEN, &mut rng),
                v: Mat::random(KV_HEADS * HEAD_DIM, HIDDEN, &mut rng),
                o: Mat::random(HIDDEN, HEADS * HEAD_DIM, &mut rng),
                post_norm: norm(&mut rng),
                gate: Mat::random(INTER, HIDDEN, &mut rng),
                up: Mat::random(INTER, HIDDEN, &mut rng),
                down: Mat::random(HIDDEN, INTER, &mut rng),
            })
            .collect();
        Self { embed: Mat::random(VOCAB, HIDDEN, &mut rng), layers, norm: norm(&mut rng) }
    }

    fn save(&self, dir: &Path, rope_in_parameters: bool) {
        let vec = |v: &[f32]| Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap();
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        tensors.insert("model.embed_tokens.weight".into(), self.embed.tensor());
        tensors.insert("model.norm.weight".into(), vec(&self.norm));
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            for (name, m) in [
                ("self_attn.q_proj", &l.q),
                ("self_attn.k_proj", &l.k),
                ("self_attn.v_proj", &l.v),
                ("self_attn.o_proj", &l.o),
                ("mlp.gate_proj", &l.gate),
                ("mlp.up_proj", &l.up),
                ("mlp.down_proj", &l.down),
            ] {
                tensors.insert(format!("{p}.{name}.weight"), m.tensor());
            }
            tensors.insert(format!("{p}.input_layernorm.weight"), vec(&l.input_norm));
            tensors.insert(format!("{p}.post_attention_layernorm.weight"), vec(&l.post_norm));
        }
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        let rope = if rope_in_parameters {
            format!(r#""rope_parameters": {{"rope_type": "default", "rope_theta": {THETA}}}"#)
        } else {
            format!(r#""rope_theta": {THETA}"#)
        };
        let config = format!(
            r#"{{"architectures": ["LlamaForCausalLM"], "vocab_size": {VOCAB}, "hidden_size": {HIDDEN},
            "intermediate_size": {INTER}, "num_hidden_layers": {LAYERS}, "num_attention_heads": {HEADS},
            "num_key_value_heads": {KV_HEADS}, "rms_norm_eps": {EPS}, {rope}, "max_position_embeddings": 64,
            "tie_word_embeddings": true}}"#
        );
        std::fs::write(dir.join("config.json"), config).unwrap();
        std::fs::write(dir.join("tokenizer.json"), byte_level_tokenizer_json()).unwrap();
    }

    /// Logits of every position, computed with plain loops.
    fn reference_logits(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        let rms = |x: &[f32], w: &[f32]| {
            let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + EPS).sqrt();
            x.iter().zip(w).map(|(v, w)| v * inv * w).collect::<Vec<f32>>()
        };
        // HF rotary embedding: pairs (i, i + d/2) rotate by pos * theta^(-2i/d).
        let rope = |x: &mut [f32], pos: usize| {
            for head in x.chunks_mut(HEAD_DIM) {
                for i in 0..HEAD_DIM / 2 {
                    let angle = pos as f32 * THETA.powf(-2.0 * i as f32 / HEAD_DIM as f32);
                    let (a, b) = (head[i], head[i + HEAD_DIM / 2]);
                    head[i] = a * angle.cos() - b * angle.sin();
                    head[i + HEAD_DIM / 2] = b * angle.cos() + a * angle.sin();
                }
            }
        };
        let mut xs: Vec<Vec<f32>> =
            tokens.iter().map(|&t| self.embed.data[t as usize * HIDDEN..(t as usize + 1) * HIDDEN].to_vec()).collect();
        for l in &self.layers {
            let mut keys = Vec::new();
            let mut values = Vec::new();
            let mut attn_out = Vec::new();
            for (pos, x) in xs.iter().enumerate() {
                let h = rms(x, &l.input_norm);
                let mut q = l.q.apply(&h);
                let mut k = l.k.apply(&h);
                rope(&mut q, pos);
                rope(&mut k, pos);
                keys.push(k);
                values.push(l.v.apply(&h));
                let mut out = vec![0.0; HEADS * HEAD_DIM];
                for head in 0..HEADS {
                    let kv = head / (HEADS / KV_HEADS);
                    let qh = &q[head * HEAD_DIM..(head + 1) * HEAD_DIM];
                    let scores: Vec<f32> = keys
                        .iter()
                        .map(|k| {
                            qh.iter().zip(&k[kv * HEAD_DIM..]).map(|(a, b)| a * b).sum::<f32>()
                                / (HEAD_DIM as f32).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f32 = exps.iter().sum();
                    for (e, v) in exps.iter().zip(&values) {
                        for d in 0..HEAD_DIM {
                            out[head * HEAD_DIM + d] += e / total * v[kv * HEAD_DIM + d];
                        }
                    }
                }
                attn_out.push(l.o.apply(&out));
            }
            for (x, a) in xs.iter_mut().zip(attn_out) {
                x.iter_mut().zip(a).for_each(|(x, a)| *x += a);
                let h = rms(x, &l.post_norm);
                let act: Vec<f32> =
                    l.gate.apply(&h).iter().zip(l.up.apply(&h)).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
                x.iter_mut().zip(l.down.apply(&act)).for_each(|(x, d)| *x += d);
            }
        }
        xs.iter().map(|x| self.embed.apply(&rms(x, &self.norm))).collect()
    }
}

/// A tokenizer.json whose vocabulary is the 256 byte-level symbols.
fn byte_level_tokenizer_json() -> String {
    let mut printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut symbols: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..256 {
        if !printable.contains(&b) {
            printable.push(b);
            symbols.push(256 + extra);
            extra += 1;
        }
    }
    let mut pairs: Vec<(u32, char)> =
        printable.iter().zip(&symbols).map(|(&b, &s)| (b, char::from_u32(s).unwrap())).collect();
    pairs.sort();
    let vocab: serde_json::Map<String, serde_json::Value> =
        pairs.iter().map(|(b, c)| (c.to_string(), serde_json::Value::from(*b))).collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
    .to_string()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moe-edge-st-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn safetensors_llama_matches_the_reference_forward() {
    for rope_in_parameters in [false, true] {
        let dir = scratch(&format!("rope{rope_in_parameters}"));
        let weights = Weights::random(42);
        weights.save(&dir, rope_in_parameters);
        let model = LocalModel::load(&dir).unwrap();
        assert_eq!(model.llama().config().rope_theta, THETA);
        let tokens = model.tokenizer().encode("Hello, edge!", false).unwrap();
        assert_eq!(tokens, b"Hello, edge!".iter().map(|&b| u32::from(b)).collect::<Vec<_>>());
        // No chat template: chat mode feeds the prompt as is (how experts are prompted).
        assert!(model.chat_template().is_none());
        assert_eq!(model.render_prompt("Hello, edge!", true).unwrap(), "Hello, edge!");

        let expected = weights.reference_logits(&tokens);
        let mut cache = model.llama().new_cache(tokens.len());
        let all = model.llama().forward(&tokens, &mut cache, true).unwrap().to_vec2::<f32>().unwrap();
        // f32 throughout; only the K/V/Q/probability rounding to f16 (llama.cpp's
        // attention precision, see llama.rs) separates the two, well under 1e-2.
        let max_diff =
            all.iter().flatten().zip(expected.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        println!("max |runtime - reference| = {max_diff}");
        assert!(max_diff < 1e-2, "{max_diff}");

        // Incremental decoding through the KV cache gives the same last-position logits.
        let mut cache = model.llama().new_cache(tokens.len());
        let mut last = Vec::new();
        for t in &tokens {
            last = model.llama().forward(&[*t], &mut cache, false).unwrap().to_vec1::<f32>().unwrap();
        }
        let step_diff = last.iter().zip(expected.last().unwrap()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(step_diff < 1e-2, "{step_diff}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
