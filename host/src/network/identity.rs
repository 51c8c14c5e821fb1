//! The node's ed25519 identity: kept in a file (`--identity PATH`) so that a restarted
//! node keeps its peer id, or made fresh for each run.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use libp2p::identity::Keypair;

/// Reads the key in `path`, or creates the file (mode 0600) with a new key when it does
/// not exist; the flag says it was created (this runs before logging is set up, so the
/// caller logs which). A file readable by others, or one that holds no ed25519 key, is
/// refused.
pub fn load_or_create(path: &Path) -> Result<(Keypair, bool)> {
    match read_private_key(path, "identity file") {
        Ok(key) => Ok((key, false)),
        Err(e) if not_found(&e) => {
            let key = Keypair::generate_ed25519();
            write_private_key(path, &key, "identity file")?;
            Ok((key, true))
        }
        Err(e) => Err(e),
    }
}

/// Whether reading a key failed because its file does not exist.
pub fn not_found(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

/// Reads the ed25519 private key in `path` (the `what` of the messages), refusing a
/// file others can read or one that holds no such key. A missing file is an I/O error
/// of kind `NotFound` (see [`not_found`]).
pub fn read_private_key(path: &Path, what: &str) -> Result<Keypair> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(e.into()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {what} {}", path.display())),
    };
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{what} {} can be read by others (mode {mode:o}): run chmod 600 on it",
            path.display()
        );
    }
    let key = Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{what} {} does not hold a libp2p private key ({e})",
            path.display()
        )
    })?;
    if key.clone().try_into_ed25519().is_err() {
        bail!(
            "{what} {} holds a {:?} key; nodemanager uses ed25519",
            path.display(),
            key.key_type()
        );
    }
    Ok(key)
}

/// Writes `key` to a new file `path`, mode 0600 (an existing file is not overwritten).
pub fn write_private_key(path: &Path, key: &Keypair, what: &str) -> Result<()> {
    let bytes = key
        .to_protobuf_encoding()
        .context("cannot encode the new key")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {what} {}", path.display()))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {what} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_identity_is_private_and_reloads_to_the_same_peer_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let (first, created) = load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(first.public().to_peer_id(), again.public().to_peer_id());
    }

    #[test]
    fn bad_identity_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        std::fs::write(&path, b"not a key").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = format!("{:#}", load_or_create(&path).unwrap_err());
        assert!(e.contains("does not hold a libp2p private key"), "{e}");

        let key = Keypair::generate_ed25519().to_protobuf_encoding().unwrap();
        std::fs::write(&path, key).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = format!("{:#}", load_or_create(&path).unwrap_err());
        assert!(e.contains("chmod 600"), "{e}");

        let missing_dir = dir.path().join("no/such/dir/node.key");
        let e = format!("{:#}", load_or_create(&missing_dir).unwrap_err());
        assert!(e.contains("cannot create identity file"), "{e}");
    }
}
