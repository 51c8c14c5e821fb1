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
        let compiled = Component::new(engine, bytes)
            .map_err(anyhow::Error::from)
            .context("cannot compile the component");
        let component = compiled.map(|compiled| self.store_and_map(engine, &path, compiled));
        release_freed_memory();
        Ok((component?, false))
    }

    /// Stores `compiled` at `path` and returns the stored file mapped, in place of the
    /// compiled code in this process's memory: a node that compiled keeps only the pages
    /// that run, like the next one. Returns `compiled` itself when either step fails.
    fn store_and_map(&self, engine: &Engine, path: &Path, compiled: Component) -> Component {
        if let Err(e) = self.store(path, &compiled) {
            tracing::warn!(dir = %self.dir.display(), "cannot write the compiled-component cache: {e:#}");
            return compiled;
        }
        // SAFETY: as in `get_or_compile`; the file was just written and renamed into place.
        match unsafe { Component::deserialize_file(engine, path) } {
            Ok(mapped) => mapped,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot map the entry just stored: {e:#}");
                compiled
            }
        }
    }

    /// Writes `component` to `path` by way of a new file renamed into place, and drops
    /// the file's pages from the page cache: written in one piece, they are cached in
    /// large folios, and a mapping of a large folio makes all of it resident however
    /// little of it runs (+8 to 9 MiB for a Python component on Linux 6.18); read back by
    /// faults, they come in small.
    fn store(&self, path: &Path, component: &Component) -> Result<()> {
        use std::io::Write as _;
        use std::os::fd::AsRawFd as _;
        create_private_dir(&self.dir)?;
        let serialized = component.serialize().map_err(anyhow::Error::from)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serialized)?;
        // Only clean pages can be dropped.
        file.sync_data()?;
        // SAFETY: a plain system call on a file descriptor this function owns; it reads
        // and writes no memory of ours. Its outcome is only advice, so it is not checked.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        drop(file);
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

/// Gives the memory freed by a compilation back to the system: the compiler's threads
/// leave hundreds of MiB free in their malloc arenas (a Python component: 245 MiB
/// resident after its compilation without this), which glibc keeps for reuse.
fn release_freed_memory() {
    // SAFETY: malloc_trim only reorganises the allocator's own free memory.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
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
