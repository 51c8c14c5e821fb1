//! Command-line pieces the `nodemanager` subcommands share.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::runtime::{Limits, Runtime};

/// Where compiled components are cached.
#[derive(Args)]
pub struct CacheArgs {
    /// Folder of compiled components [default: $NODEMANAGER_CACHE_DIR, else ~/.cache/nodemanager].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl CacheArgs {
    /// The folder given, or the default one.
    pub fn dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(Runtime::default_cache_dir)
    }
}

/// Parses `NAME=VALUE` (an app's config, a limit, a config file).
pub fn name_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .ok_or_else(|| format!("{text:?}: expected NAME=VALUE"))
}

/// `--limit KEY=VALUE` pairs as the JSON object configs write (numbers as numbers).
pub fn limits_json(
    pairs: &[(String, String)],
) -> Result<serde_json::Map<String, serde_json::Value>> {
    pairs
        .iter()
        .map(|(key, value)| {
            Limits::check_name(key)?;
            let value = value
                .parse::<u64>()
                .map(serde_json::Value::from)
                .unwrap_or_else(|_| serde_json::Value::from(value.clone()));
            Ok((key.clone(), value))
        })
        .collect()
}
