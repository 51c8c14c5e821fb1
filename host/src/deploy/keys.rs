//! Deployment keys: an ed25519 key pair in a private file (`nodemanager keys generate`)
//! and its public half as text, `ed25519:` and 64 hex digits, as nodes list it in
//! `[deploy] trusted_keys`.

use std::path::Path;

use anyhow::{bail, Result};
use libp2p::identity::{ed25519, Keypair, PublicKey};

use crate::network::identity::{read_private_key, write_private_key};

const PREFIX: &str = "ed25519:";

/// Creates a new key pair in `path` (mode 0600; an existing file is never
/// overwritten); returns its public key as text.
pub fn generate(path: &Path) -> Result<String> {
    if path.exists() {
        bail!(
            "{} exists already: a deployment key is never overwritten (remove it first, or choose another path)",
            path.display()
        );
    }
    let key = Keypair::generate_ed25519();
    write_private_key(path, &key, "deployment key file")?;
    Ok(public_text(&key.public()))
}

/// Reads the key pair in `path`.
pub fn load(path: &Path) -> Result<Keypair> {
    read_private_key(path, "deployment key file")
}

/// A public key as text: `ed25519:<64 hex digits>`.
pub fn public_text(key: &PublicKey) -> String {
    let bytes = key
        .clone()
        .try_into_ed25519()
        .map(|key| key.to_bytes().to_vec())
        .unwrap_or_default();
    format!("{PREFIX}{}", hex::encode(bytes))
}

/// Reads a public key written by [`public_text`], naming what is wrong with bad text.
pub fn parse_public(text: &str) -> Result<PublicKey, String> {
    let Some(digits) = text.strip_prefix(PREFIX) else {
        return Err(format!(
            "{text:?} is not a deployment key: it must start with {PREFIX:?}"
        ));
    };
    let bytes = hex::decode(digits)
        .map_err(|e| format!("{text:?} is not a deployment key: {e} after {PREFIX:?}"))?;
    if bytes.len() != 32 {
        return Err(format!(
            "{text:?} is not a deployment key: {} bytes after {PREFIX:?}, not 32",
            bytes.len()
        ));
    }
    ed25519::PublicKey::try_from_bytes(&bytes)
        .map(PublicKey::from)
        .map_err(|e| format!("{text:?} is not an ed25519 public key: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_generated_key_is_private_never_overwritten_and_its_public_text_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deploy.key");
        let public = generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            public.starts_with("ed25519:") && public.len() == 8 + 64,
            "{public}"
        );
        let key = load(&path).unwrap();
        assert_eq!(public_text(&key.public()), public);
        assert_eq!(parse_public(&public).unwrap(), key.public());
        let again = format!("{:#}", generate(&path).unwrap_err());
        assert!(again.contains("exists already"), "{again}");
        assert_eq!(load(&path).unwrap().public(), key.public(), "unchanged");
    }

    #[test]
    fn bad_public_key_text_is_refused_with_the_reason() {
        for (text, reason) in [
            ("abc", "must start with \"ed25519:\""),
            ("ed25519:zz", "Invalid character"),
            ("ed25519:abcd", "2 bytes after"),
        ] {
            let error = parse_public(text).unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }
}
