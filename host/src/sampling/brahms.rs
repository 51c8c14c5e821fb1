//! Brahms, after Bortnikov, Gurevich, Keidar, Kliot and Shraer, *Brahms: Byzantine
//! resilient random membership sampling*, Computer Networks 53(13), 2009.
//!
//! Config fields map to the paper's symbols: `view_size` = l1, `sampler_size` = l2,
//! `alpha` = α, `beta` = β, and γ = 1 − α − β.
//!
//! Each round (a tick) first closes the previous one: unless more than α·l1 pushes came
//! in (a push flood, so the view is left as it is) or no push or no pull answer came,
//! the view becomes α·l1 random pushed ids, β·l1 random pulled ids and γ·l1 ids from
//! the sampler array; every id heard of goes through the l2 samplers, each keeping the
//! id of minimal keyed hash (a min-wise independent permutation). Then it pushes its own
//! id to α·l1 random view peers and pulls from β·l1 random view peers. A peer found unreachable
//! leaves the view and every sampler holding it is re-initialised with a fresh key
//! (the paper's sampler validation).
//!
//! Samples: each round emits the ids the sampler array holds (the paper's output S).
//!
//! The sampler update of a round is deferred work ([`PeerSampler::deferred`]): the
//! view update needs only the samplers as they were, so a simulator has another thread
//! rank the round's ids while this one goes on; anything that reads or changes the
//! samplers first finishes the update itself.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use libp2p::PeerId;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::minwise::Rankers;
use super::{
    prefetch, prefetch_slice, BrahmsConfig, Deferred, NodeId, Outgoing, PeerSampler,
    SamplingMessage, Step,
};

/// Brahms wire messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BrahmsMessage<I = PeerId> {
    /// The sender pushes its own id.
    Push,
    /// Asks for the receiver's view.
    Pull,
    /// Answers a pull with the view.
    Reply {
        /// The sender's view.
        peers: Vec<I>,
    },
}

/// Ids of one round kept as they come, up to this many before repeats are dropped (a
/// flood of pushes or replies takes no more memory than its distinct ids).
const COMPACT_AT: usize = 4096;

fn compact_if_long<I: NodeId>(ids: &mut Vec<I>) {
    if ids.len() > COMPACT_AT {
        remove_repeats(ids);
    }
}

thread_local! {
    /// [`remove_repeats`]'s bitset of dense ids (all clear between calls).
    static SEEN: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Drops the repeats of ids in `ids`. Ids with a dense number keep the order they came
/// in (a linear pass over a bitset of the thread's); others are sorted.
fn remove_repeats<I: NodeId>(ids: &mut Vec<I>) {
    if ids.first().and_then(NodeId::dense_index).is_none() {
        ids.sort_unstable();
        ids.dedup();
        return;
    }
    SEEN.with_borrow_mut(|seen| {
        let word_bit = |id: &I| {
            let index = id.dense_index().expect("ids of one type are all dense") as usize;
            (index / 64, 1u64 << (index % 64))
        };
        ids.retain(|id| {
            let (word, bit) = word_bit(id);
            if word >= seen.len() {
                seen.resize(word + 1, 0);
            }
            let first = seen[word] & bit == 0;
            seen[word] |= bit;
            first
        });
        ids.iter().for_each(|id| {
            let (word, _) = word_bit(id);
            seen[word] = 0;
        });
    });
}

/// One node's Brahms state.
pub struct Brahms<I: NodeId = PeerId> {
    me: I,
    config: BrahmsConfig,
    view: Vec<I>,
    /// The samplers and their update (shared with whichever thread does it).
    samplers: Arc<Mutex<Samplers<I>>>,
    /// This round's pushed and pulled ids, as they came (their repeats dropped when the
    /// round closes; their buffers are kept for the next round).
    pushed: Vec<I>,
    pulled: Vec<I>,
    flooded_rounds: u64,
    rng: I::Rng,
}

/// The l2 samplers, the ids of the last round they have not heard yet, and the samples
/// they emitted.
struct Samplers<I: NodeId> {
    rankers: Rankers<I>,
    /// The closed round's pushed and pulled ids (none once heard): the paper's
    /// `updateSample`, to do.
    unheard: Option<[Vec<I>; 2]>,
    emitted: Vec<I>,
}

impl<I: NodeId> Samplers<I> {
    /// `samplers` locked, their last update done.
    fn settled(samplers: &Mutex<Samplers<I>>) -> MutexGuard<'_, Samplers<I>> {
        let mut locked = samplers.lock().unwrap_or_else(PoisonError::into_inner);
        locked.settle();
        locked
    }

    /// Finishes the last round's update (the paper's `updateSample`): every sampler
    /// hears its ids (never this node's own), then the samplers emit. Ids a sampler
    /// heard before under its current key change nothing (its minimum only goes down),
    /// so they are not kept out.
    fn settle(&mut self) {
        if let Some(round) = self.unheard.take() {
            round.iter().for_each(|ids| self.rankers.hear(ids));
            samples_into(&self.rankers, &mut self.emitted);
        }
    }
}

