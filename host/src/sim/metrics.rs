//! Per-cycle metrics of the overlay the views form, written as one CSV row per cycle.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

/// The CSV header.
pub const CSV_HEADER: &str = "cycle,indegree_mean,indegree_std,indegree_max,clustering,avg_path,partitions,dead_links,byz_view_share,byz_sample_share,sample_uniformity";

/// Nodes sampled for the clustering coefficient.
const CLUSTERING_SAMPLE: usize = 1000;
/// Sources sampled for the average shortest path.
const PATH_SOURCES: usize = 8;
// The breadth-first search carries one bit per source in a byte.
const _: () = assert!(PATH_SOURCES <= 8);

/// One cycle's metrics. `None` marks a metric not computed this cycle (an empty cell).
#[derive(Clone, Debug, PartialEq)]
pub struct CycleMetrics {
    /// The cycle.
    pub cycle: u64,
    /// Mean in-degree of live honest nodes (links between live honest nodes only).
    pub indegree_mean: f64,
    /// Standard deviation of the in-degree.
    pub indegree_std: f64,
    /// Largest in-degree.
    pub indegree_max: usize,
    /// Mean local clustering coefficient of the undirected overlay, on a node sample.
    pub clustering: Option<f64>,
    /// Mean shortest-path length from a few sampled nodes (undirected, reachable pairs).
    pub avg_path: Option<f64>,
    /// Connected components among live honest nodes (undirected).
    pub partitions: usize,
    /// Share of the live honest nodes' view entries that point to failed nodes.
    pub dead_links: f64,
    /// Share of the live honest nodes' view entries that are Byzantine (with attackers).
    pub byz_view_share: Option<f64>,
    /// Share of this cycle's samples of honest nodes that are Byzantine (with attackers
    /// and samples).
    pub byz_sample_share: Option<f64>,
    /// KL divergence, in bits, of every sample honest nodes emitted so far from the
    /// uniform distribution over all ids (0 = uniform; finite-sample bias ≈
    /// (N − 1) / (2 M ln 2) for M samples).
    pub sample_uniformity: Option<f64>,
}

impl CycleMetrics {
    /// The CSV row, numbers with six decimals so equal runs give equal bytes.
    pub fn csv_row(&self) -> String {
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        format!(
            "{},{:.6},{:.6},{},{},{},{},{:.6},{},{},{}",
            self.cycle,
            self.indegree_mean,
            self.indegree_std,
            self.indegree_max,
            opt(self.clustering),
            opt(self.avg_path),
            self.partitions,
            self.dead_links,
            opt(self.byz_view_share),
            opt(self.byz_sample_share),
            opt(self.sample_uniformity),
        )
    }
}

/// Every node's view, in one flat array (compressed sparse rows).
#[derive(Clone, Debug, Default)]
pub struct Views {
    offsets: Vec<usize>,
    targets: Vec<u32>,
}

impl Views {
    /// No views yet, room for `nodes` of about `view_size` entries.
    pub fn with_capacity(nodes: usize, view_size: usize) -> Views {
        let mut offsets = Vec::with_capacity(nodes + 1);
        offsets.push(0);
        Views {
            offsets,
            targets: Vec::with_capacity(nodes * view_size),
        }
    }

    /// Appends the next node's view with `fill`, which pushes its entries.
    pub fn push_with(&mut self, fill: impl FnOnce(&mut Vec<u32>)) {
        fill(&mut self.targets);
        self.offsets.push(self.targets.len());
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether there is no node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Node `i`'s view.
    pub fn of(&self, i: usize) -> &[u32] {
        &self.targets[self.offsets[i]..self.offsets[i + 1]]
    }
}

/// The overlay at one instant: who points to whom, who is up, who is an attacker.
pub struct Overlay<'a> {
    /// Who each node points to (nobody, for attackers).
    pub views: &'a Views,
    /// Whether each node is up.
    pub alive: &'a [bool],
    /// Whether each node is Byzantine.
    pub byzantine: &'a [bool],
}

