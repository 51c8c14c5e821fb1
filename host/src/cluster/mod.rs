//! Many full nodes in one process (`nodemanager cluster`): each its own identity,
//! swarm on its own 127.0.0.1 port, sampler and apps, speaking what `run` speaks; one
//! tokio runtime, one wasmtime engine with one compiled copy of each component, one
//! pool of threads for every node's apps. With an admin socket (see [`control`]) nodes
//! can be stopped and restarted, and apps loaded, replaced and unloaded on any of them.

pub mod control;
pub mod scenario;
mod summary;

pub use summary::{AppTotal, ClusterSummary};

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinError;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::NodeConfig;
use crate::network::ProcessLimits;
use crate::node::{refusal, AdminCall, AdminCommand, AdminServer, Node, Ready, Summary};
use crate::runtime::pool::WorkerPool;
use crate::runtime::Runtime;
use crate::sim::scenario::{Nodes, Scenario};
use control::{check_listed, gather, ClusterAnswers, ClusterCall, ClusterRequest, Selection};
use scenario::{StepKind, Steps};
use summary::NodeRun;

/// How a cluster starts.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// How many nodes.
    pub nodes: usize,
    /// Nodes started per second (0: all at once).
    pub start_rate: f64,
    /// Which of the cluster's running nodes each node bootstraps from (besides the
    /// config's bootstrap addresses).
    pub bootstrap_from: BootstrapFrom,
    /// Where the summary and the per-node lines go.
    pub out: PathBuf,
    /// Timed actions (stop, restart, load, replace, unload), from when every node started.
    pub scenario: Scenario,
}

/// Which running nodes of the cluster a starting node bootstraps from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootstrapFrom {
    /// This many random ones (0: none, only the config's addresses).
    Random(usize),
    /// Node 0 (node 0 itself: none).
    First,
}

impl std::str::FromStr for BootstrapFrom {
    type Err = String;

    fn from_str(text: &str) -> Result<BootstrapFrom, String> {
        match text {
            "first" => Ok(BootstrapFrom::First),
            count => count.parse().map(BootstrapFrom::Random).map_err(|_| {
                format!("{text:?}: give a number of random earlier nodes, or `first` for node 0")
            }),
        }
    }
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

/// `base` for node `index`: listening on a free 127.0.0.1 port of each transport, `{index}` in app
/// configs replaced by the node's number, bootstrapping also from `earlier`.
/// `--metrics-out` and `--sampling-out` name folders: node `index` writes `node-INDEX.jsonl`
/// there in its first run, `node-INDEX.run-RUN.jsonl` after a restart.
fn member_config(
    base: &NodeConfig,
    index: usize,
    run: usize,
    earlier: Vec<Multiaddr>,
) -> NodeConfig {
    let mut config = base.clone();
    config.listen = base.network.transport.default_listen();
    config.admin = None;
    let file = match run {
        0 => format!("node-{index}.jsonl"),
        run => format!("node-{index}.run-{run}.jsonl"),
    };
    config.metrics_out = base.metrics_out.as_ref().map(|dir| dir.join(&file));
    config.sampling_out = base.sampling_out.as_ref().map(|dir| dir.join(&file));
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
        ("--apps-dir", base.apps_dir.is_some()),
    ];
    if let Some((flag, _)) = shared_files.iter().find(|(_, given)| *given) {
        bail!("{flag} names one file or folder for one node: a cluster does not take it yet");
    }
    base.check_has_apps()
}

