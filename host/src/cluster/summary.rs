//! What a cluster writes at the end: `nodes.jsonl`, one `run` summary per node and run,
//! and `summary.json`, the counters of every app and of the network added up over the
//! cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::network::ConnectionBudget;
use crate::node::Summary;
use crate::runtime::{AppCounts, CallTimes};

/// One line of `nodes.jsonl`: a node and its summary (the fields of `run`'s).
#[derive(Serialize)]
struct NodeLine<'a> {
    index: usize,
    /// 0 for its first start, 1 after its first restart, ...
    run: usize,
    peer_id: &'a str,
    #[serde(flatten)]
    summary: &'a Summary,
}

/// What the whole cluster did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterSummary {
    /// Nodes started.
    pub nodes: usize,
    /// Restarts of nodes (through the admin socket).
    pub restarts: usize,
    /// Per app name: the nodes that ran it and their counters added up.
    pub apps: std::collections::BTreeMap<String, AppTotal>,
    /// Nodes with an app that ended `failed`.
    pub nodes_with_failed_apps: usize,
    /// The network's counters over every node.
    pub network: NetworkTotal,
}

/// The network's counters over the cluster.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NetworkTotal {
    /// Most connections open or being opened at once, by all nodes together.
    pub connections_peak: usize,
    /// The process's connection budget (from its open-files limit).
    pub connection_budget: usize,
    /// Connections, frames and messages refused, by reason, over every node.
    pub refused: BTreeMap<&'static str, u64>,
    /// App requests sent once more because their connection closed before the answer.
    pub requests_sent_again: u64,
    /// App requests sent again that were answered from memory, not delivered twice.
    pub repeats_answered: u64,
}

/// One app's counters over the cluster.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AppTotal {
    /// Nodes that ran it.
    pub nodes: usize,
    /// Their counters (every run and version, loaded or unloaded), added up.
    #[serde(flatten)]
    pub counts: AppCounts,
    /// Median lateness of their `periodic-run` calls, in microseconds (within ~19%).
    pub cycle_lateness_p50_us: u64,
    /// 99th-percentile lateness of their `periodic-run` calls, in microseconds.
    pub cycle_lateness_p99_us: u64,
}

/// A node's run that ended, with its summary.
pub(super) struct NodeRun {
    /// The node.
    pub index: usize,
    /// 0 for its first start, 1 after its first restart, ...
    pub run: usize,
    /// What `run` would have printed.
    pub summary: Summary,
}

/// Writes `out/nodes.jsonl` (the runs by node, then run) and `out/summary.json` (the
/// nodes being `peer_ids.len()`, restarted `restarts` times, within `connections`);
/// returns the summary.
pub(super) fn write(
    out: &Path,
    mut runs: Vec<NodeRun>,
    peer_ids: &[&str],
    restarts: usize,
    connections: &ConnectionBudget,
) -> Result<ClusterSummary> {
    runs.sort_by_key(|run| (run.index, run.run));
    let mut summary = ClusterSummary {
        nodes: peer_ids.len(),
        restarts,
        network: NetworkTotal {
            connections_peak: connections.peak(),
            connection_budget: connections.limit(),
            ..NetworkTotal::default()
        },
        ..ClusterSummary::default()
    };
    let mut app_nodes: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    let mut lateness: BTreeMap<&str, CallTimes> = BTreeMap::new();
    let mut failed_nodes = BTreeSet::new();
    let mut lines = String::new();
    for run in &runs {
        if !run.summary.failed_apps().is_empty() {
            failed_nodes.insert(run.index);
        }
        let network = &run.summary.network;
        for (reason, count) in &network.refused {
            *summary.network.refused.entry(reason).or_default() += count;
        }
        summary.network.requests_sent_again += network.requests_sent_again;
        summary.network.repeats_answered += network.repeats_answered;
        let finished = run.summary.apps.iter();
        let unloaded = run
            .summary
            .unloaded
            .iter()
            .map(|info| (&info.name, &info.stats));
        for (name, stats) in finished.chain(unloaded) {
            summary.apps.entry(name.clone()).or_default().counts += stats.counts;
            app_nodes.entry(name).or_default().insert(run.index);
            lateness
                .entry(name)
                .or_default()
                .merge(stats.cycle_lateness());
        }
        let line = NodeLine {
            index: run.index,
            run: run.run,
            peer_id: peer_ids[run.index],
            summary: &run.summary,
        };
        lines.push_str(&serde_json::to_string(&line)?);
        lines.push('\n');
    }
    for (name, nodes) in app_nodes {
        if let Some(total) = summary.apps.get_mut(name) {
            total.nodes = nodes.len();
            let lateness = &lateness[name];
            total.cycle_lateness_p50_us = lateness.quantile(0.5);
            total.cycle_lateness_p99_us = lateness.quantile(0.99);
        }
    }
    summary.nodes_with_failed_apps = failed_nodes.len();
    let nodes_path = out.join("nodes.jsonl");
    std::fs::write(&nodes_path, lines)
        .with_context(|| format!("cannot write {}", nodes_path.display()))?;
    let summary_path = out.join("summary.json");
    std::fs::write(&summary_path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("cannot write {}", summary_path.display()))?;
    Ok(summary)
}
