//! On-disk cache of compiled components, keyed by the component's content hash and the
//! engine's compatibility hash, so a component is compiled once per machine.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// A folder of `<sha256 of the wasm>-<engine hash>.cwasm` files, at most `max_bytes` in
/// all: storing a new entry evicts the least recently used ones (a hit refreshes an
/// entry's modification time).
pub struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
    max_bytes: u64,
}

/// The default bound of the cache folder.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 2 << 30;

/// The SHA-256 of `bytes`, as lowercase hex.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks `bytes` are a WebAssembly component, naming what they are otherwise.
pub fn check_is_component(bytes: &[u8]) -> Result<()> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!("not a WebAssembly file (it does not start with the \\0asm header)");
    }
    match bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => bail!(
            "a core WebAssembly module, not a component: build for wasm32-wasip2 \
             (or wrap it with `wasm-tools component new`)"
        ),
        _ => bail!(
            "unsupported WebAssembly version/layer bytes {:02x?}",
            &bytes[4..8]
        ),
    }
}

impl ComponentCache {
    /// Opens (creating with mode 0700) the cache folder `dir` for `engine`'s settings,
    /// bounded to `max_bytes`.
    pub fn new(dir: PathBuf, engine: &Engine, max_bytes: u64) -> Result<ComponentCache> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("{:016x}", hasher.finish());
        Ok(ComponentCache {
            dir,
            engine_key,
            max_bytes,
        })
    }

    /// Removes the compiled forms of the wasm with content hash `hash`, for every
    /// engine's settings; returns how many there were.
    pub fn remove(&self, hash: &str) -> Result<usize> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        let prefix = format!("{hash}-");
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".cwasm") {
                std::fs::remove_file(entry.path()).with_context(|| {
                    format!("cannot remove {} from the cache", entry.path().display())
                })?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Where the compiled form of the wasm with content hash `hash` lives.
    pub fn path_for(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{}.cwasm", self.engine_key))
    }

    /// The compiled component for `bytes` (whose [`content_hash`] is `hash`), from the
    /// cache or freshly compiled (and then stored); the flag says whether it came from
    /// the cache.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        hash: &str,
    ) -> Result<(Component, bool)> {
        check_is_component(bytes)?;
        let path = self.path_for(hash);
        // Mapped, not read: only the pages of code that run take memory (a Python
        // component's CPython is 34 MB compiled).
        if path.exists() {
            // SAFETY: files in the cache folder are written only by `store` below, from
            // `Component::serialize` of this engine configuration (the engine hash is in
            // the name), into a new file renamed into place; no file is ever changed in
            // place (eviction unlinks, and a mapped file outlives its name), so a mapping
            // never sees its file change. The folder is created private to the user, and
            // its files must not be edited in place while nodes run (README).
            // wasmtime checks the header and refuses data from another engine version or
            // configuration.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => {
                    touch(&path);
                    return Ok((component, true));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring unusable cache entry: {e:#}")
                }
            }
        }
        let component = Component::new(engine, bytes)
            .map_err(anyhow::Error::from)
            .context("cannot compile the component")?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(dir = %self.dir.display(), "cannot write the compiled-component cache: {e:#}");
        }
        Ok((component, false))
    }

    fn store(&self, path: &Path, component: &Component) -> Result<()> {
        create_private_dir(&self.dir)?;
        let serialized = component.serialize().map_err(anyhow::Error::from)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, serialized)?;
        std::fs::rename(&tmp, path)?;
        self.evict(path);
        Ok(())
    }

    /// Removes the least recently used entries (never `keep`) until the folder holds at
    /// most `max_bytes` of compiled components.
    fn evict(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total -= len;
                    tracing::info!(path = %path.display(), bytes = len, "evicted from the compiled-component cache");
                }
                Err(e) => tracing::warn!(path = %path.display(), "cannot evict: {e}"),
            }
        }
    }
}

/// Marks a cache entry as just used.
fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().write(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create cache folder {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn eviction_removes_the_least_recently_used_entries_first() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let cache = ComponentCache::new(dir.path().to_path_buf(), &engine, 250).unwrap();
        let now = SystemTime::now();
        for (name, age) in [("old", 30), ("mid", 20), ("new", 10)] {
            let path = dir.path().join(format!("{name}.cwasm"));
            std::fs::write(&path, [0u8; 100]).unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(now - Duration::from_secs(age)).unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), [0u8; 1000]).unwrap();
        touch(&dir.path().join("old.cwasm"));
        cache.evict(&dir.path().join("new.cwasm"));
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["new.cwasm", "notes.txt", "old.cwasm"],
            "mid was least recently used"
        );
    }
}
