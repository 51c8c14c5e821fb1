//! In-process simulator: N instances of the *same* sampler code as the live node over a
//! virtual network, cycle-driven (as PeerSim's cycle-driven engine), reproducible from
//! a seed. Each cycle every live node ticks once, in a random order; the messages it
//! produces, and the answers they provoke, are delivered within the cycle. A message to
//! a failed node is lost and its sender told the peer is unreachable.

mod metrics;

pub use metrics::{CycleMetrics, CSV_HEADER};

use std::collections::VecDeque;
use std::io::Write;

use anyhow::{bail, Result};
use libp2p::multihash::Multihash;
use libp2p::PeerId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::sampling::{new_sampler, Outgoing, PeerSampler, SamplerConfig};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The sampler every node runs.
    pub sampler: SamplerConfig,
    /// Number of nodes.
    pub nodes: usize,
    /// Number of cycles.
    pub cycles: u64,
    /// Seed of every random choice (same seed, same output).
    pub seed: u64,
    /// Random peers each node knows at start.
    pub bootstrap_peers: usize,
    /// Fraction of the nodes that fail at once at cycle `fail_at`.
    pub fail_fraction: f64,
    /// The cycle of the massive failure.
    pub fail_at: u64,
    /// Compute the costly metrics (clustering, path length) every this many cycles.
    pub costly_metrics_every: u64,
}

impl SimConfig {
    /// Checks the numbers, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        self.sampler.validate()?;
        if self.nodes < 2 {
            bail!("--nodes must be at least 2, not {}", self.nodes);
        }
        if self.nodes > u32::MAX as usize {
            bail!("--nodes must be at most {}", u32::MAX);
        }
        if !(0.0..=1.0).contains(&self.fail_fraction) {
            bail!(
                "--fail-fraction must be between 0 and 1, not {}",
                self.fail_fraction
            );
        }
        if self.bootstrap_peers == 0 {
            bail!("--bootstrap-peers must be at least 1");
        }
        if self.costly_metrics_every == 0 {
            bail!("--costly-metrics-every must be at least 1");
        }
        Ok(())
    }
}

/// The peer id of virtual node `index`: an identity multihash of its index, so ids are
/// the same in every run.
pub fn virtual_peer_id(index: u32) -> PeerId {
    let mut bytes = *b"nodemanager-sim-\0\0\0\0";
    bytes[16..].copy_from_slice(&index.to_be_bytes());
    PeerId::from_multihash(Multihash::wrap(0x00, &bytes).expect("20 bytes fit"))
        .expect("identity multihash")
}

/// The index of a virtual node's peer id; `None` for any other id.
pub fn virtual_index(peer: &PeerId) -> Option<usize> {
    let multihash: &Multihash<64> = peer.as_ref();
    match multihash.digest() {
        [b'n', b'o', b'd', b'e', b'm', b'a', b'n', b'a', b'g', b'e', b'r', b'-', b's', b'i', b'm', b'-', index @ ..]
            if multihash.code() == 0x00 =>
        {
            Some(u32::from_be_bytes(index.try_into().ok()?) as usize)
        }
        _ => None,
    }
}

/// The virtual network: every node's sampler, and who is alive.
pub struct Simulation {
    config: SimConfig,
    ids: Vec<PeerId>,
    samplers: Vec<Box<dyn PeerSampler>>,
    alive: Vec<bool>,
    rng: StdRng,
    cycle: u64,
    messages: u64,
}

impl Simulation {
    /// Builds the nodes, each knowing `bootstrap_peers` random others.
    pub fn new(config: SimConfig) -> Result<Simulation> {
        config.validate()?;
        let mut rng = StdRng::seed_from_u64(config.seed);
        let ids: Vec<PeerId> = (0..config.nodes as u32).map(virtual_peer_id).collect();
        let mut samplers: Vec<Box<dyn PeerSampler>> = ids
            .iter()
            .map(|&id| new_sampler(&config.sampler, id, rng.random()))
            .collect();
        for (i, sampler) in samplers.iter_mut().enumerate() {
            for _ in 0..config.bootstrap_peers.min(config.nodes - 1) {
                let mut j = rng.random_range(0..config.nodes - 1);
                if j >= i {
                    j += 1;
                }
                sampler.handle_peer_connected(ids[j]);
            }
        }
        let alive = vec![true; config.nodes];
        Ok(Simulation {
            config,
            ids,
            samplers,
            alive,
            rng,
            cycle: 0,
            messages: 0,
        })
    }

