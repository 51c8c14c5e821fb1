//! Helpers shared by the test suites: where the guest components are, and a shared
//! compiled-component cache so the Python guest is compiled once per machine.
#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// A guest component built by `scripts/build-guests`, e.g. `share_vec_rust.wasm`.
pub fn guest(file: &str) -> PathBuf {
    let path = repo_root().join("build/guests").join(file);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup && scripts/build-guests first",
        path.display()
    );
    path
}

/// The compiled-component cache the tests share (under target/).
pub fn test_cache_dir() -> PathBuf {
    repo_root().join("target/test-component-cache")
}

/// Helpers for tests that run `nodemanager` processes.
pub mod node;

/// Network namespaces standing for separate hosts.
pub mod netns;
