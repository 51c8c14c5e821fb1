//! Many full nodes in one process (`nodemanager cluster`): each its own identity,
//! swarm on its own 127.0.0.1 port, sampler and apps, speaking what `run` speaks; one
//! tokio runtime, one wasmtime engine with one compiled copy of each component, one
//! pool of threads for every node's apps.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use futures::future::join_all;
use libp2p::Multiaddr;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::NodeConfig;
use crate::node::{Node, Ready, Summary};
use crate::runtime::pool::WorkerPool;
use crate::runtime::{AppCounts, Runtime};

/// How a cluster starts.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// How many nodes.
    pub nodes: usize,
    /// Nodes started per second (0: all at once).
    pub start_rate: f64,
    /// Each node after the first bootstraps from this many random earlier nodes (and
    /// from the config's bootstrap addresses).
    pub bootstrap_from: usize,
    /// Where the summary and the per-node lines go.
    pub out: PathBuf,
}

/// One node of a cluster, as started.
#[derive(Clone, Debug, Serialize)]
pub struct Member {
    /// Its number, from 0.
    pub index: usize,
    /// Who it is and where to reach it.
    #[serde(flatten)]
    pub ready: Ready,
}

/// One line of `nodes.jsonl`: a node and its summary (the fields of `run`'s).
#[derive(Serialize)]
struct NodeLine<'a> {
    index: usize,
    peer_id: &'a str,
    #[serde(flatten)]
    summary: &'a Summary,
}

/// What the whole cluster did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterSummary {
    /// Nodes started.
    pub nodes: usize,
    /// Per app name: the nodes that ran it and their counters added up.
    pub apps: std::collections::BTreeMap<String, AppTotal>,
    /// Nodes with an app that ended `failed`.
    pub nodes_with_failed_apps: usize,
}

/// One app's counters over the cluster.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AppTotal {
    /// Nodes that ran it.
    pub nodes: usize,
    /// Their counters, added up.
    #[serde(flatten)]
    pub counts: AppCounts,
}

/// `base` for node `index`: listening on a free 127.0.0.1 port, `{index}` in app
/// configs replaced by the node's number, bootstrapping also from `earlier`.
fn member_config(base: &NodeConfig, index: usize, earlier: Vec<Multiaddr>) -> NodeConfig {
    let mut config = base.clone();
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr")];
    config.bootstrap.extend(earlier);
    for app in &mut config.apps {
        app.config = app.config.replace("{index}", &index.to_string());
    }
    config.seed = base.seed.map(|seed| seed.wrapping_add(index as u64));
    config
}

/// Checks the options, and what a cluster cannot take from a node's config.
pub fn check(base: &NodeConfig, options: &ClusterOptions) -> Result<()> {
    if options.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if !(options.start_rate >= 0.0 && options.start_rate.is_finite()) {
        bail!("--start-rate must be 0 (all at once) or a positive number of nodes per second");
    }
    if !base.listen.is_empty() {
        bail!("a cluster's nodes each listen on a free 127.0.0.1 TCP port: drop --listen");
    }
    let shared_files = [
        ("--identity", base.identity.is_some()),
        ("--admin", base.admin.is_some()),
        ("--sampling-out", base.sampling_out.is_some()),
        ("--metrics-out", base.metrics_out.is_some()),
        ("--apps-dir", base.apps_dir.is_some()),
    ];
    if let Some((flag, _)) = shared_files.iter().find(|(_, given)| *given) {
        bail!("{flag} names one file or folder for one node: a cluster does not take it yet");
    }
    Ok(())
}

