//! The `connected` sampler: the view is every peer the node is connected to.

use std::collections::BTreeSet;

use libp2p::PeerId;

use super::{Outgoing, PeerSampler, SamplingMessage};

/// The trivial baseline: the view is the set of connected peers, in a stable order.
/// It sends nothing and ignores ticks.
#[derive(Debug, Default)]
pub struct Connected {
    peers: BTreeSet<PeerId>,
}

impl PeerSampler for Connected {
    fn handle_tick(&mut self) -> Vec<Outgoing> {
        Vec::new()
    }

    fn handle_message(&mut self, _from: PeerId, _message: SamplingMessage) -> Vec<Outgoing> {
        Vec::new()
    }

    fn handle_peer_connected(&mut self, peer: PeerId) {
        self.peers.insert(peer);
    }

    fn handle_peer_unreachable(&mut self, peer: PeerId) {
        self.peers.remove(&peer);
    }

    fn view(&self) -> Vec<PeerId> {
        self.peers.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_follows_connections() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut sampler = Connected::default();
        sampler.handle_peer_connected(a);
        sampler.handle_peer_connected(b);
        sampler.handle_peer_connected(a);
        assert_eq!(sampler.view().len(), 2);
        sampler.handle_peer_unreachable(a);
        assert_eq!(sampler.view(), vec![b]);
        assert!(sampler.handle_tick().is_empty());
    }
}
