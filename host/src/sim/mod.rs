//! In-process simulator: N instances of the *same* sampler code as the live node over a
//! virtual network, reproducible from a seed. Node ids are `u32` indices.
//!
//! Two engines share the node logic ([`Simulation`]):
//! - **cycle** (PeerSim's cycle-driven model, the fast path): each cycle every live
//!   node ticks once, in a random order, and the messages it causes are delivered at
//!   once, within the cycle. A message to a node that is down is lost and its sender
//!   told the peer is unreachable.
//! - **event** (discrete events in virtual time): a cycle is one sampler period; each
//!   node ticks once per period at its own random phase; a message arrives after the
//!   link latency (base + uniform jitter, or a per-pair override) unless lost (silently,
//!   with probability `loss`); a message to a node that is down makes its sender see the
//!   peer unreachable one period after sending (a request timeout).
//!
//! At the start of every cycle, churn runs (a live node leaves with probability
//! `leave_rate`; a node that left comes back, with a fresh sampler and fresh bootstrap
//! peers, with probability `join_rate`), then the massive failure if it is due (failed
//! nodes never come back). Byzantine nodes ([`byzantine`]) never leave. Metrics are
//! taken at the end of every cycle.
//!
//! Each node starts knowing `bootstrap_peers` random others, or, given a topology, its
//! `can_send_to` nodes (a link is a connection, so both ends learn each other). The
//! `static` sampler needs a topology; node i is its `node_{i+1}`.

pub mod apps;
mod brahms_nodes;
mod byzantine;
mod command;
pub mod conditions;
mod events;
mod exchanges;
mod gbps_nodes;
mod helpers;
mod huge_pages;
mod metrics;
mod network;
mod nodes;
mod plot;
pub mod scenario;
mod seed_config;
mod settling;
mod summary;
mod timeline;

pub use apps::{node_peer_id, AppTotals, AppsSummary, SimApp, SimApps};
pub use byzantine::Attack;
pub use command::{PreparedSimulation, SimulateArgs};
pub use conditions::{ClockDrift, Outages, Partitions};
pub use metrics::{CycleMetrics, Overlay, SampleTally, Views, CSV_HEADER};
pub use network::{LinkLatency, NetworkModel};
pub use plot::plot;
pub use scenario::Scenario;
pub use seed_config::SeedSimConfig;
pub use summary::{NodeRow, RunSummary};
pub use timeline::{AppInterval, MessageCounts, APPS_CSV_HEADER};

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::sampling::{Outgoing, SamplerConfig, SamplingMessage, Topology};
use nodes::Nodes;