/// One cycle's overlay and samples, copied so that they can be measured on another
/// thread while the simulation goes on, with the costly metrics' random draws made.
pub struct Snapshot {
    /// The cycle.
    pub cycle: u64,
    /// Every node's view.
    pub views: Views,
    /// Whether each node is up.
    pub alive: Vec<bool>,
    /// Whether each node is Byzantine.
    pub byzantine: Vec<bool>,
    /// The samples so far.
    pub samples: SampleTally,
    /// The costly metrics' draws, on the cycles that take them.
    pub draws: Option<CostlyDraws>,
}

impl Snapshot {
    /// The metrics of the snapshot.
    pub fn measure(&self) -> CycleMetrics {
        let overlay = Overlay {
            views: &self.views,
            alive: &self.alive,
            byzantine: &self.byzantine,
        };
        measure_drawn(self.cycle, &overlay, &self.samples, self.draws.as_ref())
    }
}

/// The samples honest nodes emitted.
#[derive(Clone, Debug, Default)]
pub struct SampleTally {
    /// Samples per id since the start.
    pub per_id: Vec<u64>,
    /// Total samples since the start.
    pub total: u64,
    /// Samples this cycle.
    pub cycle_total: u64,
    /// Byzantine samples this cycle.
    pub cycle_byzantine: u64,
}

impl SampleTally {
    /// An empty tally over `nodes` ids.
    pub fn new(nodes: usize) -> SampleTally {
        SampleTally {
            per_id: vec![0; nodes],
            ..SampleTally::default()
        }
    }

    /// Counts one sample.
    pub fn add(&mut self, id: u32, byzantine: bool) {
        self.per_id[id as usize] += 1;
        self.total += 1;
        self.cycle_total += 1;
        self.cycle_byzantine += u64::from(byzantine);
    }

    /// KL divergence from uniform, in bits; `None` before the first sample.
    fn kl_from_uniform(&self) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let n = self.per_id.len() as f64;
        let total = self.total as f64;
        let kl = self
            .per_id
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / total;
                p * (p * n).log2()
            })
            .sum::<f64>();
        Some(kl.max(0.0))
    }
}

fn find(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        parent[x as usize] = parent[parent[x as usize] as usize];
        x = parent[x as usize];
    }
    x
}

/// The random draws of the costly metrics: the nodes sampled for the clustering
/// coefficient and the sources of the path lengths.
pub struct CostlyDraws {
    clustering: Vec<usize>,
    sources: Vec<usize>,
}

/// The live honest nodes of `overlay`.
fn live_nodes(overlay: &Overlay) -> Vec<usize> {
    (0..overlay.views.len())
        .filter(|&i| overlay.alive[i] && !overlay.byzantine[i])
        .collect()
}

/// Draws what the costly metrics sample from `rng`, when `costly` and a node is live.
pub fn costly_draws(overlay: &Overlay, costly: bool, rng: &mut StdRng) -> Option<CostlyDraws> {
    if !costly {
        return None;
    }
    let live = live_nodes(overlay);
    (!live.is_empty()).then(|| CostlyDraws {
        clustering: live
            .sample(rng, CLUSTERING_SAMPLE.min(live.len()))
            .copied()
            .collect(),
        sources: live
            .sample(rng, PATH_SOURCES.min(live.len()))
            .copied()
            .collect(),
    })
}

/// What a node is to the metrics.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Up and honest: links to it count toward its in-degree and join the overlay.
    Honest,
    /// Failed: links to it are dead links.
    Failed,
    /// An attacker.
    Byzantine,
}

/// The overlay the metrics read: each node's kind, and the links among live honest
/// nodes.
struct HonestOverlay<'a> {
    views: &'a Views,
    kinds: Vec<Kind>,
    /// Whether every node is live and honest (no kind to look up).
    every_node: bool,
}

