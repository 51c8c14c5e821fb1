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
mod driver;
mod gbps;
mod minwise;
mod static_view;
mod topology;

pub use basalt::{Basalt, BasaltMessage};
pub use brahms::{Brahms, BrahmsMessage};
pub use config::{
    BasaltConfig, BrahmsConfig, GbpsConfig, Propagation, SamplerConfig, Selection, StaticConfig,
    KNOWN_SAMPLERS,
};
pub use connected::Connected;
pub use driver::{ByValue, SamplingCounts, SamplingDriver};
pub(crate) use gbps::{select_peer, Age, GbpsNode, Unread, ViewStore};
pub use gbps::{Descriptor, Gbps, GbpsMessage};
pub use minwise::Rankers;
pub use static_view::{StaticMessage, StaticView, MAX_NODE_NAME};
pub use topology::{Neighbours, Topology, TopologyKind};

use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use libp2p::PeerId;
use rand::RngExt as _;
use serde::{Deserialize, Serialize};
use siphasher::sip::SipHasher13;

/// What a sampler needs of a node id: the live node uses [`PeerId`], the simulator
/// plain `u32` indices (cheap to copy, compare and rank).
pub trait NodeId: Copy + Eq + Ord + Hash + Debug + Send + 'static {
    /// The generator a sampler of these ids draws its random choices from, seeded at
    /// construction: one peers cannot predict for live ids, a small fast one for the
    /// simulator's (a run holds 100,000 samplers, each with its own).
    type Rng: rand::Rng + rand::SeedableRng + Send;

    /// A secret key of Brahms's samplers and Basalt's slots (see [`minwise`]).
    type Key: Copy + Debug + PartialEq + Send;

    /// A keyed rank: the min-wise independent permutations of the samplers and slots.
    type Rank: Copy + Ord + Debug + Send;

    /// Above every rank: a sampler or slot holding no id.
    const UNRANKED: Self::Rank;

    /// A new key.
    fn random_key(rng: &mut Self::Rng) -> Self::Key;

    /// The id's rank under the secret `key` (below [`NodeId::UNRANKED`]).
    fn keyed_rank(&self, key: Self::Key) -> Self::Rank;

    /// `rankers.hear(ids)`: in the id type, so that simulated ids can use the
    /// processor's vector extensions where it has them (same result either way).
    fn hear(rankers: &mut minwise::Rankers<Self>, ids: &[Self]) {
        rankers.hear_each(ids);
    }

    /// A small dense number for the id, if it has one (the simulator's indices): lets
    /// a sampler remember ids in a bitset.
    fn dense_index(&self) -> Option<u32> {
        None
    }

    /// A cheap, well-spread hash of the id, for [`IdFilter`] (not keyed: never for
    /// anything a peer could exploit): its dense number if it has one.
    fn filter_hash(&self) -> u32 {
        if let Some(index) = self.dense_index() {
            return index;
        }
        let mut hasher = FilterHasher::default();
        self.hash(&mut hasher);
        hasher.0 as u32
    }
}

/// FNV-1a over what an id hashes: [`NodeId::filter_hash`]'s default.
struct FilterHasher(u64);