    /// Runs one cycle.
    pub fn step(&mut self) {
        self.cycle += 1;
        if self.cycle == self.config.fail_at && self.config.fail_fraction > 0.0 {
            let mut order: Vec<usize> = (0..self.ids.len()).collect();
            order.shuffle(&mut self.rng);
            let failing = (self.config.fail_fraction * self.ids.len() as f64).round() as usize;
            for &i in &order[..failing] {
                self.alive[i] = false;
            }
        }
        let mut order: Vec<usize> = (0..self.ids.len()).filter(|&i| self.alive[i]).collect();
        order.shuffle(&mut self.rng);
        let mut queue: VecDeque<(usize, Outgoing)> = VecDeque::new();
        for i in order {
            queue.extend(self.samplers[i].handle_tick().into_iter().map(|o| (i, o)));
            while let Some((from, outgoing)) = queue.pop_front() {
                self.messages += 1;
                match virtual_index(&outgoing.to) {
                    Some(to) if to < self.alive.len() && self.alive[to] => {
                        let answers =
                            self.samplers[to].handle_message(self.ids[from], outgoing.message);
                        queue.extend(answers.into_iter().map(|o| (to, o)));
                    }
                    _ => self.samplers[from].handle_peer_unreachable(outgoing.to),
                }
            }
        }
    }

    /// Metrics of the current views.
    pub fn metrics(&mut self) -> CycleMetrics {
        let costly = self.cycle.is_multiple_of(self.config.costly_metrics_every);
        let n = self.ids.len();
        let views: Vec<Vec<usize>> = self
            .samplers
            .iter()
            .map(|s| {
                s.view()
                    .iter()
                    .filter_map(virtual_index)
                    .filter(|&i| i < n)
                    .collect()
            })
            .collect();
        metrics::measure(self.cycle, &views, &self.alive, costly, &mut self.rng)
    }

    /// Runs every cycle, writing the CSV header and one row per cycle to `out`.
    pub fn run(&mut self, out: &mut impl Write, mut progress: impl FnMut(u64)) -> Result<()> {
        writeln!(out, "{CSV_HEADER}")?;
        for _ in 0..self.config.cycles {
            self.step();
            writeln!(out, "{}", self.metrics().csv_row())?;
            progress(self.cycle);
        }
        Ok(())
    }

    /// Messages delivered or lost so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sampler: &str, nodes: usize, seed: u64) -> SimConfig {
        SimConfig {
            sampler: SamplerConfig::from_name(sampler).unwrap(),
            nodes,
            cycles: 30,
            seed,
            bootstrap_peers: 3,
            fail_fraction: 0.5,
            fail_at: 15,
            costly_metrics_every: 5,
        }
    }

    fn csv(config: SimConfig) -> String {
        let mut out = Vec::new();
        Simulation::new(config)
            .unwrap()
            .run(&mut out, |_| {})
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn same_seed_same_csv_other_seed_other_csv() {
        for sampler in ["gbps", "brahms", "basalt"] {
            let a = csv(config(sampler, 200, 7));
            assert_eq!(a, csv(config(sampler, 200, 7)), "{sampler}");
            assert_ne!(a, csv(config(sampler, 200, 8)), "{sampler}");
            assert_eq!(a.lines().count(), 31);
            assert!(a.starts_with(CSV_HEADER));
        }
    }

    #[test]
    fn gbps_overlay_stays_connected_and_heals_after_a_massive_failure() {
        let out = csv(config("gbps", 400, 1));
        let rows: Vec<Vec<&str>> = out
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect())
            .collect();
        let column = |row: &[&str], name: &str| {
            let i = CSV_HEADER.split(',').position(|c| c == name).unwrap();
            row[i].parse::<f64>().unwrap()
        };
        let before = &rows[13];
        assert_eq!(column(before, "partitions"), 1.0, "{out}");
        assert_eq!(
            column(before, "indegree_mean"),
            8.0,
            "every view full (c = 8)"
        );
        let just_after = &rows[14];
        assert!(
            column(just_after, "dead_links") > 0.2,
            "half the nodes failed: {out}"
        );
        let last = rows.last().unwrap();
        assert!(
            column(last, "dead_links") < column(just_after, "dead_links") / 4.0,
            "healer removes dead links: {out}"
        );
        assert_eq!(column(last, "partitions"), 1.0, "{out}");
    }

    #[test]
    fn virtual_ids_are_stable_and_distinct() {
        assert_eq!(virtual_peer_id(3), virtual_peer_id(3));
        assert_ne!(virtual_peer_id(3), virtual_peer_id(4));
        assert_eq!(virtual_index(&virtual_peer_id(123_456)), Some(123_456));
        assert_eq!(virtual_index(&PeerId::random()), None);
    }
}
