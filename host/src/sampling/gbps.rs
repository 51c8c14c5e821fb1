//! GBPS: gossip-based peer sampling, after Jelasity, Voulgaris, Guerraoui, Kermarrec and
//! van Steen, *Gossip-based peer sampling*, ACM TOCS 25(3), 2007 (figure 1).
//!
//! Config fields map to the paper's symbols: `view_size` = c, `heal` = H, `swap` = S,
//! `selection_policy` = peer selection (`rand` | `old` = tail), `propagation_policy` =
//! view propagation (push | pull | pushpull), `age` = the age increment per cycle.
//!
//! Each tick (the active thread): select a peer, send it a buffer (own fresh descriptor
//! plus c/2 - 1 descriptors of the permuted view, with the H oldest moved to the end)
//! if pushing, ask for its buffer if pulling, and age the view. On a received buffer
//! (the passive thread): answer with a buffer if asked, then merge with `select(c, H, S)`
//! and age the view. A reply is merged the same way, without ageing again.
//!
//! Samples: each tick emits one peer drawn uniformly from the view (the paper's
//! `getPeer()`, called once per cycle).

use libp2p::PeerId;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{
    prefetch_slice, GbpsConfig, IdFilter, NodeId, Outgoing, PeerSampler, Propagation,
    SamplingMessage, Selection, Step,
};

/// A node descriptor: a peer and how old the information about it is.
///
/// On the wire and in the live sampler the age is a `u32`; the simulator keeps views
/// whose ages nothing reads as peers alone (`A` = `Unread`, a zero-sized age).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor<I = PeerId, A = u32> {
    /// The peer.
    pub peer: I,
    /// Cycles since the peer itself created this descriptor.
    pub age: A,
}

/// A descriptor's age, as a view keeps it (views are shared by the simulator's threads).
pub(crate) trait Age: Copy + Ord + Send + Sync + 'static {
    /// The age of a descriptor a node makes of itself.
    const FRESH: Self;
    /// This age `by` cycles later.
    fn older(self, by: u32) -> Self;
    /// The age a message carries.
    fn to_wire(self) -> u32;
    /// The age a message carried, as kept.
    fn from_wire(age: u32) -> Self;
}

impl Age for u32 {
    const FRESH: u32 = 0;

    fn older(self, by: u32) -> u32 {
        self.saturating_add(by)
    }

    fn to_wire(self) -> u32 {
        self
    }

    fn from_wire(age: u32) -> u32 {
        age
    }
}

/// No age: where nothing reads ages (random peer selection, no healer: see
/// [`GbpsConfig::reads_ages`]), a view of peers alone takes half the memory and makes
/// the same choices. Sent as age 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Unread;

impl Age for Unread {
    const FRESH: Unread = Unread;

    fn older(self, _by: u32) -> Unread {
        Unread
    }

    fn to_wire(self) -> u32 {
        0
    }

    fn from_wire(_age: u32) -> Unread {
        Unread
    }
}

/// `descriptor` as a message carries it.
fn to_wire<I, A: Age>(descriptor: Descriptor<I, A>) -> Descriptor<I> {
    Descriptor {
        peer: descriptor.peer,
        age: descriptor.age.to_wire(),
    }
}

/// What a message carried, as a view keeps it.
fn from_wire<I, A: Age>(descriptor: Descriptor<I>) -> Descriptor<I, A> {
    Descriptor {
        peer: descriptor.peer,
        age: A::from_wire(descriptor.age),
    }
}

/// GBPS wire messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum GbpsMessage<I = PeerId> {
    /// The active side's buffer (empty when pull-only); `reply` asks for the peer's.
    Request {
        /// Descriptors sent.
        buffer: Vec<Descriptor<I>>,
        /// Whether the receiver answers with its own buffer.
        reply: bool,
    },
    /// The passive side's buffer, answering a request.
    Reply {
        /// Descriptors sent.
        buffer: Vec<Descriptor<I>>,
    },
}

