//! The edge server's configuration file (`edge.toml`) and its persisted TLS
//! identity (a self-signed certificate generated at first start).

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

use super::ServerError;
use crate::offload::tls;

/// Settings of a running server (the `[server]`-level keys of `edge.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// UDP `host:port` to listen on (port 0 = any free port).
    pub listen: String,
    /// Name sent to clients in `Welcome`.
    pub name: String,
    /// Bearer tokens accepted (compared in constant time).
    pub tokens: Vec<String>,
    /// Generations running at once.
    pub max_concurrent: usize,
    /// Requests allowed to wait for a slot; beyond that clients get `Busy`.
    pub max_queue: usize,
    /// Retry hint sent with `Busy`, milliseconds.
    pub retry_after_ms: u32,
    /// A connection silent for this long is closed, milliseconds.
    pub idle_timeout_ms: u64,
    /// Concurrent bidirectional streams per connection.
    pub max_streams_per_connection: u32,
    /// Upper bound on `max_tokens` of any request.
    pub max_tokens: u32,
    /// On SIGTERM, wait at most this long for running generations, milliseconds.
    pub drain_timeout_ms: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:4433".into(),
            name: "moe-edge".into(),
            tokens: Vec::new(),
            max_concurrent: 2,
            max_queue: 32,
            retry_after_ms: 500,
            idle_timeout_ms: 30_000,
            max_streams_per_connection: 16,
            max_tokens: 1024,
            drain_timeout_ms: 10_000,
        }
    }
}

/// One hosted expert: an id and any path `LocalModel::load` accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertEntry {
    /// Expert id clients ask for (`"base"`, `"code"`, ...).
    pub id: String,
    /// GGUF file or safetensors directory; relative paths are relative to the config file.
    pub path: PathBuf,
}

/// The whole `edge.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Directory holding `cert.pem` and `key.pem` (created at first start);
    /// relative to the config file.
    pub state_dir: PathBuf,
    /// Server settings.
    #[serde(flatten)]
    pub settings: ServerSettings,
    /// Hosted experts.
    pub experts: Vec<ExpertEntry>,
}

impl EdgeConfig {
    /// Reads and checks `edge.toml`, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Self, ServerError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))?;
        let mut config: EdgeConfig =
            toml::from_str(&text).map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.state_dir = base.join(&config.state_dir);
        for expert in &mut config.experts {
            expert.path = base.join(&expert.path);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks limits and that there is at least one expert and one token.
    pub fn validate(&self) -> Result<(), ServerError> {
        let s = &self.settings;
        let bad = |m: &str| Err(ServerError::Config(m.to_owned()));
        if self.experts.is_empty() {
            return bad("no [[experts]] configured");
        }
        if s.tokens.iter().all(|t| t.is_empty()) {
            return bad("at least one non-empty bearer token is required");
        }
        if s.max_concurrent == 0 || s.max_streams_per_connection == 0 || s.max_tokens == 0 {
            return bad("max_concurrent, max_streams_per_connection and max_tokens must be at least 1");
        }
        Ok(())
    }
}

/// The server's certificate and private key.
#[derive(Debug)]
pub struct Identity {
    /// The DER certificate.
    pub cert: CertificateDer<'static>,
    /// The DER private key.
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Loads `cert.pem` + `key.pem` from `dir`, or generates a self-signed pair
    /// there on first start (the key file is readable by the owner only).
    pub fn load_or_create(dir: &Path) -> Result<Self, ServerError> {
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        let io = |p: &Path, e: std::io::Error| ServerError::Config(format!("{}: {e}", p.display()));
        if !cert_path.exists() || !key_path.exists() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
            let generated = rcgen::generate_simple_self_signed(vec!["moe-edge".to_owned(), "localhost".to_owned()])
                .map_err(|e| ServerError::Config(format!("generating a certificate: {e}")))?;
            write_private(&key_path, generated.signing_key.serialize_pem().as_bytes()).map_err(|e| io(&key_path, e))?;
            std::fs::write(&cert_path, generated.cert.pem()).map_err(|e| io(&cert_path, e))?;
            tracing::info!("generated a self-signed certificate in {}", dir.display());
        }
        let pem = |p: &Path, e: rustls::pki_types::pem::Error| ServerError::Config(format!("{}: {e}", p.display()));
        Ok(Self {
            cert: CertificateDer::from_pem_file(&cert_path).map_err(|e| pem(&cert_path, e))?,
            key: PrivateKeyDer::from_pem_file(&key_path).map_err(|e| pem(&key_path, e))?,
        })
    }

    /// A fresh self-signed identity kept in memory only (tests, the demo).
    pub fn ephemeral() -> Result<Self, ServerError> {
        let generated = rcgen::generate_simple_self_signed(vec!["moe-edge".to_owned()])
            .map_err(|e| ServerError::Config(format!("generating a certificate: {e}")))?;
        Ok(Self {
            cert: generated.cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der())),
        })
    }

    /// SHA-256 fingerprint (hex) clients pin.
    pub fn fingerprint(&self) -> String {
        tls::fingerprint(self.cert.as_ref())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_resolves_paths() {
        let dir = std::env::temp_dir().join(format!("moe-edge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("edge.toml");
        std::fs::write(
            &path,
            "state_dir = \"state\"\nlisten = \"127.0.0.1:0\"\ntokens = [\"t\"]\nmax_concurrent = 3\n\
             [[experts]]\nid = \"base\"\npath = \"m.gguf\"\n",
        )
        .unwrap();
        let config = EdgeConfig::load(&path).unwrap();
        assert_eq!(config.settings.max_concurrent, 3);
        assert_eq!(config.settings.max_queue, ServerSettings::default().max_queue);
        assert_eq!(config.experts[0].path, dir.join("m.gguf"));
        std::fs::write(&path, "state_dir = \"s\"\nbogus = 1\nexperts = []\n").unwrap();
        assert!(matches!(EdgeConfig::load(&path), Err(ServerError::Config(_))));
        let first = Identity::load_or_create(&dir.join("state")).unwrap();
        let again = Identity::load_or_create(&dir.join("state")).unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint(), "the identity persists across starts");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
