//! Peer sampling: sans-IO state machines that make a node's view. The live node feeds
//! them what it sees of the network; they never touch sockets or clocks themselves.

mod connected;

pub use connected::Connected;

use anyhow::{bail, Result};
use libp2p::PeerId;

/// The sampler names a config may give.
pub const KNOWN_SAMPLERS: [&str; 1] = ["connected"];

/// A peer-sampling service driven by the node (or by a simulator).
pub trait PeerSampler: Send {
    /// A connection to `peer` was established.
    fn on_peer_connected(&mut self, peer: PeerId);
    /// `peer` is no longer reachable (its last connection closed, or a dial failed).
    fn on_peer_unreachable(&mut self, peer: PeerId);
    /// The current view.
    fn view(&self) -> Vec<PeerId>;
}

/// Checks `name` is a sampler this build knows.
pub fn check_sampler_name(name: &str) -> Result<()> {
    if !KNOWN_SAMPLERS.contains(&name) {
        bail!(
            "unknown sampler {name:?}: known samplers are {}",
            KNOWN_SAMPLERS.join(", ")
        );
    }
    Ok(())
}

/// Builds the sampler called `name`.
pub fn new_sampler(name: &str) -> Result<Box<dyn PeerSampler>> {
    check_sampler_name(name)?;
    Ok(Box::new(Connected::default()))
}
