//! Simulated Brahms nodes, stored by value.
//!
//! Each node is a [`Brahms`] sampler in one vector (no box, no driver) with its counts
//! beside it. The cycle engine's tick of a node (its round's end, its pushes and pulls,
//! the answers to its pulls) runs here at once ([`BrahmsNodes::exchange_each`]): no
//! message is built, a pull's answer is read straight from the peer's view, and the
//! peers a tick reaches are asked for from memory together before any is touched. Every
//! other caller (the event engine, runs with attackers) goes through
//! [`BrahmsNodes::tick_leaving`] and [`BrahmsNodes::receive`], which take and give
//! messages as a driver does. Both give what a [`Brahms`] behind a driver gives, draw
//! for draw, delivered in the cycle engine's order (the tick's pushes, its pulls, then
//! the answers to its pulls).

use super::settling::Settling;
use crate::sampling::{
    prefetch, Brahms, BrahmsConfig, Outgoing, PeerSampler, SamplingCounts, SamplingMessage, Step,
};

/// Every simulated node's Brahms state.
pub(super) struct BrahmsNodes {
    config: BrahmsConfig,
    nodes: Vec<Brahms<u32>>,
    counts: Vec<SamplingCounts>,
    /// Reused room for a tick: the samplers' ids, the peers pushed to and pulled from,
    /// and the peers whose answers come back.
    history: Vec<u32>,
    push_to: Vec<u32>,
    pull_from: Vec<u32>,
    answering: Vec<u32>,
}

impl BrahmsNodes {
    /// `n` nodes with empty views, node i's generator seeded by the i-th of `seeds`.
    pub fn new(config: &BrahmsConfig, n: usize, mut seeds: impl FnMut() -> u64) -> BrahmsNodes {
        BrahmsNodes {
            config: config.clone(),
            nodes: (0..n as u32)
                .map(|i| Brahms::new(i, config.clone(), seeds()))
                .collect(),
            counts: vec![SamplingCounts::default(); n],
            history: Vec::new(),
            push_to: Vec::new(),
            pull_from: Vec::new(),
            answering: Vec::new(),
        }
    }