impl<I> GbpsMessage<I> {
    /// The descriptors carried.
    pub fn buffer(&self) -> &[Descriptor<I>] {
        match self {
            GbpsMessage::Request { buffer, .. } | GbpsMessage::Reply { buffer } => buffer,
        }
    }
}

/// Where a node's view is kept: the live sampler's own vector, or a row of the
/// simulator's flat store (room for c + c/2 + 1 descriptors).
pub(crate) trait ViewStore<I> {
    /// The ages it keeps.
    type Age: Age;
    /// The view, in its order.
    fn descriptors(&self) -> &[Descriptor<I, Self::Age>];
    /// The view, to reorder or age in place.
    fn descriptors_mut(&mut self) -> &mut [Descriptor<I, Self::Age>];
    /// Appends a descriptor.
    fn push(&mut self, descriptor: Descriptor<I, Self::Age>);
    /// Keeps the first `len` descriptors.
    fn truncate(&mut self, len: usize);
}

impl<I, V: ViewStore<I>> ViewStore<I> for &mut V {
    type Age = V::Age;

    fn descriptors(&self) -> &[Descriptor<I, V::Age>] {
        (**self).descriptors()
    }

    fn descriptors_mut(&mut self) -> &mut [Descriptor<I, V::Age>] {
        (**self).descriptors_mut()
    }

    fn push(&mut self, descriptor: Descriptor<I, V::Age>) {
        (**self).push(descriptor);
    }

    fn truncate(&mut self, len: usize) {
        (**self).truncate(len);
    }
}

impl<I, A: Age> ViewStore<I> for Vec<Descriptor<I, A>> {
    type Age = A;

    fn descriptors(&self) -> &[Descriptor<I, A>] {
        self
    }

    fn descriptors_mut(&mut self) -> &mut [Descriptor<I, A>] {
        self
    }

    fn push(&mut self, descriptor: Descriptor<I, A>) {
        Vec::push(self, descriptor);
    }

    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len);
    }
}

/// One node's GBPS rules, over its state wherever that is stored: the live [`Gbps`] and
/// the simulator's flat store run this same code.
pub(crate) struct GbpsNode<'a, I: NodeId, V> {
    /// The node.
    pub me: I,
    /// Its configuration.
    pub config: &'a GbpsConfig,
    /// Its view.
    pub view: V,
    /// Its random stream.
    pub rng: &'a mut I::Rng,
}

/// The peer a tick gossips with: a random one, or the first of the oldest (ties
/// resolve by view order, itself random). Draws from `rng` only for `rand`.
pub(crate) fn select_peer<I: NodeId, A: Age>(
    view: &[Descriptor<I, A>],
    selection: Selection,
    rng: &mut I::Rng,
) -> Option<I> {
    match selection {
        Selection::Rand if !view.is_empty() => Some(view[below(rng, view.len())].peer),
        Selection::Rand => None,
        Selection::Old => view
            .iter()
            .fold(None::<&Descriptor<I, A>>, |best, d| match best {
                Some(b) if b.age >= d.age => Some(b),
                _ => Some(d),
            })
            .map(|d| d.peer),
    }
}