/// Which engine runs the simulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// Cycle-driven: instant delivery within a cycle (fast).
    Cycle,
    /// Event-driven in virtual time: latency, jitter, loss.
    Event,
}

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
    /// Random peers each node knows at start (and when it rejoins), without a topology.
    pub bootstrap_peers: usize,
    /// Who knows whom at start (and for the `static` sampler, for good).
    pub topology: Option<Arc<Topology>>,
    /// Fraction of the nodes that fail at once at cycle `fail_at`.
    pub fail_fraction: f64,
    /// The cycle of the massive failure.
    pub fail_at: u64,
    /// Probability that a live honest node leaves, per cycle.
    pub leave_rate: f64,
    /// Probability that a node that left comes back, per cycle.
    pub join_rate: f64,
    /// Fraction of the nodes that are Byzantine.
    pub byzantine: f64,
    /// How many times an honest node's push rate the attackers push.
    pub attack_force: f64,
    /// The engine.
    pub engine: Engine,
    /// Latency, loss and partitions (event engine only).
    pub network: NetworkModel,
    /// Nodes offline for good, at planned times or at random (event engine only).
    pub outages: Outages,
    /// Apps' wall clocks that drift (event engine only).
    pub drift: ClockDrift,
    /// How many times faster than real time virtual time may run (0: unlimited).
    pub real_time_factor: f64,
    /// Log every app message's fate to the simulation log.
    pub verbose: bool,
    /// Compute the costly metrics (clustering, path length) every this many cycles.
    pub costly_metrics_every: u64,
    /// Threads that run the samplers' exchanges (cycle engine) or app calls (event
    /// engine): the output is the same for any number.
    pub threads: usize,
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
        for (flag, value) in [
            ("--fail-fraction", self.fail_fraction),
            ("--leave-rate", self.leave_rate),
            ("--join-rate", self.join_rate),
            ("--byzantine", self.byzantine),
        ] {
            if !(0.0..=1.0).contains(&value) {
                bail!("{flag} must be between 0 and 1, not {value}");
            }
        }
        if self.byzantine >= 1.0 {
            bail!(
                "--byzantine must leave some honest nodes (it is {})",
                self.byzantine
            );
        }
        if !(self.attack_force >= 0.0 && self.attack_force.is_finite()) {
            bail!(
                "--attack-force must be a number of at least 0, not {}",
                self.attack_force
            );
        }
        if self.byzantine > 0.0
            && matches!(
                self.sampler,
                SamplerConfig::Connected | SamplerConfig::Static(_)
            )
        {
            bail!(
                "--byzantine needs a gossip sampler (gbps, brahms or basalt), not {}",
                self.sampler.name()
            );
        }
        match &self.topology {
            Some(topology) if topology.len() != self.nodes => bail!(
                "the topology has {} nodes but --nodes is {}",
                topology.len(),
                self.nodes
            ),
            None if matches!(self.sampler, SamplerConfig::Static(_)) => {
                bail!("the static sampler needs a topology (--topology FILE)")
            }
            _ => {}
        }
        if self.bootstrap_peers == 0 {
            bail!("--bootstrap-peers must be at least 1");
        }
        if self.costly_metrics_every == 0 {
            bail!("--costly-metrics-every must be at least 1");
        }
        if self.engine == Engine::Cycle && !(self.network.is_ideal() && self.outages.is_empty()) {
            bail!("--latency, --jitter, --loss, --link, partitions and disconnections need --engine event");
        }
        if !(self.real_time_factor >= 0.0 && self.real_time_factor.is_finite()) {
            bail!(
                "--real-time-factor must be a number of at least 0 (0: unlimited), not {}",
                self.real_time_factor
            );
        }
        let check_node = |what: &str, node: u32| {
            if node as usize >= self.nodes {
                bail!(
                    "{what} names node {node}: nodes are numbered 0 to {}",
                    self.nodes - 1
                );
            }
            Ok(())
        };
        for &node in &self.outages.permanently_offline {
            check_node("permanently_offline", node)?;
        }
        for outage in &self.outages.scheduled {
            check_node("a scheduled disconnection", outage.node)?;
        }
        self.outages.validate()?;
        self.network.validate(self.nodes)
    }

    /// The virtual length of a cycle: the sampler's period (1 s for `connected`).
    pub fn cycle_length(&self) -> Duration {
        self.sampler.period().unwrap_or(Duration::from_secs(1))
    }
}

/// Whether a node is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Up,
    /// Left by churn; may come back.
    Left,
    /// Failed in the massive failure; never comes back.
    Failed,
}

/// The virtual network: every node's sampler (or attacker), and who is up.
pub struct Simulation {
    config: SimConfig,
    nodes: Nodes,
    status: Vec<Status>,
    /// Bumped when a node leaves or rejoins, so its stale timers are ignored.
    incarnation: Vec<u32>,
    byzantine: Vec<bool>,
    attack: Attack,
    samples: SampleTally,
    /// Scratch for the samples a node just emitted.
    emitted: Vec<u32>,
    rng: StdRng,
    cycle: u64,
    messages: u64,
    /// The apps every honest node runs (event engine only).
    apps: Option<SimApps>,
    /// Until when each node is offline (`u64::MAX`: for good), if it is.
    offline_until: Vec<Option<u64>>,
    /// What the event engine counted.
    tally: summary::EventTally,
    /// Timed actions.
    scenario: Scenario,
    /// The components the scenario loads or replaces with, by path.
    components: std::collections::HashMap<std::path::PathBuf, crate::runtime::Prepared>,
    /// The period and limits of an app the scenario loads.
    loaded_app_settings: (Duration, crate::runtime::Limits),
    /// What the apps did, interval by interval.
    timeline: Vec<AppInterval>,
}

