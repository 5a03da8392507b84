//! Text ⇄ token ids for Llama-family models.
//!
//! [`Tokenizer`] wraps a [`tokenizers::Tokenizer`] and can be built two ways:
//!
//! * [`Tokenizer::from_file`] loads a Hugging Face `tokenizer.json` (the experts
//!   trained here ship one next to their safetensors);
//! * [`Tokenizer::from_gguf`] rebuilds a byte-level BPE tokenizer from the
//!   `tokenizer.ggml.*` metadata of a GGUF file, choosing the pre-tokenizer
//!   regexes from `tokenizer.ggml.pre` the same way llama.cpp does, so that the
//!   ids match llama.cpp's for the same model.
//!
//! Besides encoding and decoding it keeps, for every id, the raw bytes the token
//! stands for ([`Tokenizer::token_bytes`]), which the streaming detokenizer
//! concatenates to emit complete UTF-8 characters as soon as they are known.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::model::ModelError;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
mod token_type {
    /// An ordinary vocabulary entry.
    pub const NORMAL: i64 = 1;
    /// The unknown token.
    pub const UNKNOWN: i64 = 2;
    /// A control token such as `<|im_start|>` or `<|endoftext|>`.
    pub const CONTROL: i64 = 3;
    /// A token added by the model authors that is always matched literally.
    pub const USER_DEFINED: i64 = 4;
    /// A raw byte written as `<0xNN>` (SentencePiece style).
    pub const BYTE: i64 = 6;
}

/// Token texts that llama.cpp treats as end-of-generation when they exist in
/// the vocabulary, whatever the metadata says (`llama-vocab.cpp`, "auto-detect
/// special tokens by text"). [`Tokenizer::eos_ids`] includes the ones present.
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "<end_of_utterance>",
    "<\u{FF5C}end\u{2581}of\u{2581}sentence\u{FF5C}>",
];

/// Token texts tried, in order, as the BOS token of a `tokenizer.json` that
/// comes without any configuration naming it.
const BOS_TEXTS: &[&str] = &["<|begin_of_text|>", "<s>", "<|startoftext|>", "<bos>"];

/// The GPT-2 pre-tokenizer regex, shared by many entries of [`PRE_TOKENIZERS`].
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// The Llama 3 pre-tokenizer regex as llama.cpp writes it (case-insensitive
/// contractions spelled out with character classes).
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The Qwen2 pre-tokenizer regex: Llama 3's with one digit per piece.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// DeepSeek's CJK regex, llama.cpp's `[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+`
/// with the whitespace code points taken out of its ranges. llama.cpp runs
/// regexes that use no `\p{..}` class on a copy of the text in which every
/// non-ASCII whitespace character is replaced by U+000B, so explicit
/// non-ASCII ranges never match whitespace there; only `\s` does.
const DEEPSEEK_CJK_REGEX: &str = "[\u{4E00}-\u{9FA5}\u{800}-\u{167F}\u{1681}-\u{1FFF}\u{200B}-\u{2027}\u{202A}-\u{202E}\u{2030}-\u{205E}\u{2060}-\u{2FFF}\u{3001}-\u{4E00}\u{AC00}-\u{D7FF}]+";

/// How one family of `tokenizer.ggml.pre` values pre-tokenizes text.
struct PreTokenizerSpec {
    /// The `tokenizer.ggml.pre` values of this family.
    names: &'static [&'static str],
    /// Regexes applied one after the other; each splits every piece left by
    /// the previous ones into matches and the text between them.
    regexes: &'static [&'static str],
    /// A whole pre-token that is itself in the vocabulary becomes that token
    /// without applying merges (llama.cpp's `ignore_merges`).
    ignore_merges: bool,
    /// Whether BOS is added when the GGUF has no `tokenizer.ggml.add_bos_token`.
    add_bos: bool,
}

