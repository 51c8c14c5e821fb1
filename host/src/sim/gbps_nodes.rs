//! Simulated GBPS nodes, stored by value in flat arrays.
//!
//! A simulated GBPS node is a view of at most c + c/2 descriptors, a generator and its
//! counts: here one row of descriptors per node in one array, and one cache line of
//! head (generator, view length, counts) per node in another, instead of a boxed sampler
//! behind a driver. The rules are the live sampler's ([`GbpsNode`]), run over a row.
//! The cycle engine's exchange of a node (its tick, the request, the reply) runs here
//! at once, with its buffers in two reused vectors and no message built, and a cycle's
//! exchanges run in batches of disjoint nodes on several threads
//! ([`GbpsNodes::exchange_all`]); every other caller (the event engine, runs with
//! attackers) goes through [`GbpsNodes::tick`] and [`GbpsNodes::receive`], which take
//! and give messages as any sampler does. All give what a
//! [`Gbps`](crate::sampling::Gbps) behind a driver gives, draw for draw.

use std::sync::{Arc, Mutex};

use rand::SeedableRng;

use super::helpers::{Helpers, SharedWork, Started};
use super::huge_pages::{huge_collect, huge_vec};

use crate::sampling::{
    prefetch, prefetch_range, prefetch_slice, select_peer, Age, Descriptor, GbpsConfig,
    GbpsMessage, GbpsNode, NodeId, Outgoing, SamplingCounts, SamplingMessage, Unread, ViewStore,
};

type Rng = <u32 as NodeId>::Rng;

/// The descriptors a request or a reply carries, as an exchange passes them.
type Buffer<A> = Vec<Descriptor<u32, A>>;

/// A node's generator, view length and counts: one cache line.
#[repr(align(64))]
#[derive(Clone)]
struct Head {
    rng: Rng,
    len: u32,
    counts: SamplingCounts,
}

/// A node's view: its row of the flat array and its length.
struct Row<'a, A> {
    slots: &'a mut [Descriptor<u32, A>],
    len: &'a mut u32,
}

impl<A: Age> ViewStore<u32> for Row<'_, A> {
    type Age = A;

    fn descriptors(&self) -> &[Descriptor<u32, A>] {
        &self.slots[..*self.len as usize]
    }

    fn descriptors_mut(&mut self) -> &mut [Descriptor<u32, A>] {
        &mut self.slots[..*self.len as usize]
    }

    fn push(&mut self, descriptor: Descriptor<u32, A>) {
        self.slots[*self.len as usize] = descriptor;
        *self.len += 1;
    }

    fn truncate(&mut self, len: usize) {
        *self.len = (*self.len).min(len as u32);
    }
}

/// The arrays, reached by the exchanges of a batch from several threads: each reaches
/// only the rows and heads of its two nodes, which no other exchange of the batch
/// touches.
struct Store<A> {
    rows: *mut Descriptor<u32, A>,
    heads: *mut Head,
    stride: usize,
    nodes: usize,
}

// SAFETY: a `Store` is only used while the arrays it points to are neither moved nor
// freed (a batch runs to its end before `GbpsNodes` is touched again), and threads
// reach disjoint nodes through it (see `Store::node`).
unsafe impl<A> Send for Store<A> {}
// SAFETY: as above.
unsafe impl<A> Sync for Store<A> {}

// Not derived: a derive would ask `A: Copy`, and the pointers are copied whatever `A`.
impl<A> Clone for Store<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A> Copy for Store<A> {}