impl Default for FilterHasher {
    fn default() -> FilterHasher {
        FilterHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for FilterHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A 1,024-bit filter of ids: "surely absent" or "maybe present". Lets a sampler
/// merging a few ids into a view of a few dozen skip the scan for ids it does not hold
/// (most of them, in a large network).
#[derive(Default)]
pub(crate) struct IdFilter([u64; 16]);

impl IdFilter {
    fn slot<I: NodeId>(id: &I) -> (usize, u64) {
        let bit = id.filter_hash() as usize % 1024;
        (bit / 64, 1 << (bit % 64))
    }

    /// Remembers `id`.
    pub(crate) fn insert<I: NodeId>(&mut self, id: &I) {
        let (word, mask) = IdFilter::slot(id);
        self.0[word] |= mask;
    }

    /// Whether `id` may have been inserted (false: it surely was not).
    pub(crate) fn may_contain<I: NodeId>(&self, id: &I) -> bool {
        let (word, mask) = IdFilter::slot(id);
        self.0[word] & mask != 0
    }
}

/// Live ids are ranked with SipHash-1-3, a keyed PRF: a peer that does not know the
/// key cannot make up ids that rank low.
impl NodeId for PeerId {
    type Rng = rand::rngs::StdRng;
    type Key = (u64, u64);
    type Rank = u64;
    const UNRANKED: u64 = u64::MAX;

    fn random_key(rng: &mut Self::Rng) -> (u64, u64) {
        rng.random()
    }

    fn keyed_rank(&self, key: (u64, u64)) -> u64 {
        let mut hasher = SipHasher13::new_with_keys(key.0, key.1);
        self.hash(&mut hasher);
        hasher.finish() >> 1
    }
}

/// Simulated ids are ranked with MurmurHash3's 32-bit finaliser (a well-avalanching
/// bijection of 32-bit words) of the id xor the key: well spread for ids nobody
/// chooses adversarially, and cheap enough to rank every id heard in every slot, eight
/// slots at a time.
impl NodeId for u32 {
    /// PCG-64 (MCG variant): 16 bytes of state, one multiplication per draw.
    type Rng = rand_pcg::Pcg64Mcg;
    type Key = u32;
    type Rank = u32;
    const UNRANKED: u32 = u32::MAX;

    fn random_key(rng: &mut Self::Rng) -> u32 {
        rng.random()
    }

    #[inline(always)]
    fn keyed_rank(&self, key: u32) -> u32 {
        let mut z = *self ^ key;
        z = (z ^ (z >> 16)).wrapping_mul(0x85eb_ca6b);
        z = (z ^ (z >> 13)).wrapping_mul(0xc2b2_ae35);
        (z ^ (z >> 16)) >> 1
    }

    fn hear(rankers: &mut minwise::Rankers<u32>, ids: &[u32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the processor has AVX2.
            return unsafe { hear_avx2(rankers, ids) };
        }
        rankers.hear_in_lanes(ids);
    }

    fn dense_index(&self) -> Option<u32> {
        Some(*self)
    }
}

/// [`minwise::Rankers::hear_in_lanes`] compiled for AVX2 (the build targets baseline
/// x86-64): 32-bit multiplications eight at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn hear_avx2(rankers: &mut minwise::Rankers<u32>, ids: &[u32]) {
    rankers.hear_in_lanes(ids);
}

/// A message between the samplers of two nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "lowercase")]
pub enum SamplingMessage<I = PeerId> {
    /// A GBPS exchange.
    Gbps(GbpsMessage<I>),
    /// A Brahms exchange.
    Brahms(BrahmsMessage<I>),
    /// A Basalt exchange.
    Basalt(BasaltMessage<I>),
    /// A static topology's introduction.
    Static(StaticMessage),
}

impl<I: NodeId> SamplingMessage<I> {
    /// Every peer id the message mentions (the driver attaches their addresses).
    pub fn peers(&self) -> Vec<I> {
        match self {
            SamplingMessage::Gbps(m) => m.buffer().iter().map(|d| d.peer).collect(),
            SamplingMessage::Basalt(BasaltMessage::View { peers }) => peers.clone(),
            SamplingMessage::Basalt(BasaltMessage::Pull) => Vec::new(),
            SamplingMessage::Brahms(BrahmsMessage::Reply { peers }) => peers.clone(),
            SamplingMessage::Brahms(BrahmsMessage::Push | BrahmsMessage::Pull) => Vec::new(),
            SamplingMessage::Static(_) => Vec::new(),
        }
    }
}

/// A message the sampler wants sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing<I = PeerId> {
    /// The destination.
    pub to: I,
    /// What to send.
    pub message: SamplingMessage<I>,
}

/// A peer-sampling service, driven by the node or by a simulator.
pub trait PeerSampler<I: NodeId = PeerId>: Send {
    /// A period passed: run the active part of the protocol.
    fn handle_tick(&mut self) -> Vec<Outgoing<I>>;
    /// Chooses now whom the next tick sends to, appending the peers to `peers`, and
    /// returns true; the next [`handle_tick`](Self::handle_tick) then sends to those
    /// peers only and does exactly what it would have done unplanned (planning draws
    /// what the tick would draw first). Nothing may reach the sampler in between. The
    /// simulator plans ticks on one thread and runs them on another. False (the
    /// default): the sampler cannot tell ahead.
    fn plan_tick(&mut self, _peers: &mut Vec<I>) -> bool {
        false
    }
    /// `from` sent `message`.
    fn handle_message(&mut self, from: I, message: SamplingMessage<I>) -> Vec<Outgoing<I>>;
    /// A connection to `peer` (a peer of the same context) was established.
    fn handle_peer_connected(&mut self, peer: I);
    /// `peer` is no longer reachable (its last connection closed, or a send failed).
    fn handle_peer_unreachable(&mut self, peer: I);
    /// The current view.
    fn view(&self) -> Vec<I>;
    /// Appends the current view to `out` (what [`view`](Self::view) returns, without
    /// allocating: the simulator reads 100,000 views a cycle).
    fn view_into(&self, out: &mut Vec<I>) {
        out.extend(self.view());
    }
    /// Moves the samples emitted since the last call to `out`: the ids the service hands
    /// out as its random draws of the membership (see each algorithm for when it emits).
    fn drain_samples(&mut self, out: &mut Vec<I>);
    /// The samples emitted since the last call (see [`PeerSampler::drain_samples`]).
    fn take_samples(&mut self) -> Vec<I> {
        let mut samples = Vec::new();
        self.drain_samples(&mut samples);
        samples
    }
    /// Protocol event counters, by name (e.g. Brahms's `flooded_rounds`).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// Whether apps may receive messages from `peer` (a static topology's
    /// `can_receive_from`; every peer otherwise).
    fn admits(&self, _peer: I) -> bool {
        true
    }
    /// Asks the processor for the memory the sampler's `next` step reads (its view),
    /// ahead of that step: the simulator calls it a couple of ticks before the node's
    /// turn, and a couple of messages before one reaches it. A hint only: it changes
    /// nothing.
    fn prefetch(&self, _next: Step) {}
    /// The work the last tick left for later, if the sampler defers any (Brahms: its
    /// samplers hearing the round's ids): any thread may do it, and the sampler does it
    /// itself first whenever something depends on it, so who does it, and when, changes
    /// nothing. None (the default): ticks do all their work.
    fn deferred(&self) -> Option<Arc<dyn Deferred>> {
        None
    }
}