/// Starts `options.nodes` nodes of `base` (`base.admin`, if any, is the cluster's admin
/// socket), tells `up` who they are once all started, runs them until every node's apps
/// are done and the linger passed (then stops them together) or `shutdown` resolves
/// (with an admin socket: only then);
/// writes `nodes.jsonl` and `summary.json` in `options.out`, and returns the summary.
pub async fn run_cluster(
    base: NodeConfig,
    options: ClusterOptions,
    runtime: Arc<Runtime>,
    up: impl FnOnce(&[Member]),
    shutdown: impl Future<Output = ()>,
) -> Result<ClusterSummary> {
    check(&base, &options)?;
    let folders = [
        Some(&options.out),
        base.metrics_out.as_ref(),
        base.sampling_out.as_ref(),
    ];
    for folder in folders.into_iter().flatten() {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
    }
    let (calls_tx, mut calls) = mpsc::channel::<ClusterCall>(16);
    let admin = match &base.admin {
        Some(path) => {
            let server = AdminServer::bind(path)?;
            let answers = ClusterAnswers {
                runtime: runtime.clone(),
                defaults: Arc::new(base.clone()),
                calls: calls_tx,
            };
            Some(tokio::spawn(server.serve(answers)))
        }
        None => None,
    };
    let mut steps = Steps::prepare(&options.scenario, &base, &runtime)?;
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let mut cluster = Cluster {
        limits: ProcessLimits::for_this_process(&base.network, options.nodes),
        rng: StdRng::seed_from_u64(base.seed.unwrap_or(0)),
        pool: Arc::new(WorkerPool::named("apps", cores())),
        controlled: admin.is_some(),
        base,
        options,
        runtime,
        slots: Vec::new(),
        ended_tx,
        done_tx,
        done: BTreeSet::new(),
        runs: Vec::new(),
        waiting: Vec::new(),
        abnormal: Vec::new(),
    };
    let gap = match cluster.options.start_rate {
        rate if rate > 0.0 => Duration::from_secs_f64(1.0 / rate),
        _ => Duration::ZERO,
    };
    let mut next_start = Instant::now();
    // Scenario steps count from the moment every node started.
    let mut all_up: Option<Instant> = None;
    let mut up = Some(up);
    let mut closing = false;
    let linger = tokio::time::sleep(Duration::MAX / 4);
    let mut lingering = false;
    tokio::pin!(shutdown, linger);
    loop {
        let all_started = cluster.slots.len() == cluster.options.nodes;
        if (all_started || closing) && up.is_some() {
            all_up = Some(Instant::now());
            let members = cluster.members();
            (up.take().expect("checked"))(&members);
        }
        let next_step = all_up.zip(steps.next_at()).map(|(up, at)| up + at);
        if all_started && !lingering && steps.is_empty() && cluster.all_done() {
            lingering = true;
            tracing::info!(linger = ?cluster.base.linger, "every node's apps are done; lingering");
            linger.as_mut().reset(Instant::now() + cluster.base.linger);
        }
        let live = cluster
            .slots
            .iter()
            .any(|slot| slot.run.is_some() || slot.stopping);
        if (all_started || closing) && !live {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next_start), if !all_started && !closing => {
                let index = cluster.slots.len();
                cluster.start_first(index).await.with_context(|| format!("node {index}"))?;
                next_start += gap;
            }
            Some((index, summary)) = ended.recv() => cluster.ended(index, summary).await,
            Some((index, run)) = done.recv() => cluster.apps_done(index, run),
            _ = tokio::time::sleep_until(next_step.unwrap_or(next_start)),
                if next_step.is_some() && !closing =>
            {
                let (at, kind) = steps.take().expect("a step is due");
                cluster.take_step(at, kind, &mut steps).await;
            }
            Some(call) = calls.recv() => {
                if closing {
                    let _ = call.reply.send(refusal("the cluster is shutting down"));
                } else {
                    cluster.on_call(call).await;
                }
            }
            _ = &mut linger, if !closing => {
                closing = true;
                cluster.stop_all();
            }
            _ = &mut shutdown, if !closing => {
                tracing::info!("shutting down on request");
                closing = true;
                cluster.stop_all();
            }
        }
    }
    if let Some(admin) = admin {
        admin.abort();
    }
    cluster.finish()
}

/// A cluster's nodes, as its loop keeps them.
struct Cluster {
    base: NodeConfig,
    /// The read and connection budgets every node shares.
    limits: ProcessLimits,
    options: ClusterOptions,
    runtime: Arc<Runtime>,
    pool: Arc<WorkerPool>,
    rng: StdRng,
    /// Whether nodes stay up until told to stop (the cluster has an admin socket).
    controlled: bool,
    slots: Vec<Slot>,
    /// Where each node's run reports its end.
    ended_tx: mpsc::UnboundedSender<(usize, Result<Summary, JoinError>)>,
    /// Where a node's run (index, run) says every app of it is done (without an admin
    /// socket).
    done_tx: mpsc::UnboundedSender<(usize, usize)>,
    /// Nodes whose current run's apps are all done: once every running node's are, the
    /// cluster lingers and stops them together.
    done: BTreeSet<usize>,
    /// Every run that ended, in the order they ended.
    runs: Vec<NodeRun>,
    /// Stop and restart requests waiting for nodes to stop.
    waiting: Vec<Waiting>,
    /// Nodes whose run ended abnormally, and how.
    abnormal: Vec<(usize, String)>,
}

