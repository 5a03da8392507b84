//! `models/manifest.json`: every committed model file with its id, domain, size
//! and SHA-256, so the runtime can refuse a corrupted or swapped file.
//!
//! ```json
//! {"files": [{"id": "prose", "domain": "prose", "file": "experts/prose/adapter_model.safetensors",
//!             "size": 4001360, "sha256": "…"}, …]}
//! ```
//! `file` is relative to the models directory; `domain` is `null` for models
//! that serve no single domain (the gate, the policy).

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File name of the manifest inside the models directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Everything that can go wrong when reading the manifest or verifying a model.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The manifest is not valid JSON of the expected shape, or lists an unsafe path.
    #[error("invalid manifest {path}: {detail}")]
    Invalid {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// No file of the manifest belongs to this id.
    #[error("model {0:?} is not in the manifest")]
    UnknownId(String),
    /// A file has a different size than recorded.
    #[error("{path}: size {found} bytes, manifest says {expected}")]
    SizeMismatch {
        /// The file that failed.
        path: PathBuf,
        /// Size recorded in the manifest.
        expected: u64,
        /// Size on disk.
        found: u64,
    },
    /// A file's SHA-256 differs from the recorded one (corrupted or replaced).
    #[error("{path}: sha256 {found}, manifest says {expected} (corrupted or replaced file)")]
    HashMismatch {
        /// The file that failed.
        path: PathBuf,
        /// Digest recorded in the manifest (hex).
        expected: String,
        /// Digest of the file on disk (hex).
        found: String,
    },
}

/// One committed model file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The model (expert id, `gate`, `policy`, ...) the file belongs to.
    pub id: String,
    /// The domain the model serves, if it serves one.
    pub domain: Option<String>,
    /// Path relative to the models directory, with `/` separators.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
}

#[derive(Serialize, Deserialize)]
struct ManifestFile {
    files: Vec<ManifestEntry>,
}

/// The parsed manifest of one models directory.
#[derive(Debug, Clone)]
pub struct Manifest {
    dir: PathBuf,
    entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Reads `models_dir/manifest.json`.
    pub fn load(models_dir: &Path) -> Result<Manifest, ManifestError> {
        let path = models_dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Io { path: path.clone(), source })?;
        let parsed: ManifestFile = serde_json::from_str(&text)
            .map_err(|e| ManifestError::Invalid { path: path.clone(), detail: e.to_string() })?;
        for entry in &parsed.files {
            let bad = |detail: String| ManifestError::Invalid { path: path.clone(), detail };
            if !is_safe_relative(&entry.file) {
                return Err(bad(format!("file {:?} must be a relative path inside the models directory", entry.file)));
            }
            if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("sha256 of {:?} is not 64 hex digits", entry.file)));
            }
        }
        Ok(Manifest { dir: models_dir.to_owned(), entries: parsed.files })
    }

    /// Builds a manifest for `files` (id, domain, relative path) by hashing them,
    /// and writes it to `models_dir/manifest.json`.
    pub fn write(models_dir: &Path, files: &[(String, Option<String>, String)]) -> Result<Manifest, ManifestError> {
        let mut entries = Vec::with_capacity(files.len());
        for (id, domain, file) in files {
            let path = models_dir.join(file);
            let (size, sha256) = hash_file(&path)?;
            entries.push(ManifestEntry { id: id.clone(), domain: domain.clone(), file: file.clone(), size, sha256 });
        }
        let path = models_dir.join(MANIFEST_FILE);
        let json = serde_json::to_string_pretty(&ManifestFile { files: entries.clone() })
            .map_err(|e| ManifestError::Invalid { path: path.clone(), detail: e.to_string() })?;
        std::fs::write(&path, json + "\n").map_err(|source| ManifestError::Io { path, source })?;
        Ok(Manifest { dir: models_dir.to_owned(), entries })
    }

    /// Every file entry, in manifest order.
    pub fn entries(&self) -> &[ManifestEntry] {
        &self.entries
    }

    /// The distinct model ids, in manifest order.
    pub fn ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = Vec::new();
        for e in &self.entries {
            if !ids.contains(&e.id.as_str()) {
                ids.push(&e.id);
            }
        }
        ids
    }

    /// Checks the size and SHA-256 of every file of model `id` and returns where
    /// to load it from: the file itself when the model is one file, else the
    /// directory that holds its files (e.g. `models/experts/prose`, ready for
    /// `LocalModel::load`).
    pub fn verify(&self, id: &str) -> Result<PathBuf, ManifestError> {
        let files: Vec<&ManifestEntry> = self.entries.iter().filter(|e| e.id == id).collect();
        if files.is_empty() {
            return Err(ManifestError::UnknownId(id.to_owned()));
        }
        for entry in &files {
            let path = self.dir.join(&entry.file);
            let found_size =
                std::fs::metadata(&path).map_err(|source| ManifestError::Io { path: path.clone(), source })?.len();
            if found_size != entry.size {
                return Err(ManifestError::SizeMismatch { path, expected: entry.size, found: found_size });
            }
            let (_, found) = hash_file(&path)?;
            if found != entry.sha256.to_ascii_lowercase() {
                return Err(ManifestError::HashMismatch { path, expected: entry.sha256.clone(), found });
            }
        }
        let paths: Vec<PathBuf> = files.iter().map(|e| self.dir.join(&e.file)).collect();
        if paths.len() == 1 {
            return Ok(paths[0].clone());
        }
        let mut common = paths[0].parent().map(Path::to_path_buf).unwrap_or_else(|| self.dir.clone());
        while !paths.iter().all(|p| p.starts_with(&common)) {
            if !common.pop() {
                break;
            }
        }
        Ok(common)
    }
}

