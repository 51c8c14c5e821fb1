//! JSON Lines files the node writes as it runs: one object per line, flushed at once,
//! so the file is whole even if the node is killed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Serialize;

/// An open JSON Lines file.
pub struct JsonLines {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonLines {
    /// Creates (or truncates) `path`; `what` names the file in errors.
    pub fn create(path: &Path, what: &str) -> Result<JsonLines> {
        let file = File::create(path)
            .with_context(|| format!("cannot create {what} {}", path.display()))?;
        Ok(JsonLines {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    /// Appends `record` as one line.
    pub fn write(&mut self, record: &impl Serialize) -> Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")?;
        self.out
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}
