//! Basalt, after Auvolat, Bromberg, Frey and Taïani, *Basalt: a rock-solid
//! Byzantine-tolerant peer sampling for very large decentralized networks*,
//! Middleware 2023.
//!
//! Config fields map to the paper's symbols: `view_size` = v (slots), `refresh` = k
//! (slots reset at each reset), `reset_interval` = τ in rounds (a round is one `period`).
//!
//! Each slot `i` has a secret seed `s_i`, a peer `p_i` and a hit counter `h_i`. Every id
//! the node hears of is ranked per slot by a keyed hash `H(s_i, id)`; a slot keeps the
//! lowest-ranked id it has seen (the "stubborn chaotic search"), so an attacker cannot
//! flood a slot without knowing its seed. Each round the node pulls from the slot peer
//! with the fewest hits and pushes its view to the next such peer. Every τ rounds the k
//! next slots (round-robin) get fresh seeds and re-rank the ids known now; each node
//! starts at a random phase of the τ cycle, so the nodes of a network reset in turn. The ids a
//! node hears of are those in received views plus the senders of pulls and views.
//!
//! Samples: the peers of the k slots a reset empties (the paper's output stream).

use libp2p::PeerId;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use super::minwise::Rankers;
use super::{BasaltConfig, IdFilter, NodeId, Outgoing, PeerSampler, SamplingMessage, Step};

/// Basalt wire messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BasaltMessage<I = PeerId> {
    /// Asks the receiver for its view.
    Pull,
    /// A view: pushed, or answering a pull.
    View {
        /// The sender's view.
        peers: Vec<I>,
    },
}

/// One node's Basalt state.
pub struct Basalt<I: NodeId = PeerId> {
    me: I,
    config: BasaltConfig,
    /// The slots: a seed, a peer and a hit counter each.
    slots: Rankers<I>,
    round: u64,
    next_reset: usize,
    emitted: Vec<I>,
    /// Scratch for `update`: the ids it ranks.
    fresh: Vec<I>,
    rng: I::Rng,
    /// The peers [`PeerSampler::plan_tick`] chose for the next tick's pull and push.
    planned: Option<[Option<I>; 2]>,
}

impl<I: NodeId> Basalt<I> {
    /// A node `me` with v empty slots; `seed` drives the slot seeds and every choice.
    pub fn new(me: I, config: BasaltConfig, seed: u64) -> Basalt<I> {
        let mut rng = I::Rng::seed_from_u64(seed);
        let slots = Rankers::new(config.view_size, me, &mut rng);
        // Nodes reset at different rounds of the τ cycle, as in the authors' simulator
        // (a whole network resetting in the same round would empty slots all at once).
        // (No draw when τ = 1: every round resets, and the random stream stays as it was.)
        let round = match config.reset_interval {
            0 | 1 => 0,
            tau => rng.random_range(0..tau),
        };
        Basalt {
            me,
            config,
            slots,
            round,
            next_reset: 0,
            emitted: Vec::new(),
            fresh: Vec::new(),
            planned: None,
            rng,
        }
    }

    /// The paper's `updateSample`: every slot keeps the lowest-ranked id it saw, and a
    /// slot whose peer is heard of again gains a hit.
    ///
    /// Every id in the view was ranked in every filled slot since that slot last got a
    /// seed (when it entered the view, and whenever a slot was reset or refilled, which
    /// re-ranks the view), and lost or won there. So an id some slot holds only adds
    /// hits — unless a slot is empty — and only the other ids are ranked.
    fn update(&mut self, ids: &[I]) {
        // Most ids heard are held by no slot: a filter of the slots' peers spares
        // scanning the slots for them (worth building for more than a few ids).
        let mut held = IdFilter::default();
        if ids.len() > 4 {
            self.slots
                .all_held()
                .flatten()
                .for_each(|peer| held.insert(&peer));
        }
        let any_empty = self.slots.any_empty();
        let mut fresh = std::mem::take(&mut self.fresh);
        fresh.clear();
        for &id in ids.iter().filter(|id| **id != self.me) {
            let maybe_held = ids.len() <= 4 || held.may_contain(&id);
            if any_empty || !maybe_held || !self.slots.add_hits(id) {
                fresh.push(id);
            }
        }
        if !fresh.is_empty() {
            self.slots.hear(&fresh);
        }
        self.fresh = fresh;
    }

    /// Ranks `known`, the view (before the slots were emptied), in the empty slots (new
    /// seeds, or peers lost). Every filled slot already ranked each id of the view (see
    /// `update`): it only gains the hit of hearing its own peer again.
    fn rerank(&mut self, known: &[I]) {
        for j in 0..self.slots.count() {
            if self.slots.held(j).is_some() {
                self.slots.add_hit(j);
            } else {
                self.slots.hear_in(j, known);
            }
        }
    }

    /// The paper's `selectPeer`: the filled slot with the fewest hits (counting this use).
    fn select_peer(&mut self) -> Option<I> {
        let j = (0..self.slots.count())
            .filter(|&j| self.slots.held(j).is_some())
            .min_by_key(|&j| self.slots.hits(j))?;
        self.slots.add_hit(j);
        self.slots.held(j)
    }

