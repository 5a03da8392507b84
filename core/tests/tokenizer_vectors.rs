//! The GGUF tokenizer against llama.cpp's own test vectors
//! (`models/ggml-vocab-*.gguf.{inp,out}`) and against ids llama.cpp produced
//! for the real base model (SmolLM2-135M-Instruct).

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use moe_edge::model::Tokenizer;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer");

/// The separator between cases in a `.inp` file (as llama.cpp's
/// `tests/test-tokenizer-0` splits it).
const CASE_SEPARATOR: &str = "\n__ggml_vocab_test__\n";

/// Prints a line on stderr that libtest does not capture, so pass counts and
/// skips show up in a plain `cargo test` run.
macro_rules! note {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn load_gguf_tokenizer(path: &Path) -> Tokenizer {
    let mut reader = BufReader::new(File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display())));
    let content = Content::read(&mut reader).unwrap_or_else(|e| panic!("cannot read GGUF {}: {e}", path.display()));
    Tokenizer::from_gguf(&content).unwrap_or_else(|e| panic!("cannot build the tokenizer of {}: {e}", path.display()))
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
    let expected: Vec<Vec<u32>> =
        out.lines().map(|line| line.split_whitespace().map(|id| id.parse().expect("id in .out")).collect()).collect();
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
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| tokenizer.token_bytes(id).to_vec()).collect();
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
    note!("{name}: {passed}/{total} llama.cpp test vectors pass");
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
        note!("skipped: set MOE_EDGE_LLAMACPP_VOCABS to llama.cpp's models/ to run");
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
        let content = Content::read(&mut BufReader::new(File::open(&vocab).unwrap())).expect("read GGUF");
        if let Err(e) = Tokenizer::from_gguf(&content) {
            note!("{name}: not supported ({e})");
            continue;
        }
        let (passed, total, report) = run_vocab(&vocab);
        note!("{name}: {passed}/{total}");
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
        note!("\n*** skipped: model not fetched ({}); run models/fetch-base-model.sh ***\n", path.display());
        return None;
    }
    let start = std::time::Instant::now();
    let tokenizer = load_gguf_tokenizer(&path);
    note!(
        "base model tokenizer loaded in {:.0} ms (eos ids {:?})",
        start.elapsed().as_secs_f64() * 1e3,
        tokenizer.eos_ids()
    );
    Some(tokenizer)
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
            mismatches
                .push_str(&format!("\n  text     {:?}\n  expected {:?}\n  got      {ids:?}\n", case.text, case.ids));
        }
    }
    note!("smollm2: {passed}/{} llama.cpp reference encodings match", reference.cases.len());
    assert!(mismatches.is_empty(), "mismatches:{mismatches}");
}

/// A small deterministic generator (xorshift64*), to avoid a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random text mixing ASCII, whitespace runs, contractions, special-token
/// fragments and arbitrary code points.
fn random_text(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        " ",
        "  ",
        "\n",
        "\r\n",
        "\t",
        "a",
        "Hello",
        " world",
        "'s",
        "'LL",
        "123",
        "4567",
        "!?",
        "...",
        "<|endoftext|>",
        "<|end",
        "|>",
        "<|begin_of_text|>",
        "é",
        "e\u{301}",
        "日本語",
        "🎉",
        "👋🏽",
        "\u{200b}",
        "\u{a0}",
        "\u{2003}",
        "\u{85}",
        "ﬁ",
        "Ω",
        "\0",
    ];
    let mut text = String::new();
    for _ in 0..rng.below(24) {
        if rng.below(4) == 0 {
            // Any scalar value below U+30000.
            let c = loop {
                if let Some(c) = char::from_u32(rng.below(0x30000) as u32) {
                    break c;
                }
            };
            text.push(c);
        } else {
            text.push_str(PIECES[rng.below(PIECES.len())]);
        }
    }
    text
}

#[test]
fn random_text_round_trips_through_ids_and_bytes() {
    for name in ["gpt-2", "llama-bpe"] {
        let tok = load_gguf_tokenizer(&Path::new(FIXTURES).join(format!("ggml-vocab-{name}.gguf")));
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..300 {
            let text = random_text(&mut rng);
            let ids = tok.encode(&text, false).unwrap();
            let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.token_bytes(id).to_vec()).collect();
            assert_eq!(bytes, text.as_bytes(), "{name}: {text:?} -> {ids:?}");
            assert_eq!(tok.decode(&ids).unwrap(), text, "{name}: {ids:?}");
        }
    }
}

