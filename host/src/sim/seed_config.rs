//! The seed's simulation configuration, as `DiscreteEventSimConfig(...).to_rust_config()`
//! writes it (JSON), read into this simulator's terms. Nodes are named `node_0` …
//! `node_{N-1}`, as the seed names its virtual nodes. Missing fields take the seed's
//! defaults; unknown fields and bad values are refused, naming the field.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

use super::conditions::{ClockDrift, Outages, Partitions, RandomFailures, ScheduledOutage};
use super::network::{LinkLatency, NetworkModel};

/// A seed simulation configuration, in this simulator's terms.
#[derive(Clone, Debug, PartialEq)]
pub struct SeedSimConfig {
    /// Latency, jitter factor, per-pair latencies and partitions.
    pub network: NetworkModel,
    /// Permanent, scheduled and random outages.
    pub outages: Outages,
    /// Which nodes' clocks drift, and how far.
    pub drift: ClockDrift,
    /// The seed's scheduler step: events here are exact to the µs, so it changes
    /// nothing (it is checked all the same).
    pub time_step: Duration,
    /// How long the run lasts in virtual time.
    pub max_sim_time: Duration,
    /// How many times faster than real time virtual time may run (0: unlimited).
    pub real_time_factor: f64,
    /// Log every app message's fate (delivered, dropped and why).
    pub verbose_logging: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Json {
    latency_config: LatencyJson,
    disconnection_config: DisconnectionJson,
    sync_config: SyncJson,
    time_step_us: u64,
    max_sim_time_us: u64,
    real_time_factor: f64,
    verbose_logging: bool,
}

impl Default for Json {
    fn default() -> Json {
        Json {
            latency_config: LatencyJson::default(),
            disconnection_config: DisconnectionJson::default(),
            sync_config: SyncJson::default(),
            time_step_us: 1_000,
            max_sim_time_us: 3_600_000_000,
            real_time_factor: 1.0,
            verbose_logging: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LatencyJson {
    base_latency_us: u64,
    jitter_factor: f64,
    custom_latencies: BTreeMap<String, u64>,
    partitions: BTreeMap<String, Vec<String>>,
}

impl Default for LatencyJson {
    fn default() -> LatencyJson {
        LatencyJson {
            base_latency_us: 1_000,
            jitter_factor: 0.1,
            custom_latencies: BTreeMap::new(),
            partitions: BTreeMap::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DisconnectionJson {
    time_step_us: u64,
    failure_probability: f64,
    recovery_time_us: u64,
    recovery_variance: f64,
    permanently_offline: Vec<String>,
    scheduled_disconnections: Vec<(String, u64, u64)>,
}

impl Default for DisconnectionJson {
    fn default() -> DisconnectionJson {
        DisconnectionJson {
            time_step_us: 1_000_000,
            failure_probability: 0.0,
            recovery_time_us: 5_000_000,
            recovery_variance: 0.2,
            permanently_offline: Vec::new(),
            scheduled_disconnections: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SyncJson {
    sync_node_count: usize,
    sync_interval_us: u64,
    max_drift_us: u64,
    sync_node_ids: Vec<String>,
}

impl Default for SyncJson {
    fn default() -> SyncJson {
        SyncJson {
            sync_node_count: 0,
            sync_interval_us: 100_000,
            max_drift_us: 10_000,
            sync_node_ids: Vec::new(),
        }
    }
}

/// Node `name` (`node_I`) of a run of `nodes` nodes, for field `field`.
fn node(field: &str, name: &str, nodes: usize) -> Result<u32> {
    let number = name.strip_prefix("node_").and_then(|i| i.parse().ok());
    numbered_node(field, name, number, nodes)
}

/// The node numbered `number` (read from `name`; `None` if it names none) of a run of
/// `nodes` nodes; the error names `field`.
pub(super) fn numbered_node(
    field: &str,
    name: &str,
    number: Option<u32>,
    nodes: usize,
) -> Result<u32> {
    number.filter(|&i| (i as usize) < nodes).with_context(|| {
        format!(
            "{field}: {name:?} is not a node of this run (they are node_0 to node_{})",
            nodes - 1
        )
    })
}

fn fraction(field: &str, value: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&value) {
        bail!("{field} must be between 0 and 1, not {value}");
    }
    Ok(value)
}

impl SeedSimConfig {
    /// Reads the file at `path` for a run of `nodes` nodes.
    pub fn from_file(path: &Path, nodes: usize) -> Result<SeedSimConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read simulation config {}", path.display()))?;
        Self::parse(&text, nodes)
            .with_context(|| format!("simulation config {} is not valid", path.display()))
    }

    /// Parses the seed's JSON for a run of `nodes` nodes.
    pub fn parse(text: &str, nodes: usize) -> Result<SeedSimConfig> {
        let json: Json =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text))
                .map_err(|e| anyhow::anyhow!("{}: {}", e.path(), e.inner()))?;
        let latency = json.latency_config;
        let mut network = NetworkModel {
            latency: Duration::from_micros(latency.base_latency_us),
            jitter_factor: fraction("latency_config.jitter_factor", latency.jitter_factor)?,
            ..NetworkModel::default()
        };
        for (pair, micros) in &latency.custom_latencies {
            let field = "latency_config.custom_latencies";
            let (a, b) = pair
                .split_once(',')
                .with_context(|| format!("{field}: {pair:?} is not \"SENDER,RECEIVER\""))?;
            network.links.push(LinkLatency {
                a: node(field, a.trim(), nodes)?,
                b: node(field, b.trim(), nodes)?,
                latency: Duration::from_micros(*micros),
                both_ways: false,
            });
        }
        network.partitions = partitions(&latency.partitions, nodes)?;

        let d = json.disconnection_config;
        let field = "disconnection_config.permanently_offline";
        let permanently_offline = d
            .permanently_offline
            .iter()
            .map(|name| node(field, name, nodes))
            .collect::<Result<_>>()?;
        let field = "disconnection_config.scheduled_disconnections";
        let scheduled = d
            .scheduled_disconnections
            .iter()
            .map(|(name, start, duration)| {
                Ok(ScheduledOutage {
                    node: node(field, name, nodes)?,
                    start: Duration::from_micros(*start),
                    duration: Duration::from_micros(*duration),
                })
            })
            .collect::<Result<_>>()?;
        let probability = fraction(
            "disconnection_config.failure_probability",
            d.failure_probability,
        )?;
        let recovery_variance = fraction(
            "disconnection_config.recovery_variance",
            d.recovery_variance,
        )?;
        if d.time_step_us == 0 {
            bail!("disconnection_config.time_step_us must be above 0");
        }
        let outages = Outages {
            permanently_offline,
            scheduled,
            random: (probability > 0.0).then(|| RandomFailures {
                time_step: Duration::from_micros(d.time_step_us),
                probability,
                recovery_time: Duration::from_micros(d.recovery_time_us),
                recovery_variance,
            }),
        };

        let s = json.sync_config;
        if s.sync_node_count > nodes {
            bail!(
                "sync_config.sync_node_count is {} but the run has {nodes} nodes",
                s.sync_node_count
            );
        }
        if s.sync_interval_us == 0 {
            bail!("sync_config.sync_interval_us must be above 0");
        }
        let mut synchronised = s
            .sync_node_ids
            .iter()
            .map(|name| node("sync_config.sync_node_ids", name, nodes))
            .collect::<Result<std::collections::BTreeSet<u32>>>()?;
        // The count fills the set up with the first nodes not named.
        let mut next = 0;
        while synchronised.len() < s.sync_node_count {
            synchronised.insert(next);
            next += 1;
        }
        let drift = ClockDrift {
            max_drift: Duration::from_micros(s.max_drift_us),
            synchronised,
        };

        if json.time_step_us == 0 {
            bail!("time_step_us must be above 0");
        }
        if json.max_sim_time_us == 0 {
            bail!("max_sim_time_us must be above 0");
        }
        if !(json.real_time_factor >= 0.0 && json.real_time_factor.is_finite()) {
            bail!(
                "real_time_factor must be a number of at least 0 (0: unlimited), not {}",
                json.real_time_factor
            );
        }
        Ok(SeedSimConfig {
            network,
            outages,
            drift,
            time_step: Duration::from_micros(json.time_step_us),
            max_sim_time: Duration::from_micros(json.max_sim_time_us),
            real_time_factor: json.real_time_factor,
            verbose_logging: json.verbose_logging,
        })
    }
}

/// The seed's `partitions`: a key naming a node cuts it from each listed node; any
/// other key names a group of the listed nodes, cut from every other group.
fn partitions(json: &BTreeMap<String, Vec<String>>, nodes: usize) -> Result<Partitions> {
    let field = "latency_config.partitions";
    let mut partitions = Partitions::default();
    for (group, (key, members)) in json.iter().enumerate() {
        let members = members
            .iter()
            .map(|name| node(field, name, nodes))
            .collect::<Result<Vec<u32>>>()?;
        if key.starts_with("node_") {
            let from = node(field, key, nodes)?;
            members.iter().for_each(|&to| partitions.cut(from, to));
        } else {
            for &member in &members {
                partitions.join_group(member, group as u32, nodes);
            }
        }
    }
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = include_str!("../../../tests/fixtures/seed-sim-full.json");

    #[test]
    fn the_seeds_own_output_is_read_field_by_field() {
        let c = SeedSimConfig::parse(FULL, 10).unwrap();
        assert_eq!(c.network.latency, Duration::from_millis(5));
        assert_eq!(c.network.jitter_factor, 0.2);
        assert_eq!(
            c.network.links,
            vec![LinkLatency {
                a: 1,
                b: 2,
                latency: Duration::from_millis(40),
                both_ways: false
            }]
        );
        assert!(c.network.partitions.separates(0, 3) && c.network.partitions.separates(4, 0));
        assert!(!c.network.partitions.separates(0, 1));
        assert_eq!(c.outages.permanently_offline, vec![5]);
        assert_eq!(
            c.outages.scheduled,
            vec![ScheduledOutage {
                node: 6,
                start: Duration::from_secs(2),
                duration: Duration::from_secs(3)
            }]
        );
        let random = c.outages.random.unwrap();
        assert_eq!(random.probability, 0.01);
        assert_eq!(random.recovery_time, Duration::from_secs(3));
        assert_eq!(c.drift.synchronised, [0, 1].into());
        assert_eq!(c.drift.max_drift, Duration::from_millis(10));
        assert_eq!(c.max_sim_time, Duration::from_secs(20));
        assert_eq!(c.real_time_factor, 1.0);
        let default = SeedSimConfig::parse(
            include_str!("../../../tests/fixtures/seed-sim-default.json"),
            3,
        )
        .unwrap();
        assert_eq!(default, SeedSimConfig::parse("{}", 3).unwrap());
        assert!(default.outages.is_empty() && default.network.partitions.is_empty());
    }

    #[test]
    fn groups_of_a_partition_cannot_reach_each_other() {
        let c = SeedSimConfig::parse(
            r#"{"latency_config": {"partitions": {"east": ["node_0", "node_1"], "west": ["node_2"]}}}"#,
            4,
        )
        .unwrap();
        let p = &c.network.partitions;
        assert!(!p.separates(0, 1) && p.separates(1, 2) && !p.separates(3, 2));
    }

    #[test]
    fn bad_values_name_their_field() {
        for (json, nodes, expected) in [
            (r#"{"latency_config": {"jitter_factor": 2}}"#, 3, "latency_config.jitter_factor must be between 0 and 1"),
            (r#"{"latency_config": {"base_latency_us": "5"}}"#, 3, "latency_config.base_latency_us: invalid type"),
            (r#"{"latency_config": {"custom_latencies": {"node_1,node_7": 5}}}"#, 3, "latency_config.custom_latencies: \"node_7\" is not a node of this run (they are node_0 to node_2)"),
            (r#"{"latency_config": {"custom_latencies": {"node_1": 5}}}"#, 3, "is not \"SENDER,RECEIVER\""),
            (r#"{"disconnection_config": {"failure_probability": -0.1}}"#, 3, "disconnection_config.failure_probability"),
            (r#"{"disconnection_config": {"scheduled_disconnections": [["n1", 1, 2]]}}"#, 3, "scheduled_disconnections: \"n1\""),
            (r#"{"disconnection_config": {"scheduled_disconnections": [["node_1", 1]]}}"#, 3, "disconnection_config.scheduled_disconnections[0]"),
            (r#"{"sync_config": {"sync_node_count": 4}}"#, 3, "sync_node_count is 4"),
            (r#"{"real_time_factor": -1}"#, 3, "real_time_factor must be"),
            (r#"{"max_sim_time_us": 0}"#, 3, "max_sim_time_us must be above 0"),
            (r#"{"latency": 5}"#, 3, "unknown field `latency`"),
        ] {
            let error = format!("{:#}", SeedSimConfig::parse(json, nodes).unwrap_err());
            assert!(error.contains(expected), "{json}: {error}");
        }
    }
}
