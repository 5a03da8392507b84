//! Helpers shared by the integration tests.

// Each test binary compiles this module and uses only some of it.
#![allow(dead_code)]

use std::path::PathBuf;

/// The fetched base model (SmolLM2-135M-Instruct Q4_1), or `None` with a loud
/// message when it has not been fetched. With `MOE_EDGE_REQUIRE_MODEL=1` (set by
/// `.ci/run`, which fetches it first) a missing model fails the test instead.
pub fn base_model() -> Option<PathBuf> {
    let path = std::env::var_os("MOE_EDGE_BASE_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("MOE_EDGE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/moe-edge"));
        cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if path.is_file() {
        return Some(path);
    }
    let required = std::env::var("MOE_EDGE_REQUIRE_MODEL").is_ok_and(|v| v == "1");
    assert!(!required, "base model missing at {} (run models/fetch-base-model.sh)", path.display());
    eprintln!("SKIPPED: base model not fetched at {} (run models/fetch-base-model.sh)", path.display());
    None
}

/// A path inside `core/tests/fixtures`.
pub fn fixture(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(relative)
}
