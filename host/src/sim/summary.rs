//! What an event-driven run reports: the summary (the seed's result keys plus the apps'
//! totals) and one row per node.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::timeline::LatencyTally;
use super::{node_peer_id, AppsSummary, Simulation, Status};
use crate::runtime::{AppCounts, AppState};
use crate::sampling::SamplingCounts;

/// Counters the event engine keeps.
#[derive(Clone, Debug, Default)]
pub(super) struct EventTally {
    /// Events handled.
    pub events: u64,
    /// Messages (sampling and app) handed to a node that was up.
    pub delivered: u64,
    /// Messages lost, cut by a partition, or sent to a node that was down.
    pub dropped: u64,
    /// Times a node went offline.
    pub disconnections: u64,
    /// Virtual time reached, in µs.
    pub now: u64,
    /// One-way latency of the app messages delivered.
    pub latency: LatencyTally,
    /// Real time the run took.
    pub elapsed: Duration,
    /// The apps' counters of the interval under way.
    pub interval: super::timeline::IntervalCounts,
}

/// Each node's state at the end, written as `{"node_0": "online", ...}` in node order.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeStates(Vec<&'static str>);

impl Serialize for NodeStates {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.0
                .iter()
                .enumerate()
                .map(|(i, state)| (format!("node_{i}"), state)),
        )
    }
}

/// The last stdout line of an event-driven run: the seed's result keys, then what the
/// apps did. Everything but `real_time_elapsed_ms` and `time_acceleration` is the same
/// for the same seed and inputs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSummary {
    /// Virtual time at the end, in µs.
    pub current_sim_time_us: u64,
    /// Events handled (ticks, deliveries, app calls, outages).
    pub events_processed: u64,
    /// Messages (sampling and app) handed to a node that was up.
    pub messages_delivered: u64,
    /// Messages lost, cut by a partition, or sent to a node that was down.
    pub messages_dropped: u64,
    /// Times a node went offline.
    pub disconnection_events: u64,
    /// Each node at the end: online, offline, left (churn) or failed.
    pub node_states: NodeStates,
    /// Real time the run took, in ms.
    pub real_time_elapsed_ms: u64,
    /// Virtual time over real time.
    pub time_acceleration: f64,
    /// One-way latency of the app messages delivered, in virtual time.
    pub app_delivery_latency: LatencyTally,
    /// Per-app totals and the app messages the network lost.
    #[serde(flatten)]
    pub apps: AppsSummary,
}

/// One node's line of `--nodes-out` (JSON lines).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeRow {
    /// The node's number.
    pub node: u32,
    /// Its name in the seed's terms, `node_I`.
    pub name: String,
    /// The peer id its apps see.
    pub peer_id: String,
    /// Online, offline, left or failed.
    pub state: &'static str,
    /// Whether it is one of the attackers.
    pub byzantine: bool,
    /// Peers in its sampler's view at the end.
    pub view_size: usize,
    /// What its sampler did (counted as the live node's summary counts it; zero for an
    /// attacker).
    pub sampling: SamplingCounts,
    /// Its apps, by name.
    pub apps: BTreeMap<String, NodeApp>,
}

/// One app on one node, at the end.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeApp {
    /// Where it stands.
    pub state: AppState,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Linear memory it holds, in bytes.
    pub memory_bytes: u64,
    /// Payload bytes it received.
    pub bytes_in: u64,
    /// Payload bytes it queued.
    pub bytes_out: u64,
    /// Median cost of its calls, in µs at 1,000 instructions per µs.
    pub call_time_p50_us: u64,
    /// 99th-percentile cost of its calls, likewise.
    pub call_time_p99_us: u64,
    /// Cycles and messages.
    #[serde(flatten)]
    pub counts: AppCounts,
}

impl Simulation {
    fn state_of(&self, i: u32) -> &'static str {
        match self.status[i as usize] {
            Status::Left => "left",
            Status::Failed => "failed",
            Status::Up if self.is_online(i) => "online",
            Status::Up => "offline",
        }
    }

    /// The run's summary (event engine).
    pub fn summary(&self) -> RunSummary {
        let t = &self.tally;
        let real_ms = t.elapsed.as_millis() as u64;
        RunSummary {
            current_sim_time_us: t.now,
            events_processed: t.events,
            messages_delivered: t.delivered,
            messages_dropped: t.dropped,
            disconnection_events: t.disconnections,
            node_states: NodeStates(
                (0..self.nodes.len() as u32)
                    .map(|i| self.state_of(i))
                    .collect(),
            ),
            real_time_elapsed_ms: real_ms,
            time_acceleration: t.now as f64 / 1e6 / t.elapsed.as_secs_f64().max(1e-6),
            app_delivery_latency: t.latency,
            apps: self.apps.as_ref().map(|a| a.summary()).unwrap_or_default(),
        }
    }

    /// One row per node, in node order.
    pub fn node_rows(&self) -> impl Iterator<Item = NodeRow> + '_ {
        (0..self.nodes.len() as u32).map(|i| NodeRow {
            node: i,
            name: format!("node_{i}"),
            peer_id: match &self.apps {
                Some(apps) => apps.id(i).to_string(),
                None => node_peer_id(i).to_string(),
            },
            state: self.state_of(i),
            byzantine: self.byzantine[i as usize],
            view_size: if self.byzantine[i as usize] {
                0
            } else {
                self.nodes.view(i).len()
            },
            sampling: self.nodes.counts(i),
            apps: self
                .apps
                .as_ref()
                .map(|apps| apps.node_apps(i))
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_keep_min_mean_max_and_states_serialise_in_node_order() {
        let mut t = LatencyTally::default();
        for us in [5_000, 6_000, 4_000] {
            t.record(us);
        }
        assert_eq!(
            (t.count, t.min_us, t.mean_us, t.max_us),
            (3, 4_000, 5_000, 6_000)
        );
        let states = NodeStates(vec!["online"; 12]);
        let json = serde_json::to_string(&states).unwrap();
        assert!(
            json.starts_with(r#"{"node_0":"online","node_1":"online","node_2""#),
            "{json}"
        );
        assert!(json.ends_with(r#""node_11":"online"}"#), "{json}");
    }
}