/// Appends the ids `rankers` hold to `out`, each once.
fn samples_into<I: NodeId>(rankers: &Rankers<I>, out: &mut Vec<I>) {
    let start = out.len();
    for id in rankers.all_held().flatten() {
        if !out[start..].contains(&id) {
            out.push(id);
        }
    }
}

impl<I: NodeId> Deferred for Mutex<Samplers<I>> {
    fn settle(&self) {
        drop(Samplers::settled(self));
    }
}

impl<I: NodeId> Brahms<I> {
    /// A node `me` with an empty view and l2 empty samplers; `seed` drives every choice.
    pub fn new(me: I, config: BrahmsConfig, seed: u64) -> Brahms<I> {
        let mut rng = I::Rng::seed_from_u64(seed);
        let rankers = Rankers::new(config.sampler_size, me, &mut rng);
        Brahms {
            me,
            config,
            view: Vec::new(),
            samplers: Arc::new(Mutex::new(Samplers {
                rankers,
                unheard: None,
                emitted: Vec::new(),
            })),
            pushed: Vec::new(),
            pulled: Vec::new(),
            flooded_rounds: 0,
            rng,
        }
    }

    /// Rounds skipped because more than α·l1 pushes arrived.
    pub fn flooded_rounds(&self) -> u64 {
        self.flooded_rounds
    }

    /// The ids the samplers hold (the paper's history samples).
    pub fn samples(&self) -> Vec<I> {
        let mut samples = Vec::new();
        samples_into(&Samplers::settled(&self.samplers).rankers, &mut samples);
        samples
    }

    fn share(&self, fraction: f64) -> usize {
        (fraction * self.config.view_size as f64).round() as usize
    }

    fn push_count(&self) -> usize {
        self.share(self.config.alpha)
            .max(usize::from(self.config.alpha > 0.0))
    }

    fn pull_count(&self) -> usize {
        self.share(self.config.beta)
            .max(usize::from(self.config.beta > 0.0))
    }

    /// Every sampler hears `ids` now, as a round's update would.
    #[cfg(test)]
    fn learn(&mut self, ids: &[I]) {
        Samplers::settled(&self.samplers).rankers.hear(ids);
    }

    /// Closes a round: the paper's view update, and its sampler update left for
    /// [`Samplers::settle`] (the view update reads the samplers as they were). `history`
    /// is room for the samplers' ids.
    fn end_round(&mut self, history: &mut Vec<I>) {
        remove_repeats(&mut self.pushed);
        remove_repeats(&mut self.pulled);
        let (alpha_l1, beta_l1) = (self.push_count(), self.pull_count());
        let mut samplers = Samplers::settled(&self.samplers);
        if self.pushed.len() > alpha_l1 {
            self.flooded_rounds += 1;
        } else if !self.pushed.is_empty() && !self.pulled.is_empty() {
            let gamma_l1 = self.config.view_size.saturating_sub(alpha_l1 + beta_l1);
            history.clear();
            samples_into(&samplers.rankers, history);
            self.view.clear();
            for (source, count) in [
                (&self.pushed, alpha_l1),
                (&self.pulled, beta_l1),
                (&*history, gamma_l1),
            ] {
                for id in source.sample(&mut self.rng, count) {
                    if !self.view.contains(id) && *id != self.me {
                        self.view.push(*id);
                    }
                }
            }
            self.view.truncate(self.config.view_size);
        }
        // The round's ids go to the samplers as they are and are dropped once heard, so
        // a node keeps no second round between ticks. Room for the pushes expected and
        // every pulled id (l1 per answer).
        let pushed = std::mem::replace(&mut self.pushed, Vec::with_capacity(alpha_l1));
        let pulled_room = beta_l1 * self.config.view_size;
        let pulled = std::mem::replace(&mut self.pulled, Vec::with_capacity(pulled_room));
        samplers.unheard = Some([pushed, pulled]);
    }

