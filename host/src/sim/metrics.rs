//! Per-cycle metrics of the overlay the views form, written as one CSV row per cycle.

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

/// The CSV header; columns this build does not compute yet stay empty.
pub const CSV_HEADER: &str = "cycle,indegree_mean,indegree_std,indegree_max,clustering,avg_path,partitions,dead_links,byz_view_share,byz_sample_share,sample_uniformity";

/// Nodes sampled for the clustering coefficient.
const CLUSTERING_SAMPLE: usize = 1000;
/// Sources sampled for the average shortest path.
const PATH_SOURCES: usize = 8;

/// One cycle's metrics. `None` marks a metric not computed this cycle.
#[derive(Clone, Debug, PartialEq)]
pub struct CycleMetrics {
    /// The cycle.
    pub cycle: u64,
    /// Mean in-degree of live nodes (links from live nodes only).
    pub indegree_mean: f64,
    /// Standard deviation of the in-degree.
    pub indegree_std: f64,
    /// Largest in-degree.
    pub indegree_max: usize,
    /// Mean local clustering coefficient of the undirected overlay, on a node sample.
    pub clustering: Option<f64>,
    /// Mean shortest-path length from a few sampled nodes (undirected, reachable pairs).
    pub avg_path: Option<f64>,
    /// Connected components among live nodes (undirected).
    pub partitions: usize,
    /// Share of the live nodes' view entries that point to failed nodes.
    pub dead_links: f64,
}

impl CycleMetrics {
    /// The CSV row, numbers with six decimals so equal runs give equal bytes.
    pub fn csv_row(&self) -> String {
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        format!(
            "{},{:.6},{:.6},{},{},{},{},{:.6},,,",
            self.cycle,
            self.indegree_mean,
            self.indegree_std,
            self.indegree_max,
            opt(self.clustering),
            opt(self.avg_path),
            self.partitions,
            self.dead_links
        )
    }
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

/// Measures the overlay where `views[i]` lists the nodes node `i` points to.
pub fn measure(
    cycle: u64,
    views: &[Vec<usize>],
    alive: &[bool],
    costly: bool,
    rng: &mut StdRng,
) -> CycleMetrics {
    let n = views.len();
    let live: Vec<usize> = (0..n).filter(|&i| alive[i]).collect();
    let mut indegree = vec![0usize; n];
    let (mut links, mut dead) = (0usize, 0usize);
    let mut parent: Vec<usize> = (0..n).collect();
    for &i in &live {
        for &j in &views[i] {
            links += 1;
            if alive[j] {
                indegree[j] += 1;
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                parent[a] = b;
            } else {
                dead += 1;
            }
        }
    }
    let count = live.len().max(1) as f64;
    let mean = live.iter().map(|&i| indegree[i] as f64).sum::<f64>() / count;
    let variance = live
        .iter()
        .map(|&i| (indegree[i] as f64 - mean).powi(2))
        .sum::<f64>()
        / count;
    let mut roots: Vec<usize> = live.iter().map(|&i| find(&mut parent, i)).collect();
    roots.sort_unstable();
    roots.dedup();
    let (clustering, avg_path) = if costly && !live.is_empty() {
        let neighbours = undirected(views, alive);
        (
            Some(clustering(&neighbours, &live, rng)),
            Some(average_path(&neighbours, &live, rng)),
        )
    } else {
        (None, None)
    };
    CycleMetrics {
        cycle,
        indegree_mean: mean,
        indegree_std: variance.sqrt(),
        indegree_max: live.iter().map(|&i| indegree[i]).max().unwrap_or(0),
        clustering,
        avg_path,
        partitions: roots.len(),
        dead_links: if links == 0 {
            0.0
        } else {
            dead as f64 / links as f64
        },
    }
}

/// Sorted, deduplicated undirected neighbour lists among live nodes.
fn undirected(views: &[Vec<usize>], alive: &[bool]) -> Vec<Vec<usize>> {
    let mut neighbours = vec![Vec::new(); views.len()];
    for (i, view) in views.iter().enumerate().filter(|(i, _)| alive[*i]) {
        for &j in view.iter().filter(|&&j| alive[j] && j != i) {
            neighbours[i].push(j);
            neighbours[j].push(i);
        }
    }
    for list in &mut neighbours {
        list.sort_unstable();
        list.dedup();
    }
    neighbours
}

fn clustering(neighbours: &[Vec<usize>], live: &[usize], rng: &mut StdRng) -> f64 {
    let sample: Vec<usize> = live
        .sample(rng, CLUSTERING_SAMPLE.min(live.len()))
        .copied()
        .collect();
    let total: f64 = sample
        .iter()
        .map(|&i| {
            let adjacent = &neighbours[i];
            let k = adjacent.len();
            if k < 2 {
                return 0.0;
            }
            let closed: usize = adjacent
                .iter()
                .map(|&a| {
                    adjacent
                        .iter()
                        .filter(|&&b| b > a && neighbours[a].binary_search(&b).is_ok())
                        .count()
                })
                .sum();
            closed as f64 / (k * (k - 1) / 2) as f64
        })
        .sum();
    total / sample.len() as f64
}

fn average_path(neighbours: &[Vec<usize>], live: &[usize], rng: &mut StdRng) -> f64 {
    let sources: Vec<usize> = live
        .sample(rng, PATH_SOURCES.min(live.len()))
        .copied()
        .collect();
    let (mut sum, mut pairs) = (0u64, 0u64);
    let mut distance = vec![u32::MAX; neighbours.len()];
    for source in sources {
        distance.iter_mut().for_each(|d| *d = u32::MAX);
        distance[source] = 0;
        let mut queue = VecDeque::from([source]);
        while let Some(i) = queue.pop_front() {
            for &j in &neighbours[i] {
                if distance[j] == u32::MAX {
                    distance[j] = distance[i] + 1;
                    sum += u64::from(distance[j]);
                    pairs += 1;
                    queue.push_back(j);
                }
            }
        }
    }
    if pairs == 0 {
        0.0
    } else {
        sum as f64 / pairs as f64
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn metrics_of_a_hand_built_overlay() {
        // 0 -> 1, 1 -> 2, 2 -> 0 (a triangle), 3 -> 4 (a second component), 4 -> 5 (dead).
        let views = vec![vec![1], vec![2], vec![0], vec![4], vec![5], vec![]];
        let alive = vec![true, true, true, true, true, false];
        let mut rng = StdRng::seed_from_u64(1);
        let m = measure(7, &views, &alive, true, &mut rng);
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
}