/// Starts `options.nodes` nodes of `base`, prints each as it is up through `started`,
/// runs them until their apps are done (and the linger passed) or `shutdown`
/// resolves, writes `nodes.jsonl` and `summary.json` in `options.out`, and returns the
/// summary.
pub async fn run_cluster(
    base: NodeConfig,
    options: ClusterOptions,
    runtime: Arc<Runtime>,
    mut started: impl FnMut(&Member),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<ClusterSummary> {
    check(&base, &options)?;
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("cannot create {}", options.out.display()))?;
    let pool = Arc::new(WorkerPool::named("apps", cores()));
    let (stop, stopping) = watch::channel(false);
    let mut rng = StdRng::seed_from_u64(base.seed.unwrap_or(0));
    let mut addresses: Vec<Multiaddr> = Vec::new();
    let mut members = Vec::new();
    let mut runs = Vec::new();
    let gap = (options.start_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / options.start_rate));
    tokio::pin!(shutdown);
    let mut interrupted = false;
    for index in 0..options.nodes {
        let earlier = addresses
            .sample(&mut rng, options.bootstrap_from)
            .cloned()
            .collect();
        let config = member_config(&base, index, earlier);
        let key = libp2p::identity::Keypair::generate_ed25519();
        let span = tracing::info_span!("node", index);
        let node = Node::start(config, runtime.clone(), key)
            .instrument(span.clone())
            .await
            .with_context(|| format!("node {index}"))?
            .with_pool(pool.clone());
        let ready = node.ready().clone();
        if let Some(first) = ready.listen_addrs.first() {
            addresses.push(first.parse().context("a node's own address")?);
        }
        let member = Member { index, ready };
        started(&member);
        let mut stopping = stopping.clone();
        let until_stopped = async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        };
        runs.push(tokio::spawn(node.run(until_stopped).instrument(span)));
        members.push(member);
        if let Some(gap) = gap {
            tokio::select! {
                _ = tokio::time::sleep(gap) => {}
                _ = &mut shutdown => { interrupted = true; break; }
            }
        }
    }
    let all_done = join_all(runs);
    tokio::pin!(all_done);
    let results = if interrupted {
        let _ = stop.send(true);
        all_done.await
    } else {
        tokio::select! {
            results = &mut all_done => results,
            _ = &mut shutdown => {
                let _ = stop.send(true);
                all_done.await
            }
        }
    };
    let mut summary = ClusterSummary {
        nodes: members.len(),
        ..ClusterSummary::default()
    };
    let mut lines = String::new();
    for (member, result) in members.iter().zip(results) {
        let node = result.with_context(|| format!("node {} stopped abnormally", member.index))?;
        if !node.failed_apps().is_empty() {
            summary.nodes_with_failed_apps += 1;
        }
        for (name, stats) in &node.apps {
            let total = summary.apps.entry(name.clone()).or_default();
            total.nodes += 1;
            total.counts += stats.counts;
        }
        let line = NodeLine {
            index: member.index,
            peer_id: &member.ready.peer_id,
            summary: &node,
        };
        lines.push_str(&serde_json::to_string(&line)?);
        lines.push('\n');
    }
    let nodes_path = options.out.join("nodes.jsonl");
    std::fs::write(&nodes_path, lines)
        .with_context(|| format!("cannot write {}", nodes_path.display()))?;
    let summary_path = options.out.join("summary.json");
    std::fs::write(&summary_path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("cannot write {}", summary_path.display()))?;
    Ok(summary)
}

/// Open files a node of a cluster may need: its listener and its connections (peers
/// of its view, those Kademlia finds, those that dial it), with room to spare.
pub const OPEN_FILES_PER_NODE: u64 = 32;

/// Raises this process's open-files limit to its hard limit; returns the new limit.
pub fn raise_open_files_limit() -> Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX).context("cannot raise the open-files limit")
}

/// Threads for the apps of every node: the machine's cores.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_member_gets_its_own_port_index_and_seed() {
        let mut base = NodeConfig {
            seed: Some(10),
            ..NodeConfig::default()
        };
        base.apps
            .push(crate::config::AppSpec::from_arg("/x/app.wasm").expect("a valid app argument"));
        base.apps[0].config = "me={index}".into();
        let earlier: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let config = member_config(&base, 7, vec![earlier.clone()]);
        assert_eq!(config.apps[0].config, "me=7");
        assert_eq!(config.seed, Some(17));
        assert_eq!(config.bootstrap, vec![earlier]);
        assert_eq!(config.listen[0].to_string(), "/ip4/127.0.0.1/tcp/0");

        let options = ClusterOptions {
            nodes: 3,
            start_rate: 0.0,
            bootstrap_from: 1,
            out: PathBuf::from("/tmp"),
        };
        let admin = NodeConfig {
            admin: Some("/tmp/a.sock".into()),
            ..NodeConfig::default()
        };
        let error = check(&admin, &options).unwrap_err().to_string();
        assert!(error.contains("--admin"), "{error}");
        let none = ClusterOptions {
            nodes: 0,
            ..options
        };
        assert!(check(&base, &none).is_err());
    }
}
