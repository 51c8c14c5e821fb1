//! Signed deployment manifests and the node's judgement of them.
//!
//! On the wire a [`SignedManifest`] carries the manifest as the exact JSON text that was
//! signed, the signer's public key and the signature, so a node checks the bytes it got
//! and never a re-serialisation of them. [`Trust`] refuses, with one reason each:
//! unsigned, unknown key, bad signature, malformed, other context, version not newer
//! (a replay), too large, limits out of range; [`check_component`] a fetched component
//! whose size or hash differs from the manifest's.

use std::collections::{BTreeMap, HashMap};

use libp2p::identity::{Keypair, PublicKey};
use serde::{Deserialize, Serialize};

use super::keys;
use crate::runtime::Limits;

/// What a manifest asks of the nodes of its context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Load the component under the name, or replace the version running (state carried).
    Deploy,
    /// Unload the app of that name.
    Undeploy,
}

/// One version of one app of a context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The context whose nodes run it.
    pub context: String,
    /// The app's name on every node.
    pub name: String,
    /// Strictly increasing per name: an older or equal one is a replay.
    pub version: u64,
    /// Deploy or undeploy.
    pub action: Action,
    /// The component's sha256, hex (deploy only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The component's size in bytes (deploy only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The app's config string.
    #[serde(default)]
    pub config: String,
    /// Cycles to run (-1: until unloaded); the node's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycles: Option<i64>,
    /// Milliseconds between cycles; the node's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_ms: Option<u64>,
    /// Limits by name, as `--limit NAME=VALUE` writes them.
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
    /// When it was signed, in ms since the Unix epoch.
    pub issued_at_ms: u64,
}

/// A manifest as it travels: the signed JSON text, the key and the signature (hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// The manifest's JSON text, exactly as signed.
    pub manifest: String,
    /// The signer's public key, `ed25519:<hex>`.
    #[serde(default)]
    pub key: String,
    /// The ed25519 signature of `manifest`'s bytes, hex.
    #[serde(default)]
    pub signature: String,
}

impl Manifest {
    /// Signs the manifest with `key`.
    pub fn sign(&self, key: &Keypair) -> anyhow::Result<SignedManifest> {
        let manifest = serde_json::to_string(self)?;
        let signature = key
            .sign(manifest.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot sign the manifest: {e}"))?;
        Ok(SignedManifest {
            manifest,
            key: keys::public_text(&key.public()),
            signature: hex::encode(signature),
        })
    }
}

/// Why a node refused a manifest or the component it names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No key or no signature.
    #[error("the manifest is not signed")]
    Unsigned,
    /// Signed by a key the node does not trust.
    #[error("signed by {0}, which is not among this node's trusted keys")]
    UnknownKey(String),
    /// The signature does not match the manifest and key.
    #[error("the signature does not match the manifest")]
    BadSignature,
    /// Not a manifest (bad JSON, missing or unknown fields, no hash for a deploy, ...).
    #[error("malformed manifest: {0}")]
    Malformed(String),
    /// For the nodes of another context.
    #[error("for context {theirs:?}, not this node's {ours:?}")]
    OtherContext {
        /// The manifest's context.
        theirs: String,
        /// The node's.
        ours: String,
    },
    /// A version this node has seen or passed: a replay, or out of order.
    #[error("version {version} of {name:?} is not newer than the {seen} this node has")]
    NotNewer {
        /// The app.
        name: String,
        /// The manifest's version.
        version: u64,
        /// The newest this node accepted.
        seen: u64,
    },
    /// A component over the node's bound.
    #[error("the component has {size} bytes, more than this node takes ({max})")]
    TooLarge {
        /// The manifest's size.
        size: u64,
        /// The node's bound.
        max: u64,
    },
    /// A limit unknown, unreadable or out of range.
    #[error("limits out of range: {0}")]
    LimitsOutOfRange(String),
    /// The component fetched is not the size the manifest says.
    #[error("the component has {got} bytes, the manifest says {want}")]
    SizeMismatch {
        /// Bytes fetched.
        got: u64,
        /// The manifest's size.
        want: u64,
    },
    /// Every peer known to hold the component failed to give it (or went away).
    #[error("no peer could give the component ({chunks_failed} chunk requests failed)")]
    Unavailable {
        /// Chunk requests that failed for this component.
        chunks_failed: u64,
    },
    /// The node could not load, replace or unload the app (not a component of the app
    /// world, an app of that name not deployed, ...).
    #[error("not applied: {0}")]
    NotApplied(String),
    /// The component fetched does not hash to the manifest's sha256.
    #[error("the component's sha256 is {got}, the manifest says {want}")]
    HashMismatch {
        /// The hash of the bytes fetched.
        got: String,
        /// The manifest's hash.
        want: String,
    },
}