impl<I: NodeId, V: ViewStore<I>> GbpsNode<'_, I, V> {
    /// Whether a tick sends a buffer.
    pub fn pushes(&self) -> bool {
        self.config.propagation_policy != Propagation::Pull
    }

    /// Whether a tick asks for the peer's buffer.
    pub fn pulls(&self) -> bool {
        self.config.propagation_policy != Propagation::Push
    }

    /// The peer this tick gossips with (`None`: the view is empty).
    pub fn select_peer(&mut self) -> Option<I> {
        select_peer(
            self.view.descriptors(),
            self.config.selection_policy,
            self.rng,
        )
    }

    /// The active side's tick once its peer is chosen (the view is not empty): draws
    /// the cycle's sample, writes the buffer to send into `buffer` (left empty when
    /// pull-only), and ages the view. Returns the sample.
    pub fn tick(&mut self, buffer: &mut Vec<Descriptor<I, V::Age>>) -> I {
        let view = self.view.descriptors();
        let sample = view[below(self.rng, view.len())].peer;
        buffer.clear();
        if self.pushes() {
            self.make_buffer(buffer);
        }
        self.increase_age();
        sample
    }

    /// The passive side's handling of a request from another node: writes its answer
    /// into `answer` if asked (and returns whether it answers), merges, ages.
    pub fn answer(
        &mut self,
        buffer: &[Descriptor<I, V::Age>],
        reply: bool,
        answer: &mut Vec<Descriptor<I, V::Age>>,
    ) -> bool {
        answer.clear();
        if reply {
            self.make_buffer(answer);
        }
        self.select(buffer);
        self.increase_age();
        reply
    }

    /// The tick of a node whose peer `to` is chosen, as a message: the request, and the
    /// sample the tick draws.
    pub fn request(&mut self, to: I) -> (Outgoing<I>, I) {
        let mut buffer = Vec::new();
        let sample = self.tick(&mut buffer);
        let reply = self.pulls();
        let buffer = buffer.into_iter().map(to_wire).collect();
        let message = SamplingMessage::Gbps(GbpsMessage::Request { buffer, reply });
        (Outgoing { to, message }, sample)
    }

    /// Handles `message` from `from`: returns the reply to send, if any (none for a
    /// message from itself or of another algorithm).
    pub fn receive(&mut self, from: I, message: SamplingMessage<I>) -> Option<Outgoing<I>> {
        let SamplingMessage::Gbps(message) = message else {
            return None;
        };
        if from == self.me {
            return None;
        }
        match message {
            GbpsMessage::Request { buffer, reply } => {
                let buffer: Vec<_> = buffer.into_iter().map(from_wire).collect();
                let mut answer = Vec::new();
                let replies = self.answer(&buffer, reply, &mut answer);
                let answer = answer.into_iter().map(to_wire).collect();
                replies.then_some(Outgoing {
                    to: from,
                    message: SamplingMessage::Gbps(GbpsMessage::Reply { buffer: answer }),
                })
            }
            GbpsMessage::Reply { buffer } => {
                let buffer: Vec<_> = buffer.into_iter().map(from_wire).collect();
                self.select(&buffer);
                None
            }
        }
    }

    /// Permutes the view, moves the H oldest to its end, and writes own fresh
    /// descriptor followed by the first c/2 - 1 descriptors into `buffer`.
    ///
    /// Only the places something reads the order of are drawn (see
    /// [`GbpsConfig::reads_ages`]): those sent and those swapping drops, or the whole view.
    pub fn make_buffer(&mut self, buffer: &mut Vec<Descriptor<I, V::Age>>) {
        let config = self.config;
        let take = (config.view_size / 2).saturating_sub(1);
        let placed = if self.config.reads_ages() {
            usize::MAX
        } else {
            take.max(config.swap)
        };
        let view = self.view.descriptors_mut();
        shuffle_front(view, placed, self.rng);
        self.move_oldest_to_end(config.heal);
        buffer.push(Descriptor {
            peer: self.me,
            age: V::Age::FRESH,
        });
        buffer.extend(self.view.descriptors().iter().take(take).copied());
    }

    /// Moves the `count` oldest descriptors to the end (the oldest last), keeping the
    /// others in order; ties go to the first.
    fn move_oldest_to_end(&mut self, count: usize) {
        let view = self.view.descriptors_mut();
        let len = view.len();
        for moved in 0..count.min(len) {
            let front = &view[..len - moved];
            let oldest =
                front.iter().enumerate().fold(
                    0,
                    |best, (i, d)| if d.age > front[best].age { i } else { best },
                );
            view[oldest..len - moved].rotate_left(1);
        }
    }

    /// The paper's `view.select(c, H, S, buffer)`.
    pub fn select(&mut self, buffer: &[Descriptor<I, V::Age>]) {
        // view.append(buffer) then removeDuplicates: the view holds no duplicates, so
        // each buffer entry is looked up in what is there so far; the freshest copy
        // stays, at the first copy's place. Views are small (c + c/2 entries): a scan,
        // skipped for the ids a filter says the view surely lacks.
        let mut held = IdFilter::default();
        self.view
            .descriptors()
            .iter()
            .for_each(|d| held.insert(&d.peer));
        for d in buffer.iter().filter(|d| d.peer != self.me) {
            if held.may_contain(&d.peer) {
                let view = self.view.descriptors_mut();
                if let Some(m) = view.iter_mut().find(|m| m.peer == d.peer) {
                    m.age = m.age.min(d.age);
                    continue;
                }
            }
            held.insert(&d.peer);
            self.view.push(*d);
        }
        let c = self.config.view_size;
        let len = self.view.descriptors().len();
        // removeOldItems(min(H, size - c))
        let old = self.config.heal.min(len.saturating_sub(c));
        self.move_oldest_to_end(old);
        let len = len - old;
        self.view.truncate(len);
        // removeHead(min(S, size - c)): the head is what was sent.
        let head = self.config.swap.min(len.saturating_sub(c));
        self.view.descriptors_mut().copy_within(head.., 0);
        let len = len - head;
        self.view.truncate(len);
        // removeAtRandom(size - c)
        if len > c {
            let reads_order = self.config.reads_ages();
            let view = self.view.descriptors_mut();
            if reads_order {
                remove_at_random(view, len - c, self.rng);
            } else {
                remove_unordered(view, len - c, self.rng);
            }
            self.view.truncate(c);
        }
    }

    /// Ages every descriptor by the configured increment.
    pub fn increase_age(&mut self) {
        let age = self.config.age;
        for d in self.view.descriptors_mut() {
            d.age = d.age.older(age);
        }
    }

    /// A newly connected peer joins the view if there is room and it is new.
    pub fn connected(&mut self, peer: I) {
        let view = self.view.descriptors();
        if peer != self.me
            && view.len() < self.config.view_size
            && !view.iter().any(|d| d.peer == peer)
        {
            self.view.push(Descriptor {
                peer,
                age: V::Age::FRESH,
            });
        }
    }

    /// An unreachable peer leaves the view (the others keep their order).
    pub fn unreachable(&mut self, peer: I) {
        let view = self.view.descriptors_mut();
        let mut kept = 0;
        for i in 0..view.len() {
            if view[i].peer != peer {
                view[kept] = view[i];
                kept += 1;
            }
        }
        self.view.truncate(kept);
    }
}

