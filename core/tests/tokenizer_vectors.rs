//! The GGUF tokenizer against llama.cpp's own test vectors
//! (`models/ggml-vocab-*.gguf.{inp,out}`) and against ids llama.cpp produced
//! for the real base model (SmolLM2-135M-Instruct).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use moe_edge::model::Tokenizer;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer");

/// The separator between cases in a `.inp` file (as llama.cpp's
/// `tests/test-tokenizer-0` splits it).
const CASE_SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn load_gguf_tokenizer(path: &Path) -> Tokenizer {
    let mut reader = BufReader::new(
        File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display())),
    );
    let content = Content::read(&mut reader)
        .unwrap_or_else(|e| panic!("cannot read GGUF {}: {e}", path.display()));
    Tokenizer::from_gguf(&content)
        .unwrap_or_else(|e| panic!("cannot build the tokenizer of {}: {e}", path.display()))
}

/// Reads the cases of `<vocab>.inp` with their expected ids from `<vocab>.out`.
fn read_cases(vocab: &Path) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(format!("{}.inp", vocab.display())).expect("read .inp");
    let out = std::fs::read_to_string(format!("{}.out", vocab.display())).expect("read .out");
    let mut texts = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find(CASE_SEPARATOR) {
            Some(end) => {
                texts.push(rest[..end].to_owned());
                rest = &rest[end + CASE_SEPARATOR.len()..];
            }
            None => {
                texts.push(rest.to_owned());
                rest = "";
            }
        }
    }
    let expected: Vec<Vec<u32>> = out
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(|id| id.parse().expect("id in .out"))
                .collect()
        })
        .collect();
    assert_eq!(
        texts.len(),
        expected.len(),
        "{}: {} inputs but {} expected outputs",
        vocab.display(),
        texts.len(),
        expected.len()
    );
    texts.into_iter().zip(expected).collect()
}

/// Runs every case of one vocabulary; returns (passed, total, failure report).
fn run_vocab(vocab: &Path) -> (usize, usize, String) {
    let tokenizer = load_gguf_tokenizer(vocab);
    let cases = read_cases(vocab);
    let mut passed = 0;
    let mut report = String::new();
    let mut shown = 0;
    for (text, expected) in &cases {
        // llama.cpp's test tokenizes without BOS; no test string contains a
        // special token, so parsing them or not makes no difference.
        let ids = tokenizer.encode(text, false).expect("encode");
        let decoded = tokenizer.decode(&ids).expect("decode");
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| tokenizer.token_bytes(id).to_vec())
            .collect();
        if &ids == expected && decoded == *text && bytes == text.as_bytes() {
            passed += 1;
        } else if shown < 5 {
            shown += 1;
            report.push_str(&format!(
                "\n  text     {text:?}\n  expected {expected:?}\n  got      {ids:?}\n  decoded  {decoded:?}\n"
            ));
        }
    }
    (passed, cases.len(), report)
}

fn assert_vocab(name: &str) {
    let vocab = Path::new(FIXTURES).join(format!("ggml-vocab-{name}.gguf"));
    let (passed, total, report) = run_vocab(&vocab);
    println!("{name}: {passed}/{total} llama.cpp test vectors pass");
    assert_eq!(passed, total, "{name}: first mismatches:{report}");
}

#[test]
fn gpt2_vocab_matches_llama_cpp_vectors() {
    assert_vocab("gpt-2");
}

#[test]
fn llama_bpe_vocab_matches_llama_cpp_vectors() {
    assert_vocab("llama-bpe");
}