    /// A period passed: closes the round, then chooses the peers to push to and those
    /// to pull from (in `push_to` and `pull_from`, cleared first; `history` is room for
    /// the samplers' ids). The sampler update is left for [`PeerSampler::deferred`].
    pub fn start_round(
        &mut self,
        history: &mut Vec<I>,
        push_to: &mut Vec<I>,
        pull_from: &mut Vec<I>,
    ) {
        self.end_round(history);
        let (push_count, pull_count) = (self.push_count(), self.pull_count());
        push_to.clear();
        push_to.extend(self.view.sample(&mut self.rng, push_count));
        pull_from.clear();
        pull_from.extend(self.view.sample(&mut self.rng, pull_count));
    }

    /// `from` pushed its id (ignored if it is this node's own).
    pub fn pushed_by(&mut self, from: I) {
        if from != self.me {
            self.pushed.push(from);
            compact_if_long(&mut self.pushed);
        }
    }

    /// `from` answered a pull with `peers` (ignored if it is this node's own): the
    /// first l1 of them count, this node's own id left out.
    pub fn answered(&mut self, from: I, peers: impl IntoIterator<Item = I>) {
        if from != self.me {
            let cap = self.config.view_size;
            let me = self.me;
            self.pulled
                .extend(peers.into_iter().filter(|p| *p != me).take(cap));
            compact_if_long(&mut self.pulled);
        }
    }

    /// The view, as a pull's answer carries it.
    pub fn view_slice(&self) -> &[I] {
        &self.view
    }

    /// Asks for where a push will be kept.
    pub fn prefetch_push(&self) {
        prefetch(self.pushed.as_ptr_range().end);
    }

    /// Asks for the view, which a pull reads.
    pub fn prefetch_view(&self) {
        prefetch_slice(&self.view);
    }
}

impl<I: NodeId> PeerSampler<I> for Brahms<I> {
    fn handle_tick(&mut self) -> Vec<Outgoing<I>> {
        let (mut push_to, mut pull_from) = (Vec::new(), Vec::new());
        self.start_round(&mut Vec::new(), &mut push_to, &mut pull_from);
        let pushes = push_to.into_iter().map(|to| Outgoing {
            to,
            message: SamplingMessage::Brahms(BrahmsMessage::Push),
        });
        let pulls = pull_from.into_iter().map(|to| Outgoing {
            to,
            message: SamplingMessage::Brahms(BrahmsMessage::Pull),
        });
        pushes.chain(pulls).collect()
    }

    fn handle_message(&mut self, from: I, message: SamplingMessage<I>) -> Vec<Outgoing<I>> {
        let SamplingMessage::Brahms(message) = message else {
            return Vec::new();
        };
        match message {
            BrahmsMessage::Push => self.pushed_by(from),
            BrahmsMessage::Pull if from != self.me => {
                let peers = self.view.clone();
                return vec![Outgoing {
                    to: from,
                    message: SamplingMessage::Brahms(BrahmsMessage::Reply { peers }),
                }];
            }
            BrahmsMessage::Pull => {}
            BrahmsMessage::Reply { peers } => self.answered(from, peers),
        }
        Vec::new()
    }

    fn handle_peer_connected(&mut self, peer: I) {
        if peer == self.me {
            return;
        }
        if self.view.len() < self.config.view_size && !self.view.contains(&peer) {
            self.view.push(peer);
        }
        Samplers::settled(&self.samplers).rankers.hear(&[peer]);
    }

    fn handle_peer_unreachable(&mut self, peer: I) {
        self.view.retain(|p| *p != peer);
        let mut samplers = Samplers::settled(&self.samplers);
        samplers.rankers.rekey_holding(peer, &mut self.rng);
    }

    fn view(&self) -> Vec<I> {
        self.view.clone()
    }

    fn view_into(&self, out: &mut Vec<I>) {
        out.extend_from_slice(&self.view);
    }