impl<'a> HonestOverlay<'a> {
    fn new(overlay: &Overlay<'a>) -> HonestOverlay<'a> {
        let kinds: Vec<Kind> = overlay
            .alive
            .iter()
            .zip(overlay.byzantine)
            .map(|(&alive, &byzantine)| match (alive, byzantine) {
                (_, true) => Kind::Byzantine,
                (true, false) => Kind::Honest,
                (false, false) => Kind::Failed,
            })
            .collect();
        HonestOverlay {
            views: overlay.views,
            every_node: kinds.iter().all(|&k| k == Kind::Honest),
            kinds,
        }
    }

    /// Number of nodes.
    fn len(&self) -> usize {
        self.views.len()
    }

    /// Whether node `i` is live and honest.
    fn is_honest(&self, i: usize) -> bool {
        self.every_node || self.kinds[i] == Kind::Honest
    }

    /// Node `i`'s links to live honest nodes other than itself (none if `i` is not one).
    fn links(&self, i: usize) -> impl Iterator<Item = u32> + '_ {
        let view = if self.is_honest(i) {
            self.views.of(i)
        } else {
            &[]
        };
        view.iter()
            .copied()
            .filter(move |&j| j as usize != i && self.is_honest(j as usize))
    }
}

/// Measures the overlay; the costly metrics with `draws`, if given.
pub fn measure_drawn(
    cycle: u64,
    overlay: &Overlay,
    samples: &SampleTally,
    draws: Option<&CostlyDraws>,
) -> CycleMetrics {
    let graph = HonestOverlay::new(overlay);
    let views = overlay.views;
    let n = views.len();
    let live = live_nodes(overlay);
    let attackers = overlay.byzantine.iter().any(|&b| b);
    let mut indegree = vec![0u32; n];
    let (mut links, mut dead, mut malicious) = (0usize, 0usize, 0usize);
    for &i in &live {
        let targets = views.of(i);
        if graph.every_node {
            targets.iter().for_each(|&j| indegree[j as usize] += 1);
        } else {
            for &j in targets {
                match graph.kinds[j as usize] {
                    Kind::Honest => indegree[j as usize] += 1,
                    Kind::Failed => dead += 1,
                    Kind::Byzantine => malicious += 1,
                }
            }
        }
        links += targets.len();
    }
    let components = components(&graph, &live);
    let count = live.len().max(1) as f64;
    let mean = live.iter().map(|&i| f64::from(indegree[i])).sum::<f64>() / count;
    let variance = live
        .iter()
        .map(|&i| (f64::from(indegree[i]) - mean).powi(2))
        .sum::<f64>()
        / count;
    let (clustering, avg_path) = match draws {
        Some(draws) => (
            Some(clustering(&graph, &draws.clustering)),
            Some(average_path(&graph, &draws.sources)),
        ),
        None => (None, None),
    };
    let share = |part: usize, whole: usize| {
        if whole == 0 {
            0.0
        } else {
            part as f64 / whole as f64
        }
    };
    CycleMetrics {
        cycle,
        indegree_mean: mean,
        indegree_std: variance.sqrt(),
        indegree_max: live
            .iter()
            .map(|&i| indegree[i] as usize)
            .max()
            .unwrap_or(0),
        clustering,
        avg_path,
        partitions: components,
        dead_links: share(dead, links),
        byz_view_share: attackers.then(|| share(malicious, links)),
        byz_sample_share: (attackers && samples.cycle_total > 0).then(|| {
            share(
                samples.cycle_byzantine as usize,
                samples.cycle_total as usize,
            )
        }),
        sample_uniformity: samples.kl_from_uniform(),
    }
}

/// The connected components among the `live` nodes (undirected). Union-find takes every
/// node's first two links, then every node's next two, and so on, and stops once one
/// component is left: a graph where each node links to two random others is already
/// connected almost surely, so a gossip overlay is one component after a round or two,
/// not fifteen. (Two links a round: they share a cache line.)
fn components(graph: &HonestOverlay, live: &[usize]) -> usize {
    let mut parent: Vec<u32> = (0..graph.len() as u32).collect();
    let mut components = live.len();
    let mut round = 0;
    while components > 1 {
        let mut more = false;
        for &i in live {
            for &j in graph.views.of(i).iter().skip(round).take(2) {
                more = true;
                if graph.is_honest(j as usize) {
                    let (a, b) = (find(&mut parent, i as u32), find(&mut parent, j));
                    if a != b {
                        parent[a as usize] = b;
                        components -= 1;
                    }
                }
            }
        }
        if !more {
            break;
        }
        round += 2;
    }
    components
}