/// Work a tick left for later (see [`PeerSampler::deferred`]).
pub trait Deferred: Send + Sync {
    /// Does the work, unless it is done already.
    fn settle(&self);
}

/// A sampler's next step, for [`PeerSampler::prefetch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Its tick.
    Tick,
    /// A message to it.
    Message,
}

/// Asks the processor to bring the memory at `address` into its caches ahead of use. A
/// hint: it reads nothing, so it cannot fault and changes no result; a no-op where the
/// architecture has no prefetch instruction.
#[inline(always)]
pub(crate) fn prefetch<T: ?Sized>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing into the program: any address is allowed.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(address.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// [`prefetch`]es every cache line of `items`.
#[inline]
pub(crate) fn prefetch_slice<T>(items: &[T]) {
    prefetch_range(items.as_ptr(), items.len());
}

/// [`prefetch`]es every cache line of the `count` items from `start`, without making a
/// reference to them (another thread may be writing them: a prefetch reads nothing).
#[inline]
pub(crate) fn prefetch_range<T>(start: *const T, count: usize) {
    const LINE: usize = 64;
    let start = start.cast::<u8>();
    for offset in (0..count * std::mem::size_of::<T>()).step_by(LINE) {
        prefetch(start.wrapping_add(offset));
    }
}

/// Builds the sampler `config` describes for node `me`, its randomness drawn from `seed`
/// (a `static` one reads its topology file).
pub fn new_sampler<I: NodeId>(
    config: &SamplerConfig,
    me: I,
    seed: u64,
) -> Result<Box<dyn PeerSampler<I>>> {
    Ok(match config {
        SamplerConfig::Connected => Box::new(Connected::default()),
        SamplerConfig::Gbps(gbps) => Box::new(Gbps::new(me, gbps.clone(), seed)),
        SamplerConfig::Brahms(brahms) => Box::new(Brahms::new(me, brahms.clone(), seed)),
        SamplerConfig::Basalt(basalt) => Box::new(Basalt::new(me, basalt.clone(), seed)),
        SamplerConfig::Static(fixed) => {
            let node = fixed
                .node
                .as_deref()
                .context("the static sampler needs `node`: this node's name in the topology")?;
            let neighbours = Topology::from_file(&fixed.topology)?.neighbours(node)?;
            Box::new(StaticView::new(me, neighbours))
        }
    })
}

/// Checks what every sampler promises of its view: at most `capacity` peers, no
/// duplicates, never `me`, only ids from `known`.
#[cfg(test)]
fn check_view<I: NodeId>(
    view: &[I],
    me: I,
    capacity: usize,
    known: &std::collections::HashSet<I>,
) -> Result<(), String> {
    let unique: std::collections::HashSet<I> = view.iter().copied().collect();
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

/// Ticks `planned` with a plan before each tick and `unplanned` without, `ticks` times,
/// and checks that both send the same messages to the planned peers, keep the same view
/// and emit the same samples.
#[cfg(test)]
pub(crate) fn assert_planned_ticks_match<S: PeerSampler<u32>>(
    planned: &mut S,
    unplanned: &mut S,
    ticks: usize,
) {
    let mut peers = Vec::new();
    for _ in 0..ticks {
        peers.clear();
        assert!(planned.plan_tick(&mut peers));
        let sent = planned.handle_tick();
        assert_eq!(sent, unplanned.handle_tick());
        assert_eq!(sent.iter().map(|o| o.to).collect::<Vec<_>>(), peers);
        assert_eq!(planned.view(), unplanned.view());
        assert_eq!(planned.take_samples(), unplanned.take_samples());
    }
}

/// `n` distinct peer ids, the same in every run (keys from fixed secrets), so that a
/// failing property test can be replayed from its seed.
#[cfg(test)]
pub(crate) fn seeded_peers(n: usize) -> Vec<libp2p::PeerId> {
    (0..n)
        .map(|i| {
            let mut secret = [0u8; 32];
            secret[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            libp2p::identity::Keypair::ed25519_from_bytes(secret)
                .expect("32 bytes make an ed25519 key")
                .public()
                .to_peer_id()
        })
        .collect()
}
