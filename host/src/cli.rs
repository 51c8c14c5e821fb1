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

/// Node numbers of a cluster, as `0,3,5-9` gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeList(pub Vec<usize>);

/// Parses a list of node numbers such as `0,3,5-9` (ranges inclusive).
pub fn node_list(text: &str) -> Result<NodeList, String> {
    let number = |part: &str| {
        part.trim()
            .parse::<usize>()
            .map_err(|_| format!("{text:?}: {part:?} is not a node number (e.g. 0,3,5-9)"))
    };
    let mut nodes = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (number(first)?, number(last)?);
                if first > last {
                    return Err(format!("{text:?}: the range {part} runs backwards"));
                }
                nodes.extend(first..=last);
            }
            None => nodes.push(number(part)?),
        }
    }
    Ok(NodeList(nodes))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists_take_numbers_and_ranges() {
        assert_eq!(node_list("0,3,5-7"), Ok(NodeList(vec![0, 3, 5, 6, 7])));
        assert_eq!(node_list("4"), Ok(NodeList(vec![4])));
        assert!(node_list("3-1").unwrap_err().contains("runs backwards"));
        assert!(node_list("a")
            .unwrap_err()
            .contains("\"a\" is not a node number"));
        assert!(node_list("").is_err());
    }
}