impl Simulation {
    /// Builds the nodes, picks the attackers, and gives each node `bootstrap_peers`
    /// random others.
    pub fn new(config: SimConfig) -> Result<Simulation> {
        config.validate()?;
        let n = config.nodes;
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.shuffle(&mut rng);
        let attackers = (config.byzantine * n as f64).round() as usize;
        let mut malicious = order[..attackers].to_vec();
        malicious.sort_unstable();
        let mut byzantine = vec![false; n];
        malicious.iter().for_each(|&i| byzantine[i as usize] = true);
        let honest: Vec<u32> = (0..n as u32).filter(|&i| !byzantine[i as usize]).collect();
        let attack = Attack::new(&config.sampler, malicious, honest, config.attack_force);
        let nodes = Nodes::new(&config, &mut rng)?;
        let mut simulation = Simulation {
            nodes,
            status: vec![Status::Up; n],
            incarnation: vec![0; n],
            byzantine,
            attack,
            samples: SampleTally::new(n),
            emitted: Vec::new(),
            rng,
            cycle: 0,
            messages: 0,
            apps: None,
            offline_until: vec![None; n],
            tally: summary::EventTally {
                interval: timeline::IntervalCounts {
                    received: vec![0; n],
                    ..Default::default()
                },
                ..Default::default()
            },
            timeline: Vec::new(),
            scenario: Scenario::default(),
            components: Default::default(),
            loaded_app_settings: Default::default(),
            config,
        };
        for i in 0..n as u32 {
            simulation.bootstrap(i);
        }
        Ok(simulation)
    }

    /// Gives node `i` its topology links, or random peers, among the nodes up.
    fn bootstrap(&mut self, i: u32) {
        if let Some(topology) = self.config.topology.clone() {
            for &j in topology.send_to(i as usize) {
                if self.is_up(j) {
                    self.nodes.connected(i, j);
                    self.nodes.connected(j, i);
                }
            }
            return;
        }
        let n = self.nodes.len();
        for _ in 0..self.config.bootstrap_peers.min(n - 1) {
            for _attempt in 0..16 {
                let j = self.rng.random_range(0..n as u32);
                if j != i && self.status[j as usize] == Status::Up {
                    self.nodes.connected(i, j);
                    break;
                }
            }
        }
    }

    /// Whether node `i` is in the network and online.
    fn is_up(&self, i: u32) -> bool {
        self.is_present(i) && self.is_online(i)
    }

    /// Whether node `i` has neither left nor failed (it may be offline for a while).
    fn is_present(&self, i: u32) -> bool {
        self.status[i as usize] == Status::Up
    }

    /// Whether node `i` is not cut off by an outage.
    fn is_online(&self, i: u32) -> bool {
        self.offline_until[i as usize].is_none()
    }

    /// Takes node `i` offline until `until` (µs); returns whether its reconnection
    /// must be scheduled (not when it was already offline at least that long).
    fn disconnect(&mut self, i: u32, until: u64, now: u64) -> bool {
        match self.offline_until[i as usize] {
            Some(current) if current >= until => false,
            Some(_) => {
                self.offline_until[i as usize] = Some(until);
                true
            }
            None => {
                self.offline_until[i as usize] = Some(until);
                self.tally.disconnections += 1;
                self.node_log(now, i, "offline");
                true
            }
        }
    }

    /// Ends the apps' interval of cycle `cycle` at `now` (with apps only).
    fn close_interval(&mut self, cycle: u64, now: u64) {
        let Some(apps) = &self.apps else {
            return;
        };
        let online = (0..self.nodes.len() as u32)
            .filter(|&i| self.is_up(i))
            .count() as u64;
        let row = self
            .tally
            .interval
            .close(cycle, now, online, |i| apps.on_node(i as u32));
        self.timeline.push(row);
    }

    /// What the apps did in each interval so far (empty without apps).
    pub fn app_timeline(&self) -> &[AppInterval] {
        &self.timeline
    }

    /// Brings node `i` back now, whenever its outage was to end.
    fn reconnect_now(&mut self, i: u32, now: u64) {
        if self.offline_until[i as usize].is_some() {
            self.offline_until[i as usize] = Some(now);
            self.reconnect(i, now);
        }
    }

    /// The number of app `name` for a scenario's load of `path` with `config`: a new
    /// app, or the one of that name (which then loads `path` and `config`).
    fn load_app(&mut self, name: &str, path: &std::path::Path, config: &str) -> Option<usize> {
        let prepared = self.components.get(path)?.clone();
        let (period, limits) = self.loaded_app_settings.clone();
        let apps = self.apps.as_mut()?;
        let spec = crate::config::ResolvedApp {
            name: name.to_string(),
            path: path.to_path_buf(),
            config: config.to_string(),
            cycles: None,
            period,
            limits,
        };
        Some(match apps.index_of(name) {
            Some(index) => {
                apps.set_app(
                    index,
                    SimApp {
                        spec,
                        prepared,
                        per_node: None,
                    },
                );
                index
            }
            None => apps.add_app(SimApp {
                spec,
                prepared,
                per_node: None,
            }),
        })
    }