/// The mean local clustering coefficient of the `sample`d nodes in the undirected
/// overlay (a node's neighbours: those it links to and those linking to it). The links
/// to the sampled nodes are gathered in one pass over every view; a pair of neighbours
/// is closed when one links to the other, which their own links tell.
fn clustering(graph: &HonestOverlay, sample: &[usize]) -> f64 {
    let n = graph.len();
    // A bit per sampled node (a check that stays in the caches), and its place.
    let mut sampled = vec![0u64; n.div_ceil(64)];
    let mut place = vec![0u32; n];
    for (k, &i) in sample.iter().enumerate() {
        sampled[i / 64] |= 1 << (i % 64);
        place[i] = k as u32;
    }
    let mut incoming = vec![Vec::new(); sample.len()];
    for i in 0..n {
        for j in graph.links(i) {
            let j = j as usize;
            if sampled[j / 64] >> (j % 64) & 1 == 1 {
                incoming[place[j] as usize].push(i as u32);
            }
        }
    }
    // marked[b] == stamp: b is a neighbour of the node being measured;
    // counted[b] == pair: b was already counted with the neighbour `a` at hand.
    let mut marked = vec![0u32; n];
    let mut counted = vec![0u32; n];
    let (mut pair, mut adjacent) = (0u32, Vec::new());
    let total: f64 = sample
        .iter()
        .zip(&incoming)
        .zip(1u32..)
        .map(|((&i, incoming), stamp)| {
            adjacent.clear();
            for b in graph.links(i).chain(incoming.iter().copied()) {
                if marked[b as usize] != stamp {
                    marked[b as usize] = stamp;
                    adjacent.push(b);
                }
            }
            let k = adjacent.len();
            if k < 2 {
                return 0.0;
            }
            // Each closed pair once: seen from `a`, unless `b` links back and comes first
            // (then it is seen from `b`).
            let mut closed = 0usize;
            for &a in &adjacent {
                pair += 1;
                for b in graph.links(a as usize) {
                    let b = b as usize;
                    if marked[b] == stamp
                        && counted[b] != pair
                        && ((a as usize) < b || !graph.links(b).any(|c| c == a))
                    {
                        counted[b] = pair;
                        closed += 1;
                    }
                }
            }
            closed as f64 / (k * (k - 1) / 2) as f64
        })
        .sum();
    total / sample.len() as f64
}

