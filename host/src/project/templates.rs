//! What `new` writes and `build` supplies, built into the binary from the repository's
//! own files (the SDKs the examples use, the WIT the node implements).

/// The WIT contract between the node and its apps.
pub const WIT: &str = include_str!("../../../wit/nodemanager.wit");

/// The world `build` targets: the app world plus `snapshot`/`restore`.
pub const WORLD: &str = "stateful-app";

/// The Python SDK module, `nodemanager_app`.
pub const PYTHON_SDK: &str = include_str!("../../../guest-examples/python/nodemanager_app.py");

/// The componentize-py release the Python SDK is tested with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The Rust SDK crate, `nodemanager-guest`: manifest and source.
pub const RUST_SDK_MANIFEST: &str = include_str!("../../../guest-examples/rust/sdk/Cargo.toml");
pub const RUST_SDK_LIB: &str = include_str!("../../../guest-examples/rust/sdk/src/lib.rs");

/// The lock file of the Rust examples: a new project starts from the same versions
/// (cargo drops what the project does not use).
pub const RUST_LOCK: &str = include_str!("../../../guest-examples/rust/Cargo.lock");

/// A new Python project.
pub const PYTHON_APP: &str = include_str!("../../templates/python/app.py");
pub const PYTHON_README: &str = include_str!("../../templates/python/README.md");
pub const PYTHON_GITIGNORE: &str = include_str!("../../templates/python/gitignore");

/// A new Rust project.
pub const RUST_MANIFEST: &str = include_str!("../../templates/rust/Cargo.toml");
pub const RUST_LIB: &str = include_str!("../../templates/rust/src/lib.rs");
pub const RUST_README: &str = include_str!("../../templates/rust/README.md");
pub const RUST_GITIGNORE: &str = include_str!("../../templates/rust/gitignore");

/// The Rust SDK's version (from its manifest).
pub fn rust_sdk_version() -> String {
    RUST_SDK_MANIFEST
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get("package")?.get("version")?.as_str().map(String::from))
        .unwrap_or_default()
}

/// `template` with `{{name}}`, `{{class}}` and `{{sdk_version}}` filled in.
pub fn fill(template: &str, name: &str) -> String {
    template
        .replace("{{name}}", name)
        .replace("{{class}}", &class_name(name))
        .replace("{{sdk_version}}", &rust_sdk_version())
}

/// `gossip-max` → `GossipMax`.
fn class_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled_and_the_sdk_is_versioned() {
        assert_eq!(class_name("gossip-max_2"), "GossipMax2");
        assert!(!rust_sdk_version().is_empty());
        let lib = fill(RUST_LIB, "gossip-max");
        assert!(lib.contains("struct GossipMax {") && !lib.contains("{{"));
        let manifest = fill(RUST_MANIFEST, "gossip-max");
        assert!(manifest.contains(&format!("version = \"={}\"", rust_sdk_version())));
        assert!(!fill(PYTHON_APP, "g").contains("{{"));
    }
}