/// One node of a cluster, started at least once.
struct Slot {
    key: Keypair,
    config: NodeConfig,
    ready: Ready,
    /// How many times it started.
    starts: usize,
    /// While running: what stops it, and what sends it admin commands.
    run: Option<Running>,
    /// Told to stop and not yet stopped.
    stopping: bool,
}

struct Running {
    /// Dropping it stops the node.
    _stop: oneshot::Sender<()>,
    control: mpsc::Sender<AdminCall>,
}

/// A stop or restart request waiting for its nodes to stop.
struct Waiting {
    stopping: BTreeSet<usize>,
    nodes: Vec<usize>,
    restart: bool,
    reply: oneshot::Sender<Value>,
}

impl Cluster {
    /// The nodes as they are now.
    fn members(&self) -> Vec<Member> {
        self.slots
            .iter()
            .enumerate()
            .map(|(index, slot)| Member {
                index,
                ready: slot.ready.clone(),
            })
            .collect()
    }

    /// Records that run `run` of node `index` has all its apps done (unless that run
    /// has ended since).
    fn apps_done(&mut self, index: usize, run: usize) {
        let slot = &self.slots[index];
        if slot.run.is_some() && slot.starts - 1 == run {
            self.done.insert(index);
        }
    }

    /// Whether every node's apps are done, a stopped node having none to do.
    fn all_done(&self) -> bool {
        self.slots.iter().enumerate().all(|(index, slot)| {
            self.done.contains(&index) || (slot.run.is_none() && !slot.stopping)
        })
    }

    /// The listed nodes (all: `None`) that have started and satisfy `keep`.
    fn nodes_where(&self, nodes: &Nodes, keep: impl Fn(&Slot) -> bool) -> Vec<usize> {
        nodes
            .list(self.options.nodes)
            .into_iter()
            .map(|index| index as usize)
            .filter(|&index| self.slots.get(index).is_some_and(&keep))
            .collect()
    }

    /// Takes a scenario step due at `at` (a stop with a duration adds the restart).
    async fn take_step(&mut self, at: Duration, kind: StepKind, steps: &mut Steps) {
        let running = |slot: &Slot| slot.run.is_some();
        let request = match kind {
            StepKind::Stop(nodes, duration) => {
                let listed = self.nodes_where(&nodes, running);
                if let Some(duration) = duration.filter(|_| !listed.is_empty()) {
                    let again = Nodes::Some(listed.iter().map(|&index| index as u32).collect());
                    steps.add(at + duration, StepKind::Restart(again));
                }
                (!listed.is_empty()).then_some(ClusterRequest::Stop(listed))
            }
            StepKind::Restart(nodes) => {
                let listed = self.nodes_where(&nodes, |slot| slot.run.is_none());
                (!listed.is_empty()).then_some(ClusterRequest::Restart(listed))
            }
            StepKind::Apps(nodes, command) => {
                let listed = self.nodes_where(&nodes, running);
                (!listed.is_empty())
                    .then_some(ClusterRequest::Apps(Selection::Listed(listed), command))
            }
        };
        let Some(request) = request else {
            tracing::warn!(?at, "scenario step: no node to act on");
            return;
        };
        let what = match &request {
            ClusterRequest::Stop(nodes) => format!("stop {nodes:?}"),
            ClusterRequest::Restart(nodes) => format!("restart {nodes:?}"),
            ClusterRequest::Apps(Selection::Listed(nodes), _) => format!("apps on {nodes:?}"),
            _ => "step".into(),
        };
        let (reply, answer) = oneshot::channel();
        self.on_call(ClusterCall { request, reply }).await;
        tokio::spawn(async move {
            match answer.await {
                Ok(answer) if answer["ok"] == true => {
                    tracing::info!(?at, "scenario step done: {what}")
                }
                Ok(answer) => tracing::warn!(?at, "scenario step {what}: {}", answer["error"]),
                Err(_) => tracing::warn!(?at, "scenario step {what}: the cluster stopped first"),
            }
        });
    }

    /// Tells every running node to stop.
    fn stop_all(&mut self) {
        for slot in &mut self.slots {
            if slot.run.take().is_some() {
                slot.stopping = true;
            }
        }
    }