impl Refusal {
    /// The counter this refusal is counted under.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::UnknownKey(_) => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::Malformed(_) => "malformed",
            Refusal::OtherContext { .. } => "other_context",
            Refusal::NotNewer { .. } => "not_newer",
            Refusal::TooLarge { .. } => "too_large",
            Refusal::LimitsOutOfRange(_) => "limits_out_of_range",
            Refusal::NotApplied(_) => "not_applied",
            Refusal::SizeMismatch { .. } => "size_mismatch",
            Refusal::Unavailable { .. } => "unavailable",
            Refusal::HashMismatch { .. } => "hash_mismatch",
        }
    }
}

/// A node's judge of manifests: the keys it trusts, its context, its size bound, and
/// the newest version of each app it accepted.
pub struct Trust {
    keys: Vec<PublicKey>,
    context: String,
    max_component_bytes: u64,
    newest: HashMap<String, u64>,
}

impl Trust {
    /// Trusts `keys` for manifests of `context` naming components of at most
    /// `max_component_bytes`.
    pub fn new(keys: Vec<PublicKey>, context: &str, max_component_bytes: u64) -> Trust {
        Trust {
            keys,
            context: context.to_string(),
            max_component_bytes,
            newest: HashMap::new(),
        }
    }

    /// The newest version of `name` accepted, if any.
    pub fn newest(&self, name: &str) -> Option<u64> {
        self.newest.get(name).copied()
    }

    /// Checks a manifest as it arrived; the manifest it carries if every check passes.
    /// Checking accepts nothing: see [`Trust::accept`].
    pub fn check(&self, signed: &SignedManifest) -> Result<Manifest, Refusal> {
        if signed.key.is_empty() || signed.signature.is_empty() {
            return Err(Refusal::Unsigned);
        }
        let key = keys::parse_public(&signed.key).map_err(Refusal::Malformed)?;
        if !self.keys.contains(&key) {
            return Err(Refusal::UnknownKey(signed.key.clone()));
        }
        let signature = hex::decode(&signed.signature).map_err(|_| Refusal::BadSignature)?;
        if !key.verify(signed.manifest.as_bytes(), &signature) {
            return Err(Refusal::BadSignature);
        }
        let manifest: Manifest = serde_json::from_str(&signed.manifest)
            .map_err(|e| Refusal::Malformed(e.to_string()))?;
        if manifest.context != self.context {
            return Err(Refusal::OtherContext {
                theirs: manifest.context,
                ours: self.context.clone(),
            });
        }
        if let Some(seen) = self.newest(&manifest.name) {
            if manifest.version <= seen {
                return Err(Refusal::NotNewer {
                    name: manifest.name,
                    version: manifest.version,
                    seen,
                });
            }
        }
        check_shape(&manifest)?;
        if let Some(size) = manifest
            .size
            .filter(|&size| size > self.max_component_bytes)
        {
            return Err(Refusal::TooLarge {
                size,
                max: self.max_component_bytes,
            });
        }
        Ok(manifest)
    }

    /// Records `manifest` as the newest of its app (once it was acted on).
    pub fn accept(&mut self, manifest: &Manifest) {
        self.newest.insert(manifest.name.clone(), manifest.version);
    }
}

/// What a well-formed manifest has: a hash and a size exactly for a deploy, a usable
/// schedule, limits that exist and hold.
fn check_shape(manifest: &Manifest) -> Result<(), Refusal> {
    let malformed = |what: &str| Err(Refusal::Malformed(what.to_string()));
    match (manifest.action, &manifest.sha256, manifest.size) {
        (Action::Deploy, Some(hash), Some(_)) => {
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return malformed("sha256 must be 64 hex digits");
            }
        }
        (Action::Deploy, _, _) => {
            return malformed("a deploy names its component's sha256 and size")
        }
        (Action::Undeploy, None, None) => {}
        (Action::Undeploy, _, _) => return malformed("an undeploy names no component"),
    }
    if manifest.name.is_empty() || manifest.name.len() > 255 {
        return malformed("name must be 1 to 255 bytes");
    }
    if manifest.cycles.is_some_and(|c| c < -1) {
        return malformed("cycles must be -1 (forever) or at least 0");
    }
    if manifest.period_ms == Some(0) {
        return malformed("period_ms must be at least 1");
    }
    let mut limits = Limits::default();
    for (name, value) in &manifest.limits {
        limits
            .set(name, value)
            .map_err(|e| Refusal::LimitsOutOfRange(format!("{e:#}")))?;
    }
    limits
        .validate()
        .map_err(|e| Refusal::LimitsOutOfRange(format!("{e:#}")))
}

