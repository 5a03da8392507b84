//! TEMPORARY stand-in until the tokenizer branch lands (not committed).
use super::ModelError;
use candle_core::quantized::gguf_file::{Content, Value};
use std::path::Path;

/// tmp
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bytes: Vec<Vec<u8>>,
    eos: Vec<u32>,
    bos: Option<u32>,
}

fn byte_table() -> std::collections::HashMap<char, u8> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter().zip(cs).map(|(b, c)| (char::from_u32(c).unwrap(), b as u8)).collect()
}

impl Tokenizer {
    /// tmp
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(Self::finish(inner, vec![], None))
    }
    fn finish(inner: tokenizers::Tokenizer, eos: Vec<u32>, bos: Option<u32>) -> Self {
        let table = byte_table();
        let n = inner.get_vocab_size(true);
        let bytes = (0..n as u32)
            .map(|i| {
                let t = inner.id_to_token(i).unwrap_or_default();
                if t.starts_with("<|") {
                    t.into_bytes()
                } else {
                    t.chars().map(|c| table.get(&c).copied().unwrap_or(b'?')).collect()
                }
            })
            .collect();
        Self { inner, bytes, eos, bos }
    }
    /// tmp
    pub fn from_gguf(c: &Content) -> Result<Self, ModelError> {
        let arr = |k: &str| -> Vec<String> {
            match c.metadata.get(k) {
                Some(Value::Array(a)) => a.iter().map(|v| v.to_string().unwrap().clone()).collect(),
                _ => vec![],
            }
        };
        let tokens = arr("tokenizer.ggml.tokens");
        let merges = arr("tokenizer.ggml.merges");
        let vocab: ahash_map::Map = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .map(|m| {
                let (a, b) = m.split_once(' ').unwrap();
                (a.to_string(), b.to_string())
            })
            .collect();
        let bpe = tokenizers::models::bpe::BPE::builder()
            .vocab_and_merges(vocab.into_iter().collect::<tokenizers::models::bpe::Vocab>(), merges)
            .build()
            .unwrap();
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        let specials: Vec<tokenizers::AddedToken> = tokens
            .iter()
            .filter(|t| t.starts_with("<|"))
            .map(|t| tokenizers::AddedToken::from(t.clone(), true))
            .collect();
        let _ = inner.add_special_tokens(specials);
        let eos = c.metadata.get("tokenizer.ggml.eos_token_id").map(|v| v.to_u32().unwrap()).into_iter().collect();
        let bos = c.metadata.get("tokenizer.ggml.bos_token_id").map(|v| v.to_u32().unwrap());
        Ok(Self::finish(inner, eos, bos))
    }
    /// tmp
    pub fn encode(&self, text: &str, _add_bos: bool) -> Result<Vec<u32>, ModelError> {
        Ok(self.inner.encode(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?.get_ids().to_vec())
    }
    /// tmp
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner.decode(ids, false).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }
    /// tmp
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map(|v| v.as_slice()).unwrap_or(&[])
    }
    /// tmp
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }
    /// tmp
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    /// tmp
    pub fn add_bos_default(&self) -> bool {
        false
    }
}
mod ahash_map {
    pub type Map = std::collections::HashMap<String, u32>;
}