impl<A: Age> Store<A> {
    /// Node `i`'s rules and counts.
    ///
    /// # Safety
    /// Nothing else reaches node `i` while they are in use.
    // The mutable borrows come from the store's pointers, not from `config`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn node<'a>(
        self,
        config: &'a GbpsConfig,
        i: u32,
    ) -> (GbpsNode<'a, u32, Row<'a, A>>, &'a mut SamplingCounts) {
        assert!((i as usize) < self.nodes, "node {i} of {}", self.nodes);
        // SAFETY: in bounds (checked above); the caller makes the access exclusive.
        let (slots, head) = unsafe {
            (
                std::slice::from_raw_parts_mut(
                    self.rows.add(i as usize * self.stride),
                    self.stride,
                ),
                &mut *self.heads.add(i as usize),
            )
        };
        rules(i, config, slots, head)
    }

    /// Asks for node `i`'s head and the start of its row (a full view's worth).
    fn prefetch(self, i: u32, view_size: usize) {
        if (i as usize) < self.nodes {
            let i = i as usize;
            prefetch(self.heads.wrapping_add(i));
            prefetch_range(self.rows.wrapping_add(i * self.stride), view_size);
        }
    }

    /// Node `a`'s tick's first draw: the peer it gossips with (`None`: its view is
    /// empty, and the tick, counted, sends nothing).
    ///
    /// # Safety
    /// As [`Store::node`], for `a`.
    unsafe fn plan(self, config: &GbpsConfig, a: u32) -> Option<u32> {
        // SAFETY: the caller's.
        let (mut node, counts) = unsafe { self.node(config, a) };
        counts.ticks += 1;
        node.select_peer()
    }

    /// The rest of node `a`'s exchange with `b`, the peer its tick picked: the sample,
    /// the request (lost if `b` is not up), the reply. Returns the messages handled.
    ///
    /// # Safety
    /// As [`Store::node`], for `a` and `b`.
    unsafe fn exchange(
        self,
        config: &GbpsConfig,
        (a, b): (u32, u32),
        up: &[bool],
        tally: &mut impl FnMut(u32),
        (request, reply): (&mut Buffer<A>, &mut Buffer<A>),
    ) -> u64 {
        // SAFETY: the caller's.
        let (mut active, active_counts) = unsafe { self.node(config, a) };
        tally(active.tick(request));
        let asks = active.pulls();
        active_counts.messages_out += 1;
        if !up.get(b as usize).copied().unwrap_or(false) {
            active_counts.send_failures += 1;
            active.unreachable(b);
            return 1;
        }
        if b == a {
            // A request from itself is ignored (no view holds its own node).
            active_counts.messages_in += 1;
            return 1;
        }
        // SAFETY: the caller's; `b` is not `a`.
        let (mut passive, passive_counts) = unsafe { self.node(config, b) };
        passive_counts.messages_in += 1;
        if !passive.answer(request, asks, reply) {
            return 1;
        }
        passive_counts.messages_out += 1;
        active_counts.messages_in += 1;
        active.select(reply);
        2
    }
}

/// Batches of fewer exchanges run on the calling thread alone: waking the helpers would
/// cost more.
const SHARED_FROM: usize = 32;

/// Exchanges a part of a batch holds.
const PART: usize = 16;

/// A batch of planned exchanges that touch disjoint nodes.
struct Batch<A> {
    store: Store<A>,
    config: Arc<GbpsConfig>,
    up: Arc<[bool]>,
    pairs: Vec<(u32, u32)>,
    /// The samples emitted and messages handled.
    done: Mutex<(Vec<u32>, u64)>,
}

impl<A: Age> SharedWork for Batch<A> {
    fn parts(&self) -> usize {
        self.pairs.len().div_ceil(PART)
    }

    fn do_part(&self, part: usize) {
        let pairs = &self.pairs[part * PART..self.pairs.len().min((part + 1) * PART)];
        let stride = self.store.stride;
        let (mut request, mut reply) = (Vec::with_capacity(stride), Vec::with_capacity(stride));
        let mut samples = Vec::with_capacity(pairs.len());
        let mut messages = 0;
        for (k, &pair) in pairs.iter().enumerate() {
            if let Some(&(a, b)) = pairs.get(k + 1) {
                self.store.prefetch(a, self.config.view_size);
                self.store.prefetch(b, self.config.view_size);
            }
            // SAFETY: the exchanges of a batch touch disjoint nodes, and each part is
            // done by one thread.
            messages += unsafe {
                self.store.exchange(
                    &self.config,
                    pair,
                    &self.up,
                    &mut |s| samples.push(s),
                    (&mut request, &mut reply),
                )
            };
        }
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        done.0.extend(samples);
        done.1 += messages;
    }
}

/// A bit per node.
struct NodeBits(Vec<u64>);

impl NodeBits {
    /// `n` nodes' bits, all clear.
    fn new(n: usize) -> NodeBits {
        NodeBits(vec![0; n.div_ceil(64)])
    }

    fn has(&self, i: u32) -> bool {
        self.0[i as usize / 64] >> (i % 64) & 1 == 1
    }

    fn set(&mut self, i: u32) {
        self.0[i as usize / 64] |= 1 << (i % 64);
    }

    /// Clears node `i`'s bit (a node past the last has none).
    fn clear(&mut self, i: u32) {
        if let Some(word) = self.0.get_mut(i as usize / 64) {
            *word &= !(1 << (i % 64));
        }
    }
}