/// The `tokenizer.ggml.pre` values [`Tokenizer::from_gguf`] understands, with
/// the regexes of llama.cpp's `llm_tokenizer_bpe` (`LLAMA_VOCAB_PRE_TYPE_*`).
const PRE_TOKENIZERS: &[PreTokenizerSpec] = &[
    PreTokenizerSpec {
        names: &["default"],
        regexes: &[r"[\p{P}\$\+<=>\^~\|]+", GPT2_REGEX, r"\p{N}+", r"[0-9][0-9][0-9]"],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizerSpec {
        // "gpt2" is not a llama.cpp name; it is accepted as an alias of "gpt-2".
        names: &["gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "exaone4", "trillion", "mellum"],
        regexes: &[GPT2_REGEX],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizerSpec {
        names: &["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "lfm2"],
        regexes: &[LLAMA3_REGEX],
        ignore_merges: true,
        add_bos: true,
    },
    PreTokenizerSpec { names: &["dbrx", "smaug-bpe"], regexes: &[LLAMA3_REGEX], ignore_merges: false, add_bos: false },
    PreTokenizerSpec {
        names: &["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"],
        regexes: &[r"\p{N}", GPT2_REGEX],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizerSpec {
        names: &["qwen2", "deepseek-r1-qwen", "megrez", "stablelm2"],
        regexes: &[QWEN2_REGEX],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizerSpec {
        names: &["qwen35"],
        regexes: &[
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizerSpec {
        names: &["falcon"],
        regexes: &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_REGEX, r"[0-9][0-9][0-9]"],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizerSpec {
        names: &["deepseek-llm"],
        regexes: &[
            "[\r\n]",
            "\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+",
            // llama.cpp's `\u{3000}-\u{3002}`, minus the ideographic space.
            "\\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3001}-\u{3002}]+",
            "\\s+$",
            DEEPSEEK_CJK_REGEX,
            "\\p{N}+",
        ],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizerSpec {
        names: &["deepseek-coder"],
        regexes: &["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", DEEPSEEK_CJK_REGEX, "\\p{N}"],
        ignore_merges: false,
        add_bos: false,
    },
];

/// How token strings of the wrapped model map back to the bytes they stand for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenText {
    /// GPT-2 byte-level BPE: every character stands for one byte.
    ByteLevel,
    /// SentencePiece style: `▁` is a space and `<0xNN>` is a raw byte.
    SentencePiece,
    /// The token text is the text.
    Raw,
}

/// How [`Tokenizer::decode`] turns ids into text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DecodeMode {
    /// Concatenate [`Tokenizer::token_bytes`] (exact, used for GGUF vocabularies).
    Bytes,
    /// Run the decoder of the wrapped `tokenizer.json`.
    Inner,
}

/// A tokenizer for one model: encodes text to ids, decodes ids to text and
/// knows the model's BOS and end-of-generation tokens.
///
/// Cheap to share between threads (`Send + Sync`); clone it to own a copy.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Raw bytes of every id below `vocab_size` (empty for ids with no token).
    bytes: Vec<Vec<u8>>,
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: bool,
    decode_mode: DecodeMode,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.bytes.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    ///
    /// BOS, the stop tokens and whether BOS is added by default are taken from
    /// `tokenizer_config.json`, `config.json` and `generation_config.json` next
    /// to it when those exist, then from well-known token texts (`<s>`,
    /// `<|begin_of_text|>`, `<|im_end|>`, `<|endoftext|>`, ...) and from the
    /// file's post-processor.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let json = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&json)
            .map_err(|e| ModelError::invalid(path, format!("bad tokenizer.json: {e}")))?;

        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let tokenizer_config = read_json_sibling(dir, "tokenizer_config.json")?;
        let config = read_json_sibling(dir, "config.json")?;
        let generation_config = read_json_sibling(dir, "generation_config.json")?;

        let vocab = inner.get_vocab(true);
        let vocab_size = vocab.values().max().map_or(0, |&m| m as usize + 1);
        let text_kind = inner.get_decoder().map_or(TokenText::Raw, decoder_text_kind);
        let added = inner.get_added_tokens_decoder();
        let mut bytes = vec![Vec::new(); vocab_size];
        for (text, &id) in &vocab {
            bytes[id as usize] =
                if added.contains_key(&id) { text.as_bytes().to_vec() } else { token_text_to_bytes(text, text_kind) };
        }

        let lookup = |text: &str| inner.token_to_id(text);
        let id_in_range = |id: u32| (id as usize) < vocab_size;

        // BOS: tokenizer_config.json, then config.json, then well-known texts.
        let bos = tokenizer_config
            .as_ref()
            .and_then(|c| special_token_text(c, "bos_token"))
            .and_then(|t| lookup(&t))
            .or_else(|| json_ids(config.as_ref(), "bos_token_id").into_iter().next())
            .filter(|&id| id_in_range(id))
            .or_else(|| BOS_TEXTS.iter().find_map(|t| lookup(t)));

        let mut eos = Vec::new();
        if let Some(id) =
            tokenizer_config.as_ref().and_then(|c| special_token_text(c, "eos_token")).and_then(|t| lookup(&t))
        {
            eos.push(id);
        }
        eos.extend(json_ids(config.as_ref(), "eos_token_id"));
        eos.extend(json_ids(generation_config.as_ref(), "eos_token_id"));
        eos.extend(END_OF_GENERATION_TEXTS.iter().filter_map(|t| lookup(t)));
        eos.retain(|&id| id_in_range(id));
        dedup_in_order(&mut eos);

        // add BOS: tokenizer_config.json, else whatever the post-processor does.
        let add_bos =
            match tokenizer_config.as_ref().and_then(|c| c.get("add_bos_token")).and_then(serde_json::Value::as_bool) {
                Some(flag) => flag,
                None => match (bos, inner.encode_fast("", true)) {
                    (Some(bos), Ok(encoding)) => encoding.get_ids().first() == Some(&bos),
                    _ => false,
                },
            };

        Ok(Self { inner, bytes, bos, eos, add_bos: add_bos && bos.is_some(), decode_mode: DecodeMode::Inner })
    }

    /// Builds the byte-level BPE tokenizer stored in the metadata of a GGUF file.
    ///
    /// Reads `tokenizer.ggml.model` (must be `gpt2`), `.tokens`, `.merges`,
    /// `.token_type`, `.pre`, `.bos_token_id`, `.eos_token_id`, `.eot_token_id`,
    /// `.eom_token_id` and `.add_bos_token`. Control, user-defined and unknown
    /// tokens become added tokens, so `<|im_start|>` in the text is encoded as
    /// one token (llama.cpp with `parse_special = true`). `tokenizer.ggml.pre`
    /// selects llama.cpp's pre-tokenizer regexes; a missing value means
    /// `default`, as in llama.cpp.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for another tokenizer model or an unknown
    /// pre-tokenizer (the message lists the supported names), and
    /// [`ModelError::Tokenizer`] for missing or malformed metadata.
    pub fn from_gguf(content: &Content) -> Result<Self, ModelError> {
        let meta = &content.metadata;
        let model = match meta.get("tokenizer.ggml.model") {
            Some(v) => gguf_string(v, "tokenizer.ggml.model")?,
            None => return Err(missing("tokenizer.ggml.model")),
        };
        if model != "gpt2" {
            return Err(ModelError::Unsupported(format!(
                "GGUF tokenizer model '{model}' (only 'gpt2', byte-level BPE, is supported)"
            )));
        }

        let pre_name = match meta.get("tokenizer.ggml.pre") {
            Some(v) => gguf_string(v, "tokenizer.ggml.pre")?,
            None => "default",
        };
        let pre_name = if pre_name.is_empty() { "default" } else { pre_name };
        let spec = PRE_TOKENIZERS.iter().find(|s| s.names.contains(&pre_name)).ok_or_else(|| {
            let names: Vec<&str> = PRE_TOKENIZERS.iter().flat_map(|s| s.names.iter().copied()).collect();
            ModelError::Unsupported(format!(
                "GGUF pre-tokenizer '{pre_name}' (tokenizer.ggml.pre); supported: {}",
                names.join(", ")
            ))
        })?;

        let tokens = gguf_array(meta, "tokenizer.ggml.tokens")?
            .ok_or_else(|| missing("tokenizer.ggml.tokens"))?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.to_string()
                    .map(String::as_str)
                    .map_err(|_| bad("tokenizer.ggml.tokens", format!("entry {i} is not a string")))
            })
            .collect::<Result<Vec<&str>, _>>()?;
        if tokens.is_empty() {
            return Err(bad("tokenizer.ggml.tokens", "the vocabulary is empty"));
        }
        if u32::try_from(tokens.len()).is_err() {
            return Err(bad("tokenizer.ggml.tokens", "more than 2^32 tokens"));
        }

        let types: Vec<i64> = match gguf_array(meta, "tokenizer.ggml.token_type")? {
            Some(values) => {
                if values.len() != tokens.len() {
                    return Err(bad(
                        "tokenizer.ggml.token_type",
                        format!("{} entries for {} tokens", values.len(), tokens.len()),
                    ));
                }
                values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        gguf_int(v)
                            .ok_or_else(|| bad("tokenizer.ggml.token_type", format!("entry {i} is not an integer")))
                    })
                    .collect::<Result<_, _>>()?
            }
            None => vec![token_type::NORMAL; tokens.len()],
        };

        // The BPE model: token -> id (the last of duplicate texts wins, as in
        // llama.cpp) and the ranked merges.
        let mut vocab = Vocab::with_capacity(tokens.len());
        for (id, text) in tokens.iter().enumerate() {
            vocab.insert((*text).to_owned(), id as u32);
        }
        let merge_values =
            gguf_array(meta, "tokenizer.ggml.merges")?.ok_or_else(|| missing("tokenizer.ggml.merges"))?;
        let mut merges = Vec::with_capacity(merge_values.len());
        let mut dropped_merges = 0usize;
        for (i, v) in merge_values.iter().enumerate() {
            let line = v.to_string().map_err(|_| bad("tokenizer.ggml.merges", format!("entry {i} is not a string")))?;
            let (left, right) = split_merge(line)
                .ok_or_else(|| bad("tokenizer.ggml.merges", format!("entry {i} ({line:?}) is not \"left right\"")))?;
            // The tokenizers crate needs both sides and their concatenation in
            // the vocabulary. Well-formed vocabularies have no other merges
            // (llama.cpp would apply one and then fall back to byte tokens).
            let joined = format!("{left}{right}");
            if vocab.contains_key(left) && vocab.contains_key(right) && vocab.contains_key(&joined) {
                merges.push((left.to_owned(), right.to_owned()));
            } else {
                dropped_merges += 1;
            }
        }
        if dropped_merges > 0 {
            tracing::warn!(dropped_merges, "GGUF merges whose tokens are not in the vocabulary were ignored");
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(spec.ignore_merges)
            .build()
            .map_err(|e| ModelError::Tokenizer(format!("cannot build the BPE model: {e}")))?;

        let mut steps = Vec::with_capacity(spec.regexes.len() + 1);
        for regex in spec.regexes {
            let split = Split::new(SplitPattern::Regex((*regex).to_owned()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| {
                ModelError::Tokenizer(format!("pre-tokenizer regex {regex:?} does not compile: {e}"))
            })?;
            steps.push(PreTokenizerWrapper::Split(split));
        }
        steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)));

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(steps))));
        inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(false, false, false))));

        // Tokens matched literally before pre-tokenization.
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(text, ty)| {
                !text.is_empty() && matches!(**ty, token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN)
            })
            .map(|(text, ty)| AddedToken::from(*text, *ty != token_type::USER_DEFINED).normalized(false))
            .collect();
        inner
            .add_special_tokens(added)
            .map_err(|e| ModelError::Tokenizer(format!("cannot add special tokens: {e}")))?;

        let bytes: Vec<Vec<u8>> = tokens
            .iter()
            .zip(&types)
            .map(|(text, ty)| match *ty {
                token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN => text.as_bytes().to_vec(),
                token_type::BYTE => parse_byte_token(text).map_or_else(|| text.as_bytes().to_vec(), |b| vec![b]),
                _ => token_text_to_bytes(text, TokenText::ByteLevel),
            })
            .collect();

        let vocab_size = tokens.len();
        let special_id = |key: &str| -> Result<Option<u32>, ModelError> {
            let Some(v) = meta.get(key) else {
                return Ok(None);
            };
            let id = gguf_int(v).ok_or_else(|| bad(key, "not an integer"))?;
            match u32::try_from(id) {
                Ok(id) if (id as usize) < vocab_size => Ok(Some(id)),
                // llama.cpp ignores out-of-range special ids (-1 means "none").
                _ => {
                    tracing::warn!(key, id, vocab_size, "special token id out of range, ignored");
                    Ok(None)
                }
            }
        };
        let bos = special_id("tokenizer.ggml.bos_token_id")?;
        let mut eos = Vec::new();
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            eos.extend(special_id(key)?);
        }
        eos.extend(END_OF_GENERATION_TEXTS.iter().filter_map(|t| inner.token_to_id(t)));
        dedup_in_order(&mut eos);

        let add_bos = match meta.get("tokenizer.ggml.add_bos_token") {
            Some(Value::Bool(flag)) => *flag,
            Some(_) => return Err(bad("tokenizer.ggml.add_bos_token", "not a bool")),
            None => spec.add_bos,
        };

        Ok(Self { inner, bytes, bos, eos, add_bos: add_bos && bos.is_some(), decode_mode: DecodeMode::Bytes })
    }

    /// Encodes `text` to token ids, with the BOS token first if `add_bos` is
    /// true and the model has one (without BOS id, `add_bos` is ignored).
    ///
    /// Special and added tokens written in the text (`<|im_start|>`) are
    /// encoded as those single tokens, as llama.cpp does for chat prompts; so
    /// user text spliced into a template can contain them too. Nothing else is
    /// added: no EOS, no post-processor template. The empty string gives no
    /// ids (or just BOS).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, ModelError> {
        let encoding =
            self.inner.encode_fast(text, false).map_err(|e| ModelError::Tokenizer(format!("cannot encode: {e}")))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_bos && let Some(bos) = self.bos {
            ids.push(bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Decodes ids to text, special tokens included as their text.
    ///
    /// For GGUF vocabularies this is the concatenation of
    /// [`token_bytes`](Self::token_bytes), so `decode(encode(s)) == s`; for a
    /// `tokenizer.json` it is that file's decoder. No spaces are cleaned up.
    /// Bytes that are not valid UTF-8 (a character cut in the middle) become
    /// U+FFFD.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] if an id is not in the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        if let Some(&bad_id) = ids.iter().find(|&&id| !self.has_id(id)) {
            return Err(ModelError::Tokenizer(format!(
                "cannot decode token id {bad_id}: not in the vocabulary of {} tokens",
                self.bytes.len()
            )));
        }
        match self.decode_mode {
            DecodeMode::Bytes => {
                let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id).iter().copied()).collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            DecodeMode::Inner => {
                self.inner.decode(ids, false).map_err(|e| ModelError::Tokenizer(format!("cannot decode: {e}")))
            }
        }
    }

    /// The raw bytes token `id` stands for: for byte-level BPE tokens the bytes
    /// behind the GPT-2 byte-to-unicode characters (possibly an incomplete
    /// UTF-8 sequence), for special and added tokens their text.
    ///
    /// Returns an empty slice for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Number of token ids (one more than the largest id); the size of the
    /// model's output logits should match it.
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The tokens that end generation, deduplicated, first the declared EOS,
    /// then EOT and EOM (GGUF), then the well-known end-of-turn tokens present
    /// in the vocabulary (`<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`, ...,
    /// the ones llama.cpp also treats as end of generation).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Whether the model expects BOS at the start of a prompt (false when it
    /// has no BOS token).
    pub fn add_bos_default(&self) -> bool {
        self.add_bos
    }

    /// The id of the token whose text (as stored in the vocabulary, e.g.
    /// `<|im_end|>` or the byte-level `Ġthe`) is exactly `token`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The wrapped `tokenizers` tokenizer, for anything not covered here.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    fn has_id(&self, id: u32) -> bool {
        match self.decode_mode {
            DecodeMode::Bytes => (id as usize) < self.bytes.len(),
            DecodeMode::Inner => self.inner.id_to_token(id).is_some(),
        }
    }
}

