//! What happens to the virtual network besides latency and loss: partitions, nodes
//! going offline (for good, at planned times, or at random and recovering), and clocks
//! that drift — the seed's `LatencyConfig.network_partitions`, `DisconnectionConfig`
//! and `SynchronizationConfig`.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Result};
use rand::RngExt;

/// Pairs of nodes that cannot reach each other (both ways).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Partitions {
    /// Cut pairs, smaller node first.
    cut: BTreeSet<(u32, u32)>,
    /// Each node's group, when groups are given: nodes of two different groups cannot
    /// reach each other; a node in no group reaches everyone.
    group: Vec<Option<u32>>,
}

impl Partitions {
    /// Cuts the link between `a` and `b`.
    pub fn cut(&mut self, a: u32, b: u32) {
        self.cut.insert((a.min(b), a.max(b)));
    }

    /// Puts `node` in group `group` (of a network of `nodes` nodes).
    pub fn join_group(&mut self, node: u32, group: u32, nodes: usize) {
        self.group.resize(nodes, None);
        self.group[node as usize] = Some(group);
    }

    /// Whether nothing is cut.
    pub fn is_empty(&self) -> bool {
        self.cut.is_empty() && self.group.iter().all(Option::is_none)
    }

    /// Whether a message from `a` cannot reach `b`.
    pub fn separates(&self, a: u32, b: u32) -> bool {
        let group = |n: u32| self.group.get(n as usize).copied().flatten();
        if let (Some(x), Some(y)) = (group(a), group(b)) {
            if x != y {
                return true;
            }
        }
        !self.cut.is_empty() && self.cut.contains(&(a.min(b), a.max(b)))
    }
}

/// A node offline from `start` for `duration`.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduledOutage {
    /// The node.
    pub node: u32,
    /// When it goes offline, from the start of the run.
    pub start: Duration,
    /// How long it stays offline.
    pub duration: Duration,
}

/// Random failures: every `time_step`, each online honest node goes offline with
/// `probability` and comes back after `recovery_time`, spread uniformly by
/// ± `recovery_variance` of it.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomFailures {
    /// How often failures are drawn.
    pub time_step: Duration,
    /// Probability that an online node fails, per step.
    pub probability: f64,
    /// Mean time offline.
    pub recovery_time: Duration,
    /// Relative spread of the time offline, in `[0, 1]`.
    pub recovery_variance: f64,
}

impl RandomFailures {
    /// How long a node that fails now stays offline, in µs.
    pub fn draw_recovery(&self, rng: &mut impl rand::Rng) -> u64 {
        let mean = self.recovery_time.as_micros() as f64;
        let spread = if self.recovery_variance > 0.0 {
            rng.random_range(-self.recovery_variance..=self.recovery_variance)
        } else {
            0.0
        };
        (mean * (1.0 + spread)).round().max(1.0) as u64
    }
}

/// When nodes are offline: only an offline node's network is cut. Its sampler keeps its
/// view but does not gossip; its apps keep their cycles, and what they send fails at
/// once ("this node is offline"); messages to it fail at their sender's deadline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outages {
    /// Nodes offline from the start to the end.
    pub permanently_offline: Vec<u32>,
    /// Planned outages.
    pub scheduled: Vec<ScheduledOutage>,
    /// Random failures, if any.
    pub random: Option<RandomFailures>,
}

impl Outages {
    /// Whether no node ever goes offline.
    pub fn is_empty(&self) -> bool {
        self.permanently_offline.is_empty() && self.scheduled.is_empty() && self.random.is_none()
    }

    /// Checks the numbers, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        if let Some(random) = &self.random {
            if !(0.0..=1.0).contains(&random.probability) {
                bail!(
                    "failure_probability must be between 0 and 1, not {}",
                    random.probability
                );
            }
            if !(0.0..=1.0).contains(&random.recovery_variance) {
                bail!(
                    "recovery_variance must be between 0 and 1, not {}",
                    random.recovery_variance
                );
            }
            if random.time_step.is_zero() {
                bail!("the failure time step (time_step_us) must be above 0");
            }
        }
        Ok(())
    }
}

/// Clocks of nodes outside the synchronised set are off by a fixed amount within
/// `± max_drift` (their guests' wall clock; their schedule stays on virtual time).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClockDrift {
    /// The largest offset of a drifting node's clock.
    pub max_drift: Duration,
    /// The nodes whose clocks are exact.
    pub synchronised: BTreeSet<u32>,
}

impl ClockDrift {
    /// Each node's wall-clock skew in µs (0 for synchronised nodes), drawn from `rng`.
    pub fn skews(&self, nodes: usize, rng: &mut impl rand::Rng) -> Vec<i64> {
        let max = self.max_drift.as_micros().min(i64::MAX as u128) as i64;
        (0..nodes as u32)
            .map(|i| {
                if max == 0 || self.synchronised.contains(&i) {
                    0
                } else {
                    rng.random_range(-max..=max)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn partitions_cut_pairs_both_ways_and_separate_groups() {
        let mut p = Partitions::default();
        assert!(p.is_empty() && !p.separates(0, 1));
        p.cut(3, 1);
        assert!(p.separates(1, 3) && p.separates(3, 1) && !p.separates(1, 2));
        let mut g = Partitions::default();
        g.join_group(0, 0, 5);
        g.join_group(1, 0, 5);
        g.join_group(2, 1, 5);
        assert!(!g.separates(0, 1) && g.separates(1, 2) && g.separates(2, 0));
        assert!(
            !g.separates(4, 2) && !g.separates(0, 4),
            "no group: reaches all"
        );
    }

    #[test]
    fn recovery_stays_within_its_spread_and_skews_within_the_drift() {
        let failures = RandomFailures {
            time_step: Duration::from_secs(1),
            probability: 0.1,
            recovery_time: Duration::from_secs(5),
            recovery_variance: 0.2,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let draws: Vec<u64> = (0..1000)
            .map(|_| failures.draw_recovery(&mut rng))
            .collect();
        assert!(draws.iter().all(|&d| (4_000_000..=6_000_000).contains(&d)));
        assert!(draws.iter().any(|&d| d < 4_500_000) && draws.iter().any(|&d| d > 5_500_000));
        let drift = ClockDrift {
            max_drift: Duration::from_millis(10),
            synchronised: [0, 1].into(),
        };
        let skews = drift.skews(100, &mut rng);
        assert_eq!(&skews[..2], &[0, 0]);
        assert!(skews.iter().all(|s| s.abs() <= 10_000));
        assert!(skews[2..].iter().any(|&s| s != 0));
    }
}