/// Every simulated node's GBPS state, its descriptors with ages where a choice reads
/// them ([`GbpsConfig::reads_ages`]), as peers alone where none does: half the memory an
/// exchange reaches, and the same choices.
pub(super) enum GbpsNodes {
    /// Descriptors with ages.
    Aged(FlatGbps<u32>),
    /// Peers alone.
    PeersOnly(FlatGbps<Unread>),
}

/// `$body` on the nodes, whichever descriptors they keep.
macro_rules! on_nodes {
    ($nodes:expr, $flat:ident => $body:expr) => {
        match $nodes {
            GbpsNodes::Aged($flat) => $body,
            GbpsNodes::PeersOnly($flat) => $body,
        }
    };
}

impl GbpsNodes {
    /// `n` nodes with empty views, node i's generator seeded by the i-th of `seeds`.
    pub fn new(config: &GbpsConfig, n: usize, seeds: impl FnMut() -> u64) -> GbpsNodes {
        if config.reads_ages() {
            GbpsNodes::Aged(FlatGbps::new(config, n, seeds))
        } else {
            GbpsNodes::PeersOnly(FlatGbps::new(config, n, seeds))
        }
    }

    /// Node `i` starts again with an empty view and a generator seeded by `seed`.
    pub fn reset(&mut self, i: u32, seed: u64) {
        on_nodes!(self, flat => flat.reset(i, seed))
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        on_nodes!(self, flat => flat.len())
    }

    /// Node `i`'s view, in order.
    pub fn view_into(&self, i: u32, out: &mut Vec<u32>) {
        on_nodes!(self, flat => flat.view_into(i, out))
    }

    /// What reached node `i`'s sampler so far.
    pub fn counts(&self, i: u32) -> SamplingCounts {
        on_nodes!(self, flat => flat.counts(i))
    }

    /// Node `i` learns of `peer`.
    pub fn connected(&mut self, i: u32, peer: u32) {
        on_nodes!(self, flat => flat.connected(i, peer))
    }

    /// Node `i` could not reach `peer`.
    pub fn send_failed(&mut self, i: u32, peer: u32) {
        on_nodes!(self, flat => flat.send_failed(i, peer))
    }

    /// Hands over node `i`'s samples not yet collected.
    pub fn drain_samples(&mut self, i: u32, out: &mut Vec<u32>) {
        on_nodes!(self, flat => flat.drain_samples(i, out))
    }

    /// Node `i`'s tick, as a message.
    pub fn tick(&mut self, i: u32) -> Vec<Outgoing<u32>> {
        on_nodes!(self, flat => flat.tick(i))
    }

    /// Node `i` receives `message` from `from`; returns its answer (see
    /// [`FlatGbps::receive`]).
    pub fn receive(
        &mut self,
        i: u32,
        from: u32,
        message: SamplingMessage<u32>,
    ) -> Vec<Outgoing<u32>> {
        on_nodes!(self, flat => flat.receive(i, from, message))
    }

    /// A cycle's exchanges one after the other (see [`FlatGbps::exchange_each`]).
    pub fn exchange_each(&mut self, order: &[u32], up: &[bool], tally: impl FnMut(u32)) -> u64 {
        on_nodes!(self, flat => flat.exchange_each(order, up, tally))
    }

    /// A cycle's exchanges in batches on several threads (see
    /// [`FlatGbps::exchange_all`]).
    pub fn exchange_all(
        &mut self,
        order: &[u32],
        up: &[bool],
        helpers: &Helpers,
        tally: impl FnMut(u32),
    ) -> u64 {
        on_nodes!(self, flat => flat.exchange_all(order, up, helpers, tally))
    }

    /// Brings in the memory of the nodes that tick after `order[0]` (see
    /// [`FlatGbps::prefetch_ahead`]).
    pub fn prefetch_ahead(&self, order: &[u32]) {
        on_nodes!(self, flat => flat.prefetch_ahead(order))
    }
}

/// Every simulated node's GBPS state, its views kept with ages of type `A`.
pub(super) struct FlatGbps<A> {
    config: GbpsConfig,
    /// Descriptors a row holds: a full view and a buffer merged into it.
    stride: usize,
    rows: Vec<Descriptor<u32, A>>,
    heads: Vec<Head>,
    /// Samples emitted and not yet collected ([`FlatGbps::exchange`] hands its own over
    /// at once).
    samples: Vec<Vec<u32>>,
    /// The buffers of an exchange: the request's and the reply's.
    buffers: (Buffer<A>, Buffer<A>),
}