    /// Node `i` starts again, as new, its generator seeded by `seed`.
    pub fn reset(&mut self, i: u32, seed: u64) {
        self.nodes[i as usize] = Brahms::new(i, self.config.clone(), seed);
        self.counts[i as usize] = SamplingCounts::default();
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i` learns of `peer`.
    pub fn connected(&mut self, i: u32, peer: u32) {
        self.nodes[i as usize].handle_peer_connected(peer);
    }

    /// Node `i` could not reach `peer`.
    pub fn send_failed(&mut self, i: u32, peer: u32) {
        self.counts[i as usize].send_failures += 1;
        self.nodes[i as usize].handle_peer_unreachable(peer);
    }

    /// Node `i`'s tick, as messages: the sampler update it leaves goes to `settling`.
    pub fn tick_leaving(&mut self, i: u32, settling: &mut Settling) -> Vec<Outgoing<u32>> {
        let (node, counts) = (&mut self.nodes[i as usize], &mut self.counts[i as usize]);
        counts.ticks += 1;
        let sent = node.handle_tick();
        counts.messages_out += sent.len() as u64;
        defer_update(node, settling);
        sent
    }

    /// Node `i` receives `message` from `from`; returns its answers.
    pub fn receive(
        &mut self,
        i: u32,
        from: u32,
        message: SamplingMessage<u32>,
    ) -> Vec<Outgoing<u32>> {
        let counts = &mut self.counts[i as usize];
        counts.messages_in += 1;
        let answers = self.nodes[i as usize].handle_message(from, message);
        counts.messages_out += answers.len() as u64;
        answers
    }

    /// Hands over node `i`'s samples not yet collected.
    pub fn drain_samples(&mut self, i: u32, out: &mut Vec<u32>) {
        self.nodes[i as usize].drain_samples(out);
    }

    /// Appends node `i`'s view to `out`.
    pub fn view_into(&self, i: u32, out: &mut Vec<u32>) {
        out.extend_from_slice(self.nodes[i as usize].view_slice());
    }

    /// What reached node `i`'s sampler so far.
    pub fn counts(&self, i: u32) -> SamplingCounts {
        self.counts[i as usize]
    }

    /// The ticks of a cycle (`order`: the nodes that tick, in order), one after the
    /// other, each with its messages delivered at once (see the module's doc; `up`: the
    /// nodes a message reaches); the sampler updates they leave go to `settling`.
    /// Returns the messages handled (delivered or lost).
    pub fn exchange_each(&mut self, order: &[u32], up: &[bool], settling: &mut Settling) -> u64 {
        let mut messages = 0;
        for (k, &a) in order.iter().enumerate() {
            self.prefetch_ahead(&order[k..]);
            messages += self.exchange(a, up, settling);
        }
        messages
    }

    /// Node `a`'s tick and the messages it causes (`a` is up: only nodes up tick).
    fn exchange(&mut self, a: u32, up: &[bool], settling: &mut Settling) -> u64 {
        let reaches = |to: u32| up.get(to as usize).copied().unwrap_or(false);
        let node = &mut self.nodes[a as usize];
        node.start_round(&mut self.history, &mut self.push_to, &mut self.pull_from);
        defer_update(node, settling);
        let sent = self.push_to.len() + self.pull_from.len();
        let counts = &mut self.counts[a as usize];
        counts.ticks += 1;
        counts.messages_out += sent as u64;
        self.prefetch_peers();
        self.answering.clear();
        let pushes = self.push_to.len();
        for k in 0..sent {
            let to = match k.checked_sub(pushes) {
                None => self.push_to[k],
                Some(pull) => self.pull_from[pull],
            };
            if !reaches(to) {
                self.send_failed(a, to);
                continue;
            }
            self.counts[to as usize].messages_in += 1;
            if k < pushes {
                self.nodes[to as usize].pushed_by(a);
            } else if to != a {
                self.counts[to as usize].messages_out += 1;
                self.answering.push(to);
            }
        }
        self.counts[a as usize].messages_in += self.answering.len() as u64;
        for &from in &self.answering {
            let [node, peer] = self
                .nodes
                .get_disjoint_mut([a as usize, from as usize])
                .expect("a node never answers its own pull");
            node.answered(from, peer.view_slice().iter().copied());
        }
        (sent + self.answering.len()) as u64
    }

    /// Asks for the memory of the peers a tick reaches: their samplers, then where a
    /// push is kept and the view a pull reads (by then the first are coming in).
    fn prefetch_peers(&self) {
        let node = |to: &u32| self.nodes.get(*to as usize);
        let peers = self.push_to.iter().chain(&self.pull_from);
        peers.filter_map(node).for_each(|node| prefetch(node));
        self.push_to.iter().filter_map(node).for_each(Brahms::prefetch_push);
        self.pull_from.iter().filter_map(node).for_each(Brahms::prefetch_view);
    }

    /// Asks for the memory of the nodes that tick after `order[0]` before their ticks
    /// need it: a node's sampler four ticks ahead, what its tick reads two ahead.
    pub fn prefetch_ahead(&self, order: &[u32]) {
        if let Some(&node) = order.get(4) {
            prefetch(&self.nodes[node as usize]);
        }
        if let Some(&node) = order.get(2) {
            self.nodes[node as usize].prefetch(Step::Tick);
        }
    }
}

/// Hands `node`'s sampler update, left by its tick, to `settling`.
fn defer_update(node: &Brahms<u32>, settling: &mut Settling) {
    settling.add(node.deferred().expect("Brahms defers its sampler update"));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::sampling::{BrahmsMessage, SamplerConfig, SamplingDriver};
    use crate::sim::helpers::Helpers;
    use crate::sim::nodes::deliver_to_drivers;

    const NODES: u32 = 8;

    proptest! {
        /// Whatever happens, in whatever order, a node of the store does, draw for draw,
        /// what a `Brahms` sampler behind a driver does: views in the same order, the
        /// same messages, samples and counts; the cycle engine's tick with its messages
        /// at once included, its sampler update left to a helper.
        #[test]
        fn stored_nodes_do_what_drivers_do(
            seed in any::<u64>(),
            l1 in 1usize..9,
            l2 in 1usize..6,
            alpha in 0.0f64..0.6,
            beta in 0.0f64..0.5,
            up in prop::collection::vec(prop::bool::weighted(0.85), NODES as usize),
            steps in prop::collection::vec((0u8..7, 0..NODES, 0..NODES, prop::collection::vec(0..NODES, 0..10)), 1..80),
        ) {
            let config = BrahmsConfig { view_size: l1, sampler_size: l2, alpha, beta, period: Duration::from_secs(1) };
            let seeds = |i: u32| seed.wrapping_mul(31).wrapping_add(u64::from(i));
            let mut next = 0;
            let mut stored = BrahmsNodes::new(&config, NODES as usize, || { next += 1; seeds(next - 1) });
            let sampler = SamplerConfig::Brahms(config.clone());
            let mut drivers: Vec<SamplingDriver<u32>> = (0..NODES)
                .map(|i| SamplingDriver::new(&sampler, i, seeds(i)).unwrap())
                .collect();
            let helpers = Helpers::new(1);
            for (kind, i, j, peers) in steps {
                let message = |kind: u8| SamplingMessage::Brahms(match kind {
                    4 => BrahmsMessage::Push,
                    5 => BrahmsMessage::Pull,
                    _ => BrahmsMessage::Reply { peers: peers.clone() },
                });
                let mut settling = Settling::new(Some(&helpers));
                match kind {
                    // Only nodes up tick in the cycle engine.
                    0 if up[i as usize] => {
                        let messages = stored.exchange_each(&[i], &up, &mut settling);
                        let sent = drivers[i as usize].tick();
                        prop_assert_eq!(messages, deliver_to_drivers(&mut drivers, &up, i, sent), "messages of node {}'s tick", i);
                    }
                    0 | 1 => {
                        let sent = stored.tick_leaving(i, &mut settling);
                        prop_assert_eq!(&sent, &drivers[i as usize].tick());
                    }
                    2 => {
                        stored.connected(i, j);
                        drivers[i as usize].connected(j);
                    }
                    3 => {
                        stored.send_failed(i, j);
                        drivers[i as usize].send_failed(j);
                    }
                    kind => {
                        let answers = stored.receive(i, j, message(kind));
                        prop_assert_eq!(answers, drivers[i as usize].receive(j, message(kind)));
                    }
                }
                settling.finish();
                for i in 0..NODES {
                    let mut view = Vec::new();
                    stored.view_into(i, &mut view);
                    prop_assert_eq!(&view, &drivers[i as usize].view(), "node {}'s view", i);
                    prop_assert_eq!(stored.counts(i), drivers[i as usize].counts());
                    let (mut kept, mut driven) = (Vec::new(), Vec::new());
                    stored.drain_samples(i, &mut kept);
                    drivers[i as usize].drain_samples(&mut driven);
                    prop_assert_eq!(kept, driven, "node {}'s samples", i);
                }
            }
        }
    }
}
