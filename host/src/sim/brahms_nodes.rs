//! Simulated Brahms nodes, stored by value.
//!
//! Each node is a driver with its [`Brahms`] sampler stored in it ([`ByValue`]: no box),
//! all in one vector. The cycle engine's tick of a node (its round's end, its pushes and
//! pulls, the answers to its pulls) runs here at once ([`BrahmsNodes::exchange_each`]):
//! no message is built, a pull's answer is read straight from the peer's view, and the
//! peers a tick reaches are asked for from memory a tick before any is touched. Every
//! other caller (the event engine, runs with attackers) goes through the node's driver
//! ([`BrahmsNodes::driver`]) with messages. Both give what a [`Brahms`] behind a boxed
//! driver gives, draw for draw, delivered in the cycle engine's order (the tick's
//! pushes, its pulls, then the answers to its pulls).

use std::collections::VecDeque;

use super::settling::Settling;
use crate::sampling::{
    prefetch, Brahms, BrahmsConfig, ByValue, SamplingCounts, SamplingDriver, Step,
};

/// Rounds started ahead of the tick whose messages are delivered.
const AHEAD: usize = 2;

/// A node's driver, its sampler stored in it (three cache lines: a push or a pull
/// reaches one node in one place).
#[repr(align(64))]
struct Node(SamplingDriver<u32, ByValue<Brahms<u32>>>);

/// A started round: its node, and the peers it pushes to and pulls from.
#[derive(Default)]
struct Round {
    node: u32,
    push_to: Vec<u32>,
    pull_from: Vec<u32>,
}

impl Round {
    /// Whether the round's messages reach `node`.
    fn reaches(&self, node: u32) -> bool {
        self.push_to.contains(&node) || self.pull_from.contains(&node)
    }
}

/// Every simulated node's Brahms state.
pub(super) struct BrahmsNodes {
    config: BrahmsConfig,
    nodes: Vec<Node>,
    /// Reused room for a tick: the samplers' ids, the rounds started and not yet
    /// delivered (in order), rounds delivered, and the peers whose answers come back.
    history: Vec<u32>,
    started: VecDeque<Round>,
    spare: Vec<Round>,
    answering: Vec<u32>,
}

impl BrahmsNodes {
    /// `n` nodes with empty views, node i's generator seeded by the i-th of `seeds`.
    pub fn new(config: &BrahmsConfig, n: usize, mut seeds: impl FnMut() -> u64) -> BrahmsNodes {
        BrahmsNodes {
            config: config.clone(),
            nodes: (0..n as u32)
                .map(|i| new_node(i, config, seeds()))
                .collect(),
            history: Vec::new(),
            started: VecDeque::new(),
            spare: Vec::new(),
            answering: Vec::new(),
        }
    }