    /// The running nodes' addresses for `index` to bootstrap from.
    fn bootstrap_for(&mut self, index: usize) -> Vec<Multiaddr> {
        let address = |slot: &Slot| slot.ready.listen_addrs.first()?.parse().ok();
        let running = |(other, slot): &(usize, &Slot)| *other != index && slot.run.is_some();
        match self.options.bootstrap_from {
            BootstrapFrom::First => (self.slots.iter().enumerate().take(1))
                .filter(running)
                .filter_map(|(_, slot)| address(slot))
                .collect(),
            BootstrapFrom::Random(count) => {
                let addresses: Vec<Multiaddr> = (self.slots.iter().enumerate())
                    .filter(running)
                    .filter_map(|(_, slot)| address(slot))
                    .collect();
                addresses.sample(&mut self.rng, count).cloned().collect()
            }
        }
    }

    /// Starts node `index` for the first time, with a fresh identity.
    async fn start_first(&mut self, index: usize) -> Result<()> {
        let earlier = self.bootstrap_for(index);
        let config = member_config(&self.base, index, 0, earlier);
        let key = Keypair::generate_ed25519();
        let (ready, run) = self.launch(index, config.clone(), key.clone()).await?;
        self.slots.push(Slot {
            key,
            config,
            ready,
            starts: 1,
            run: Some(run),
            stopping: false,
        });
        Ok(())
    }

    /// Starts stopped node `index` again: same identity, same address.
    async fn restart(&mut self, index: usize) -> Result<()> {
        let earlier = self.bootstrap_for(index);
        let slot = &self.slots[index];
        let mut config = member_config(&self.base, index, slot.starts, earlier);
        config.listen = slot
            .ready
            .listen_addrs
            .iter()
            .map(|addr| {
                let mut addr: Multiaddr = addr.parse().context("a node's own address")?;
                if let Some(Protocol::P2p(_)) = addr.iter().last() {
                    addr.pop();
                }
                Ok(addr)
            })
            .collect::<Result<_>>()?;
        let (ready, run) = self.launch(index, config.clone(), slot.key.clone()).await?;
        self.done.remove(&index);
        let slot = &mut self.slots[index];
        slot.config = config;
        slot.ready = ready;
        slot.starts += 1;
        slot.run = Some(run);
        Ok(())
    }