/// Checks that `component` is the one `manifest` names: its size, then its sha256.
pub fn check_component(manifest: &Manifest, component: &[u8]) -> Result<(), Refusal> {
    let got = component.len() as u64;
    if let Some(want) = manifest.size.filter(|&want| want != got) {
        return Err(Refusal::SizeMismatch { got, want });
    }
    let hash = crate::runtime::content_hash(component);
    match &manifest.sha256 {
        Some(want) if !want.eq_ignore_ascii_case(&hash) => Err(Refusal::HashMismatch {
            got: hash,
            want: want.clone(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPONENT: &[u8] = b"\0asm not really a component";

    fn deploy(version: u64) -> Manifest {
        Manifest {
            context: "lab".into(),
            name: "share_vec".into(),
            version,
            action: Action::Deploy,
            sha256: Some(crate::runtime::content_hash(COMPONENT)),
            size: Some(COMPONENT.len() as u64),
            config: "k=3".into(),
            cycles: Some(-1),
            period_ms: Some(1000),
            limits: BTreeMap::from([("memory_mib".into(), "64".into())]),
            issued_at_ms: 1_790_000_000_000,
        }
    }

    fn refusal(trust: &Trust, signed: &SignedManifest) -> &'static str {
        trust.check(signed).unwrap_err().reason()
    }

    #[test]
    fn a_signed_manifest_of_a_trusted_key_passes_once_per_version() {
        let key = Keypair::generate_ed25519();
        let mut trust = Trust::new(vec![key.public()], "lab", 1 << 20);
        let signed = deploy(1).sign(&key).unwrap();
        let manifest = trust.check(&signed).unwrap();
        assert_eq!(manifest, deploy(1));
        check_component(&manifest, COMPONENT).unwrap();
        trust.accept(&manifest);
        assert_eq!(refusal(&trust, &signed), "not_newer", "a replay");
        assert!(trust.check(&deploy(2).sign(&key).unwrap()).is_ok());
        let text = serde_json::to_string(&signed).unwrap();
        let back: SignedManifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, signed, "travels as JSON");
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let key = Keypair::generate_ed25519();
        let stranger = Keypair::generate_ed25519();
        let trust = Trust::new(vec![key.public()], "lab", 16);
        let good = deploy(1);
        let signed = |m: &Manifest| m.sign(&key).unwrap();

        let unsigned = SignedManifest {
            signature: String::new(),
            ..signed(&good)
        };
        assert_eq!(refusal(&trust, &unsigned), "unsigned");
        assert_eq!(
            refusal(&trust, &good.sign(&stranger).unwrap()),
            "unknown_key"
        );
        // The text changed after signing: one more cycle, same signature.
        let mut tampered = signed(&good);
        tampered.manifest = tampered.manifest.replace("\"k=3\"", "\"k=4\"");
        assert_eq!(refusal(&trust, &tampered), "bad_signature");
        let garbled = SignedManifest {
            signature: "not hex".into(),
            ..signed(&good)
        };
        assert_eq!(refusal(&trust, &garbled), "bad_signature");

        let other = Manifest {
            context: "elsewhere".into(),
            ..good.clone()
        };
        assert_eq!(refusal(&trust, &signed(&other)), "other_context");
        let big = Manifest {
            size: Some(17),
            ..good.clone()
        };
        assert_eq!(refusal(&trust, &signed(&big)), "too_large");
        for limits in [
            ("memory_mib", "0"),
            ("nope", "1"),
            ("call_deadline", "soon"),
        ] {
            let bad = Manifest {
                limits: BTreeMap::from([(limits.0.into(), limits.1.into())]),
                ..good.clone()
            };
            assert_eq!(refusal(&trust, &signed(&bad)), "limits_out_of_range");
        }
        let no_hash = Manifest {
            sha256: None,
            ..good.clone()
        };
        let undeploy_with_hash = Manifest {
            action: Action::Undeploy,
            ..good.clone()
        };
        let short_hash = Manifest {
            sha256: Some("abc".into()),
            ..good.clone()
        };
        for bad in [no_hash, undeploy_with_hash, short_hash] {
            assert_eq!(refusal(&trust, &signed(&bad)), "malformed");
        }
        // Valid JSON but not a manifest: signed all the same.
        let text = "{\"context\": \"lab\", \"extra\": 1}";
        let not_a_manifest = SignedManifest {
            manifest: text.into(),
            key: keys::public_text(&key.public()),
            signature: hex::encode(key.sign(text.as_bytes()).unwrap()),
        };
        let error = trust.check(&not_a_manifest).unwrap_err();
        assert_eq!(error.reason(), "malformed");
        assert!(
            error.to_string().contains("unknown field `extra`"),
            "{error}"
        );
    }

    #[test]
    fn a_component_must_have_the_manifests_size_and_hash() {
        let manifest = deploy(1);
        let mut other = COMPONENT.to_vec();
        other[1] ^= 1;
        let error = check_component(&manifest, &other).unwrap_err();
        assert_eq!(error.reason(), "hash_mismatch");
        let error = check_component(&manifest, &COMPONENT[1..]).unwrap_err();
        assert_eq!(error.reason(), "size_mismatch");
        assert!(error.to_string().contains("manifest says 27"), "{error}");
    }
}