/// Whether GPT-2's byte-to-unicode table maps byte `b` to the char of the same
/// code point (printable Latin-1); the 68 other bytes map to U+0100.. in order.
const fn byte_is_printable(b: usize) -> bool {
    (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
}

/// GPT-2's unicode-to-byte table. Index: a code point below U+0144; value:
/// the byte it stands for plus one, or 0 if it stands for no byte.
const UNICODE_TO_BYTE: [u16; 0x144] = {
    let mut table = [0u16; 0x144];
    let mut next = 0x100;
    let mut b = 0;
    while b < 256 {
        if byte_is_printable(b) {
            table[b] = b as u16 + 1;
        } else {
            table[next] = b as u16 + 1;
            next += 1;
        }
        b += 1;
    }
    table
};

/// The byte a GPT-2 byte-level character stands for.
fn unicode_to_byte(c: char) -> Option<u8> {
    let entry = *UNICODE_TO_BYTE.get(c as usize)?;
    entry.checked_sub(1).map(|b| b as u8)
}

/// The bytes a model token string stands for.
fn token_text_to_bytes(text: &str, kind: TokenText) -> Vec<u8> {
    match kind {
        TokenText::ByteLevel => {
            let mapped: Option<Vec<u8>> = text.chars().map(unicode_to_byte).collect();
            // A token with characters outside the table is not byte-encoded
            // (it was added as plain text): keep its UTF-8.
            mapped.unwrap_or_else(|| text.as_bytes().to_vec())
        }
        TokenText::SentencePiece => match parse_byte_token(text) {
            Some(b) => vec![b],
            None => text.replace('\u{2581}', " ").into_bytes(),
        },
        TokenText::Raw => text.as_bytes().to_vec(),
    }
}

/// `<0xNN>` → the byte NN.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Which convention a `tokenizer.json` decoder implies for its token strings.
fn decoder_text_kind(decoder: &DecoderWrapper) -> TokenText {
    match decoder {
        DecoderWrapper::ByteLevel(_) => TokenText::ByteLevel,
        DecoderWrapper::Metaspace(_) | DecoderWrapper::ByteFallback(_) | DecoderWrapper::Replace(_) => {
            TokenText::SentencePiece
        }
        DecoderWrapper::Sequence(seq) => {
            let kinds: Vec<TokenText> = seq.get_decoders().iter().map(decoder_text_kind).collect();
            if kinds.contains(&TokenText::ByteLevel) {
                TokenText::ByteLevel
            } else if kinds.contains(&TokenText::SentencePiece) {
                TokenText::SentencePiece
            } else {
                TokenText::Raw
            }
        }
        _ => TokenText::Raw,
    }
}

/// Splits a GGUF merge `"left right"` at the first space after the first
/// character (as llama.cpp does).
fn split_merge(line: &str) -> Option<(&str, &str)> {
    let first = line.chars().next()?.len_utf8();
    let space = line[first..].find(' ')? + first;
    Some((&line[..space], &line[space + 1..]))
}

/// Removes repeated ids, keeping the first occurrence of each.
fn dedup_in_order(ids: &mut Vec<u32>) {
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
}

fn missing(key: &str) -> ModelError {
    ModelError::Tokenizer(format!("GGUF metadata has no {key}"))
}

fn bad(key: &str, detail: impl fmt::Display) -> ModelError {
    ModelError::Tokenizer(format!("GGUF metadata {key}: {detail}"))
}

fn gguf_string<'a>(value: &'a Value, key: &str) -> Result<&'a str, ModelError> {
    value.to_string().map(String::as_str).map_err(|_| bad(key, "not a string"))
}

