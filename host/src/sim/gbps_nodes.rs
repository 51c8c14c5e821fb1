//! Simulated GBPS nodes, stored by value in flat arrays.
//!
//! A simulated GBPS node is a view of at most c + c/2 descriptors, a generator and its
//! counts: here one row of descriptors per node in one array, and one cache line of
//! head (generator, view length, counts) per node in another, instead of a boxed sampler
//! behind a driver. The rules are the live sampler's ([`GbpsNode`]), run over a row.
//! The cycle engine's exchange of a node (its tick, the request, the reply) runs here
//! at once, with its buffers in two reused vectors and no message built; every other
//! caller (the event engine, runs with attackers) goes through [`GbpsNodes::tick`] and
//! [`GbpsNodes::receive`], which take and give messages as any sampler does. Both give
//! what a [`Gbps`](crate::sampling::Gbps) behind a driver gives, draw for draw.

use rand::SeedableRng;

use super::huge_pages::{huge_collect, huge_vec};

use crate::sampling::{
    prefetch, prefetch_slice, select_peer, Descriptor, GbpsConfig, GbpsMessage, GbpsNode, NodeId,
    Outgoing, SamplingCounts, SamplingMessage, ViewStore,
};

type Rng = <u32 as NodeId>::Rng;

/// A node's generator, view length and counts: one cache line.
#[repr(align(64))]
#[derive(Clone)]
struct Head {
    rng: Rng,
    len: u32,
    counts: SamplingCounts,
}

/// A node's view: its row of the flat array and its length.
struct Row<'a> {
    slots: &'a mut [Descriptor<u32>],
    len: &'a mut u32,
}

impl ViewStore<u32> for Row<'_> {
    fn descriptors(&self) -> &[Descriptor<u32>] {
        &self.slots[..*self.len as usize]
    }

    fn descriptors_mut(&mut self) -> &mut [Descriptor<u32>] {
        &mut self.slots[..*self.len as usize]
    }

    fn push(&mut self, descriptor: Descriptor<u32>) {
        self.slots[*self.len as usize] = descriptor;
        *self.len += 1;
    }

    fn truncate(&mut self, len: usize) {
        *self.len = (*self.len).min(len as u32);
    }
}

/// Every simulated node's GBPS state.
pub(super) struct GbpsNodes {
    config: GbpsConfig,
    /// Descriptors a row holds: a full view and a buffer merged into it.
    stride: usize,
    rows: Vec<Descriptor<u32>>,
    heads: Vec<Head>,
    /// Samples emitted and not yet collected ([`GbpsNodes::exchange`] hands its own over
    /// at once).
    samples: Vec<Vec<u32>>,
    /// The buffers of an exchange: the request's and the reply's.
    buffers: (Vec<Descriptor<u32>>, Vec<Descriptor<u32>>),
}

impl GbpsNodes {
    /// `n` nodes with empty views, node i's generator seeded by the i-th of `seeds`.
    pub fn new(config: &GbpsConfig, n: usize, mut seeds: impl FnMut() -> u64) -> GbpsNodes {
        let stride = config.view_size + config.view_size / 2 + 1;
        let empty = Descriptor { peer: 0, age: 0 };
        GbpsNodes {
            config: config.clone(),
            stride,
            rows: huge_vec(n * stride, empty),
            heads: huge_collect(n, (0..n).map(|_| new_head(seeds()))),
            samples: vec![Vec::new(); n],
            buffers: (Vec::with_capacity(stride), Vec::with_capacity(stride)),
        }
    }

    /// Node `i` starts again with an empty view and a generator seeded by `seed`.
    pub fn reset(&mut self, i: u32, seed: u64) {
        self.heads[i as usize] = new_head(seed);
        self.samples[i as usize].clear();
    }

    /// Node `i`'s rules over its row, and its counts.
    fn node(&mut self, i: u32) -> (GbpsNode<'_, u32, Row<'_>>, &mut SamplingCounts) {
        let slots = &mut self.rows[i as usize * self.stride..][..self.stride];
        rules(i, &self.config, slots, &mut self.heads[i as usize])
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.heads.len()
    }

    /// Node `i`'s view, in order.
    pub fn view_into(&self, i: u32, out: &mut Vec<u32>) {
        out.extend(self.descriptors(i).iter().map(|d| d.peer));
    }

    fn descriptors(&self, i: u32) -> &[Descriptor<u32>] {
        let len = self.heads[i as usize].len as usize;
        &self.rows[i as usize * self.stride..][..len]
    }

    /// What reached node `i`'s sampler so far.
    pub fn counts(&self, i: u32) -> SamplingCounts {
        self.heads[i as usize].counts
    }

    /// Node `i` learns of `peer`.
    pub fn connected(&mut self, i: u32, peer: u32) {
        self.node(i).0.connected(peer);
    }

    /// Node `i` could not reach `peer`.
    pub fn send_failed(&mut self, i: u32, peer: u32) {
        let (mut node, counts) = self.node(i);
        counts.send_failures += 1;
        node.unreachable(peer);
    }

    /// Hands over node `i`'s samples not yet collected.
    pub fn drain_samples(&mut self, i: u32, out: &mut Vec<u32>) {
        out.append(&mut self.samples[i as usize]);
    }

    /// Node `i`'s tick, as a message.
    pub fn tick(&mut self, i: u32) -> Vec<Outgoing<u32>> {
        let (mut node, counts) = self.node(i);
        counts.ticks += 1;
        let Some(to) = node.select_peer() else {
            return Vec::new();
        };
        let mut buffer = Vec::new();
        let sample = node.tick(&mut buffer);
        let reply = node.pulls();
        counts.messages_out += 1;
        self.samples[i as usize].push(sample);
        let message = SamplingMessage::Gbps(GbpsMessage::Request { buffer, reply });
        vec![Outgoing { to, message }]
    }