/// The mean distance from `sources` (up to [`PATH_SOURCES`]) to every node they
/// reach in the undirected overlay: one breadth-first search for all of them, each node
/// carrying a bit per source, over the views alone. Each level goes through the nodes
/// in order: a node of the level passes its bits on to those it links to, and a node
/// that lacks some takes those of the level's nodes it links to (it is linked to by
/// them). Which node of a level goes first changes nothing (a bit reaching a node twice
/// in one level is counted once, at that level's distance).
fn average_path(graph: &HonestOverlay, sources: &[usize]) -> f64 {
    let n = graph.len();
    let every = (1u16 << sources.len()).wrapping_sub(1) as u8;
    let (mut seen, mut reached, mut arriving) = (vec![0u8; n], vec![0u8; n], vec![0u8; n]);
    for (bit, &source) in sources.iter().enumerate() {
        seen[source] |= 1 << bit;
        reached[source] |= 1 << bit;
    }
    let (mut sum, mut pairs) = (0u64, 0u64);
    let mut distance = 0u64;
    let mut expanding = !sources.is_empty();
    while expanding {
        distance += 1;
        let mut arrive = |j: usize, bits: u8, seen: &mut [u8]| {
            let new = bits & !seen[j];
            if new != 0 {
                arriving[j] |= new;
                seen[j] |= new;
                sum += distance * u64::from(new.count_ones());
                pairs += u64::from(new.count_ones());
            }
        };
        for i in 0..n {
            let carried = reached[i];
            if carried == 0 && seen[i] == every {
                continue;
            }
            let mut pulled = 0u8;
            for j in graph.links(i) {
                let j = j as usize;
                pulled |= reached[j];
                arrive(j, carried, &mut seen);
            }
            arrive(i, pulled, &mut seen);
        }
        reached.fill(0);
        std::mem::swap(&mut reached, &mut arriving);
        expanding = reached.iter().any(|&bits| bits != 0);
    }
    if pairs == 0 {
        0.0
    } else {
        sum as f64 / pairs as f64
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use rand::SeedableRng;

    use super::*;

    /// Measures the overlay; the costly metrics only when `costly`.
    fn measure(
        cycle: u64,
        overlay: &Overlay,
        samples: &SampleTally,
        costly: bool,
        rng: &mut StdRng,
    ) -> CycleMetrics {
        let draws = costly_draws(overlay, costly, rng);
        measure_drawn(cycle, overlay, samples, draws.as_ref())
    }

    /// Measures the overlay where node i points to `lists[i]`, is up if `alive[i]` and
    /// an attacker if `byzantine[i]`; the costly metrics only when `costly`.
    fn measure_lists(
        cycle: u64,
        lists: &[&[u32]],
        alive: &[bool],
        byzantine: &[bool],
        samples: &SampleTally,
        costly: bool,
    ) -> CycleMetrics {
        let mut views = Views::with_capacity(lists.len(), 2);
        for list in lists {
            views.push_with(|out| out.extend_from_slice(list));
        }
        let overlay = Overlay {
            views: &views,
            alive,
            byzantine,
        };
        measure(
            cycle,
            &overlay,
            samples,
            costly,
            &mut StdRng::seed_from_u64(1),
        )
    }

    #[test]
    fn metrics_of_a_hand_built_overlay() {
        // 0 -> 1, 1 -> 2, 2 -> 0 (a triangle), 3 -> 4 (a second component), 4 -> 5 (dead).
        let lists: [&[u32]; 6] = [&[1], &[2], &[0], &[4], &[5], &[]];
        let alive = [true, true, true, true, true, false];
        let m = measure_lists(7, &lists, &alive, &[false; 6], &SampleTally::new(6), true);
        assert_eq!(m.partitions, 2);
        assert_eq!(m.indegree_max, 1);
        assert!((m.indegree_mean - 0.8).abs() < 1e-9, "{m:?}");
        assert!((m.dead_links - 0.2).abs() < 1e-9);
        // Triangle nodes have clustering 1; 3 and 4 have one neighbour each (0).
        assert!((m.clustering.unwrap() - 0.6).abs() < 1e-9, "{m:?}");
        assert!(
            m.csv_row().starts_with("7,0.800000,0.400000,1,0.600000,"),
            "{}",
            m.csv_row()
        );
        assert!(m.csv_row().ends_with(",2,0.200000,,,"));
    }

    #[test]
    fn links_after_the_overlay_is_one_component_still_count() {
        // 0 -> {1, 2} joins everyone; 1 and 2 point back to 0, and 2 to 3 (failed).
        let lists: [&[u32]; 4] = [&[1, 2], &[0], &[0, 3], &[]];
        let alive = [true, true, true, false];
        let m = measure_lists(1, &lists, &alive, &[false; 4], &SampleTally::new(4), false);
        assert_eq!(m.partitions, 1);
        assert_eq!(m.indegree_max, 2, "node 0, pointed to by 1 and 2");
        assert!((m.dead_links - 0.2).abs() < 1e-9, "{m:?}");
    }

    #[test]
    fn byzantine_shares_and_sample_uniformity() {
        // 0 -> {1, 3}, 1 -> {0, 3}, 2 -> {0}; 3 is Byzantine.
        let lists: [&[u32]; 4] = [&[1, 3], &[0, 3], &[0], &[]];
        let byzantine = [false, false, false, true];
        let mut samples = SampleTally::new(4);
        for id in [0, 1, 2, 3] {
            samples.add(id, id == 3);
        }
        let m = measure_lists(1, &lists, &[true; 4], &byzantine, &samples, false);
        assert_eq!(m.byz_view_share, Some(0.4));
        assert_eq!(m.byz_sample_share, Some(0.25));
        assert_eq!(m.sample_uniformity, Some(0.0), "one sample of each id");
        assert_eq!(m.partitions, 1, "the attacker is not part of the graph");
        samples.add(3, true);
        samples.add(3, true);
        let skewed = measure_lists(2, &lists, &[true; 4], &byzantine, &samples, false);
        assert!(skewed.sample_uniformity.unwrap() > 0.1, "{skewed:?}");
    }

    /// The undirected overlay among live honest nodes as sets of neighbours: the
    /// textbook definition the metrics' passes over the views must agree with.
    fn neighbour_sets(lists: &[Vec<u32>], kinds: &[(bool, bool)]) -> Vec<BTreeSet<usize>> {
        let honest = |i: usize| kinds[i].0 && !kinds[i].1;
        let mut sets = vec![BTreeSet::new(); lists.len()];
        for (i, list) in lists.iter().enumerate() {
            for &j in list {
                let j = j as usize;
                if honest(i) && honest(j) && i != j {
                    sets[i].insert(j);
                    sets[j].insert(i);
                }
            }
        }
        sets
    }

    proptest! {
        /// Clustering, path lengths and components, computed from the views alone, are
        /// those of the undirected overlay by definition: on random overlays with failed
        /// and Byzantine nodes, links both ways, repeated links and links to self.
        #[test]
        fn metrics_from_the_views_are_those_of_the_undirected_overlay(
            (lists, kinds) in (2usize..40).prop_flat_map(|n| (
                prop::collection::vec(prop::collection::vec(0..n as u32, 0..6), n),
                prop::collection::vec((prop::bool::weighted(0.85), prop::bool::weighted(0.1)), n),
            )),
            seed in any::<u64>(),
        ) {
            let (alive, byzantine): (Vec<bool>, Vec<bool>) = kinds.iter().copied().unzip();
            let mut views = Views::with_capacity(lists.len(), 6);
            for list in &lists {
                views.push_with(|out| out.extend_from_slice(list));
            }
            let overlay = Overlay { views: &views, alive: &alive, byzantine: &byzantine };
            let mut rng = StdRng::seed_from_u64(seed);
            let Some(draws) = costly_draws(&overlay, true, &mut rng) else {
                return Ok(());
            };
            let graph = HonestOverlay::new(&overlay);
            let sets = neighbour_sets(&lists, &kinds);
            let expected_clustering = draws.clustering.iter().map(|&i| {
                let k = sets[i].len();
                if k < 2 {
                    return 0.0;
                }
                let closed = sets[i].iter().flat_map(|&a| sets[i].iter().map(move |&b| (a, b)))
                    .filter(|&(a, b)| a < b && sets[a].contains(&b))
                    .count();
                closed as f64 / (k * (k - 1) / 2) as f64
            }).sum::<f64>() / draws.clustering.len() as f64;
            prop_assert_eq!(clustering(&graph, &draws.clustering), expected_clustering);
            let (mut sum, mut pairs) = (0usize, 0usize);
            for &source in &draws.sources {
                let mut distance = vec![usize::MAX; lists.len()];
                distance[source] = 0;
                let mut queue = std::collections::VecDeque::from([source]);
                while let Some(i) = queue.pop_front() {
                    for &j in &sets[i] {
                        if distance[j] == usize::MAX {
                            distance[j] = distance[i] + 1;
                            sum += distance[j];
                            pairs += 1;
                            queue.push_back(j);
                        }
                    }
                }
            }
            let expected_path = if pairs == 0 { 0.0 } else { sum as f64 / pairs as f64 };
            prop_assert_eq!(average_path(&graph, &draws.sources), expected_path);
            let live = live_nodes(&overlay);
            let mut reached = vec![false; lists.len()];
            let mut expected_components = 0;
            for &start in &live {
                if !reached[start] {
                    expected_components += 1;
                    reached[start] = true;
                    let mut stack = vec![start];
                    while let Some(i) = stack.pop() {
                        for &j in &sets[i] {
                            if !reached[j] {
                                reached[j] = true;
                                stack.push(j);
                            }
                        }
                    }
                }
            }
            prop_assert_eq!(components(&graph, &live), expected_components);
        }
    }
}