    /// The number of app `name` and the component at `path` that replaces it (which
    /// later loads of it start too).
    fn replacement(
        &mut self,
        name: &str,
        path: &std::path::Path,
    ) -> Option<(usize, crate::runtime::Prepared)> {
        let prepared = self.components.get(path)?.clone();
        let apps = self.apps.as_mut()?;
        let index = apps.index_of(name)?;
        apps.set_component(index, prepared.clone(), path);
        Some((index, prepared))
    }

    /// Brings node `i` back if its outage ends at `now`.
    fn reconnect(&mut self, i: u32, now: u64) {
        if self.offline_until[i as usize] == Some(now) {
            self.offline_until[i as usize] = None;
            self.node_log(now, i, "online again");
        }
    }

    /// Logs that node `i` went `what` at `now` (µs), with verbose logging.
    fn node_log(&self, now: u64, i: u32, what: &str) {
        if self.config.verbose {
            let _tag = crate::logging::VirtualNow::enter(i, now);
            tracing::info!(target: "nodemanager::sim", "{what}");
        }
    }

    /// Logs what `message` says about app `app` of node `i` at `now`, with verbose
    /// logging.
    fn app_log(&self, now: u64, i: u32, app: usize, message: impl FnOnce() -> String) {
        if let (true, Some(apps)) = (self.config.verbose, &self.apps) {
            let _tag = crate::logging::VirtualNow::enter(i, now);
            tracing::info!(target: "nodemanager::sim", app = apps.name(app), "{}", message());
        }
    }

    /// Starts cycle `cycle + 1`: churn, then the massive failure if due. Returns the
    /// nodes that came back (their timers need scheduling).
    fn begin_cycle(&mut self) -> Result<Vec<u32>> {
        self.cycle += 1;
        self.samples.cycle_total = 0;
        self.samples.cycle_byzantine = 0;
        let mut joined = Vec::new();
        if self.config.leave_rate > 0.0 || self.config.join_rate > 0.0 {
            for i in 0..self.nodes.len() {
                let (status, byzantine) = (self.status[i], self.byzantine[i]);
                if status == Status::Up
                    && !byzantine
                    && self.rng.random_bool(self.config.leave_rate)
                {
                    self.status[i] = Status::Left;
                    self.incarnation[i] += 1;
                } else if status == Status::Left && self.rng.random_bool(self.config.join_rate) {
                    joined.push(i as u32);
                }
            }
            for &i in &joined {
                let seed = self.rng.random();
                self.nodes.reset(&self.config, i, seed)?;
                self.status[i as usize] = Status::Up;
                self.incarnation[i as usize] += 1;
                self.bootstrap(i);
            }
        }
        if self.cycle == self.config.fail_at && self.config.fail_fraction > 0.0 {
            let mut order: Vec<usize> = (0..self.nodes.len()).collect();
            order.shuffle(&mut self.rng);
            let failing = (self.config.fail_fraction * order.len() as f64).round() as usize;
            for &i in &order[..failing] {
                self.status[i] = Status::Failed;
                self.incarnation[i] += 1;
            }
            joined.retain(|&i| self.is_up(i));
        }
        Ok(joined)
    }

    /// Node `i`'s period passed (the tick's work all done, its samples collected).
    fn tick(&mut self, i: u32) -> Vec<Outgoing<u32>> {
        let out = self.tick_leaving(i, &mut settling::Settling::new(None));
        if !self.byzantine[i as usize] {
            self.collect_samples(i);
        }
        out
    }

    /// Node `i`'s period passed: the work its sampler defers goes to `settling`, and the
    /// samples it emits stay with its sampler.
    fn tick_leaving(&mut self, i: u32, settling: &mut settling::Settling) -> Vec<Outgoing<u32>> {
        if self.byzantine[i as usize] {
            return self.attack.tick(i, &mut self.rng);
        }
        self.nodes.tick_leaving(i, settling)
    }

    /// Node `to` (up) receives `message` from `from`.
    fn receive(&mut self, from: u32, to: u32, message: SamplingMessage<u32>) -> Vec<Outgoing<u32>> {
        let out = self.answer(from, to, message);
        if !self.byzantine[to as usize] {
            self.collect_samples(to);
        }
        out
    }