impl<A: Age> FlatGbps<A> {
    /// `n` nodes with empty views, node i's generator seeded by the i-th of `seeds`.
    pub fn new(config: &GbpsConfig, n: usize, mut seeds: impl FnMut() -> u64) -> FlatGbps<A> {
        let stride = config.view_size + config.view_size / 2 + 1;
        let empty = Descriptor {
            peer: 0,
            age: A::FRESH,
        };
        FlatGbps {
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
    fn node(&mut self, i: u32) -> (GbpsNode<'_, u32, Row<'_, A>>, &mut SamplingCounts) {
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

    fn descriptors(&self, i: u32) -> &[Descriptor<u32, A>] {
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
        let (sent, sample) = node.request(to);
        counts.messages_out += 1;
        self.samples[i as usize].push(sample);
        vec![sent]
    }

    /// Node `i` receives `message` from `from`; returns its answer. A buffer longer than
    /// a row can merge (more than c/2 + 1 descriptors: no GBPS node, honest or attacking,
    /// sends one) is cut to that length.
    pub fn receive(
        &mut self,
        i: u32,
        from: u32,
        mut message: SamplingMessage<u32>,
    ) -> Vec<Outgoing<u32>> {
        if let SamplingMessage::Gbps(
            GbpsMessage::Request { buffer, .. } | GbpsMessage::Reply { buffer },
        ) = &mut message
        {
            buffer.truncate(self.stride - self.config.view_size);
        }
        let (mut node, counts) = self.node(i);
        counts.messages_in += 1;
        let answer = node.receive(from, message);
        counts.messages_out += answer.iter().count() as u64;
        answer.into_iter().collect()
    }

    /// The exchanges of a cycle (`order`: the nodes that tick, in order), one after the
    /// other on this thread (see [`FlatGbps::exchange`]); returns the messages handled.
    pub fn exchange_each(&mut self, order: &[u32], up: &[bool], mut tally: impl FnMut(u32)) -> u64 {
        let mut messages = 0;
        for (k, &a) in order.iter().enumerate() {
            self.prefetch_ahead(&order[k..]);
            messages += self.exchange(a, up, &mut tally);
        }
        messages
    }

    /// Node `a`'s exchange in the cycle engine, at once (`a` is up: only nodes up tick):
    /// its tick, its request to the peer it picks (lost if `up` says that peer is not
    /// up), the peer's reply; the tick's sample goes to `tally`. Returns the messages
    /// handled (delivered or lost).
    fn exchange(&mut self, a: u32, up: &[bool], mut tally: impl FnMut(u32)) -> u64 {
        let store = self.store();
        // SAFETY: `self` is borrowed mutably, so only this exchange reaches the arrays.
        let Some(b) = (unsafe { store.plan(&self.config, a) }) else {
            return 0;
        };
        let (mut request, mut reply) = std::mem::take(&mut self.buffers);
        // SAFETY: as above.
        let messages = unsafe {
            store.exchange(
                &self.config,
                (a, b),
                up,
                &mut tally,
                (&mut request, &mut reply),
            )
        };
        self.buffers = (request, reply);
        messages
    }

    /// The exchanges of a cycle (`order`: the nodes that tick, in order), in batches of
    /// exchanges that touch no node in common. This thread plans each tick (its first
    /// draw: the peer) and gathers a batch while the one before runs on `helpers` (and on
    /// this thread once it is done planning). A batch closes when a tick's node or the
    /// peer it picks is in it, or when a tick's node is in the running batch (which it
    /// waits for).
    /// The batches do not depend on the number of threads, and each exchange sees its two
    /// nodes as the exchanges before it in `order` left them, so the result is
    /// [`GbpsNodes::exchange_each`]'s. The samples go to `tally` (in no particular
    /// order); returns the messages handled.
    pub fn exchange_all(
        &mut self,
        order: &[u32],
        up: &[bool],
        helpers: &Helpers,
        mut tally: impl FnMut(u32),
    ) -> u64 {
        let store = self.store();
        let config: Arc<GbpsConfig> = Arc::new(self.config.clone());
        let up: Arc<[bool]> = up.into();
        // The nodes of the batch being gathered and of the one running, if any (a bit
        // each, so that a check stays in the caches): `touched[gathering]` and
        // `touched[1 - gathering]`.
        let mut touched = [NodeBits::new(self.len()), NodeBits::new(self.len())];
        let mut gathering = 0;
        let mut pending: Vec<(u32, u32)> = Vec::new();
        let mut running: Option<(Started<'_>, Arc<Batch<A>>)> = None;
        let mut messages = 0;
        // Waits for the running batch, takes its results and clears its nodes' bits.
        let mut finish = |running: &mut Option<(Started<'_>, Arc<Batch<A>>)>,
                          bits: &mut NodeBits| {
            if let Some((started, batch)) = running.take() {
                started.finish();
                for &(a, b) in &batch.pairs {
                    bits.clear(a);
                    bits.clear(b);
                }
                let (samples, handled) =
                    std::mem::take(&mut *batch.done.lock().unwrap_or_else(|e| e.into_inner()));
                samples.into_iter().for_each(&mut tally);
                messages += handled;
            }
        };
        let start = |pending: &mut Vec<(u32, u32)>| {
            let batch = Arc::new(Batch {
                store,
                config: config.clone(),
                up: up.clone(),
                pairs: std::mem::take(pending),
                done: Mutex::new((Vec::new(), 0)),
            });
            let started = if batch.pairs.len() < SHARED_FROM {
                helpers.defer(batch.clone())
            } else {
                helpers.start(batch.clone())
            };
            (started, batch)
        };
        for (k, &a) in order.iter().enumerate() {
            if let Some(&next) = order.get(k + 2) {
                store.prefetch(next, self.config.view_size);
            }
            if touched[gathering].has(a) {
                // `a` was picked by a pending exchange: that batch runs before it plans.
                finish(&mut running, &mut touched[1 - gathering]);
                running = Some(start(&mut pending));
                gathering = 1 - gathering;
            }
            if touched[1 - gathering].has(a) {
                // `a` waits for the running batch: what is gathered runs meanwhile.
                finish(&mut running, &mut touched[1 - gathering]);
                if !pending.is_empty() {
                    running = Some(start(&mut pending));
                    gathering = 1 - gathering;
                }
            }
            // SAFETY: `a` is in no batch that may be running.
            let Some(b) = (unsafe { store.plan(&self.config, a) }) else {
                // An empty view: the tick counted, nothing sent.
                continue;
            };
            let reaches_b = up.get(b as usize).copied().unwrap_or(false);
            if reaches_b && touched[gathering].has(b) {
                finish(&mut running, &mut touched[1 - gathering]);
                running = Some(start(&mut pending));
                gathering = 1 - gathering;
            }
            touched[gathering].set(a);
            if reaches_b {
                touched[gathering].set(b);
            }
            pending.push((a, b));
        }
        finish(&mut running, &mut touched[1 - gathering]);
        running = Some(start(&mut pending));
        finish(&mut running, &mut touched[gathering]);
        messages
    }

    fn store(&mut self) -> Store<A> {
        Store {
            rows: self.rows.as_mut_ptr(),
            heads: self.heads.as_mut_ptr(),
            stride: self.stride,
            nodes: self.heads.len(),
        }
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
fn rules<'a, A>(
    me: u32,
    config: &'a GbpsConfig,
    slots: &'a mut [Descriptor<u32, A>],
    head: &'a mut Head,
) -> (GbpsNode<'a, u32, Row<'a, A>>, &'a mut SamplingCounts) {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::sampling::{Propagation, SamplerConfig, SamplingDriver, Selection};
    use crate::sim::nodes::deliver_to_drivers;

    const NODES: u32 = 7;

    /// The same nodes twice: in the flat store, and as `Gbps` samplers behind drivers.
    struct Twins {
        flat: GbpsNodes,
        drivers: Vec<SamplingDriver<u32>>,
        up: Vec<bool>,
    }

    impl Twins {
        fn new(config: &GbpsConfig, seed: u64, up: Vec<bool>) -> Twins {
            let sampler = SamplerConfig::Gbps(config.clone());
            let seeds = |i: u32| seed.wrapping_mul(31).wrapping_add(u64::from(i));
            let mut next = 0;
            let flat = GbpsNodes::new(config, NODES as usize, || {
                next += 1;
                seeds(next - 1)
            });
            let drivers = (0..NODES)
                .map(|i| SamplingDriver::new(&sampler, i, seeds(i)).unwrap())
                .collect();
            Twins { flat, drivers, up }
        }

        /// What `flat` sent or answered, beside what the drivers did: as sent, or
        /// without ages where the flat nodes keep none (they send 0).
        fn comparable(&self, mut sent: Vec<Outgoing<u32>>) -> Vec<Outgoing<u32>> {
            if let GbpsNodes::PeersOnly(_) = self.flat {
                for o in &mut sent {
                    if let SamplingMessage::Gbps(
                        GbpsMessage::Request { buffer, .. } | GbpsMessage::Reply { buffer },
                    ) = &mut o.message
                    {
                        buffer.iter_mut().for_each(|d| d.age = 0);
                    }
                }
            }
            sent
        }

        fn assert_same(&mut self) -> Result<(), TestCaseError> {
            for i in 0..NODES {
                let mut view = Vec::new();
                self.flat.view_into(i, &mut view);
                prop_assert_eq!(&view, &self.drivers[i as usize].view(), "node {}'s view", i);
                prop_assert_eq!(self.flat.counts(i), self.drivers[i as usize].counts());
                let (mut flat, mut driven) = (Vec::new(), Vec::new());
                self.flat.drain_samples(i, &mut flat);
                self.drivers[i as usize].drain_samples(&mut driven);
                prop_assert_eq!(flat, driven, "node {}'s samples", i);
            }
            Ok(())
        }
    }

    proptest! {
        /// Whatever happens, in whatever order, a node of the flat store does, draw for
        /// draw, what a `Gbps` sampler behind a driver does: views in the same order,
        /// the same messages (but their ages, where the flat nodes keep none), samples
        /// and counts; the cycle engine's exchange at once included.
        #[test]
        fn flat_nodes_do_what_drivers_do(
            seed in any::<u64>(),
            c in 1usize..12,
            heal in 0usize..4,
            swap in 0usize..4,
            selection in prop::bool::ANY,
            propagation in 0usize..3,
            up in prop::collection::vec(prop::bool::weighted(0.85), NODES as usize),
            steps in prop::collection::vec((0u8..5, 0..NODES, 0..NODES, prop::collection::vec((0..NODES, 0u32..5), 0..7)), 1..80),
        ) {
            let config = GbpsConfig {
                view_size: c,
                heal: heal.min(c / 2),
                swap: swap.min(c / 2 - heal.min(c / 2)),
                selection_policy: if selection { Selection::Rand } else { Selection::Old },
                propagation_policy: [Propagation::Push, Propagation::Pull, Propagation::Pushpull][propagation],
                age: 1,
                period: Duration::from_secs(1),
            };
            let mut twins = Twins::new(&config, seed, up);
            prop_assert_eq!(matches!(twins.flat, GbpsNodes::Aged(_)), config.reads_ages());
            for (kind, i, j, buffer) in steps {
                match kind {
                    // Only nodes up tick in the cycle engine.
                    0 if twins.up[i as usize] => {
                        let up = twins.up.clone();
                        let flat = on_nodes!(&mut twins.flat, flat => {
                            let mut sample = Vec::new();
                            let messages = flat.exchange(i, &up, |s| sample.push(s));
                            flat.samples[i as usize].extend(sample);
                            messages
                        });
                        let sent = twins.drivers[i as usize].tick();
                        prop_assert_eq!(flat, deliver_to_drivers(&mut twins.drivers, &twins.up, i, sent), "messages of node {}'s exchange", i);
                    }
                    0 | 1 => {
                        let sent = twins.flat.tick(i);
                        let driven = twins.drivers[i as usize].tick();
                        let driven = twins.comparable(driven);
                        prop_assert_eq!(twins.comparable(sent), driven);
                    }
                    2 => {
                        twins.flat.connected(i, j);
                        twins.drivers[i as usize].connected(j);
                    }
                    3 => {
                        twins.flat.send_failed(i, j);
                        twins.drivers[i as usize].send_failed(j);
                    }
                    _ => {
                        let buffer: Vec<Descriptor<u32>> = buffer
                            .iter()
                            .take(c / 2 + 1)
                            .map(|&(peer, age)| Descriptor { peer, age })
                            .collect();
                        let message = if buffer.len().is_multiple_of(2) {
                            GbpsMessage::Request { buffer, reply: j.is_multiple_of(2) }
                        } else {
                            GbpsMessage::Reply { buffer }
                        };
                        let flat = twins.flat.receive(i, j, SamplingMessage::Gbps(message.clone()));
                        let driven = twins.drivers[i as usize].receive(j, SamplingMessage::Gbps(message));
                        prop_assert_eq!(twins.comparable(flat), twins.comparable(driven));
                    }
                }
                twins.assert_same()?;
            }
        }
    }
}
