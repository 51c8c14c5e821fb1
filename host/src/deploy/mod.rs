//! Deploying apps to a whole network: deployment keys and signed manifests.
//!
//! A manifest says which component (by sha256 and size) runs under which name in which
//! context, with what config, schedule and limits, at which version; the key that signs
//! it must be one of the node's `[deploy] trusted_keys`. [`manifest::Trust`] is the
//! node's judge, sans-IO: every refusal has a reason a counter can be keyed by.

pub mod keys;
pub mod manifest;