    /// What node `to` (up) answers to `message` from `from` (the samples it emits stay
    /// with its sampler).
    fn answer(&mut self, from: u32, to: u32, message: SamplingMessage<u32>) -> Vec<Outgoing<u32>> {
        if self.byzantine[to as usize] {
            return self
                .attack
                .answer(to, from, &message, &mut self.rng)
                .into_iter()
                .collect();
        }
        self.nodes.receive(to, from, message)
    }

    /// Collects the samples of the honest nodes of `order`.
    fn collect_all_samples(&mut self, order: &[u32]) {
        for &i in order {
            if !self.byzantine[i as usize] {
                self.collect_samples(i);
            }
        }
    }

    fn collect_samples(&mut self, i: u32) {
        let mut emitted = std::mem::take(&mut self.emitted);
        self.nodes.drain_samples(i, &mut emitted);
        self.tally(emitted.drain(..));
        self.emitted = emitted;
    }

    /// Counts `samples` emitted by honest nodes.
    fn tally(&mut self, samples: impl IntoIterator<Item = u32>) {
        for sample in samples {
            let malicious = self.byzantine[sample as usize];
            self.samples.add(sample, malicious);
        }
    }

    /// Runs one cycle of the cycle-driven engine.
    ///
    /// GBPS nodes (stored by value, see [`gbps_nodes`]) run their exchanges in batches
    /// of disjoint nodes on `helpers` and this thread, or one after the other without
    /// helpers. Brahms nodes (stored by value, see [`brahms_nodes`]; their ticks reach
    /// a dozen peers or more, so batches would be too short to share) run their ticks
    /// one after the other with their messages at once, and the helpers do the sampler
    /// updates the ticks defer (see [`settling`]). Other samplers run their exchanges in
    /// batches on `helpers` and this thread (see [`exchanges`]), or, with no helpers,
    /// one exchange after the other as messages; so does every sampler in a run with
    /// attackers (who draw from the simulation's random stream), the helpers doing the
    /// work the ticks defer. Where work is deferred, the samples are collected once it
    /// is done, at the end of the cycle.
    fn step_cycle(&mut self, helpers: Option<&helpers::Helpers>) -> Result<()> {
        self.begin_cycle()?;
        let mut order: Vec<u32> = (0..self.nodes.len() as u32)
            .filter(|&i| self.is_up(i))
            .collect();
        order.shuffle(&mut self.rng);
        let attacked = self.byzantine.contains(&true);
        let up: Vec<bool> = (0..self.nodes.len() as u32)
            .map(|i| self.is_up(i))
            .collect();
        match (&mut self.nodes, helpers) {
            (Nodes::Gbps(nodes), helpers) if !attacked => {
                let (samples, byzantine) = (&mut self.samples, &self.byzantine);
                let tally = |sample: u32| samples.add(sample, byzantine[sample as usize]);
                self.messages += match helpers {
                    Some(helpers) => nodes.exchange_all(&order, &up, helpers, tally),
                    None => nodes.exchange_each(&order, &up, tally),
                };
            }
            (Nodes::Brahms(nodes), helpers) if !attacked => {
                let mut settling = settling::Settling::new(helpers);
                self.messages += nodes.exchange_each(&order, &up, &mut settling);
                settling.finish();
                self.collect_all_samples(&order);
            }
            (Nodes::Drivers(drivers), Some(helpers)) if !attacked => {
                let mut exchanges = exchanges::Exchanges::new(helpers, up);
                let mut peers = Vec::new();
                let mut ticked = Vec::new();
                for (k, &i) in order.iter().enumerate() {
                    nodes::prefetch_drivers_ahead(drivers, &order[k..]);
                    exchanges.free(drivers, i);
                    peers.clear();
                    if drivers[i as usize].plan_tick(&mut peers) {
                        exchanges.add_planned(drivers, i, &peers);
                    } else {
                        let sent = drivers[i as usize].tick();
                        drivers[i as usize].drain_samples(&mut ticked);
                        exchanges.add(drivers, i, sent);
                    }
                }
                let (messages, samples) = exchanges.done(drivers);
                self.messages += messages;
                self.tally(ticked.into_iter().chain(samples));
            }
            _ => {
                let mut queue = VecDeque::new();
                let mut settling = settling::Settling::new(helpers);
                for (k, &i) in order.iter().enumerate() {
                    self.nodes.prefetch_ahead(&order[k..]);
                    let sent = self.tick_leaving(i, &mut settling);
                    self.nodes.prefetch_recipients(&sent);
                    queue.extend(sent.into_iter().map(|o| (i, o)));
                    self.exchange(&mut queue);
                }
                settling.finish();
                self.collect_all_samples(&order);
            }
        }
        Ok(())
    }