    /// Emits the peers of the next k slots as samples, gives those slots fresh seeds
    /// and re-ranks the ids in the view.
    fn reset_slots(&mut self) {
        let known = self.view();
        let v = self.slots.count();
        for _ in 0..self.config.refresh.min(v) {
            self.emitted.extend(self.slots.held(self.next_reset));
            self.slots.rekey(self.next_reset, &mut self.rng);
            self.next_reset = (self.next_reset + 1) % v;
        }
        self.rerank(&known);
    }
}

impl<I: NodeId> PeerSampler<I> for Basalt<I> {
    fn plan_tick(&mut self, peers: &mut Vec<I>) -> bool {
        let planned = [self.select_peer(), self.select_peer()];
        peers.extend(planned.iter().flatten());
        self.planned = Some(planned);
        true
    }

    fn handle_tick(&mut self) -> Vec<Outgoing<I>> {
        self.round += 1;
        let [pull, push] = self
            .planned
            .take()
            .unwrap_or_else(|| [self.select_peer(), self.select_peer()]);
        let mut out = Vec::new();
        if let Some(to) = pull {
            out.push(Outgoing {
                to,
                message: SamplingMessage::Basalt(BasaltMessage::Pull),
            });
        }
        if let Some(to) = push {
            let peers = self.view();
            out.push(Outgoing {
                to,
                message: SamplingMessage::Basalt(BasaltMessage::View { peers }),
            });
        }
        if self.round.is_multiple_of(self.config.reset_interval) {
            self.reset_slots();
        }
        out
    }

    fn handle_message(&mut self, from: I, message: SamplingMessage<I>) -> Vec<Outgoing<I>> {
        let SamplingMessage::Basalt(message) = message else {
            return Vec::new();
        };
        if from == self.me {
            return Vec::new();
        }
        match message {
            BasaltMessage::Pull => {
                // Every id heard of is ranked, the sender's included.
                self.update(&[from]);
                let peers = self.view();
                vec![Outgoing {
                    to: from,
                    message: SamplingMessage::Basalt(BasaltMessage::View { peers }),
                }]
            }
            BasaltMessage::View { peers } => {
                let cap = self.config.view_size;
                self.update(&peers[..peers.len().min(cap)]);
                self.update(&[from]);
                Vec::new()
            }
        }
    }

    fn handle_peer_connected(&mut self, peer: I) {
        self.update(&[peer]);
    }

    fn handle_peer_unreachable(&mut self, peer: I) {
        if self.slots.empty_holding(peer) {
            // Refill the emptied slots from the peers still in the view.
            let known = self.view();
            self.rerank(&known);
        }
    }

    /// The distinct peers of the slots, in slot order.
    fn view(&self) -> Vec<I> {
        let mut view: Vec<I> = Vec::with_capacity(self.slots.count());
        let mut listed = IdFilter::default();
        for peer in self.slots.all_held().flatten() {
            if !(listed.may_contain(&peer) && view.contains(&peer)) {
                listed.insert(&peer);
                view.push(peer);
            }
        }
        view
    }

    fn drain_samples(&mut self, out: &mut Vec<I>) {
        out.append(&mut self.emitted);
    }