    fn drain_samples(&mut self, out: &mut Vec<I>) {
        out.append(&mut Samplers::settled(&self.samplers).emitted);
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("flooded_rounds", self.flooded_rounds)]
    }

    fn deferred(&self) -> Option<Arc<dyn Deferred>> {
        Some(self.samplers.clone())
    }

    fn prefetch(&self, next: Step) {
        match next {
            // The round's end reads all the ids heard, and the samplers' ids (through
            // their shared part, asked for here).
            Step::Tick => {
                prefetch_slice(&self.pushed);
                prefetch_slice(&self.pulled);
                prefetch(Arc::as_ptr(&self.samplers));
                prefetch_slice(&self.view);
            }
            // Where a push or an answer will be appended, and the view a pull copies.
            Step::Message => {
                self.prefetch_push();
                prefetch(self.pulled.as_ptr_range().end);
                self.prefetch_view();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn config(l1: usize, l2: usize, alpha: f64, beta: f64) -> BrahmsConfig {
        BrahmsConfig {
            view_size: l1,
            sampler_size: l2,
            alpha,
            beta,
            period: Duration::from_secs(1),
        }
    }

    fn ids(n: usize) -> Vec<PeerId> {
        crate::sampling::seeded_peers(n)
    }

    fn message(m: BrahmsMessage) -> SamplingMessage {
        SamplingMessage::Brahms(m)
    }

    #[test]
    fn min_wise_samplers_keep_the_minimum_whatever_the_order() {
        let p = ids(30);
        let mut a = Brahms::new(p[0], config(4, 6, 0.4, 0.4), 7);
        let mut b = Brahms::new(p[0], config(4, 6, 0.4, 0.4), 7);
        // In one batch, or one by one backwards: the same minimum.
        a.learn(&p[1..15]);
        a.learn(&p[15..]);
        p[1..]
            .iter()
            .rev()
            .for_each(|id| b.learn(std::slice::from_ref(id)));
        assert_eq!(a.samples(), b.samples());
        a.learn(&p[1..]);
        assert_eq!(a.samples(), b.samples(), "seeing ids again changes nothing");
    }

    #[test]
    fn a_sampler_reset_for_an_unreachable_peer_ranks_what_it_hears_next() {
        let mut node = Brahms::<u32>::new(0, config(4, 6, 0.4, 0.4), 3);
        let ids: Vec<u32> = (1..200).collect();
        node.learn(&ids);
        let gone = node.samples()[0];
        node.handle_peer_unreachable(gone);
        assert!(
            Samplers::settled(&node.samplers).rankers.any_empty(),
            "its samplers start over"
        );
        let others: Vec<u32> = ids.iter().copied().filter(|&id| id != gone).collect();
        node.learn(&others);
        assert!(
            Samplers::settled(&node.samplers)
                .rankers
                .all_held()
                .all(|id| id.is_some_and(|id| id != gone)),
            "every sampler refilled from the ids heard since"
        );
    }

    #[test]
    fn the_sampler_update_gives_the_same_whoever_does_it_and_whenever() {
        use rand::{rngs::StdRng, RngExt as _};
        // `eager` has another thread do each tick's update at once; `lazy` leaves it to
        // whatever reads or changes its samplers next (a rekey, a new peer, a tick).
        let mut eager = Brahms::<u32>::new(0, config(6, 5, 0.34, 0.34), 9);
        let mut lazy = Brahms::<u32>::new(0, config(6, 5, 0.34, 0.34), 9);
        let mut rng = StdRng::seed_from_u64(4);
        for step in 0..600 {
            let peer = rng.random_range(1..40u32);
            match rng.random_range(0..6) {
                0 => {
                    assert_eq!(eager.handle_tick(), lazy.handle_tick(), "step {step}");
                    let work = eager.deferred().expect("Brahms defers its update");
                    std::thread::scope(|s| {
                        s.spawn(|| work.settle());
                    });
                }
                1 => {
                    eager.handle_peer_connected(peer);
                    lazy.handle_peer_connected(peer);
                }
                2 => {
                    eager.handle_peer_unreachable(peer);
                    lazy.handle_peer_unreachable(peer);
                }
                3 => {
                    let push = || SamplingMessage::Brahms(BrahmsMessage::Push);
                    eager.handle_message(peer, push());
                    lazy.handle_message(peer, push());
                }
                _ => {
                    let peers: Vec<u32> = (0..5).map(|_| rng.random_range(1..40)).collect();
                    let reply = SamplingMessage::Brahms(BrahmsMessage::Reply { peers });
                    eager.handle_message(peer, reply.clone());
                    lazy.handle_message(peer, reply);
                }
            }
            assert_eq!(eager.view(), lazy.view(), "step {step}");
            if step % 50 == 49 {
                assert_eq!(eager.take_samples(), lazy.take_samples(), "step {step}");
            }
        }
        assert_eq!(eager.samples(), lazy.samples());
        assert!(!eager.samples().is_empty());
    }

    #[test]
    fn repeats_are_dropped_dense_ids_keeping_their_order() {
        let mut dense: Vec<u32> = vec![70, 3, 70, 9000, 3, 5, 9000, 64];
        remove_repeats(&mut dense);
        assert_eq!(dense, [70, 3, 9000, 5, 64]);
        // The thread's bitset is clear again: the same ids count as new.
        let mut again: Vec<u32> = vec![5, 64, 5];
        remove_repeats(&mut again);
        assert_eq!(again, [5, 64]);
        let p = ids(3);
        let mut live = vec![p[2], p[0], p[2], p[1], p[0]];
        remove_repeats(&mut live);
        let mut expected = p.clone();
        expected.sort();
        assert_eq!(live, expected);
    }

    #[test]
    fn a_round_mixes_pushed_pulled_and_history_ids() {
        let p = ids(12);
        let mut node = Brahms::new(p[0], config(4, 4, 0.5, 0.25), 1);
        node.handle_peer_connected(p[1]);
        node.handle_message(p[2], message(BrahmsMessage::Push));
        node.handle_message(p[3], message(BrahmsMessage::Push));
        node.handle_message(
            p[1],
            message(BrahmsMessage::Reply {
                peers: vec![p[4], p[0]],
            }),
        );
        let out = node.handle_tick();
        assert_eq!(
            node.take_samples(),
            node.samples(),
            "each round emits the samplers' ids"
        );
        let view: HashSet<PeerId> = node.view().into_iter().collect();
        assert!(
            view.contains(&p[2]) && view.contains(&p[3]) && view.contains(&p[4]),
            "{view:?}"
        );
        assert!(!view.contains(&p[0]));
        let pushes = out
            .iter()
            .filter(|o| o.message == message(BrahmsMessage::Push))
            .count();
        let pulls = out
            .iter()
            .filter(|o| o.message == message(BrahmsMessage::Pull))
            .count();
        assert_eq!((pushes, pulls), (2, 1), "α·l1 pushes and β·l1 pulls");
    }

    #[test]
    fn a_push_flood_leaves_the_view_alone() {
        let p = ids(12);
        let mut node = Brahms::new(p[0], config(4, 4, 0.5, 0.25), 1);
        node.handle_peer_connected(p[1]);
        for &attacker in &p[5..] {
            node.handle_message(attacker, message(BrahmsMessage::Push));
        }
        node.handle_message(p[1], message(BrahmsMessage::Reply { peers: vec![p[4]] }));
        node.handle_tick();
        assert_eq!(node.view(), vec![p[1]]);
        assert_eq!(node.flooded_rounds(), 1);
    }

    #[test]
    fn unreachable_peers_leave_the_view_and_reset_their_samplers() {
        let p = ids(3);
        let mut node = Brahms::new(p[0], config(4, 3, 0.5, 0.25), 1);
        node.handle_peer_connected(p[1]);
        assert_eq!(node.samples(), vec![p[1]]);
        node.handle_peer_unreachable(p[1]);
        assert!(node.view().is_empty() && node.samples().is_empty());
        node.handle_peer_connected(p[2]);
        assert_eq!(node.samples(), vec![p[2]]);
    }

    proptest! {
        #[test]
        fn view_invariants(
            l1 in 1usize..10, l2 in 1usize..8, alpha in 0.0f64..0.6, beta in 0.0f64..0.4, seed in any::<u64>(),
            steps in proptest::collection::vec((0u8..5, 0usize..12, proptest::collection::vec(0usize..12, 0..12)), 1..60),
        ) {
            let p = ids(12);
            let known: HashSet<PeerId> = p.iter().copied().collect();
            let mut node = Brahms::new(p[0], config(l1, l2, alpha, beta), seed);
            for (kind, who, peers) in steps {
                let out = match kind {
                    0 => node.handle_tick(),
                    1 => node.handle_message(p[who], message(BrahmsMessage::Push)),
                    2 => node.handle_message(p[who], message(BrahmsMessage::Pull)),
                    3 => node.handle_message(p[who], message(BrahmsMessage::Reply { peers: peers.into_iter().map(|i| p[i]).collect() })),
                    _ => { node.handle_peer_connected(p[who]); Vec::new() }
                };
                for o in &out {
                    prop_assert!(o.to != p[0]);
                }
                let checked = crate::sampling::check_view(&node.view(), p[0], l1, &known);
                prop_assert!(checked.is_ok(), "{:?}", checked);
                prop_assert!(node.samples().iter().all(|s| *s != p[0] && known.contains(s)));
            }
        }
    }
}