    /// Delivers the messages in `queue` (a tick's, with their senders), and the answers
    /// they cause, at once.
    fn exchange(&mut self, queue: &mut VecDeque<(u32, Outgoing<u32>)>) {
        while let Some((from, Outgoing { to, message })) = queue.pop_front() {
            if let Some((_, ahead)) = queue.get(2) {
                self.nodes.prefetch_message(ahead.to);
            }
            self.messages += 1;
            if to as usize >= self.nodes.len() || !self.is_up(to) {
                if !self.byzantine[from as usize] {
                    self.nodes.send_failed(from, to);
                }
                continue;
            }
            let answers = self.answer(from, to, message);
            queue.extend(answers.into_iter().map(|o| (to, o)));
        }
    }

    /// Metrics of the current views.
    pub fn metrics(&mut self) -> CycleMetrics {
        self.snapshot().measure()
    }

    /// The current views and samples, to measure (the costly metrics' draws are made
    /// now, from the run's random stream).
    fn snapshot(&mut self) -> metrics::Snapshot {
        let costly = self.cycle.is_multiple_of(self.config.costly_metrics_every);
        let n = self.nodes.len();
        let mut views = Views::with_capacity(n, 32);
        for i in 0..n {
            views.push_with(|out| {
                if !self.byzantine[i] && self.is_up(i as u32) {
                    self.nodes.view_into(i as u32, out);
                }
            });
        }
        let alive: Vec<bool> = (0..n as u32).map(|i| self.is_up(i)).collect();
        let overlay = Overlay {
            views: &views,
            alive: &alive,
            byzantine: &self.byzantine,
        };
        let draws = metrics::costly_draws(&overlay, costly, &mut self.rng);
        metrics::Snapshot {
            cycle: self.cycle,
            views,
            alive,
            byzantine: self.byzantine.clone(),
            samples: self.samples.clone(),
            draws,
        }
    }

    /// Runs every cycle, writing the CSV header and one row per cycle to `out`;
    /// `progress` is called after every cycle with its metrics.
    pub fn run(
        &mut self,
        out: &mut impl Write,
        mut progress: impl FnMut(&CycleMetrics),
    ) -> Result<()> {
        writeln!(out, "{CSV_HEADER}")?;
        let mut record = |metrics: CycleMetrics| -> Result<()> {
            writeln!(out, "{}", metrics.csv_row())?;
            progress(&metrics);
            Ok(())
        };
        let started = std::time::Instant::now();
        match self.config.engine {
            Engine::Cycle => {
                // A cycle's metrics are taken on a thread of their own while the next
                // cycles run, and recorded in order.
                let helpers = helpers::Helpers::new(self.config.threads.saturating_sub(1));
                std::thread::scope(|scope| -> Result<()> {
                    let mut measuring = VecDeque::new();
                    for _ in 0..self.config.cycles {
                        self.step_cycle(Some(&helpers))?;
                        // At most `MEASURED_AT_ONCE` snapshots: the oldest is measured
                        // first (a cycle with the costly metrics takes a few cycles'
                        // time).
                        if measuring.len() == MEASURED_AT_ONCE {
                            if let Some(oldest) = measuring.pop_front() {
                                record(joined(oldest)?)?;
                            }
                        }
                        let snapshot = self.snapshot();
                        measuring.push_back(scope.spawn(move || snapshot.measure()));
                    }
                    measuring
                        .into_iter()
                        .try_for_each(|measured| record(joined(measured)?))
                })?;
            }
            Engine::Event => events::run(self, &mut record)?,
        }
        self.tally.elapsed = started.elapsed();
        Ok(())
    }

    /// Runs `apps` on every honest node (in virtual time: the event engine only).
    pub fn with_apps(mut self, apps: Vec<SimApp>) -> Result<Simulation> {
        if apps.is_empty() {
            return Ok(self);
        }
        if self.config.engine != Engine::Event {
            bail!("apps run in virtual time: use the event engine (--engine event)");
        }
        self.apps = Some(self.new_apps(apps));
        Ok(self)
    }

