//! Byte-level BPE tokenizers trained on the domains' training splits.
//!
//! Byte-level, so every byte sequence encodes (no unknown tokens); digits are
//! split individually before BPE so that numbers are spelled digit by digit,
//! which is what the arithmetic worked answers need. `<|endoftext|>` (id 0) is
//! the only special token: BOS of every sequence and end of generation.
//!
//! Two are committed. `models/tokenizer.json`, trained on the union of the
//! domains with 4096 ids, is the gate's: larger vocabularies would spend the
//! gate's 1 MB on rarely seen embeddings, smaller ones lengthen the id bags.
//! The arithmetic expert has its own, trained on the arithmetic split alone:
//! its text has about 40 distinct symbols, so the 256 bytes plus the few merges
//! that occur (264 ids) cover it, and the expert spends no compute or weights
//! on 4096-way logits it never needs.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, TokenizerBuilder,
};

use super::ExpertError;

/// Number of token ids of the experts' tokenizer.
pub const VOCAB_SIZE: usize = 4096;
/// The special token: BOS and end of generation.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Trains the tokenizer on `texts` (each fed line by line) and writes `tokenizer.json` to `path`.
pub fn train_tokenizer(texts: &[&str], vocab_size: usize, path: &Path) -> Result<(), ExpertError> {
    let err = |e: Box<dyn std::error::Error + Send + Sync>| ExpertError::Tokenizer(e.to_string());
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
        .build();
    let pre = PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ]));
    let post = TemplateProcessing::builder()
        .try_single(format!("{END_OF_TEXT} $A"))
        .map_err(|e| ExpertError::Tokenizer(e.to_string()))?
        .special_tokens(vec![(END_OF_TEXT, 0)])
        .build()
        .map_err(|e| ExpertError::Tokenizer(e.to_string()))?;
    let mut tokenizer =
        TokenizerBuilder::<BPE, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(pre))
            .with_post_processor(Some(PostProcessorWrapper::Template(post)))
            .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())))
            .build()
            .map_err(err)?;
    let lines = texts.iter().flat_map(|t| t.split_inclusive('\n'));
    tokenizer.train(&mut trainer, lines).map_err(err)?;
    if tokenizer.token_to_id(END_OF_TEXT) != Some(0) {
        return Err(ExpertError::Tokenizer(format!("{END_OF_TEXT} must be id 0")));
    }
    tokenizer.save(path, false).map_err(err)?;
    Ok(())
}
