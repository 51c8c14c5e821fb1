//! On-disk cache of compiled components, keyed by the component's content hash and the
//! engine's compatibility hash, so a component is compiled once per machine.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// A folder of `<sha256 of the wasm>-<engine hash>.cwasm` files.
pub struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
}

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
    /// Opens (creating with mode 0700) the cache folder `dir` for `engine`'s settings.
    pub fn new(dir: PathBuf, engine: &Engine) -> Result<ComponentCache> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("{:016x}", hasher.finish());
        Ok(ComponentCache { dir, engine_key })
    }

    /// Where the compiled form of `bytes` lives.
    pub fn path_for(&self, bytes: &[u8]) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", content_hash(bytes), self.engine_key))
    }

    /// The compiled component for `bytes`, from the cache or freshly compiled (and then
    /// stored); the flag says whether it came from the cache.
    pub fn get_or_compile(&self, engine: &Engine, bytes: &[u8]) -> Result<(Component, bool)> {
        check_is_component(bytes)?;
        let path = self.path_for(bytes);
        // Read into memory rather than map the file: a cache file truncated or rewritten
        // by another process while mapped would crash the node (SIGBUS).
        if let Ok(compiled) = std::fs::read(&path) {
            // SAFETY: files in the cache folder are written only by `store` below, from
            // `Component::serialize` of this engine configuration (the engine hash is in
            // the name); the folder is created private to the user. wasmtime checks the
            // header and refuses data from another engine version or configuration.
            match unsafe { Component::deserialize(engine, &compiled) } {
                Ok(component) => return Ok((component, true)),
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
        Ok(())
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
