//! Keyed min-wise rankers: Brahms's samplers and Basalt's slots.
//!
//! Each ranker has a secret key and keeps, of the ids it heard since it got that key,
//! the one of lowest keyed rank (the first heard on ties), with a count of the times
//! it heard that id again since. The rankers of a node are stored in columns (keys,
//! ranks, ids, hit counts), so hearing an id ranks it in all of them in one pass over
//! flat arrays: for simulated ids, eight rankers per vector instruction (the columns
//! are padded to a multiple of eight with rankers nobody reads).

use super::{prefetch_slice, NodeId};

/// Simulated ids are ranked this many rankers at a time.
const LANES: usize = 8;

/// The rankers of one node.
pub struct Rankers<I: NodeId> {
    /// How many rankers there are (the columns may be longer: padding).
    count: usize,
    keys: Vec<I::Key>,
    /// The rank of the id held, or `I::UNRANKED` when a ranker holds none.
    ranks: Vec<I::Rank>,
    /// The id held (meaningless where the ranker holds none).
    ids: Vec<I>,
    /// How often the ranker heard its id again since it took it.
    hits: Vec<u32>,
}

impl<I: NodeId> Rankers<I> {
    /// `count` empty rankers, their keys drawn in order from `rng`.
    pub fn new(count: usize, me: I, rng: &mut I::Rng) -> Rankers<I> {
        let mut keys: Vec<I::Key> = (0..count).map(|_| I::random_key(rng)).collect();
        let padded = count.next_multiple_of(LANES);
        if let Some(&first) = keys.first() {
            keys.resize(padded, first);
        }
        Rankers {
            count,
            ranks: vec![I::UNRANKED; keys.len()],
            ids: vec![me; keys.len()],
            hits: vec![0; keys.len()],
            keys,
        }
    }

    /// How many rankers there are.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The id ranker `j` holds.
    pub fn held(&self, j: usize) -> Option<I> {
        (self.ranks[j] != I::UNRANKED).then_some(self.ids[j])
    }

    /// The ids the rankers hold, ranker by ranker.
    pub fn all_held(&self) -> impl Iterator<Item = Option<I>> + '_ {
        (0..self.count()).map(|j| self.held(j))
    }

    /// Whether some ranker holds no id.
    pub fn any_empty(&self) -> bool {
        self.ranks[..self.count].contains(&I::UNRANKED)
    }

    /// Ranker `j`'s hit count.
    pub fn hits(&self, j: usize) -> u32 {
        self.hits[j]
    }

    /// Adds a hit to ranker `j`.
    pub fn add_hit(&mut self, j: usize) {
        self.hits[j] = self.hits[j].saturating_add(1);
    }

    /// Ranker `j`'s key.
    #[cfg(test)]
    pub fn key(&self, j: usize) -> I::Key {
        self.keys[j]
    }

    /// Adds a hit to every ranker holding `id`; false if none does.
    pub fn add_hits(&mut self, id: I) -> bool {
        self.change_holding(id, Self::add_hit)
    }

    /// Empties every ranker holding `id`; false if none does.
    pub fn empty_holding(&mut self, id: I) -> bool {
        self.change_holding(id, Self::empty)
    }

    /// Empties every ranker holding `id` and gives it a new key from `rng`.
    pub fn rekey_holding(&mut self, id: I, rng: &mut I::Rng) {
        self.change_holding(id, |rankers, j| rankers.rekey(j, rng));
    }

    /// Applies `change` to every ranker holding `id`; false if none does.
    fn change_holding(&mut self, id: I, mut change: impl FnMut(&mut Self, usize)) -> bool {
        let mut any = false;
        for j in 0..self.count() {
            if self.held(j) == Some(id) {
                change(self, j);
                any = true;
            }
        }
        any
    }

    /// Empties ranker `j` and gives it a new key from `rng`.
    pub fn rekey(&mut self, j: usize, rng: &mut I::Rng) {
        self.keys[j] = I::random_key(rng);
        self.empty(j);
    }

    /// Empties ranker `j` (its key stays).
    pub fn empty(&mut self, j: usize) {
        self.ranks[j] = I::UNRANKED;
        self.hits[j] = 0;
    }

    /// Every ranker hears `ids` in turn (see the module's doc).
    pub fn hear(&mut self, ids: &[I]) {
        I::hear(self, ids);
    }

    /// Ranker `j` alone hears `ids` in turn.
    pub fn hear_in(&mut self, j: usize, ids: &[I]) {
        for &id in ids {
            hear_one(
                id,
                self.keys[j],
                &mut self.ranks[j],
                &mut self.ids[j],
                &mut self.hits[j],
            );
        }
    }

    /// [`Rankers::hear`], one ranker after the other.
    pub fn hear_each(&mut self, ids: &[I]) {
        (0..self.count).for_each(|j| self.hear_in(j, ids));
    }

    /// Asks for the columns to be brought into the caches.
    pub fn prefetch(&self) {
        prefetch_slice(&self.ranks);
        prefetch_slice(&self.ids);
        prefetch_slice(&self.keys);
        prefetch_slice(&self.hits);
    }
}