    /// Runs `scenario`'s timed actions (event engine). `components` holds each component
    /// it loads or replaces with, by path; an app it loads runs every `period` within
    /// `limits`.
    pub fn with_scenario(
        mut self,
        scenario: Scenario,
        components: std::collections::HashMap<std::path::PathBuf, crate::runtime::Prepared>,
        period: Duration,
        limits: crate::runtime::Limits,
    ) -> Result<Simulation> {
        if scenario.actions.is_empty() {
            return Ok(self);
        }
        if self.config.engine != Engine::Event {
            bail!("a scenario runs in virtual time: use the event engine (--engine event)");
        }
        let initial: Vec<String> = match &self.apps {
            Some(apps) => (0..apps.count())
                .map(|a| apps.name(a).to_string())
                .collect(),
            None => Vec::new(),
        };
        scenario.check_apps(&initial)?;
        let end = self.config.cycle_length() * self.config.cycles as u32;
        if let Some((i, late)) = scenario
            .actions
            .iter()
            .enumerate()
            .find(|(_, a)| a.at >= end)
        {
            bail!(
                "scenario action {} at {:?} comes after the run ends ({} cycles of {:?}: {:?})",
                i + 1,
                late.at,
                self.config.cycles,
                self.config.cycle_length(),
                end
            );
        }
        if let Some(path) = scenario
            .paths()
            .into_iter()
            .find(|p| !components.contains_key(*p))
        {
            bail!(
                "the scenario's component {} was not prepared",
                path.display()
            );
        }
        if self.apps.is_none() {
            self.apps = Some(self.new_apps(Vec::new()));
        }
        self.scenario = scenario;
        self.components = components;
        self.loaded_app_settings = (period, limits);
        Ok(self)
    }

    /// `apps` on every honest node, each node's wall clock skewed as the drift says
    /// (drawn from the run's seed).
    fn new_apps(&self, apps: Vec<SimApp>) -> SimApps {
        let mut rng = StdRng::seed_from_u64(crate::runtime::registry::derive_seed(
            self.config.seed,
            "clock-drift",
        ));
        let skews = self.config.drift.skews(self.nodes.len(), &mut rng);
        let byzantine = &self.byzantine;
        SimApps::new(apps, |i| !byzantine[i as usize], self.config.seed, skews)
    }

    /// Messages sent so far (delivered or lost).
    pub fn messages(&self) -> u64 {
        self.messages
    }
}

/// Snapshots of the cycle engine measured at once, at most.
const MEASURED_AT_ONCE: usize = 3;