/// Optional: every `ggml-vocab-*.gguf` with test vectors in the directory named
/// by `MOE_EDGE_LLAMACPP_VOCABS` (e.g. llama.cpp's `models/`), for the
/// vocabularies [`Tokenizer::from_gguf`] accepts.
#[test]
fn other_llama_cpp_vocabs_when_available() {
    let Some(dir) = std::env::var_os("MOE_EDGE_LLAMACPP_VOCABS") else {
        println!("skipped: set MOE_EDGE_LLAMACPP_VOCABS to llama.cpp's models/ to run");
        return;
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read MOE_EDGE_LLAMACPP_VOCABS")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .filter(|p| Path::new(&format!("{}.out", p.display())).exists())
        .collect();
    entries.sort();
    let mut failures = String::new();
    for vocab in entries {
        let name = vocab.file_name().unwrap().to_string_lossy().into_owned();
        let content = Content::read(&mut BufReader::new(File::open(&vocab).unwrap()))
            .expect("read GGUF");
        if let Err(e) = Tokenizer::from_gguf(&content) {
            println!("{name}: not supported ({e})");
            continue;
        }
        let (passed, total, report) = run_vocab(&vocab);
        println!("{name}: {passed}/{total}");
        if passed != total {
            failures.push_str(&format!("\n{name}: {passed}/{total}{report}"));
        }
    }
    assert!(failures.is_empty(), "mismatches:{failures}");
}

/// The base model, fetched by `models/fetch-base-model.sh`.
fn base_model_path() -> PathBuf {
    let cache = std::env::var_os("MOE_EDGE_CACHE").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/moe-edge")
        },
        PathBuf::from,
    );
    cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The base model's tokenizer, or `None` (with a loud message) if the model
/// was not fetched. Panics instead when `MOE_EDGE_REQUIRE_MODEL=1` (CI).
fn base_model_tokenizer() -> Option<Tokenizer> {
    let path = base_model_path();
    if !path.exists() {
        if std::env::var("MOE_EDGE_REQUIRE_MODEL").is_ok_and(|v| v == "1") {
            panic!(
                "MOE_EDGE_REQUIRE_MODEL=1 but the base model is missing at {}; run models/fetch-base-model.sh",
                path.display()
            );
        }
        println!(
            "\n*** skipped: model not fetched ({}); run models/fetch-base-model.sh ***\n",
            path.display()
        );
        return None;
    }
    Some(load_gguf_tokenizer(&path))
}

#[test]
fn smollm2_chat_markup_and_bytes() {
    let Some(tok) = base_model_tokenizer() else {
        return;
    };
    let im_start = tok.token_id("<|im_start|>").expect("<|im_start|> in vocab");
    let im_end = tok.token_id("<|im_end|>").expect("<|im_end|> in vocab");
    assert_eq!(tok.vocab_size(), 49152);
    assert!(!tok.add_bos_default());
    assert!(tok.eos_ids().contains(&im_end), "eos {:?}", tok.eos_ids());

    let text = "<|im_start|>user\nHello<|im_end|>\n";
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(ids.first(), Some(&im_start));
    assert_eq!(ids.iter().filter(|&&id| id == im_start).count(), 1);
    assert_eq!(ids.iter().filter(|&&id| id == im_end).count(), 1);
    assert_eq!(ids[ids.len() - 2], im_end, "{ids:?}");
    assert_eq!(tok.decode(&ids).unwrap(), text);
    assert_eq!(tok.token_bytes(im_start), b"<|im_start|>");

    for text in ["héllo wörld 👋🏽🎉 日本語のテキスト 你好，世界！ 한국어", "🧑‍🚀"] {
        let ids = tok.encode(text, false).unwrap();
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.token_bytes(id).to_vec()).collect();
        assert_eq!(bytes, text.as_bytes(), "{text:?} -> {ids:?}");
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
    assert!(tok.decode(&[49152]).is_err());
    assert!(tok.token_bytes(49152).is_empty());
}

#[derive(serde::Deserialize)]
struct Reference {
    cases: Vec<ReferenceCase>,
}

#[derive(serde::Deserialize)]
struct ReferenceCase {
    text: String,
    ids: Vec<u32>,
}

#[test]
fn smollm2_matches_llama_cpp_reference_ids() {
    let Some(tok) = base_model_tokenizer() else {
        return;
    };
    let json = std::fs::read_to_string(Path::new(FIXTURES).join("smollm2-reference.json"))
        .expect("read smollm2-reference.json");
    let reference: Reference = serde_json::from_str(&json).expect("parse smollm2-reference.json");
    let mut mismatches = String::new();
    let mut passed = 0;
    for case in &reference.cases {
        let ids = tok.encode(&case.text, false).unwrap();
        if ids == case.ids && tok.decode(&ids).unwrap() == case.text {
            passed += 1;
        } else {
            mismatches.push_str(&format!(
                "\n  text     {:?}\n  expected {:?}\n  got      {ids:?}\n",
                case.text, case.ids
            ));
        }
    }
    println!(
        "smollm2: {passed}/{} llama.cpp reference encodings match",
        reference.cases.len()
    );
    assert!(mismatches.is_empty(), "mismatches:{mismatches}");
}