fn gguf_array<'a>(meta: &'a HashMap<String, Value>, key: &str) -> Result<Option<&'a Vec<Value>>, ModelError> {
    meta.get(key).map(|v| v.to_vec().map_err(|_| bad(key, "not an array"))).transpose()
}

/// Any GGUF integer as i64 (u64 above i64::MAX gives None).
fn gguf_int(value: &Value) -> Option<i64> {
    Some(match value {
        Value::U8(v) => i64::from(*v),
        Value::I8(v) => i64::from(*v),
        Value::U16(v) => i64::from(*v),
        Value::I16(v) => i64::from(*v),
        Value::U32(v) => i64::from(*v),
        Value::I32(v) => i64::from(*v),
        Value::U64(v) => i64::try_from(*v).ok()?,
        Value::I64(v) => *v,
        _ => return None,
    })
}

/// Parses `dir/name` as JSON if it exists.
fn read_json_sibling(dir: &Path, name: &str) -> Result<Option<serde_json::Value>, ModelError> {
    let path = dir.join(name);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ModelError::io(path, e)),
    };
    serde_json::from_slice(&text).map(Some).map_err(|e| ModelError::invalid(path, format!("bad JSON: {e}")))
}

/// `bos_token` / `eos_token` of a `tokenizer_config.json`: a string or an
/// object with a `content` string.
fn special_token_text(config: &serde_json::Value, key: &str) -> Option<String> {
    let value = config.get(key)?;
    value.as_str().or_else(|| value.get("content").and_then(serde_json::Value::as_str)).map(str::to_owned)
}