    /// Node `i` receives `message` from `from`; returns its answer. A buffer longer than
    /// a row can merge (more than c/2 + 1 descriptors: no GBPS node, honest or attacking,
    /// sends one) is cut to that length.
    pub fn receive(
        &mut self,
        i: u32,
        from: u32,
        message: SamplingMessage<u32>,
    ) -> Vec<Outgoing<u32>> {
        let room = self.stride - self.config.view_size;
        let (mut node, counts) = self.node(i);
        counts.messages_in += 1;
        let SamplingMessage::Gbps(message) = message else {
            return Vec::new();
        };
        if from == i {
            return Vec::new();
        }
        match message {
            GbpsMessage::Request { buffer, reply } => {
                let mut answer = Vec::new();
                let buffer = &buffer[..buffer.len().min(room)];
                if !node.answer(buffer, reply, &mut answer) {
                    return Vec::new();
                }
                counts.messages_out += 1;
                let message = SamplingMessage::Gbps(GbpsMessage::Reply { buffer: answer });
                vec![Outgoing { to: from, message }]
            }
            GbpsMessage::Reply { buffer } => {
                node.select(&buffer[..buffer.len().min(room)]);
                Vec::new()
            }
        }
    }

    /// Node `a`'s exchange in the cycle engine, at once: its tick, its request to the
    /// peer it picks (lost if `up` says that peer is not up), the peer's reply; the
    /// tick's sample goes to `tally`. Returns the messages handled (delivered or lost).
    pub fn exchange(&mut self, a: u32, up: &[bool], tally: impl FnOnce(u32)) -> u64 {
        let (mut request, mut reply) = std::mem::take(&mut self.buffers);
        let messages = self.exchange_with(a, up, tally, &mut request, &mut reply);
        self.buffers = (request, reply);
        messages
    }

    fn exchange_with(
        &mut self,
        a: u32,
        up: &[bool],
        tally: impl FnOnce(u32),
        request: &mut Vec<Descriptor<u32>>,
        reply: &mut Vec<Descriptor<u32>>,
    ) -> u64 {
        let (mut node, counts) = self.node(a);
        counts.ticks += 1;
        let Some(b) = node.select_peer() else {
            return 0;
        };
        let sample = node.tick(request);
        let asks = node.pulls();
        counts.messages_out += 1;
        tally(sample);
        if !up.get(b as usize).copied().unwrap_or(false) {
            counts.send_failures += 1;
            node.unreachable(b);
            return 1;
        }
        if b == a {
            // A request from itself is ignored (no view holds its own node).
            counts.messages_in += 1;
            return 1;
        }
        let [(mut active, active_counts), (mut passive, passive_counts)] = self.pair(a, b);
        passive_counts.messages_in += 1;
        if !passive.answer(request, asks, reply) {
            return 1;
        }
        passive_counts.messages_out += 1;
        active_counts.messages_in += 1;
        active.select(reply);
        2
    }

    /// The rules and counts of two different nodes at once.
    fn pair(&mut self, a: u32, b: u32) -> [(GbpsNode<'_, u32, Row<'_>>, &mut SamplingCounts); 2] {
        let stride = self.stride;
        let (a, b) = (a as usize, b as usize);
        let (slots_a, slots_b) = if a < b {
            let (low, high) = self.rows.split_at_mut(b * stride);
            (&mut low[a * stride..][..stride], &mut high[..stride])
        } else {
            let (low, high) = self.rows.split_at_mut(a * stride);
            (&mut high[..stride], &mut low[b * stride..][..stride])
        };
        let [head_a, head_b] = self
            .heads
            .get_disjoint_mut([a, b])
            .expect("two different nodes");
        [
            rules(a as u32, &self.config, slots_a, head_a),
            rules(b as u32, &self.config, slots_b, head_b),
        ]
    }

    /// Asks for the memory of the nodes that tick after `order[0]` before their
    /// exchanges need it: the next but one node's head and view, and the view of the
    /// peer the next node will pick if nothing changes its view first (picked with a
    /// copy of its generator: a guess, and only a hint).
    pub fn prefetch_ahead(&self, order: &[u32]) {
        if let Some(&node) = order.get(2) {
            self.prefetch_node(node);
        }
        if let Some(&node) = order.get(1) {
            let mut rng = self.heads[node as usize].rng.clone();
            let view = self.descriptors(node);
            if let Some(peer) = select_peer(view, self.config.selection_policy, &mut rng) {
                if (peer as usize) < self.len() {
                    self.prefetch_node(peer);
                }
            }
        }
    }

    fn prefetch_node(&self, i: u32) {
        prefetch(&self.heads[i as usize]);
        prefetch_slice(&self.rows[i as usize * self.stride..][..self.config.view_size]);
    }
}

/// Node `me`'s rules over its row and head, and its counts.
fn rules<'a>(
    me: u32,
    config: &'a GbpsConfig,
    slots: &'a mut [Descriptor<u32>],
    head: &'a mut Head,
) -> (GbpsNode<'a, u32, Row<'a>>, &'a mut SamplingCounts) {
    let node = GbpsNode {
        me,
        config,
        view: Row {
            slots,
            len: &mut head.len,
        },
        rng: &mut head.rng,
    };
    (node, &mut head.counts)
}

fn new_head(seed: u64) -> Head {
    Head {
        rng: Rng::seed_from_u64(seed),
        len: 0,
        counts: SamplingCounts::default(),
    }
}