/// A uniform draw from `0..n` (`n` > 0) on one 32-bit word: Lemire's multiply-shift,
/// exact (a word in the rare biased band is drawn again).
fn below(rng: &mut impl Rng, n: usize) -> usize {
    let n = u32::try_from(n).expect("a view holds fewer than 2^32 descriptors");
    let mut wide = u64::from(rng.next_u32()) * u64::from(n);
    if (wide as u32) < n {
        let biased = n.wrapping_neg() % n;
        while (wide as u32) < biased {
            wide = u64::from(rng.next_u32()) * u64::from(n);
        }
    }
    (wide >> 32) as usize
}

/// Fisher–Yates stopped after `places` steps: the first `places` entries of `items` are
/// a uniform random choice of them in random order (all of them: a uniform permutation).
fn shuffle_front<T>(items: &mut [T], places: usize, rng: &mut impl Rng) {
    let len = items.len();
    for i in 0..places.min(len.saturating_sub(1)) {
        items.swap(i, i + below(rng, len - i));
    }
}

/// Removes `count` entries at random (any `count`-subset as likely), each removed one's
/// place taken by the last one; the others are at the front, what is after them is
/// unspecified.
fn remove_unordered<T: Copy>(items: &mut [T], count: usize, rng: &mut impl Rng) {
    let len = items.len();
    for last in (len - count..len).rev() {
        items[below(rng, last + 1)] = items[last];
    }
}

