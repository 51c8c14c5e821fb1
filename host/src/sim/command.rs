//! `nodemanager simulate`'s options, and the simulation they describe.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use super::{Engine, LinkLatency, NetworkModel, Scenario, SeedSimConfig, SimConfig, Simulation};
use crate::cli::{limits_json, name_value, CacheArgs};
use crate::config::{AppSpec, SamplerConfig};
use crate::duration::parse_duration;
use crate::runtime::{Limits, Runtime};
use crate::sampling::{StaticConfig, Topology};

#[derive(Args)]
pub struct SimulateArgs {
    /// Sampler every node runs (connected, gbps, brahms, basalt, static), default
    /// parameters [default: the topology file's, else gbps].
    #[arg(long, conflicts_with = "sampler_config")]
    pub sampler: Option<String>,
    /// Sampler settings as the seed's `.create(path)` writes them (JSON).
    #[arg(long, value_name = "FILE.json")]
    pub sampler_config: Option<PathBuf>,
    /// Number of nodes [default: the topology's].
    #[arg(long, required_unless_present = "topology")]
    pub nodes: Option<usize>,
    /// Number of cycles [default with --sim-config: as many as its max_sim_time_us
    /// holds].
    #[arg(long, required_unless_present = "sim_config")]
    pub cycles: Option<u64>,
    /// The seed's simulation config (`DiscreteEventSimConfig(...).to_rust_config()` as
    /// JSON; nodes named node_0 ...): latency, jitter factor, per-pair latencies,
    /// partitions, disconnections, clock drift, run length, real-time factor.
    #[arg(long, value_name = "FILE.json", conflicts_with_all = ["latency", "jitter_factor"])]
    pub sim_config: Option<PathBuf>,
    /// Initial links (and the static sampler's for good): the seed's topology YAML or
    /// CSR JSON; node i is node_{i+1}.
    #[arg(long, value_name = "FILE")]
    pub topology: Option<PathBuf>,
    /// Seed of every random choice: same seed, same CSV, byte for byte.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Random peers each node knows at start.
    #[arg(long, default_value_t = 5)]
    pub bootstrap_peers: usize,
    /// Fraction of the nodes that fail at once at --fail-at.
    #[arg(long, default_value_t = 0.0)]
    pub fail_fraction: f64,
    /// Cycle of the massive failure.
    #[arg(long, default_value_t = 0)]
    pub fail_at: u64,
    /// Probability that a live honest node leaves, per cycle (churn).
    #[arg(long, default_value_t = 0.0)]
    pub leave_rate: f64,
    /// Probability that a node that left comes back, per cycle (churn).
    #[arg(long, default_value_t = 0.0)]
    pub join_rate: f64,
    /// Fraction of Byzantine nodes (the Basalt paper's colluding attackers).
    #[arg(long, default_value_t = 0.0)]
    pub byzantine: f64,
    /// Attackers push this many times as often as an honest node.
    #[arg(long, default_value_t = 1.0)]
    pub attack_force: f64,
    /// Engine: cycle (instant delivery, fast) or event (virtual time, latency, loss)
    /// [default: event if a latency, jitter, loss or link is given, else cycle].
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// One-way latency of every link (event engine), e.g. 50ms.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub latency: Duration,
    /// Uniform jitter added to each message's latency (event engine), e.g. 20ms.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub jitter: Duration,
    /// Jitter relative to each link's latency: up to this fraction of it is added
    /// (event engine; the seed's jitter_factor).
    #[arg(long, default_value_t = 0.0)]
    pub jitter_factor: f64,
    /// Probability that a message is lost (event engine).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Let virtual time run at most this many times faster than real time; 0:
    /// unlimited [default: --sim-config's real_time_factor, else 0].
    #[arg(long)]
    pub real_time_factor: Option<f64>,
    /// A per-link latency, A-B=LATENCY (e.g. 3-7=250ms); repeatable (event engine).
    #[arg(long = "link", value_name = "A-B=LATENCY")]
    pub links: Vec<LinkLatency>,
    /// Compute clustering and path length every this many cycles (empty otherwise).
    #[arg(long, default_value_t = 10)]
    pub costly_metrics_every: u64,
    /// Threads that run the samplers' exchanges (cycle engine) or the apps' calls (event
    /// engine); the output is the same for any number [default: the machine's cores; 1
    /// with --log-file, so that the log's lines keep one order].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// CSV output file.
    #[arg(long, value_name = "FILE.csv")]
    pub out: PathBuf,
    /// Also draw the main metrics per cycle to this PNG or SVG file.
    #[arg(long, value_name = "FILE.png|FILE.svg")]
    pub plot: Option<PathBuf>,
    /// An app every honest node runs in virtual time (repeatable); needs the event
    /// engine, the default with apps. The last stdout line is then a JSON summary.
    #[arg(long = "app", value_name = "PATH[:NAME]", value_parser = AppSpec::from_arg)]
    pub apps: Vec<AppSpec>,
    /// The config string of app NAME; `{index}` in it becomes the node's number,
    /// `{node}` its name (node_I).
    #[arg(long, value_name = "NAME=CONFIG", value_parser = name_value)]
    pub app_config: Vec<(String, String)>,
    /// One config per node for app NAME: line I of FILE is node I's.
    #[arg(long, value_name = "NAME=FILE", value_parser = name_value)]
    pub app_config_file: Vec<(String, String)>,
    /// Time between an app's cycles [default: the sampler's period].
    #[arg(long, value_parser = parse_duration)]
    pub app_period: Option<Duration>,
    /// A limit of every app, e.g. memory_mib=64 or call_deadline=200ms (repeatable).
    /// The CPU deadline is counted in instructions (1,000,000 per ms), so a run
    /// replays exactly under any load.
    #[arg(long = "limit", value_name = "KEY=VALUE", value_parser = name_value)]
    pub limits: Vec<(String, String)>,
    /// Timed actions: at a virtual time, disconnect or reconnect nodes, change the
    /// latency, load, replace or unload an app on chosen nodes (docs/simulation.md).
    #[arg(long, value_name = "FILE.toml")]
    pub scenario: Option<PathBuf>,
    /// Write what the apps did per interval (a sampler period) as CSV: messages sent,
    /// delivered, failed, unknown, dropped, delivery latency, messages per node.
    #[arg(long, value_name = "FILE.csv", requires = "apps")]
    pub metrics_out: Option<PathBuf>,
    /// Write one JSON line per node at the end (state, view size, each app's counters).
    #[arg(long, value_name = "FILE.jsonl")]
    pub nodes_out: Option<PathBuf>,
    /// Write the log here: guests' lines (and, with the seed's verbose_logging, every
    /// app message's fate and every outage) tagged with virtual node and time
    /// [default: warnings to stderr].
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// A simulation ready to run, and what its report says about it.
pub struct PreparedSimulation {
    /// The virtual network, its apps and its scenario.
    pub simulation: Simulation,
    /// The plot's title: nodes, sampler and its parameters, attack, seed.
    pub title: String,
    /// Virtual nodes.
    pub nodes: usize,
    /// Cycles it runs.
    pub cycles: u64,
    /// The engine it runs on.
    pub engine: Engine,
    /// How much faster than real time virtual time may run (0: unlimited).
    pub real_time_factor: f64,
}

impl SimulateArgs {
    /// Reads the files these options name (sampler config, topology, the seed's
    /// simulation config, scenario, components) and builds the simulation.
    pub fn prepare(&self) -> Result<PreparedSimulation> {
        let topology = self
            .topology
            .as_deref()
            .map(Topology::from_file)
            .transpose()?
            .map(Arc::new);
        let sampler = match (&self.sampler_config, self.sampler.as_deref(), &topology) {
            (Some(path), _, _) => SamplerConfig::from_seed_json(path)?,
            (None, Some("static"), _) => SamplerConfig::Static(StaticConfig {
                topology: self
                    .topology
                    .clone()
                    .context("--sampler static needs --topology FILE")?,
                node: None,
                period: Duration::from_secs(1),
            }),
            (None, Some(name), _) => SamplerConfig::from_name(name)?,
            (None, None, topology) => match topology.as_ref().and_then(|t| t.sampler()) {
                Some(sampler) => sampler.clone(),
                None => SamplerConfig::from_name("gbps")?,
            },
        };
        let nodes = match (self.nodes, &topology) {
            (Some(n), _) => n,
            (None, Some(topology)) => topology.len(),
            (None, None) => bail!("--nodes is needed without --topology"),
        };
        let seed_config = self
            .sim_config
            .as_deref()
            .map(|path| SeedSimConfig::from_file(path, nodes))
            .transpose()?;
        let mut network = match &seed_config {
            Some(seed) => seed.network.clone(),
            None => NetworkModel {
                latency: self.latency,
                jitter_factor: self.jitter_factor,
                ..NetworkModel::default()
            },
        };
        network.jitter = self.jitter;
        network.loss = self.loss;
        network.links.extend(self.links.iter().cloned());
        let scenario = self
            .scenario
            .as_deref()
            .map(|path| Scenario::from_file(path, nodes))
            .transpose()?
            .unwrap_or_default();
        let engine = self.engine.unwrap_or(
            if network.is_ideal()
                && self.apps.is_empty()
                && seed_config.is_none()
                && scenario.actions.is_empty()
            {
                Engine::Cycle
            } else {
                Engine::Event
            },
        );
        let cycle_length = sampler.period().unwrap_or(Duration::from_secs(1));
        let cycles = match (self.cycles, &seed_config) {
            (Some(cycles), _) => cycles,
            (None, Some(seed)) => seed
                .max_sim_time
                .as_micros()
                .div_ceil(cycle_length.as_micros().max(1)) as u64,
            (None, None) => bail!("--cycles is needed without --sim-config"),
        };
        let real_time_factor = self
            .real_time_factor
            .or(seed_config.as_ref().map(|s| s.real_time_factor))
            .unwrap_or(0.0);
        let config = SimConfig {
            sampler,
            nodes,
            cycles,
            seed: self.seed,
            bootstrap_peers: self.bootstrap_peers,
            topology,
            fail_fraction: self.fail_fraction,
            fail_at: self.fail_at,
            leave_rate: self.leave_rate,
            join_rate: self.join_rate,
            byzantine: self.byzantine,
            attack_force: self.attack_force,
            engine,
            network,
            outages: seed_config
                .as_ref()
                .map(|s| s.outages.clone())
                .unwrap_or_default(),
            drift: seed_config
                .as_ref()
                .map(|s| s.drift.clone())
                .unwrap_or_default(),
            real_time_factor,
            verbose: seed_config.as_ref().is_some_and(|s| s.verbose_logging),
            costly_metrics_every: self.costly_metrics_every,
            threads: match (self.threads, &self.log_file) {
                (Some(threads), _) => usize::from(threads),
                (None, Some(_)) => 1,
                (None, None) => std::thread::available_parallelism().map_or(1, usize::from),
            },
        };
        let app_period = self.app_period.unwrap_or(config.cycle_length());
        let limits: Limits =
            serde_json::from_value(limits_json(&self.limits)?.into()).context("--limit")?;
        let runtime = if self.apps.is_empty() && scenario.paths().is_empty() {
            None
        } else {
            Some(Runtime::counting_instructions(&self.cache.dir())?)
        };
        let (apps, components) = match &runtime {
            None => (Vec::new(), HashMap::new()),
            Some(runtime) => {
                let mut apps = super::apps::prepare(
                    runtime,
                    &self.apps,
                    &self.app_config,
                    app_period,
                    &limits,
                )?;
                super::apps::set_config_files(&mut apps, &self.app_config_file, nodes)?;
                let components = scenario
                    .paths()
                    .into_iter()
                    .map(|path| Ok((path.to_path_buf(), runtime.load_component(path)?)))
                    .collect::<Result<HashMap<_, _>>>()?;
                (apps, components)
            }
        };
        let label = self.label(config.sampler.summary());
        let simulation = Simulation::new(config)?
            .with_apps(apps)?
            .with_scenario(scenario, components, app_period, limits)?;
        Ok(PreparedSimulation {
            simulation,
            title: format!("{nodes} nodes, {label}, seed {}", self.seed),
            nodes,
            cycles,
            engine,
            real_time_factor,
        })
    }

    /// What the plot title says about the run's sampler (with its parameters) and attack.
    fn label(&self, sampler: String) -> String {
        if self.byzantine > 0.0 {
            format!(
                "{sampler}, {:.0}% Byzantine x{}",
                self.byzantine * 100.0,
                self.attack_force
            )
        } else {
            sampler
        }
    }
}
