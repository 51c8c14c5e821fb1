//! Deploying apps to a whole network: deployment keys and signed manifests.
//!
//! A manifest says which component (by sha256 and size) runs under which name in which
//! context, with what config, schedule and limits, at which version; the key that signs
//! it must be one of the node's `[deploy] trusted_keys`. [`manifest::Trust`] is the
//! node's judge, sans-IO: every refusal has a reason a counter can be keyed by.

pub mod client;
pub mod keys;
pub mod manifest;
pub mod state;
pub mod wire;

use anyhow::{bail, Result};
use libp2p::identity::PublicKey;
use serde::Deserialize;

/// The `[deploy]` section of a node's config.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DeploySettings {
    /// Public keys (`ed25519:<hex>`) whose manifests the node applies; none: deployment
    /// is off, and every manifest is refused and counted.
    pub trusted_keys: Vec<String>,
    /// Largest component the node fetches, in MiB.
    pub max_component_mib: u64,
}

impl Default for DeploySettings {
    fn default() -> Self {
        DeploySettings {
            trusted_keys: Vec::new(),
            max_component_mib: 64,
        }
    }
}

impl DeploySettings {
    /// Checks every key and the size bound, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        self.keys()?;
        if self.max_component_mib == 0 || self.max_component_mib > 1024 {
            bail!(
                "deploy.max_component_mib must be between 1 and 1024, not {}",
                self.max_component_mib
            );
        }
        Ok(())
    }

    /// The trusted keys.
    pub fn keys(&self) -> Result<Vec<PublicKey>> {
        self.trusted_keys
            .iter()
            .map(|text| {
                keys::parse_public(text).map_err(|e| anyhow::anyhow!("deploy.trusted_keys: {e}"))
            })
            .collect()
    }

    /// The largest component fetched, in bytes.
    pub fn max_component_bytes(&self) -> u64 {
        self.max_component_mib << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_section_is_checked_key_by_key() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let good: DeploySettings = toml::from_str(&format!(
            "trusted_keys = [\"{}\"]\nmax_component_mib = 32",
            keys::public_text(&key.public())
        ))
        .unwrap();
        good.validate().unwrap();
        assert_eq!(good.keys().unwrap(), vec![key.public()]);
        assert_eq!(good.max_component_bytes(), 32 << 20);
        let bad = DeploySettings {
            trusted_keys: vec!["ed25519:1234".into()],
            ..DeploySettings::default()
        };
        let error = format!("{:#}", bad.validate().unwrap_err());
        assert!(
            error.contains("deploy.trusted_keys: \"ed25519:1234\""),
            "{error}"
        );
        let zero = DeploySettings {
            max_component_mib: 0,
            ..DeploySettings::default()
        };
        assert!(zero.validate().is_err());
        assert!(toml::from_str::<DeploySettings>("trusted = []").is_err());
    }
}
