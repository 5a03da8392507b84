//! The domain corpora and their deterministic train/validation/test splits.
//!
//! The raw text comes from Debian packages unpacked by
//! `core/scripts/fetch-corpora.sh` (kept in the form the package ships); the
//! arithmetic corpus is generated here (see [`super::arithmetic`]). Each corpus is
//! cut into documents (a fortune, a WordNet entry, a Python file, a problem) and
//! every document goes to one split by the SHA-256 of its text: 90 % train, 5 %
//! validation, 5 % test. A split file is its documents concatenated in source
//! order. The SHA-256 of every split file is recorded in
//! `core/scripts/corpora.sha256` and checked whenever the splits are built.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::arithmetic;
use super::{DOMAINS, ExpertError};

/// The three splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training data.
    Train,
    /// Held out for model selection and loss curves.
    Valid,
    /// Held out for the quality table only.
    Test,
}

impl Split {
    /// All splits.
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];

    /// File-name part of the split.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }

    /// The split a document belongs to, from the hash of its text.
    fn of(doc: &str) -> Split {
        let digest = Sha256::digest(doc.as_bytes());
        let bucket = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) % 100;
        match bucket {
            0..90 => Split::Train,
            90..95 => Split::Valid,
            _ => Split::Test,
        }
    }
}

/// The recorded checksums of the split files (`sha256sum` format, relative names).
pub const RECORDED_CHECKSUMS: &str = include_str!("../../scripts/corpora.sha256");

/// The default cache directory, `${MOE_EDGE_CACHE:-~/.cache/moe-edge}`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("MOE_EDGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/moe-edge"))
}

/// Where the splits of a cache live.
pub fn splits_dir(cache: &Path) -> PathBuf {
    cache.join("corpora/splits")
}

/// The file of one split of one domain.
pub fn split_path(cache: &Path, domain: &str, split: Split) -> PathBuf {
    splits_dir(cache).join(format!("{domain}.{}.txt", split.name()))
}

/// Reads one split (building all splits first if they are missing).
pub fn read_split(cache: &Path, domain: &str, split: Split) -> Result<String, ExpertError> {
    if !DOMAINS.contains(&domain) {
        return Err(ExpertError::UnknownDomain(domain.to_owned()));
    }
    let path = split_path(cache, domain, split);
    if !path.is_file() {
        build_splits(cache, true)?;
    }
    std::fs::read_to_string(&path).map_err(|e| ExpertError::io(&path, e))
}

/// Builds every split file from the unpacked packages and the arithmetic
/// generator, then checks them against [`RECORDED_CHECKSUMS`] when `verify` is
/// set. Returns the checksum lines (`sha256sum` format).
pub fn build_splits(cache: &Path, verify: bool) -> Result<String, ExpertError> {
    let extract = cache.join("corpora/extract");
    if !extract.join(".done").is_file() {
        return Err(ExpertError::MissingCorpora(extract));
    }
    let dir = splits_dir(cache);
    std::fs::create_dir_all(&dir).map_err(|e| ExpertError::io(&dir, e))?;
    let mut sums = String::new();
    for domain in DOMAINS {
        let docs = match domain {
            "prose" => fortunes(&extract.join("usr/share/games/fortunes"))?,
            "definitions" => wordnet(&extract.join("usr/share/dictd/wn.dict"))?,
            "code" => python_files(&extract.join("usr/lib/python3.11"))?,
            "arithmetic" => Vec::new(),
            other => return Err(ExpertError::UnknownDomain(other.to_owned())),
        };
        for split in Split::ALL {
            let text: String = if domain == "arithmetic" {
                arithmetic::split_problems(split).iter().map(|p| p.document()).collect()
            } else {
                docs.iter().filter(|d| Split::of(d) == split).map(String::as_str).collect()
            };
            let path = split_path(cache, domain, split);
            std::fs::write(&path, &text).map_err(|e| ExpertError::io(&path, e))?;
            let name = path.file_name().expect("file name").to_string_lossy();
            sums.push_str(&format!("{}  {name}\n", crate::manifest::hex(&Sha256::digest(text.as_bytes()))));
        }
    }
    if verify && sums != RECORDED_CHECKSUMS {
        return Err(ExpertError::ChecksumMismatch(diff_lines(RECORDED_CHECKSUMS, &sums)));
    }
    Ok(sums)
}