/// Removes `count` entries at random (any `count`-subset as likely), keeping the others
/// in order at the front; what is after them is unspecified. Marks the fewer of the
/// removed and the kept, by drawing places until that many distinct ones are marked,
/// then moves the kept ones up once.
fn remove_at_random<T: Copy>(items: &mut [T], count: usize, rng: &mut impl Rng) {
    let len = items.len();
    let mark_kept = count > len / 2;
    let marked = if mark_kept { len - count } else { count };
    let mut words = [0u64; 4];
    let mut more_words = Vec::new();
    let marks: &mut [u64] = if len <= 64 * words.len() {
        &mut words
    } else {
        more_words.resize(len.div_ceil(64), 0);
        &mut more_words
    };
    let mut drawn = 0;
    while drawn < marked {
        let i = below(rng, len);
        let bit = 1 << (i % 64);
        if marks[i / 64] & bit == 0 {
            marks[i / 64] |= bit;
            drawn += 1;
        }
    }
    let mut kept = 0;
    for i in 0..len {
        items[kept] = items[i];
        kept += usize::from((marks[i / 64] >> (i % 64) & 1 == 1) == mark_kept);
    }
}

/// One node's GBPS state.
pub struct Gbps<I: NodeId = PeerId> {
    me: I,
    config: GbpsConfig,
    view: Vec<Descriptor<I>>,
    samples: Vec<I>,
    rng: I::Rng,
    /// The peer [`PeerSampler::plan_tick`] chose for the next tick (`Some(None)`: the
    /// view was empty).
    planned: Option<Option<I>>,
}

impl<I: NodeId> Gbps<I> {
    /// A node `me` with an empty view; `seed` drives every random choice.
    pub fn new(me: I, config: GbpsConfig, seed: u64) -> Gbps<I> {
        Gbps {
            me,
            // Room for a merge (c + c/2), so the view is allocated once.
            view: Vec::with_capacity(config.view_size + config.view_size / 2 + 1),
            config,
            samples: Vec::new(),
            rng: I::Rng::seed_from_u64(seed),
            planned: None,
        }
    }

    /// The view with ages, in its current order.
    pub fn descriptors(&self) -> &[Descriptor<I>] {
        &self.view
    }

    fn node(&mut self) -> GbpsNode<'_, I, &mut Vec<Descriptor<I>>> {
        GbpsNode {
            me: self.me,
            config: &self.config,
            view: &mut self.view,
            rng: &mut self.rng,
        }
    }
}

impl<I: NodeId> PeerSampler<I> for Gbps<I> {
    fn plan_tick(&mut self, peers: &mut Vec<I>) -> bool {
        let to = self.node().select_peer();
        peers.extend(to);
        self.planned = Some(to);
        true
    }

    fn handle_tick(&mut self) -> Vec<Outgoing<I>> {
        let planned = self.planned.take();
        let mut node = self.node();
        let Some(to) = planned.unwrap_or_else(|| node.select_peer()) else {
            return Vec::new();
        };
        let (sent, sample) = node.request(to);
        self.samples.push(sample);
        vec![sent]
    }

    fn handle_message(&mut self, from: I, message: SamplingMessage<I>) -> Vec<Outgoing<I>> {
        self.node().receive(from, message).into_iter().collect()
    }

    fn handle_peer_connected(&mut self, peer: I) {
        self.node().connected(peer);
    }

    fn handle_peer_unreachable(&mut self, peer: I) {
        self.node().unreachable(peer);
    }

    fn view(&self) -> Vec<I> {
        self.view.iter().map(|d| d.peer).collect()
    }

    fn view_into(&self, out: &mut Vec<I>) {
        out.extend(self.view.iter().map(|d| d.peer));
    }

    fn drain_samples(&mut self, out: &mut Vec<I>) {
        out.append(&mut self.samples);
    }

