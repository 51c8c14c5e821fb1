//! The `static` sampler: a fixed neighbour list from a topology file, as the seed's
//! `TopologyMode.static(config_path, node_name)`.
//!
//! Peers are known by their node names, which they tell each other: on the first tick
//! after a connection, a node sends the peer a `hello` with its name, and answers a
//! `hello` it has not sent yet with its own. The view is the connected peers named in
//! the node's `can_send_to`, in the file's order; app messages are only accepted from
//! peers named in `can_receive_from`. Static views emit no samples.

use std::collections::{BTreeMap, BTreeSet};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::{Neighbours, NodeId, Outgoing, PeerSampler, SamplingMessage};

/// The longest node name accepted in a `hello`.
pub const MAX_NODE_NAME: usize = 256;

/// Static-topology wire messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StaticMessage {
    /// The sender's node name in the topology.
    Hello {
        /// The name.
        name: String,
    },
}

/// One node's static view.
pub struct StaticView<I = PeerId> {
    me: I,
    neighbours: Neighbours,
    connected: BTreeSet<I>,
    greeted: BTreeSet<I>,
    names: BTreeMap<I, String>,
}

impl<I: NodeId> StaticView<I> {
    /// Node `me`, named and linked as `neighbours` says.
    pub fn new(me: I, neighbours: Neighbours) -> StaticView<I> {
        StaticView {
            me,
            neighbours,
            connected: BTreeSet::new(),
            greeted: BTreeSet::new(),
            names: BTreeMap::new(),
        }
    }

    fn hello(&self, to: I) -> Outgoing<I> {
        Outgoing {
            to,
            message: SamplingMessage::Static(StaticMessage::Hello {
                name: self.neighbours.name.clone(),
            }),
        }
    }
}

impl<I: NodeId> PeerSampler<I> for StaticView<I> {
    fn handle_tick(&mut self) -> Vec<Outgoing<I>> {
        let new: Vec<I> = self.connected.difference(&self.greeted).copied().collect();
        self.greeted.extend(new.iter().copied());
        new.into_iter().map(|to| self.hello(to)).collect()
    }

    fn handle_message(&mut self, from: I, message: SamplingMessage<I>) -> Vec<Outgoing<I>> {
        let SamplingMessage::Static(StaticMessage::Hello { name }) = message else {
            return Vec::new();
        };
        if from == self.me || name.len() > MAX_NODE_NAME {
            return Vec::new();
        }
        self.names.insert(from, name);
        self.connected.insert(from);
        if self.greeted.insert(from) {
            vec![self.hello(from)]
        } else {
            Vec::new()
        }
    }

    fn handle_peer_connected(&mut self, peer: I) {
        if peer != self.me {
            self.connected.insert(peer);
        }
    }

    fn handle_peer_unreachable(&mut self, peer: I) {
        self.connected.remove(&peer);
        self.greeted.remove(&peer);
        self.names.remove(&peer);
    }

    fn view(&self) -> Vec<I> {
        let mut view = Vec::new();
        for wanted in &self.neighbours.send_to {
            view.extend(
                self.names
                    .iter()
                    .filter(|(peer, name)| *name == wanted && self.connected.contains(peer))
                    .map(|(peer, _)| *peer),
            );
        }
        view
    }

    fn drain_samples(&mut self, _out: &mut Vec<I>) {}

    fn admits(&self, peer: I) -> bool {
        self.names
            .get(&peer)
            .is_some_and(|name| self.neighbours.receive_from.contains(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neighbours(name: &str, send_to: &[&str], receive_from: &[&str]) -> Neighbours {
        let strings = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Neighbours {
            name: name.into(),
            send_to: strings(send_to),
            receive_from: strings(receive_from),
        }
    }

    #[test]
    fn names_are_exchanged_once_and_the_view_follows_the_file() {
        let mut a: StaticView<u32> = StaticView::new(0, neighbours("a", &["c", "b"], &["b"]));
        let mut b: StaticView<u32> = StaticView::new(1, neighbours("b", &["a"], &["a", "c"]));
        a.handle_peer_connected(1);
        a.handle_peer_connected(2);
        let hellos = a.handle_tick();
        assert_eq!(hellos.len(), 2);
        assert!(a.handle_tick().is_empty(), "one hello per connection");
        let answer = b.handle_message(0, hellos[0].message.clone());
        assert_eq!(answer.len(), 1, "b answers with its name");
        assert!(a.handle_message(1, answer[0].message.clone()).is_empty());
        assert_eq!(b.view(), vec![0]);
        assert_eq!(a.view(), vec![1]);
        let c_hello = SamplingMessage::Static(StaticMessage::Hello { name: "c".into() });
        a.handle_message(2, c_hello);
        assert_eq!(a.view(), vec![2, 1], "in can_send_to order");
        assert!(a.admits(1) && !a.admits(2), "only can_receive_from");
        a.handle_peer_unreachable(2);
        assert_eq!(a.view(), vec![1]);
        let long = SamplingMessage::Static(StaticMessage::Hello {
            name: "x".repeat(MAX_NODE_NAME + 1),
        });
        assert!(a.handle_message(3, long).is_empty());
        assert!(!a.admits(3));
    }
}
