//! Peer sampling: sans-IO state machines that make a node's view.
//!
//! A sampler never touches sockets or clocks. Its driver (the live node, or a simulator)
//! feeds it inputs — a tick every period, a sampling message from a peer, a peer that
//! connected or became unreachable — and sends the [`Outgoing`] messages it returns.
//! Randomness comes from an RNG seeded at construction, so a run is reproducible.

mod basalt;
mod brahms;
mod config;
mod connected;
mod gbps;

pub use basalt::{Basalt, BasaltMessage};
pub use brahms::{Brahms, BrahmsMessage};
pub use config::{
    BasaltConfig, BrahmsConfig, GbpsConfig, Propagation, SamplerConfig, Selection, KNOWN_SAMPLERS,
};
pub use connected::Connected;
pub use gbps::{Descriptor, Gbps, GbpsMessage};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// A message between the samplers of two nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "lowercase")]
pub enum SamplingMessage {
    /// A GBPS exchange.
    Gbps(GbpsMessage),
    /// A Brahms exchange.
    Brahms(BrahmsMessage),
    /// A Basalt exchange.
    Basalt(BasaltMessage),
}

impl SamplingMessage {
    /// Every peer id the message mentions (the driver attaches their addresses).
    pub fn peers(&self) -> Vec<PeerId> {
        match self {
            SamplingMessage::Gbps(m) => m.buffer().iter().map(|d| d.peer).collect(),
            SamplingMessage::Basalt(BasaltMessage::View { peers }) => peers.clone(),
            SamplingMessage::Basalt(BasaltMessage::Pull) => Vec::new(),
            SamplingMessage::Brahms(BrahmsMessage::Reply { peers }) => peers.clone(),
            SamplingMessage::Brahms(BrahmsMessage::Push | BrahmsMessage::Pull) => Vec::new(),
        }
    }
}

/// A message the sampler wants sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    /// The destination.
    pub to: PeerId,
    /// What to send.
    pub message: SamplingMessage,
}

/// A peer-sampling service, driven by the node or by a simulator.
pub trait PeerSampler: Send {
    /// A period passed: run the active part of the protocol.
    fn handle_tick(&mut self) -> Vec<Outgoing>;
    /// `from` sent `message`.
    fn handle_message(&mut self, from: PeerId, message: SamplingMessage) -> Vec<Outgoing>;
    /// A connection to `peer` (a peer of the same context) was established.
    fn handle_peer_connected(&mut self, peer: PeerId);
    /// `peer` is no longer reachable (its last connection closed, or a send failed).
    fn handle_peer_unreachable(&mut self, peer: PeerId);
    /// The current view.
    fn view(&self) -> Vec<PeerId>;
}

/// Builds the sampler `config` describes for node `me`, its randomness drawn from `seed`.
pub fn new_sampler(config: &SamplerConfig, me: PeerId, seed: u64) -> Box<dyn PeerSampler> {
    match config {
        SamplerConfig::Connected => Box::new(Connected::default()),
        SamplerConfig::Gbps(gbps) => Box::new(Gbps::new(me, gbps.clone(), seed)),
        SamplerConfig::Brahms(brahms) => Box::new(Brahms::new(me, brahms.clone(), seed)),
        SamplerConfig::Basalt(basalt) => Box::new(Basalt::new(me, basalt.clone(), seed)),
    }
}

/// Checks what every sampler promises of its view: at most `capacity` peers, no
/// duplicates, never `me`, only ids from `known`.
#[cfg(test)]
fn check_view(
    view: &[PeerId],
    me: PeerId,
    capacity: usize,
    known: &std::collections::HashSet<PeerId>,
) -> Result<(), String> {
    let unique: std::collections::HashSet<PeerId> = view.iter().copied().collect();
    if view.len() > capacity {
        return Err(format!(
            "view of {} peers over its capacity {capacity}",
            view.len()
        ));
    }
    if unique.len() != view.len() {
        return Err(format!("duplicates in {view:?}"));
    }
    if unique.contains(&me) {
        return Err("the node is in its own view".into());
    }
    if !unique.is_subset(known) {
        return Err(format!("unknown ids in {view:?}"));
    }
    Ok(())
}