    fn prefetch(&self, _next: Step) {
        self.slots.prefetch();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn config(v: usize, refresh: usize, reset_interval: u64) -> BasaltConfig {
        BasaltConfig {
            view_size: v,
            refresh,
            reset_interval,
            period: Duration::from_secs(1),
        }
    }

    fn ids(n: usize) -> Vec<PeerId> {
        crate::sampling::seeded_peers(n)
    }

    #[test]
    fn a_planned_tick_does_what_an_unplanned_one_does() {
        let (mut planned, mut unplanned) = (
            Basalt::<u32>::new(0, config(6, 1, 3), 4),
            Basalt::<u32>::new(0, config(6, 1, 3), 4),
        );
        crate::sampling::assert_planned_ticks_match(&mut planned, &mut unplanned, 1);
        assert!(planned.view().is_empty(), "no peer yet");
        let known: Vec<u32> = (1..30).collect();
        planned.update(&known);
        unplanned.update(&known);
        crate::sampling::assert_planned_ticks_match(&mut planned, &mut unplanned, 20);
    }

    #[test]
    fn each_slot_keeps_the_lowest_ranked_id_whatever_the_order() {
        let p = ids(20);
        let mut forward = Basalt::new(p[0], config(6, 1, 1), 9);
        let mut backward = Basalt::new(p[0], config(6, 1, 1), 9);
        forward.update(&p[1..]);
        let reversed: Vec<PeerId> = p[1..].iter().rev().copied().collect();
        backward.update(&reversed);
        assert_eq!(forward.view(), backward.view());
        for j in 0..forward.slots.count() {
            let key = forward.slots.key(j);
            let best = p[1..].iter().min_by_key(|id| id.keyed_rank(key)).unwrap();
            assert_eq!(forward.slots.held(j), Some(*best));
        }
    }

    #[test]
    fn a_flood_of_one_id_cannot_take_slots_it_does_not_win() {
        let p = ids(10);
        let mut node = Basalt::new(p[0], config(8, 1, 100), 3);
        node.update(&p[1..]);
        let before = node.view();
        for _ in 0..1000 {
            node.handle_message(
                p[9],
                SamplingMessage::Basalt(BasaltMessage::View {
                    peers: vec![p[9]; 8],
                }),
            );
        }
        assert_eq!(
            node.view(),
            before,
            "repeating an id only raises its hit count"
        );
    }

    #[test]
    fn selection_prefers_fewest_hits_and_pull_is_answered() {
        let p = ids(4);
        let mut node = Basalt::new(p[0], config(4, 0, 1), 5);
        node.update(&p[1..]);
        let out = node.handle_tick();
        assert_eq!(out.len(), 2);
        assert!(matches!(
            out[0].message,
            SamplingMessage::Basalt(BasaltMessage::Pull)
        ));
        assert!(
            matches!(&out[1].message, SamplingMessage::Basalt(BasaltMessage::View { peers }) if peers == &node.view())
        );
        let reply = node.handle_message(p[3], SamplingMessage::Basalt(BasaltMessage::Pull));
        assert_eq!(reply.len(), 1);
        assert_eq!(reply[0].to, p[3]);
    }

    #[test]
    fn resets_give_k_slots_new_seeds_round_robin() {
        let p = ids(30);
        let mut node = Basalt::new(p[0], config(6, 2, 3), 11);
        node.round = 0; // at the start of its τ cycle
        node.update(&p[1..]);
        let seeds = |n: &Basalt| (0..6).map(|j| n.slots.key(j)).collect::<Vec<_>>();
        let before = seeds(&node);
        node.handle_tick();
        node.handle_tick();
        assert_eq!(seeds(&node), before, "no reset before τ rounds");
        assert!(node.take_samples().is_empty(), "samples come from resets");
        let reset_peers: Vec<PeerId> = (0..2).filter_map(|j| node.slots.held(j)).collect();
        node.handle_tick();
        assert_eq!(
            node.take_samples(),
            reset_peers,
            "the reset slots' peers are emitted"
        );
        let after = seeds(&node);
        let changed: Vec<usize> = (0..6).filter(|&i| before[i] != after[i]).collect();
        assert_eq!(changed, vec![0, 1]);
        assert!(
            node.slots.all_held().all(|peer| peer.is_some()),
            "reset slots refill from the view"
        );
    }

    #[test]
    fn each_node_resets_once_per_tau_rounds_at_its_own_phase() {
        let p = ids(30);
        let mut first_resets = HashSet::new();
        for seed in 0..20 {
            let mut node = Basalt::new(p[0], config(6, 1, 5), seed);
            node.update(&p[1..]);
            let resets: Vec<usize> = (1..=10)
                .filter(|_| {
                    node.handle_tick();
                    !node.take_samples().is_empty()
                })
                .collect();
            assert_eq!(resets.len(), 2, "seed {seed}: {resets:?}");
            assert_eq!(resets[1] - resets[0], 5, "seed {seed}: {resets:?}");
            first_resets.insert(resets[0]);
        }
        assert!(
            first_resets.len() > 1,
            "every node in phase: {first_resets:?}"
        );
    }

    #[test]
    fn unreachable_peers_leave_every_slot() {
        let p = ids(3);
        let mut node = Basalt::new(p[0], config(4, 1, 1), 2);
        node.update(&[p[1]]);
        assert_eq!(node.view(), vec![p[1]]);
        node.update(&[p[2]]);
        node.handle_peer_unreachable(p[1]);
        assert!(!node.view().contains(&p[1]));
    }

    proptest! {
        #[test]
        fn view_invariants(
            v in 1usize..10, k in 0usize..4, tau in 1u64..4, seed in any::<u64>(),
            steps in proptest::collection::vec((0u8..4, 0usize..12, proptest::collection::vec(0usize..12, 0..12)), 1..60),
        ) {
            let p = ids(12);
            let known: HashSet<PeerId> = p.iter().copied().collect();
            let mut node = Basalt::new(p[0], config(v, k, tau), seed);
            for (kind, who, peers) in steps {
                let peers: Vec<PeerId> = peers.into_iter().map(|i| p[i]).collect();
                let out = match kind {
                    0 => node.handle_tick(),
                    1 => node.handle_message(p[who], SamplingMessage::Basalt(BasaltMessage::View { peers })),
                    2 => node.handle_message(p[who], SamplingMessage::Basalt(BasaltMessage::Pull)),
                    _ => { node.handle_peer_unreachable(p[who]); Vec::new() }
                };
                for o in &out {
                    prop_assert!(o.to != p[0]);
                }
                let checked = crate::sampling::check_view(&node.view(), p[0], v, &known);
                prop_assert!(checked.is_ok(), "{:?}", checked);
            }
        }
    }
}
