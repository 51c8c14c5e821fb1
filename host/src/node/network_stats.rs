//! The network's counters in the node's summary: peers discovered, the most
//! connections open at once, everything refused, by reason, and app requests sent
//! again.

use std::collections::{BTreeMap, HashSet};

use libp2p::PeerId;
use serde::Serialize;

/// Log the first refusals of each reason, then one in this many (floods stay readable).
const LOG_EVERY: u64 = 1000;

/// Counters of the network layer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NetworkStats {
    /// Distinct peers of this context the node learned of (bootstrap, identify,
    /// Kademlia, mDNS, sampling messages); serialized as their number.
    #[serde(rename = "peers_discovered", serialize_with = "count")]
    discovered: HashSet<PeerId>,
    /// Connections open now.
    pub connections: usize,
    /// Most connections open at once.
    pub connections_peak: usize,
    /// Inbound connections, frames and messages refused, by reason.
    pub refused: BTreeMap<&'static str, u64>,
    /// App requests sent once more because their connection closed before the answer.
    pub requests_sent_again: u64,
    /// App requests a peer sent again that were answered from memory, not delivered twice.
    pub repeats_answered: u64,
}

fn count<S: serde::Serializer>(set: &HashSet<PeerId>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(set.len() as u64)
}

impl NetworkStats {
    /// Records a peer learned of; true the first time.
    pub fn discovered(&mut self, peer: PeerId) -> bool {
        self.discovered.insert(peer)
    }

    /// Records a connection opened.
    pub fn connection_opened(&mut self) {
        self.connections += 1;
        self.connections_peak = self.connections_peak.max(self.connections);
    }

    /// Records a connection closed.
    pub fn connection_closed(&mut self) {
        self.connections = self.connections.saturating_sub(1);
    }

    /// Counts a refusal and logs it (the first ten of each reason, then one in
    /// `LOG_EVERY`, with the count).
    pub fn refuse(&mut self, reason: &'static str, detail: std::fmt::Arguments<'_>) {
        let count = self.refused.entry(reason).or_default();
        *count += 1;
        if *count <= 10 || count.is_multiple_of(LOG_EVERY) {
            tracing::warn!(reason, count = *count, "refused: {detail}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_peers_once_and_tracks_the_peak() {
        let mut stats = NetworkStats::default();
        let peer = PeerId::random();
        assert!(stats.discovered(peer));
        assert!(!stats.discovered(peer));
        stats.discovered(PeerId::random());
        assert_eq!(serde_json::to_value(&stats).unwrap()["peers_discovered"], 2);
        stats.connection_opened();
        stats.connection_opened();
        stats.connection_closed();
        stats.connection_opened();
        stats.connection_closed();
        assert_eq!((stats.connections, stats.connections_peak), (1, 2));
        for _ in 0..3 {
            stats.refuse("garbage", format_args!("x"));
        }
        assert_eq!(stats.refused["garbage"], 3);
    }
}