/// `bos_token_id` / `eos_token_id` of a `config.json`: a number or a list.
fn json_ids(config: Option<&serde_json::Value>, key: &str) -> Vec<u32> {
    let Some(value) = config.and_then(|c| c.get(key)) else {
        return Vec::new();
    };
    let as_id = |v: &serde_json::Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match value {
        serde_json::Value::Array(items) => items.iter().filter_map(as_id).collect(),
        other => as_id(other).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let mut seen = [false; 256];
        for c in (0u32..0x200).filter_map(char::from_u32) {
            if let Some(b) = unicode_to_byte(c) {
                assert!(!seen[b as usize], "byte {b} mapped twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(unicode_to_byte('Ġ'), Some(b' '));
        assert_eq!(unicode_to_byte('Ċ'), Some(b'\n'));
        assert_eq!(unicode_to_byte('Ā'), Some(0));
        assert_eq!(unicode_to_byte('a'), Some(b'a'));
        assert_eq!(unicode_to_byte('\u{144}'), None);
        assert_eq!(unicode_to_byte(' '), None);
    }

    #[test]
    fn merges_split_like_llama_cpp() {
        assert_eq!(split_merge("Ġ t"), Some(("Ġ", "t")));
        assert_eq!(split_merge("ab cd"), Some(("ab", "cd")));
        assert_eq!(split_merge("abc"), None);
        assert_eq!(split_merge(""), None);
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(b'\n'));
        assert_eq!(parse_byte_token("<0xff>"), Some(0xFF));
        assert_eq!(parse_byte_token("<0x1>"), None);
        assert_eq!(parse_byte_token("<0x123>"), None);
        assert_eq!(token_text_to_bytes("▁Hello", TokenText::SentencePiece), b" Hello");
    }

    #[test]
    fn every_pre_tokenizer_regex_compiles() {
        for spec in PRE_TOKENIZERS {
            for regex in spec.regexes {
                Split::new(SplitPattern::Regex((*regex).to_owned()), SplitDelimiterBehavior::Isolated, false)
                    .unwrap_or_else(|e| panic!("{:?}: {regex:?}: {e}", spec.names));
            }
        }
    }

    /// A tiny GGUF-like vocabulary: the 256 byte tokens, two merges and two
    /// control tokens.
    fn tiny_content(pre: &str) -> Content {
        let mut tokens: Vec<String> = (0u8..=255)
            .map(|b| {
                (0u32..0x200)
                    .filter_map(char::from_u32)
                    .find(|&c| unicode_to_byte(c) == Some(b))
                    .map(String::from)
                    .unwrap_or_default()
            })
            .collect();
        tokens.extend(["he".to_owned(), "hel".to_owned()]);
        tokens.extend(["<|start|>".to_owned(), "<|end|>".to_owned()]);
        let mut types = vec![Value::I32(1); 258];
        types.extend([Value::I32(3), Value::I32(3)]);
        let mut metadata = HashMap::new();
        metadata.insert("tokenizer.ggml.model".to_owned(), Value::String("gpt2".to_owned()));
        metadata.insert("tokenizer.ggml.pre".to_owned(), Value::String(pre.to_owned()));
        metadata
            .insert("tokenizer.ggml.tokens".to_owned(), Value::Array(tokens.into_iter().map(Value::String).collect()));
        metadata.insert("tokenizer.ggml.token_type".to_owned(), Value::Array(types));
        metadata.insert(
            "tokenizer.ggml.merges".to_owned(),
            Value::Array(vec![Value::String("h e".to_owned()), Value::String("he l".to_owned())]),
        );
        metadata.insert("tokenizer.ggml.bos_token_id".to_owned(), Value::U32(258));
        metadata.insert("tokenizer.ggml.eos_token_id".to_owned(), Value::U32(259));
        Content {
            magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
            metadata,
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    #[test]
    fn tiny_vocab_round_trips() {
        let tok = Tokenizer::from_gguf(&tiny_content("gpt-2")).unwrap();
        assert_eq!(tok.vocab_size(), 260);
        assert_eq!(tok.bos_id(), Some(258));
        assert_eq!(tok.eos_ids(), &[259]);
        assert!(!tok.add_bos_default());
        assert_eq!(tok.encode("", false).unwrap(), Vec::<u32>::new());
        assert_eq!(tok.encode("", true).unwrap(), vec![258]);
        let ids = tok.encode("<|start|>hello<|end|>", true).unwrap();
        assert_eq!(ids, vec![258, 258, 257, u32::from(b'l'), u32::from(b'o'), 259]);
        assert_eq!(tok.decode(&ids).unwrap(), "<|start|><|start|>hello<|end|>");
        let text = "é 日本 🎉\n";
        let ids = tok.encode(text, false).unwrap();
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| tok.token_bytes(i).to_vec()).collect();
        assert_eq!(bytes, text.as_bytes());
        assert_eq!(tok.decode(&ids).unwrap(), text);
        assert!(matches!(tok.decode(&[260]), Err(ModelError::Tokenizer(_))));
        assert!(tok.token_bytes(u32::MAX).is_empty());
        assert_eq!(tok.token_id("<|end|>"), Some(259));
        assert_eq!(tok.token_id("Ġ"), Some(u32::from(b' ')));
    }

    #[test]
    fn unknown_model_and_pre_are_typed_errors() {
        let mut content = tiny_content("no-such-pre");
        let err = Tokenizer::from_gguf(&content).unwrap_err();
        let ModelError::Unsupported(msg) = err else {
            panic!("expected Unsupported, got {err:?}");
        };
        assert!(msg.contains("no-such-pre") && msg.contains("smollm") && msg.contains("llama-bpe"));

        content.metadata.insert("tokenizer.ggml.model".to_owned(), Value::String("llama".to_owned()));
        let err = Tokenizer::from_gguf(&content).unwrap_err();
        assert!(matches!(&err, ModelError::Unsupported(m) if m.contains("'llama'")), "{err:?}");

        content.metadata.remove("tokenizer.ggml.model");
        assert!(matches!(Tokenizer::from_gguf(&content), Err(ModelError::Tokenizer(_))));
    }

    #[test]
    fn llama3_family_adds_bos_by_default() {
        let tok = Tokenizer::from_gguf(&tiny_content("llama-bpe")).unwrap();
        assert!(tok.add_bos_default());
        let mut content = tiny_content("llama-bpe");
        content.metadata.insert("tokenizer.ggml.add_bos_token".to_owned(), Value::Bool(false));
        assert!(!Tokenizer::from_gguf(&content).unwrap().add_bos_default());
    }
}