/// The metrics a measuring thread took.
fn joined(thread: std::thread::ScopedJoinHandle<'_, CycleMetrics>) -> Result<CycleMetrics> {
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the thread measuring a cycle's metrics failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn config(sampler: &str, nodes: usize, seed: u64) -> SimConfig {
        SimConfig {
            sampler: SamplerConfig::from_name(sampler).unwrap(),
            nodes,
            cycles: 30,
            seed,
            bootstrap_peers: 3,
            topology: None,
            fail_fraction: 0.5,
            fail_at: 15,
            leave_rate: 0.0,
            join_rate: 0.0,
            byzantine: 0.0,
            attack_force: 1.0,
            engine: Engine::Cycle,
            network: NetworkModel::default(),
            outages: Outages::default(),
            drift: ClockDrift::default(),
            real_time_factor: 0.0,
            verbose: false,
            costly_metrics_every: 5,
            threads: 1,
        }
    }

    pub(super) fn csv(config: SimConfig) -> String {
        let mut out = Vec::new();
        Simulation::new(config)
            .unwrap()
            .run(&mut out, |_| {})
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The values of column `name`, one per cycle (NaN for empty cells).
    pub(super) fn column(csv: &str, name: &str) -> Vec<f64> {
        let i = CSV_HEADER.split(',').position(|c| c == name).unwrap();
        csv.lines()
            .skip(1)
            .map(|l| l.split(',').nth(i).unwrap().parse().unwrap_or(f64::NAN))
            .collect()
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

    /// The CSV of `config` run by the cycle engine with `helpers` (None: each exchange
    /// before the next tick, as the engine ran before it had batches).
    fn cycle_csv(config: SimConfig, helpers: Option<usize>) -> String {
        let mut sim = Simulation::new(config).unwrap();
        let pool = helpers.map(helpers::Helpers::new);
        let mut out = String::new();
        for _ in 0..sim.config.cycles {
            sim.step_cycle(pool.as_ref()).unwrap();
            out.push_str(&sim.metrics().csv_row());
            out.push('\n');
        }
        out.push_str(&format!("messages {}", sim.messages()));
        out
    }

    #[test]
    fn batched_exchanges_give_what_one_exchange_at_a_time_gives_on_any_number_of_threads() {
        for sampler in ["gbps", "brahms", "basalt"] {
            let mut c = config(sampler, 3000, 11);
            c.leave_rate = 0.02;
            c.join_rate = 0.3;
            let one_at_a_time = cycle_csv(c.clone(), None);
            for helpers in [0, 1, 3] {
                assert_eq!(
                    cycle_csv(c.clone(), Some(helpers)),
                    one_at_a_time,
                    "{sampler}, {helpers} helpers"
                );
            }
        }
    }

    #[test]
    fn gbps_overlay_stays_connected_and_heals_after_a_massive_failure() {
        let out = csv(config("gbps", 400, 1));
        let partitions = column(&out, "partitions");
        let indegree = column(&out, "indegree_mean");
        let dead = column(&out, "dead_links");
        assert_eq!(partitions[13], 1.0, "{out}");
        assert_eq!(indegree[13], 8.0, "every view full (c = 8): {out}");
        assert!(dead[14] > 0.2, "half the nodes failed: {out}");
        assert!(
            dead[29] < dead[14] / 4.0,
            "healer removes dead links: {out}"
        );
        assert_eq!(partitions[29], 1.0, "{out}");
        let uniformity = column(&out, "sample_uniformity");
        assert!(
            uniformity.iter().all(|u| u.is_finite() && *u >= 0.0),
            "{out}"
        );
        assert!(
            column(&out, "byz_view_share").iter().all(|v| v.is_nan()),
            "no attackers"
        );
    }

    #[test]
    fn attackers_eclipse_gbps_but_not_basalt() {
        // The Basalt paper's setting, scaled down: 10% attackers pushing 5x, views of 30.
        let attacked = |sampler: SamplerConfig| {
            let mut c = config("gbps", 600, 3);
            c.sampler = sampler;
            c.fail_fraction = 0.0;
            c.bootstrap_peers = 30;
            c.byzantine = 0.1;
            c.attack_force = 5.0;
            csv(c)
        };
        let gbps = attacked(SamplerConfig::parse_seed_json(
            r#"{"view_size": 30, "time": 1, "heal": 1, "swap": 14, "selection_policy": "rand", "propagation_policy": "pushpull", "age": 1}"#,
        ).unwrap());
        let basalt = attacked(
            SamplerConfig::parse_seed_json(r#"{"view_size": 30, "time": 1, "refresh": 1}"#)
                .unwrap(),
        );
        assert!(
            column(&gbps, "byz_view_share")[29] > 0.9,
            "GBPS is eclipsed: {gbps}"
        );
        let views = column(&basalt, "byz_view_share");
        assert!(
            views[29] < 0.3 && views[29] < views[0],
            "Basalt recovers: {basalt}"
        );
        let samples = column(&basalt, "byz_sample_share");
        assert!(
            samples[29] < 0.2,
            "Basalt's samples stay close to 10%: {basalt}"
        );
        assert_eq!(column(&basalt, "partitions")[29], 1.0, "{basalt}");
    }

    #[test]
    fn churn_takes_nodes_away_and_brings_them_back() {
        let mut c = config("gbps", 300, 5);
        c.fail_fraction = 0.0;
        c.leave_rate = 0.05;
        c.join_rate = 0.5;
        let out = csv(c);
        let dead = column(&out, "dead_links");
        assert!(dead.iter().all(|d| *d > 0.0 && *d < 0.5), "{out}");
        assert_eq!(column(&out, "partitions")[29], 1.0, "{out}");
    }

    #[test]
    fn bad_numbers_are_named() {
        let mut c = config("gbps", 10, 1);
        c.byzantine = 1.5;
        let error = Simulation::new(c).err().unwrap().to_string();
        assert!(error.contains("--byzantine"), "{error}");
        let mut c = config("connected", 10, 1);
        c.byzantine = 0.1;
        let error = Simulation::new(c).err().unwrap().to_string();
        assert!(error.contains("gossip sampler"), "{error}");
        let mut c = config("gbps", 10, 1);
        c.network.loss = 0.1;
        let error = Simulation::new(c).err().unwrap().to_string();
        assert!(error.contains("--engine event"), "{error}");
    }
}