    /// Starts a node and its run; its end comes through `ended_tx`.
    async fn launch(
        &self,
        index: usize,
        config: NodeConfig,
        key: Keypair,
    ) -> Result<(Ready, Running)> {
        let span = tracing::info_span!("node", index);
        let mut node = Node::start_within(config, self.runtime.clone(), key, &self.limits)
            .instrument(span.clone())
            .await?
            .with_pool(self.pool.clone());
        let ready = node.ready().clone();
        tracing::info!(parent: &span, addrs = ?ready.listen_addrs, "node started");
        let control = node.control();
        if !self.controlled {
            let mut apps_done = node.apps_done();
            let done = self.done_tx.clone();
            let run = self.slots.get(index).map_or(0, |slot| slot.starts);
            tokio::spawn(async move {
                if apps_done.wait_for(|done| *done).await.is_ok() {
                    let _ = done.send((index, run));
                }
            });
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let ended = self.ended_tx.clone();
        let run = tokio::spawn(
            node.run(async move {
                let _ = stopped.await;
            })
            .instrument(span),
        );
        tokio::spawn(async move {
            let _ = ended.send((index, run.await));
        });
        Ok((
            ready,
            Running {
                _stop: stop,
                control,
            },
        ))
    }

    /// Records the end of node `index`'s run; answers the requests that waited for it.
    async fn ended(&mut self, index: usize, summary: Result<Summary, JoinError>) {
        let slot = &mut self.slots[index];
        slot.run = None;
        slot.stopping = false;
        match summary {
            Ok(summary) => self.runs.push(NodeRun {
                index,
                run: slot.starts - 1,
                summary,
            }),
            Err(e) => {
                tracing::error!(node = index, "the node's run ended abnormally: {e}");
                self.abnormal.push((index, e.to_string()));
            }
        }
        for waiting in &mut self.waiting {
            waiting.stopping.remove(&index);
        }
        let (done, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|waiting| waiting.stopping.is_empty());
        self.waiting = rest;
        for waiting in done {
            self.complete(waiting).await;
        }
    }

    /// Answers a stop or restart whose nodes all stopped (restarting them first).
    async fn complete(&mut self, waiting: Waiting) {
        if !waiting.restart {
            let _ = waiting
                .reply
                .send(json!({"ok": true, "stopped": waiting.nodes}));
            return;
        }
        let mut restarted = Vec::new();
        let mut errors = Vec::new();
        for &index in &waiting.nodes {
            match self.restart(index).await {
                Ok(()) => restarted.push(Member {
                    index,
                    ready: self.slots[index].ready.clone(),
                }),
                Err(e) => errors.push(format!("node {index}: {e:#}")),
            }
        }
        let mut answer = json!({"ok": errors.is_empty(), "restarted": restarted});
        if !errors.is_empty() {
            answer["error"] = format!("could not restart {}", errors.join("; ")).into();
        }
        let _ = waiting.reply.send(answer);
    }

    /// Carries out an admin request; a stop or restart answers once its nodes stopped.
    async fn on_call(&mut self, ClusterCall { request, reply }: ClusterCall) {
        let (nodes, restart) = match request {
            ClusterRequest::Nodes => {
                let _ = reply.send(self.describe());
                return;
            }
            ClusterRequest::Apps(selection, command) => {
                return self.hand_out(selection, *command, reply).await;
            }
            ClusterRequest::Stop(nodes) => (nodes, false),
            ClusterRequest::Restart(nodes) => (nodes, true),
        };
        match self.stop(&nodes, restart) {
            Ok(stopping) => {
                let waiting = Waiting {
                    stopping,
                    nodes,
                    restart,
                    reply,
                };
                self.wait_or_complete(waiting).await;
            }
            Err(e) => {
                let _ = reply.send(refusal(format!("{e:#}")));
            }
        }
    }

    /// Hands `command` to the selected nodes (a loaded app's `{index}` becoming each
    /// node's number) now, so that each node gets requests in the order they came;
    /// answers with theirs once all answered.
    async fn hand_out(
        &self,
        selection: Selection,
        command: AdminCommand,
        reply: oneshot::Sender<Value>,
    ) {
        let controls = match self.controls(selection) {
            Ok(controls) => controls,
            Err(e) => {
                let _ = reply.send(refusal(format!("{e:#}")));
                return;
            }
        };
        let mut answers = Vec::new();
        for (index, control) in controls {
            let mut command = command.clone();
            let request = match &mut command {
                AdminCommand::Load(request) => Some(request),
                AdminCommand::Replace(replacement) => Some(&mut replacement.request),
                _ => None,
            };
            if let Some(request) = request {
                request.spec.config = request.spec.config.replace("{index}", &index.to_string());
            }
            let (answer_tx, answer) = oneshot::channel();
            let call = AdminCall {
                command,
                reply: answer_tx,
            };
            let sent = control.send(call).await.is_ok();
            answers.push((index, sent.then_some(answer)));
        }
        tokio::spawn(async move {
            let mut gathered = Vec::new();
            for (index, answer) in answers {
                let answer = match answer {
                    Some(answer) => answer.await.ok(),
                    None => None,
                };
                let answer = answer.unwrap_or_else(|| refusal("the node is shutting down"));
                gathered.push((index, answer));
            }
            let _ = reply.send(gather(gathered));
        });
    }

    async fn wait_or_complete(&mut self, waiting: Waiting) {
        if waiting.stopping.is_empty() {
            self.complete(waiting).await;
        } else {
            self.waiting.push(waiting);
        }
    }

    /// Tells the listed nodes to stop; returns those to wait for (running or already
    /// stopping). For a plain stop, refuses nodes already stopped.
    fn stop(&mut self, listed: &[usize], restart: bool) -> Result<BTreeSet<usize>> {
        check_listed(listed, self.slots.len())?;
        if let Some(index) = listed.iter().find(|&&index| {
            let slot = &self.slots[index];
            !restart && slot.run.is_none() && !slot.stopping
        }) {
            bail!("node {index} is not running");
        }
        let mut stopping = BTreeSet::new();
        for &index in listed {
            let slot = &mut self.slots[index];
            if slot.run.take().is_some() {
                slot.stopping = true;
            }
            if slot.stopping {
                stopping.insert(index);
            }
        }
        Ok(stopping)
    }

    /// Where to send the admin commands of the selected nodes, which must be running.
    fn controls(&self, selection: Selection) -> Result<Vec<(usize, mpsc::Sender<AdminCall>)>> {
        let running = |index: usize| {
            self.slots[index]
                .run
                .as_ref()
                .map(|run| run.control.clone())
        };
        match selection {
            Selection::All => Ok((0..self.slots.len())
                .filter_map(|index| Some((index, running(index)?)))
                .collect()),
            Selection::Listed(listed) => {
                check_listed(&listed, self.slots.len())?;
                listed
                    .into_iter()
                    .map(|index| {
                        let control = running(index)
                            .with_context(|| format!("node {index} is not running"))?;
                        Ok((index, control))
                    })
                    .collect()
            }
        }
    }

    /// The `nodes` answer: every node and its state.
    fn describe(&self) -> Value {
        let nodes: Vec<Value> = self
            .slots
            .iter()
            .enumerate()
            .map(|(index, slot)| {
                let state = match (&slot.run, slot.stopping) {
                    (Some(_), _) => "running",
                    (None, true) => "stopping",
                    (None, false) => "stopped",
                };
                json!({
                    "index": index,
                    "peer_id": slot.ready.peer_id,
                    "listen_addrs": slot.ready.listen_addrs,
                    "state": state,
                    "starts": slot.starts,
                    "bootstrap": slot.config.bootstrap.iter().map(Multiaddr::to_string).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({"ok": true, "nodes": nodes})
    }

    /// Writes `nodes.jsonl` (a line per run) and `summary.json`; returns the summary.
    fn finish(self) -> Result<ClusterSummary> {
        let peer_ids: Vec<&str> = self
            .slots
            .iter()
            .map(|slot| slot.ready.peer_id.as_str())
            .collect();
        let restarts = self.slots.iter().map(|slot| slot.starts - 1).sum();
        let summary = summary::write(
            &self.options.out,
            self.runs,
            &peer_ids,
            restarts,
            &self.limits.connections,
        )?;
        if let Some((index, how)) = self.abnormal.first() {
            bail!(
                "node {index} stopped abnormally: {how} (the others' summaries are in {})",
                self.options.out.join("nodes.jsonl").display()
            );
        }
        Ok(summary)
    }
}

/// Connections a node of a cluster may hold at once: peers of its view, those it
/// exchanged with lately, those that dial it (measured: ~10 with GBPS view 4 and a 10 s
/// idle timeout), with room to spare.
pub const CONNECTIONS_PER_NODE: u64 = 12;

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
        base.metrics_out = Some("/tmp/metrics".into());
        let config = member_config(&base, 7, 0, vec![earlier.clone()]);
        let restarted = member_config(&base, 7, 2, vec![]);
        assert_eq!(config.metrics_out, Some("/tmp/metrics/node-7.jsonl".into()));
        assert_eq!(
            restarted.metrics_out,
            Some("/tmp/metrics/node-7.run-2.jsonl".into())
        );
        assert_eq!(config.sampling_out, None);
        assert_eq!(config.apps[0].config, "me=7");
        assert_eq!(config.seed, Some(17));
        assert_eq!(config.bootstrap, vec![earlier]);
        assert_eq!(config.listen[0].to_string(), "/ip4/127.0.0.1/tcp/0");

        let options = ClusterOptions {
            nodes: 3,
            start_rate: 0.0,
            bootstrap_from: BootstrapFrom::Random(1),
            out: PathBuf::from("/tmp"),
            scenario: Scenario::default(),
        };
        let identity = NodeConfig {
            identity: Some("/tmp/id.key".into()),
            ..base.clone()
        };
        let error = check(&identity, &options).unwrap_err().to_string();
        assert!(error.contains("--identity"), "{error}");
        let idle = check(&NodeConfig::default(), &options)
            .unwrap_err()
            .to_string();
        assert!(idle.contains("no apps to run"), "{idle}");
        let controlled = NodeConfig {
            admin: Some("/tmp/c.sock".into()),
            ..NodeConfig::default()
        };
        assert!(check(&controlled, &options).is_ok());
        assert_eq!("first".parse(), Ok(BootstrapFrom::First));
        assert_eq!("2".parse(), Ok(BootstrapFrom::Random(2)));
        let error = "some".parse::<BootstrapFrom>().unwrap_err();
        assert!(error.contains("`first` for node 0"), "{error}");
        let none = ClusterOptions {
            nodes: 0,
            ..options
        };
        assert!(check(&base, &none).is_err());
    }
}
