//! Dialling the bootstrap addresses again while a node has no peer, sans-IO (time passed
//! in). On an orchestrator nodes start in any order: the first dial may find nobody
//! listening, or a DNS name not yet there.

use std::time::Duration;

use libp2p::Multiaddr;
use tokio::time::Instant;

/// The first wait before dialling again; it doubles after every try, up to [`MAX_WAIT`].
pub const FIRST_WAIT: Duration = Duration::from_secs(1);
/// The longest wait between two tries.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// When to dial the bootstrap addresses again.
pub struct Rejoin {
    addrs: Vec<Multiaddr>,
    wait: Duration,
    next: Instant,
}

impl Rejoin {
    /// For a node that dialled `addrs` at `now`.
    pub fn new(addrs: Vec<Multiaddr>, now: Instant) -> Rejoin {
        Rejoin {
            addrs,
            wait: FIRST_WAIT,
            next: now + FIRST_WAIT,
        }
    }

    /// Whether there is anything to dial again at all.
    pub fn has_addresses(&self) -> bool {
        !self.addrs.is_empty()
    }

    /// At `now`, with `peers` connected: the addresses to dial again (none while the
    /// node has a peer, or before the wait is over).
    pub fn due(&mut self, now: Instant, peers: usize) -> &[Multiaddr] {
        if peers > 0 {
            self.wait = FIRST_WAIT;
            self.next = now + FIRST_WAIT;
            return &[];
        }
        if now < self.next {
            return &[];
        }
        self.next = now + self.wait;
        self.wait = (self.wait * 2).min(MAX_WAIT);
        &self.addrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_node_dials_again_ever_less_often_and_not_while_it_has_peers() {
        let start = Instant::now();
        let addr: Multiaddr = "/dns4/seed/tcp/4001".parse().unwrap();
        let mut rejoin = Rejoin::new(vec![addr.clone()], start);
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert!(rejoin.due(start, 0).is_empty(), "just dialled");
        // Alone: again after 1 s, then 1, 2, 4, ... s later, at most 30 s apart.
        let mut tries = Vec::new();
        for second in 1..=200 {
            if !rejoin.due(at(second), 0).is_empty() {
                tries.push(second);
            }
        }
        assert_eq!(tries, [1, 2, 4, 8, 16, 32, 62, 92, 122, 152, 182]);
        // With a peer: nothing, and once alone again it starts over from 1 s.
        assert!(rejoin.due(at(300), 3).is_empty());
        assert!(rejoin.due(at(300), 0).is_empty());
        assert_eq!(rejoin.due(at(301), 0), [addr]);
        assert!(Rejoin::new(Vec::new(), start).due(at(5), 0).is_empty());
    }
}