    /// Node `i` starts again, as new, its generator seeded by `seed`.
    pub fn reset(&mut self, i: u32, seed: u64) {
        self.nodes[i as usize] = new_node(i, &self.config, seed);
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s driver.
    pub fn driver(&mut self, i: u32) -> &mut SamplingDriver<u32, ByValue<Brahms<u32>>> {
        &mut self.nodes[i as usize].0
    }

    /// Node `i`'s view.
    pub fn view_into(&self, i: u32, out: &mut Vec<u32>) {
        out.extend_from_slice(self.nodes[i as usize].0.sampler().view_slice());
    }

    /// What reached node `i`'s sampler so far.
    pub fn counts(&self, i: u32) -> SamplingCounts {
        self.nodes[i as usize].0.counts()
    }

    /// The ticks of a cycle (`order`: the nodes that tick, in order), each with its
    /// messages delivered at once (see the module's doc; `up`: the nodes a message
    /// reaches); the sampler updates they leave go to `settling`. Returns the messages
    /// handled (delivered or lost).
    ///
    /// Rounds are started (and the peers they reach asked for from memory) up to
    /// [`AHEAD`] ticks before their messages are delivered, in order, as long as no
    /// started round reaches the next node to start: a round's start reads and changes
    /// its own node only, and a tick's messages change only the nodes they reach and
    /// the node itself, so the result is that of one tick after the other.
    pub fn exchange_each(&mut self, order: &[u32], up: &[bool], settling: &mut Settling) -> u64 {
        let mut messages = 0;
        let mut next = 0;
        for k in 0..order.len() {
            self.prefetch_ahead(&order[k..]);
            while next < order.len().min(k + 1 + AHEAD) {
                let node = order[next];
                if next > k && self.started.iter().any(|round| round.reaches(node)) {
                    break;
                }
                self.start_round(node, settling);
                next += 1;
            }
            if let Some(round) = self.started.get(1) {
                self.prefetch_peers(round);
            }
            let round = self.started.pop_front().expect("this tick's round started");
            messages += self.deliver(&round, up);
            self.spare.push(round);
        }
        messages
    }

    /// Starts node `a`'s round (its tick), and asks for its peers' nodes.
    fn start_round(&mut self, a: u32, settling: &mut Settling) {
        let mut round = self.spare.pop().unwrap_or_default();
        let driver = &mut self.nodes[a as usize].0;
        let (sampler, counts) = driver.parts_mut();
        sampler.start_round(&mut self.history, &mut round.push_to, &mut round.pull_from);
        counts.ticks += 1;
        counts.messages_out += (round.push_to.len() + round.pull_from.len()) as u64;
        settling.add_from(driver);
        round.node = a;
        let peers = round.push_to.iter().chain(&round.pull_from);
        peers.for_each(|&to| self.prefetch_node(to));
        if self.started.is_empty() {
            // Its messages go next: what they reach is asked for now.
            self.prefetch_peers(&round);
        }
        self.started.push_back(round);
    }

    /// Delivers the messages of `round` (its node is up: only nodes up tick) and the
    /// answers to its pulls; returns the messages handled.
    fn deliver(&mut self, round: &Round, up: &[bool]) -> u64 {
        let reaches = |to: u32| up.get(to as usize).copied().unwrap_or(false);
        let a = round.node;
        let sent = round.push_to.len() + round.pull_from.len();
        self.answering.clear();
        for (k, &to) in round.push_to.iter().chain(&round.pull_from).enumerate() {
            if !reaches(to) {
                self.nodes[a as usize].0.send_failed(to);
                continue;
            }
            let (peer, counts) = self.nodes[to as usize].0.parts_mut();
            counts.messages_in += 1;
            if k < round.push_to.len() {
                peer.pushed_by(a);
            } else if to != a {
                counts.messages_out += 1;
                self.answering.push(to);
            }
        }
        self.nodes[a as usize].0.parts_mut().1.messages_in += self.answering.len() as u64;
        for &from in &self.answering {
            let [node, peer] = self
                .nodes
                .get_disjoint_mut([a as usize, from as usize])
                .expect("a node never answers its own pull");
            let view = peer.0.sampler().view_slice().iter().copied();
            node.0.parts_mut().0.answered(from, view);
        }
        (sent + self.answering.len()) as u64
    }

    /// Asks for what `round` reaches in its peers' nodes (asked for when it started):
    /// where a push is kept, the view a pull reads.
    fn prefetch_peers(&self, round: &Round) {
        let node = |to: &u32| self.nodes.get(*to as usize).map(|node| node.0.sampler());
        round
            .push_to
            .iter()
            .filter_map(node)
            .for_each(Brahms::prefetch_push);
        round
            .pull_from
            .iter()
            .filter_map(node)
            .for_each(Brahms::prefetch_view);
    }

    /// Asks for node `i`'s memory (a message will reach it).
    pub fn prefetch_node(&self, i: u32) {
        if let Some(node) = self.nodes.get(i as usize) {
            prefetch(node);
        }
    }

    /// Asks for what a message to node `i` reads and writes there (its node asked for
    /// a little earlier).
    pub fn prefetch_message(&self, i: u32) {
        if let Some(node) = self.nodes.get(i as usize) {
            node.0.prefetch_state(Step::Message);
        }
    }

    /// Asks for the memory of the nodes that tick after `order[0]` before their rounds
    /// start (up to [`AHEAD`] ticks early): a node [`AHEAD`] + 4 ticks ahead, what its
    /// round's start reads [`AHEAD`] + 2 ahead.
    pub fn prefetch_ahead(&self, order: &[u32]) {
        if let Some(&node) = order.get(AHEAD + 4) {
            self.prefetch_node(node);
        }
        if let Some(&node) = order.get(AHEAD + 2) {
            self.nodes[node as usize].0.prefetch_state(Step::Tick);
        }
    }
}

fn new_node(i: u32, config: &BrahmsConfig, seed: u64) -> Node {
    Node(SamplingDriver::by_value(Brahms::new(
        i,
        config.clone(),
        seed,
    )))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::sampling::{BrahmsMessage, SamplerConfig, SamplingMessage};
    use crate::sim::helpers::Helpers;
    use crate::sim::nodes::deliver_to_drivers;

    const NODES: u32 = 8;

    proptest! {
        /// Whatever happens, in whatever order, a node of the store does, draw for draw,
        /// what a `Brahms` sampler behind a driver does: views in the same order, the
        /// same messages, samples and counts; the cycle engine's ticks with their
        /// messages at once included (a round started while the one before is
        /// delivered), their sampler updates left to a helper.
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
                    // Ticks in the cycle engine: distinct nodes, all up.
                    0 => {
                        let mut order: Vec<u32> = Vec::new();
                        for &node in std::iter::once(&i).chain(&peers) {
                            if up[node as usize] && !order.contains(&node) {
                                order.push(node);
                            }
                        }
                        let messages = stored.exchange_each(&order, &up, &mut settling);
                        let mut delivered = 0;
                        for &node in &order {
                            let sent = drivers[node as usize].tick();
                            delivered += deliver_to_drivers(&mut drivers, &up, node, sent);
                        }
                        prop_assert_eq!(messages, delivered, "messages of the ticks of {:?}", order);
                    }
                    1 => {
                        let sent = settling.tick(stored.driver(i));
                        prop_assert_eq!(&sent, &drivers[i as usize].tick());
                    }
                    2 => {
                        stored.driver(i).connected(j);
                        drivers[i as usize].connected(j);
                    }
                    3 => {
                        stored.driver(i).send_failed(j);
                        drivers[i as usize].send_failed(j);
                    }
                    kind => {
                        let answers = stored.driver(i).receive(j, message(kind));
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
                    stored.driver(i).drain_samples(&mut kept);
                    drivers[i as usize].drain_samples(&mut driven);
                    prop_assert_eq!(kept, driven, "node {}'s samples", i);
                }
            }
        }
    }
}