fn diff_lines(expected: &str, found: &str) -> String {
    let missing: Vec<&str> = expected.lines().filter(|l| !found.lines().any(|f| f == *l)).collect();
    let extra: Vec<&str> = found.lines().filter(|l| !expected.lines().any(|e| e == *l)).collect();
    format!("recorded but not built: {missing:?}; built but not recorded: {extra:?}")
}

/// Regular files of `dir` (not symlinks), sorted by name, optionally filtered.
fn sorted_files(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<Vec<PathBuf>, ExpertError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| ExpertError::io(&d, e))? {
            let entry = entry.map_err(|e| ExpertError::io(&d, e))?;
            let kind = entry.file_type().map_err(|e| ExpertError::io(&entry.path(), e))?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() && keep(&entry.path()) {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Fortune files (no extension): one document per fortune, with its `%` line.
fn fortunes(dir: &Path) -> Result<Vec<String>, ExpertError> {
    let mut docs = Vec::new();
    for path in sorted_files(dir, &|p| p.extension().is_none())? {
        let text = std::fs::read_to_string(&path).map_err(|e| ExpertError::io(&path, e))?;
        let mut doc = String::new();
        for line in text.split_inclusive('\n') {
            doc.push_str(line);
            if line.trim_end_matches('\n') == "%" {
                docs.push(std::mem::take(&mut doc));
            }
        }
        if !doc.is_empty() {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// WordNet in dictd format: an entry starts at a line that is not indented.
fn wordnet(path: &Path) -> Result<Vec<String>, ExpertError> {
    let text = std::fs::read_to_string(path).map_err(|e| ExpertError::io(path, e))?;
    let mut docs: Vec<String> = Vec::new();
    for line in text.split_inclusive('\n') {
        match docs.last_mut() {
            Some(doc) if line.starts_with(char::is_whitespace) => doc.push_str(line),
            _ => docs.push(line.to_owned()),
        }
    }
    Ok(docs)
}

/// Python sources (`*.py`, valid UTF-8), one document per file.
fn python_files(dir: &Path) -> Result<Vec<String>, ExpertError> {
    let files = sorted_files(dir, &|p| p.extension().is_some_and(|e| e == "py"))?;
    let mut docs = Vec::new();
    for path in files {
        let bytes = std::fs::read(&path).map_err(|e| ExpertError::io(&path, e))?;
        if let Ok(text) = String::from_utf8(bytes) {
            docs.push(text);
        }
    }
    Ok(docs)
}

/// The first `max_bytes` of `text`, cut at the last line end within the limit.
pub fn prefix_lines(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    match text[..end].rfind('\n') {
        Some(nl) => &text[..=nl],
        None => &text[..end],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_assignment_is_stable_and_roughly_90_5_5() {
        let docs: Vec<String> = (0..10_000).map(|i| format!("document {i}\n")).collect();
        let count = |s: Split| docs.iter().filter(|d| Split::of(d) == s).count();
        let (train, valid, test) = (count(Split::Train), count(Split::Valid), count(Split::Test));
        assert_eq!(train + valid + test, docs.len());
        assert!((8_800..9_200).contains(&train), "{train}");
        assert!((400..600).contains(&valid) && (400..600).contains(&test), "{valid} {test}");
        assert_eq!(Split::of("document 7\n"), Split::of("document 7\n"));
    }

    #[test]
    fn prefix_lines_cuts_at_line_ends() {
        assert_eq!(prefix_lines("ab\ncd\nef", 7), "ab\ncd\n");
        assert_eq!(prefix_lines("ab", 7), "ab");
        assert_eq!(prefix_lines("ééé", 3), "é");
    }
}