#[test]
fn llama_bpe_special_tokens() {
    let tok = load_gguf_tokenizer(&Path::new(FIXTURES).join("ggml-vocab-llama-bpe.gguf"));
    assert_eq!(tok.vocab_size(), 128256);
    assert_eq!(tok.bos_id(), Some(128000));
    // No tokenizer.ggml.add_bos_token in this file: llama.cpp's llama3 default.
    assert!(tok.add_bos_default());
    let eot = tok.token_id("<|eot_id|>").unwrap();
    assert_eq!(tok.eos_ids()[0], 128001);
    assert!(tok.eos_ids().contains(&eot));
    let ids = tok.encode("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", true).unwrap();
    assert_eq!(ids[0], 128000);
    assert_eq!(ids[1], tok.token_id("<|start_header_id|>").unwrap());
    assert_eq!(*ids.last().unwrap(), eot);
    assert_eq!(tok.encode("", true).unwrap(), vec![128000]);
}

/// A `tokenizer.json` written from the GGUF-built tokenizer loads with
/// `from_file` and behaves the same; sibling config files set BOS/EOS.
#[test]
fn tokenizer_json_round_trip_and_sibling_configs() {
    let from_gguf = load_gguf_tokenizer(&Path::new(FIXTURES).join("ggml-vocab-gpt-2.gguf"));
    let dir = std::env::temp_dir().join(format!("moe-edge-tokenizer-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("tokenizer.json");
    from_gguf.inner().save(&json_path, false).unwrap();

    let from_file = Tokenizer::from_file(&json_path).unwrap();
    assert_eq!(from_file.vocab_size(), from_gguf.vocab_size());
    for id in 0..from_gguf.vocab_size() as u32 {
        assert_eq!(from_file.token_bytes(id), from_gguf.token_bytes(id), "id {id}");
    }
    // GPT-2 has no BOS-looking token and no config says otherwise.
    assert_eq!(from_file.bos_id(), None);
    assert!(!from_file.add_bos_default());
    assert_eq!(from_file.eos_ids(), &[50256]);
    let vocab = Path::new(FIXTURES).join("ggml-vocab-gpt-2.gguf");
    for (text, expected) in read_cases(&vocab) {
        let ids = from_file.encode(&text, false).unwrap();
        assert_eq!(ids, expected, "{text:?}");
        assert_eq!(from_file.decode(&ids).unwrap(), text);
    }
    assert!(from_file.decode(&[50257]).is_err());

    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"add_bos_token": true, "bos_token": {"content": "<|endoftext|>"}, "eos_token": "<|endoftext|>"}"#,
    )
    .unwrap();
    std::fs::write(dir.join("config.json"), r#"{"eos_token_id": [50256, 13]}"#).unwrap();
    let configured = Tokenizer::from_file(&json_path).unwrap();
    assert_eq!(configured.bos_id(), Some(50256));
    assert!(configured.add_bos_default());
    assert_eq!(configured.eos_ids(), &[50256, 13]);
    assert_eq!(configured.encode("Hi", true).unwrap(), vec![50256, 17250]);

    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let err = Tokenizer::from_file(&json_path).unwrap_err();
    assert!(matches!(err, moe_edge::model::ModelError::Invalid { .. }), "{err:?}");
    let err = Tokenizer::from_file(dir.join("missing.json")).unwrap_err();
    assert!(matches!(err, moe_edge::model::ModelError::Io { .. }), "{err:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Very long runs (one huge pre-token, long regex matches) still encode and
/// round-trip; fancy-regex has a backtracking limit that must not be hit.
#[test]
fn long_inputs_round_trip() {
    let tok = load_gguf_tokenizer(&Path::new(FIXTURES).join("ggml-vocab-llama-bpe.gguf"));
    let texts = [
        " ".repeat(100_000),
        format!("{}x", " ".repeat(100_000)),
        "\n".repeat(50_000) + &"\t ".repeat(20_000),
        "a".repeat(100_000),
        "9".repeat(100_000),
        "!?".repeat(50_000),
        "日本語".repeat(20_000),
        "The quick brown fox jumps over the lazy dog. ".repeat(5_000),
    ];
    for text in &texts {
        let start = std::time::Instant::now();
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), *text);
        note!("{} bytes -> {} tokens in {:.0} ms", text.len(), ids.len(), start.elapsed().as_secs_f64() * 1e3);
    }
}