    fn prefetch(&self, _next: Step) {
        prefetch_slice(&self.view);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn config(
        c: usize,
        heal: usize,
        swap: usize,
        selection: Selection,
        propagation: Propagation,
    ) -> GbpsConfig {
        GbpsConfig {
            view_size: c,
            heal,
            swap,
            selection_policy: selection,
            propagation_policy: propagation,
            age: 1,
            period: Duration::from_secs(1),
        }
    }

    fn ids(n: usize) -> Vec<PeerId> {
        crate::sampling::seeded_peers(n)
    }

    fn with_view(me: PeerId, c: GbpsConfig, view: &[(PeerId, u32)]) -> Gbps {
        let mut node = Gbps::new(me, c, 1);
        node.view = view
            .iter()
            .map(|&(peer, age)| Descriptor { peer, age })
            .collect();
        node
    }

    #[test]
    fn a_planned_tick_does_what_an_unplanned_one_does() {
        let cfg = config(8, 1, 1, Selection::Rand, Propagation::Pushpull);
        let (mut planned, mut unplanned) =
            (Gbps::<u32>::new(0, cfg.clone(), 5), Gbps::new(0, cfg, 5));
        crate::sampling::assert_planned_ticks_match(&mut planned, &mut unplanned, 1);
        assert!(planned.view().is_empty(), "an empty view sends nothing");
        for peer in 1..12 {
            planned.handle_peer_connected(peer);
            unplanned.handle_peer_connected(peer);
        }
        crate::sampling::assert_planned_ticks_match(&mut planned, &mut unplanned, 20);
        assert_eq!(planned.descriptors(), unplanned.descriptors(), "ages too");
    }

    #[test]
    fn tail_selection_picks_the_oldest_and_ageing_adds_the_increment() {
        let p = ids(4);
        let mut node = with_view(
            p[0],
            config(4, 0, 0, Selection::Old, Propagation::Push),
            &[(p[1], 3), (p[2], 7), (p[3], 1)],
        );
        let out = node.handle_tick();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, p[2]);
        let samples = node.take_samples();
        assert!(
            samples.len() == 1 && p[1..4].contains(&samples[0]),
            "one draw from the view"
        );
        assert!(node.take_samples().is_empty());
        let SamplingMessage::Gbps(GbpsMessage::Request { buffer, reply }) = &out[0].message else {
            panic!("expected a request: {out:?}")
        };
        assert!(!reply, "push does not ask for a reply");
        assert_eq!(
            buffer[0],
            Descriptor { peer: p[0], age: 0 },
            "own fresh descriptor first"
        );
        assert_eq!(buffer.len(), 2, "self + c/2 - 1");
        let mut ages: Vec<u32> = node.descriptors().iter().map(|d| d.age).collect();
        ages.sort();
        assert_eq!(ages, vec![2, 4, 8]);
    }

    #[test]
    fn pull_sends_an_empty_request_and_merges_the_reply() {
        let p = ids(5);
        let mut node = with_view(
            p[0],
            config(4, 0, 0, Selection::Rand, Propagation::Pull),
            &[(p[1], 0)],
        );
        let out = node.handle_tick();
        let SamplingMessage::Gbps(GbpsMessage::Request { buffer, reply }) = &out[0].message else {
            panic!("expected a request: {out:?}")
        };
        assert!(buffer.is_empty() && *reply);
        let reply = GbpsMessage::Reply {
            buffer: vec![
                Descriptor { peer: p[2], age: 0 },
                Descriptor { peer: p[3], age: 2 },
            ],
        };
        assert!(node
            .handle_message(p[1], SamplingMessage::Gbps(reply))
            .is_empty());
        let view: HashSet<PeerId> = node.view().into_iter().collect();
        assert_eq!(view, HashSet::from([p[1], p[2], p[3]]));
    }

