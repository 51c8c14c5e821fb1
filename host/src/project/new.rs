//! `nodemanager new`: a ready app project.

use std::path::Path;

use anyhow::{bail, Context as _, Result};

use super::templates::{self, fill};
use super::validate_project_name;

/// The language of an app project.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Python, built with componentize-py.
    Python,
    /// Rust, built with cargo for wasm32-wasip2.
    Rust,
}

/// Writes a ready project for `lang` in `dir` (new, or empty); its name is the
/// folder's. Returns the files written, relative to `dir`.
pub fn new_project(dir: &Path, lang: Lang) -> Result<Vec<String>> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{} does not end in a folder name", dir.display()))?;
    validate_project_name(&name)?;
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir)
            .with_context(|| format!("{} exists and cannot be read", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} exists and is not empty: give a new folder",
                dir.display()
            );
        }
    }
    let files: Vec<(&str, String)> = match lang {
        Lang::Python => vec![
            ("app.py", fill(templates::PYTHON_APP, &name)),
            ("README.md", fill(templates::PYTHON_README, &name)),
            (".gitignore", templates::PYTHON_GITIGNORE.to_string()),
        ],
        Lang::Rust => vec![
            ("Cargo.toml", fill(templates::RUST_MANIFEST, &name)),
            ("Cargo.lock", templates::RUST_LOCK.to_string()),
            ("src/lib.rs", fill(templates::RUST_LIB, &name)),
            ("README.md", fill(templates::RUST_README, &name)),
            (".gitignore", templates::RUST_GITIGNORE.to_string()),
            (
                "vendor/nodemanager-guest/Cargo.toml",
                templates::RUST_SDK_MANIFEST.to_string(),
            ),
            (
                "vendor/nodemanager-guest/src/lib.rs",
                templates::RUST_SDK_LIB.to_string(),
            ),
            (
                "vendor/nodemanager-guest/wit/nodemanager.wit",
                templates::WIT.to_string(),
            ),
        ],
    };
    for (file, text) in &files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(files
        .into_iter()
        .map(|(file, _)| file.to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_goes_in_a_new_or_empty_folder_named_as_an_app() {
        let root = tempfile::tempdir().unwrap();
        let files = new_project(&root.path().join("gossip-max"), Lang::Rust).unwrap();
        assert!(files.contains(&"vendor/nodemanager-guest/wit/nodemanager.wit".to_string()));
        let manifest = std::fs::read_to_string(root.path().join("gossip-max/Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"gossip-max\""), "{manifest}");

        let again = new_project(&root.path().join("gossip-max"), Lang::Python).unwrap_err();
        assert!(format!("{again:#}").contains("is not empty"), "{again:#}");
        let bad = new_project(&root.path().join("9lives"), Lang::Python).unwrap_err();
        assert!(format!("{bad:#}").contains("cannot name an app"), "{bad:#}");

        std::fs::create_dir(root.path().join("empty")).unwrap();
        new_project(&root.path().join("empty"), Lang::Python).unwrap();
        let app = std::fs::read_to_string(root.path().join("empty/app.py")).unwrap();
        assert!(app.contains("class Empty(App):"), "{app}");
    }
}