impl Rankers<u32> {
    /// [`Rankers::hear`] for simulated ids, eight rankers at a time: a group's state
    /// stays in registers while it hears every id, and [`hear_one`]'s rule is written
    /// as arithmetic on masks, so the compiler emits vector instructions and no
    /// branches (the padding rankers hear the ids too; nobody reads them).
    #[inline(always)]
    pub fn hear_in_lanes(&mut self, ids: &[u32]) {
        let groups = self
            .keys
            .chunks_exact(LANES)
            .zip(self.ranks.chunks_exact_mut(LANES))
            .zip(self.ids.chunks_exact_mut(LANES))
            .zip(self.hits.chunks_exact_mut(LANES));
        for (((keys, ranks_out), held_out), hits_out) in groups {
            let mut ranks: [u32; LANES] = (&*ranks_out).try_into().expect("a group");
            let mut held: [u32; LANES] = (&*held_out).try_into().expect("a group");
            let mut hits: [u32; LANES] = (&*hits_out).try_into().expect("a group");
            for &id in ids {
                for l in 0..LANES {
                    let new = id.keyed_rank(keys[l]);
                    let again = u32::from(held[l] == id && ranks[l] != u32::UNRANKED);
                    let lower = 0u32.wrapping_sub(u32::from(new < ranks[l]));
                    hits[l] = hits[l].saturating_add(again) & !lower;
                    ranks[l] = ranks[l].min(new);
                    held[l] ^= (held[l] ^ id) & lower;
                }
            }
            ranks_out.copy_from_slice(&ranks);
            held_out.copy_from_slice(&held);
            hits_out.copy_from_slice(&hits);
        }
    }
}

/// One ranker hears `id`: its id again adds a hit, an id ranked lower (any, when it
/// holds none) takes its place with no hits (the rule `hear_in_lanes` applies eight
/// rankers at a time).
#[inline(always)]
fn hear_one<I: NodeId>(id: I, key: I::Key, rank: &mut I::Rank, held: &mut I, hits: &mut u32) {
    let new = id.keyed_rank(key);
    let again = *held == id && *rank != I::UNRANKED;
    let lower = new < *rank;
    *hits = if lower {
        0
    } else {
        hits.saturating_add(u32::from(again))
    };
    *rank = if lower { new } else { *rank };
    *held = if lower { id } else { *held };
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::SeedableRng;

    use super::*;

    /// A ranker's key, id held with its rank, and hits.
    type Ranker = (u32, Option<(u32, u32)>, u32);

    /// One ranker at a time, with `Option`s: the rule as the papers state it.
    fn reference(rankers: &[Ranker], ids: &[u32]) -> Vec<(Option<u32>, u32)> {
        rankers
            .iter()
            .map(|&(key, mut best, mut hits)| {
                for &id in ids {
                    match best {
                        Some((held, _)) if held == id => hits += 1,
                        Some((_, rank)) if id.keyed_rank(key) >= rank => {}
                        _ => {
                            best = Some((id, id.keyed_rank(key)));
                            hits = 0;
                        }
                    }
                }
                (best.map(|(id, _)| id), hits)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn hearing_in_columns_is_hearing_one_ranker_at_a_time(
            seed in any::<u64>(),
            count in 1usize..40,
            first in proptest::collection::vec(0u32..50, 0..40),
            then in proptest::collection::vec(0u32..50, 0..40),
        ) {
            let mut rng = <u32 as NodeId>::Rng::seed_from_u64(seed);
            let mut rankers = Rankers::<u32>::new(count, 0, &mut rng);
            rankers.hear(&first);
            // Some rankers emptied or given new keys between the two hearings.
            for j in (0..count).step_by(3) {
                rankers.empty(j);
            }
            for j in (1..count).step_by(5) {
                rankers.rekey(j, &mut rng);
            }
            let before: Vec<_> = (0..count)
                .map(|j| {
                    let best = rankers.held(j).map(|id| (id, id.keyed_rank(rankers.key(j))));
                    (rankers.key(j), best, rankers.hits(j))
                })
                .collect();
            rankers.hear(&then);
            let columns: Vec<_> = (0..count).map(|j| (rankers.held(j), rankers.hits(j))).collect();
            prop_assert_eq!(columns, reference(&before, &then));
            // The vector path (when the processor has one), the portable one and one
            // ranker at a time agree.
            let fresh = || Rankers::<u32>::new(count, 0, &mut <u32 as NodeId>::Rng::seed_from_u64(seed));
            let (mut dispatched, mut lanes, mut each) = (fresh(), fresh(), fresh());
            dispatched.hear(&first);
            lanes.hear_in_lanes(&first);
            each.hear_each(&first);
            for j in 0..count {
                prop_assert_eq!((lanes.held(j), lanes.hits(j)), (each.held(j), each.hits(j)));
                prop_assert_eq!((dispatched.held(j), dispatched.hits(j)), (each.held(j), each.hits(j)));
            }
        }
    }
}