    #[test]
    fn pushpull_request_is_answered_and_merged() {
        let p = ids(6);
        let mut node = with_view(
            p[0],
            config(4, 0, 0, Selection::Rand, Propagation::Pushpull),
            &[(p[1], 0), (p[2], 0)],
        );
        let request = GbpsMessage::Request {
            buffer: vec![
                Descriptor { peer: p[3], age: 0 },
                Descriptor { peer: p[0], age: 5 },
            ],
            reply: true,
        };
        let out = node.handle_message(p[3], SamplingMessage::Gbps(request));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, p[3]);
        assert!(
            matches!(&out[0].message, SamplingMessage::Gbps(GbpsMessage::Reply { buffer }) if buffer[0].peer == p[0])
        );
        assert!(!node.view().contains(&p[0]), "never itself");
        assert!(node.view().contains(&p[3]));
    }

    #[test]
    fn duplicates_keep_the_freshest() {
        let p = ids(3);
        let mut node = with_view(
            p[0],
            config(4, 0, 0, Selection::Rand, Propagation::Push),
            &[(p[1], 9)],
        );
        node.node().select(&[
            Descriptor { peer: p[1], age: 2 },
            Descriptor { peer: p[2], age: 4 },
            Descriptor { peer: p[2], age: 1 },
        ]);
        assert_eq!(
            node.descriptors(),
            &[
                Descriptor { peer: p[1], age: 2 },
                Descriptor { peer: p[2], age: 1 }
            ]
        );
    }

    #[test]
    fn healer_drops_the_oldest_and_swapper_the_head() {
        let p = ids(8);
        // c = 3, H = 1: of 4 candidates the oldest goes.
        let mut healer = with_view(
            p[0],
            config(3, 1, 0, Selection::Rand, Propagation::Push),
            &[(p[1], 1), (p[2], 50), (p[3], 2)],
        );
        healer.node().select(&[Descriptor { peer: p[4], age: 0 }]);
        assert_eq!(healer.view(), vec![p[1], p[3], p[4]]);
        // c = 3, S = 1, H = 0: the head (what was sent) goes.
        let mut swapper = with_view(
            p[0],
            config(3, 0, 1, Selection::Rand, Propagation::Push),
            &[(p[1], 1), (p[2], 50), (p[3], 2)],
        );
        swapper.node().select(&[Descriptor { peer: p[4], age: 0 }]);
        assert_eq!(swapper.view(), vec![p[2], p[3], p[4]]);
    }

    #[test]
    fn unreachable_peers_leave_the_view_and_connections_fill_it() {
        let p = ids(4);
        let mut node = Gbps::new(
            p[0],
            config(2, 0, 0, Selection::Rand, Propagation::Pushpull),
            3,
        );
        for &peer in &p {
            node.handle_peer_connected(peer);
        }
        assert_eq!(node.view(), vec![p[1], p[2]], "not itself, at most c");
        node.handle_peer_unreachable(p[1]);
        assert_eq!(node.view(), vec![p[2]]);
        assert!(
            Gbps::new(p[0], config(2, 0, 0, Selection::Rand, Propagation::Push), 3)
                .handle_tick()
                .is_empty()
        );
    }

    /// How often each outcome of `draw` came out in `runs` runs (seeded: the same counts
    /// every time), and whether every one of `outcomes` is within 5% of its share.
    fn even<K: std::hash::Hash + Eq + std::fmt::Debug>(
        outcomes: usize,
        runs: usize,
        mut draw: impl FnMut(&mut rand_pcg::Pcg64Mcg) -> K,
    ) -> Result<(), String> {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(7);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..runs {
            *counts.entry(draw(&mut rng)).or_insert(0usize) += 1;
        }
        let share = runs / outcomes;
        if counts.len() != outcomes {
            return Err(format!("{} outcomes, not {outcomes}", counts.len()));
        }
        match counts.iter().find(|(_, &n)| n.abs_diff(share) > share / 20) {
            Some((k, n)) => Err(format!("{k:?} came {n} times, not about {share}")),
            None => Ok(()),
        }
    }

    #[test]
    fn draws_are_uniform() {
        even(7, 70_000, |rng| below(rng, 7)).unwrap();
        // Every order of four, and every ordered pair of five in front.
        even(24, 120_000, |rng| {
            let mut items = [0, 1, 2, 3];
            shuffle_front(&mut items, usize::MAX, rng);
            items
        })
        .unwrap();
        even(20, 100_000, |rng| {
            let mut items = [0, 1, 2, 3, 4];
            shuffle_front(&mut items, 2, rng);
            [items[0], items[1]]
        })
        .unwrap();
        // Every pair removed from six, and every four (the others in order; in
        // `remove_at_random`, the kept ones are marked then).
        for count in [2, 4] {
            even(15, 75_000, |rng| {
                let mut items = [0, 1, 2, 3, 4, 5];
                remove_unordered(&mut items, count, rng);
                let mut kept = items[..6 - count].to_vec();
                kept.sort();
                kept
            })
            .unwrap();
            even(15, 75_000, |rng| {
                let mut items = [0, 1, 2, 3, 4, 5];
                remove_at_random(&mut items, count, rng);
                let kept = items[..6 - count].to_vec();
                assert!(
                    kept.windows(2).all(|w| w[0] < w[1]),
                    "{kept:?} out of order"
                );
                kept
            })
            .unwrap();
        }
    }

    #[test]
    fn a_long_buffer_merges_into_a_view_of_c() {
        // More than 256 entries to remove from (the marks outgrow their words), and
        // more removed than kept.
        let p = ids(400);
        for selection in [Selection::Rand, Selection::Old] {
            let c = config(10, 0, 0, selection, Propagation::Pushpull);
            let mut node = with_view(p[0], c, &[(p[1], 3), (p[2], 1)]);
            let buffer: Vec<Descriptor> = p[3..]
                .iter()
                .map(|&peer| Descriptor { peer, age: 2 })
                .collect();
            node.handle_message(p[3], SamplingMessage::Gbps(GbpsMessage::Reply { buffer }));
            let known: HashSet<PeerId> = p.iter().copied().collect();
            crate::sampling::check_view(&node.view(), p[0], 10, &known).unwrap();
            assert_eq!(node.view().len(), 10);
        }
    }

    #[test]
    fn same_seed_same_choices() {
        let p = ids(10);
        let run = || {
            let mut node = Gbps::new(
                p[0],
                config(4, 1, 1, Selection::Rand, Propagation::Pushpull),
                42,
            );
            p[1..5].iter().for_each(|&q| node.handle_peer_connected(q));
            let mut sent = Vec::new();
            for round in 0..20 {
                sent.extend(node.handle_tick().into_iter().map(|o| o.to));
                let buffer = vec![Descriptor {
                    peer: p[5 + round % 5],
                    age: round as u32 % 3,
                }];
                node.handle_message(p[1], SamplingMessage::Gbps(GbpsMessage::Reply { buffer }));
            }
            (sent, node.view())
        };
        assert_eq!(run(), run());
    }

    proptest! {
        /// Views never exceed c, never hold the node itself or duplicates, and only hold
        /// ids that were given to it.
        #[test]
        fn view_invariants(
            c in 2usize..10,
            heal_part in 0usize..5,
            swap_part in 0usize..5,
            seed in any::<u64>(),
            steps in proptest::collection::vec((0u8..4, 0usize..12, proptest::collection::vec((0usize..12, 0u32..6), 0..8)), 1..60),
        ) {
            let p = ids(12);
            let heal = heal_part.min(c / 2);
            let swap = swap_part.min(c / 2 - heal);
            let known: HashSet<PeerId> = p.iter().copied().collect();
            for propagation in [Propagation::Push, Propagation::Pull, Propagation::Pushpull] {
                let mut node = Gbps::new(p[0], config(c, heal, swap, Selection::Rand, propagation), seed);
                for (kind, who, buffer) in &steps {
                    let buffer: Vec<Descriptor> = buffer.iter().map(|&(i, age)| Descriptor { peer: p[i], age }).collect();
                    let out = match kind {
                        0 => node.handle_tick(),
                        1 => node.handle_message(p[*who], SamplingMessage::Gbps(GbpsMessage::Request { buffer, reply: true })),
                        2 => node.handle_message(p[*who], SamplingMessage::Gbps(GbpsMessage::Reply { buffer })),
                        _ => { node.handle_peer_connected(p[*who]); Vec::new() }
                    };
                    for o in &out {
                        prop_assert!(o.to != p[0]);
                        prop_assert!(o.message.peers().len() <= c / 2);
                    }
                    let checked = crate::sampling::check_view(&node.view(), p[0], c, &known);
                    prop_assert!(checked.is_ok(), "{:?}", checked);
                }
            }
        }
    }
}
