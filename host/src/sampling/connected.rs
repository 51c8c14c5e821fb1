//! The `connected` sampler: the view is every peer the node is connected to.

use std::collections::BTreeSet;

use libp2p::PeerId;

use super::{NodeId, Outgoing, PeerSampler, SamplingMessage};

/// The trivial baseline: the view is the set of connected peers, in a stable order.
/// It sends nothing, ignores ticks and emits no samples.
#[derive(Debug)]
pub struct Connected<I = PeerId> {
    peers: BTreeSet<I>,
}

impl<I> Default for Connected<I> {
    fn default() -> Self {
        Connected {
            peers: BTreeSet::new(),
        }
    }
}

impl<I: NodeId> PeerSampler<I> for Connected<I> {
    fn handle_tick(&mut self) -> Vec<Outgoing<I>> {
        Vec::new()
    }

    fn handle_message(&mut self, _from: I, _message: SamplingMessage<I>) -> Vec<Outgoing<I>> {
        Vec::new()
    }

    fn handle_peer_connected(&mut self, peer: I) {
        self.peers.insert(peer);
    }

    fn handle_peer_unreachable(&mut self, peer: I) {
        self.peers.remove(&peer);
    }

    fn view(&self) -> Vec<I> {
        self.peers.iter().copied().collect()
    }

    /// The baseline emits no samples.
    fn drain_samples(&mut self, _out: &mut Vec<I>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_follows_connections() {
        let peers = crate::sampling::seeded_peers(2);
        let (a, b) = (peers[0], peers[1]);
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