/// Size and lower-case hex SHA-256 of a file, read in chunks.
pub fn hash_file(path: &Path) -> Result<(u64, String), ManifestError> {
    let io = |source| ManifestError::Io { path: path.to_owned(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex(&hasher.finalize())))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `file` is a relative path that stays inside its base directory.
fn is_safe_relative(file: &str) -> bool {
    let path = Path::new(file);
    !file.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("moe-edge-manifest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("experts/a")).unwrap();
        dir
    }

    #[test]
    fn round_trip_verify_and_tamper() {
        let dir = temp_dir("roundtrip");
        std::fs::write(dir.join("experts/a/model.bin"), b"weights").unwrap();
        std::fs::write(dir.join("experts/a/config.json"), b"{}").unwrap();
        std::fs::write(dir.join("gate.bin"), b"gate").unwrap();
        let files = vec![
            ("a".to_string(), Some("prose".to_string()), "experts/a/model.bin".to_string()),
            ("a".to_string(), Some("prose".to_string()), "experts/a/config.json".to_string()),
            ("gate".to_string(), None, "gate.bin".to_string()),
        ];
        Manifest::write(&dir, &files).unwrap();
        let manifest = Manifest::load(&dir).unwrap();
        assert_eq!(manifest.ids(), ["a", "gate"]);
        assert_eq!(manifest.verify("a").unwrap(), dir.join("experts/a"));
        assert_eq!(manifest.verify("gate").unwrap(), dir.join("gate.bin"));
        // sha256("weights"), computed independently with `printf weights | sha256sum`.
        assert_eq!(manifest.entries()[0].sha256, "9a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c");
        assert!(matches!(manifest.verify("nope"), Err(ManifestError::UnknownId(_))));

        std::fs::write(dir.join("experts/a/model.bin"), b"weighTs").unwrap();
        let err = manifest.verify("a").unwrap_err();
        assert!(matches!(err, ManifestError::HashMismatch { .. }), "{err}");
        std::fs::write(dir.join("experts/a/model.bin"), b"longer weights").unwrap();
        assert!(matches!(manifest.verify("a"), Err(ManifestError::SizeMismatch { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_unsafe_paths_and_bad_json() {
        let dir = temp_dir("unsafe");
        let entry = |file: &str| {
            format!(
                r#"{{"files":[{{"id":"x","domain":null,"file":"{file}","size":1,"sha256":"{}"}}]}}"#,
                "0".repeat(64)
            )
        };
        for bad in ["../etc/passwd", "/etc/passwd", ""] {
            std::fs::write(dir.join(MANIFEST_FILE), entry(bad)).unwrap();
            assert!(matches!(Manifest::load(&dir), Err(ManifestError::Invalid { .. })), "{bad}");
        }
        std::fs::write(dir.join(MANIFEST_FILE), "{not json").unwrap();
        assert!(matches!(Manifest::load(&dir), Err(ManifestError::Invalid { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
