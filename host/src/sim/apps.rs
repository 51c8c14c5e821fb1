//! Apps on virtual nodes: every honest node runs its own [`AppInstance`] of each app,
//! driven by the event engine in virtual time — the same instances a live node runs,
//! with a manual clock (the guests' WASI clocks follow it) and randomness derived from
//! the run's seed, the node and the app, so a run replays exactly.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use libp2p::PeerId;
use serde::Serialize;

use super::helpers::{Helpers, SharedWork};
use super::summary::NodeApp;
use crate::config::{validate_name, AppSpec, ResolvedApp};
use crate::logging::VirtualNow;
use crate::runtime::registry::derive_seed;
use crate::runtime::{
    AppContext, AppCounts, AppInstance, AppState, AppStats, CallTimes, Clock, Effects, Input,
    Limits, Outcome, Prepared, Runtime,
};

/// A call into app `app` of node `node` at `now` (µs of virtual time).
pub struct AppCall {
    /// The node.
    pub node: u32,
    /// The app's number.
    pub app: usize,
    /// When, in µs of virtual time.
    pub now: u64,
    /// What the app is asked to do.
    pub input: CallInput,
}

/// What an [`AppCall`] asks of the app.
pub enum CallInput {
    /// Start (instantiate and `init`).
    Start,
    /// Run the due cycle with this view (node numbers).
    Cycle(Vec<u32>),
    /// Handle a message from node `from`.
    Message { from: u32, payload: Vec<u8> },
    /// Learn how message `message_id` ended.
    Report { message_id: u64, outcome: Outcome },
}

/// One app every virtual node runs: its settings (the config may hold `{index}`, the
/// node's number, and `{node}`, its name `node_I`) and its compiled component.
#[derive(Clone)]
pub struct SimApp {
    /// Name, config template, cycles, period, limits.
    pub spec: ResolvedApp,
    /// The component, compiled once for every node.
    pub prepared: Prepared,
    /// One config per node, when given (instead of the template).
    pub per_node: Option<Arc<[String]>>,
}

/// Gives each app named in `files` (`NAME=FILE`) one config per node of `nodes`: line
/// I of the file is node I's.
pub fn set_config_files(
    apps: &mut [SimApp],
    files: &[(String, String)],
    nodes: usize,
) -> Result<()> {
    for (name, path) in files {
        let app = named(apps, name, "--app-config-file")?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configs of app {name:?} from {path}"))?;
        let configs: Vec<String> = text.lines().map(str::to_string).collect();
        if configs.len() != nodes {
            bail!(
                "{path} holds {} configs (lines) for app {name:?}, but the run has {nodes} nodes: give one line per node",
                configs.len()
            );
        }
        app.per_node = Some(configs.into());
    }
    Ok(())
}

/// Compiles each app of `specs` once, sets the configs `configs` gives (`NAME=STRING`),
/// and runs every one each `period` for as long as the run lasts, within `limits`.
/// Give a runtime counting instructions ([`Runtime::counting_instructions`]) for a run
/// that replays exactly whatever the machine's load.
pub fn prepare(
    runtime: &Runtime,
    specs: &[AppSpec],
    configs: &[(String, String)],
    period: Duration,
    limits: &Limits,
) -> Result<Vec<SimApp>> {
    limits.validate()?;
    let mut apps: Vec<SimApp> = Vec::new();
    for spec in specs {
        let name = spec.resolved_name();
        validate_name("app", &name)?;
        if apps.iter().any(|a| a.spec.name == name) {
            bail!("two apps are named {name:?}: give one another name with PATH:NAME");
        }
        let prepared = runtime
            .load_component(&spec.path)
            .with_context(|| format!("app {name:?}"))?;
        apps.push(SimApp {
            per_node: None,
            spec: ResolvedApp {
                name,
                path: spec.path.clone(),
                config: String::new(),
                cycles: None,
                period,
                limits: limits.clone(),
            },
            prepared,
        });
    }
    for (name, config) in configs {
        named(&mut apps, name, "--app-config")?.spec.config = config.clone();
    }
    Ok(apps)
}

/// The app named `name`, which `flag` names.
fn named<'a>(apps: &'a mut [SimApp], name: &str, flag: &str) -> Result<&'a mut SimApp> {
    apps.iter_mut()
        .find(|a| a.spec.name == name)
        .with_context(|| format!("{flag} names app {name:?}, which is not among the apps"))
}

/// One node's apps.
struct NodeApps {
    context: AppContext,
    instances: Vec<Option<AppInstance>>,
    stats: Vec<Arc<Mutex<AppStats>>>,
    /// Bumped when an app is loaded, replaced or unloaded, so the timers and reports of
    /// the instance before are dropped.
    generations: Vec<u32>,
    /// Whether each app was ever started here.
    started: Vec<bool>,
}

impl NodeApps {
    /// Starts app `app` from `prepared` as `spec` says at `now`, with randomness from
    /// `seed`; returns its first effects.
    fn launch(
        &mut self,
        app: usize,
        prepared: &Prepared,
        spec: &ResolvedApp,
        seed: u64,
        now: Duration,
    ) -> Effects {
        let (instance, effects) = AppInstance::start(
            prepared,
            spec,
            self.context.clone(),
            Some(seed),
            self.stats[app].clone(),
            now,
        );
        self.instances[app] = instance;
        self.started[app] = true;
        effects
    }

    /// Moves this node's clock to `now` (µs of virtual time) for a call — or leaves it
    /// later, if its guests already slept past it (a node's clock never goes back);
    /// what is logged until the tag drops is tagged with the node and time.
    fn enter(&self, node: u32, now: u64) -> (Duration, VirtualNow) {
        let tag = VirtualNow::enter(node, now);
        let now = Duration::from_micros(now);
        let clock = &self.context.clock;
        clock.set(now.max(clock.now()));
        (now, tag)
    }

    /// Runs `call` (of this node, `node`) on the app it names.
    fn call(&mut self, catalog: &Catalog, node: u32, call: AppCall) -> Result<Effects, String> {
        let app = call.app;
        let (now, _tag) = self.enter(node, call.now);
        match call.input {
            CallInput::Start => {
                let seed = derive_seed(
                    catalog.seed,
                    &format!("node{node}/{}", catalog.apps[app].spec.name),
                );
                let spec = catalog.node_spec(node, app);
                let unloaded = self.stats[app]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .state
                    == AppState::Unloaded;
                if unloaded {
                    // Loaded again after an unload: fresh counters.
                    self.stats[app] = Arc::default();
                }
                Ok(self.launch(app, &catalog.apps[app].prepared, &spec, seed, now))
            }
            CallInput::Cycle(view) => {
                let ids: Vec<String> = view
                    .iter()
                    .map(|&j| catalog.ids[j as usize].clone())
                    .collect();
                *self.context.view.write().unwrap_or_else(|e| e.into_inner()) = ids;
                Ok(match self.instances[app].as_mut() {
                    Some(instance) => instance.handle_timeout(now),
                    None => Effects::default(),
                })
            }
            CallInput::Message { from, payload } => {
                let name = &catalog.apps[app].spec.name;
                let Some(instance) = self.instances[app].as_mut() else {
                    return Err(format!("no app named {name:?} on this node"));
                };
                if instance.stopped() {
                    return Err(format!("app {name:?} has stopped"));
                }
                Ok(instance.handle(Input::Message {
                    from: catalog.ids[from as usize].clone(),
                    payload,
                }))
            }
            CallInput::Report {
                message_id,
                outcome,
            } => Ok(match self.instances[app].as_mut() {
                Some(instance) => instance.handle(Input::Delivery {
                    id: message_id,
                    outcome,
                }),
                None => Effects::default(),
            }),
        }
    }
}

/// What every node's calls read and none changes: the apps, the peer ids, the seed.
#[derive(Clone)]
struct Catalog {
    apps: Arc<Vec<SimApp>>,
    ids: Arc<[String]>,
    seed: u64,
}

impl Catalog {
    /// App `app`'s settings on node `node`: its own config line, or the template with
    /// `{index}` and `{node}` filled in.
    fn node_spec(&self, node: u32, app: usize) -> ResolvedApp {
        let mut spec = self.apps[app].spec.clone();
        spec.config = match &self.apps[app].per_node {
            Some(configs) => configs[node as usize].clone(),
            None => spec
                .config
                .replace("{index}", &node.to_string())
                .replace("{node}", &format!("node_{node}")),
        };
        spec
    }
}

/// One node's calls in a batch (each with its place in the batch), its apps moved in
/// while they run, and their results.
#[derive(Default)]
struct NodeCalls {
    node: u32,
    apps: Option<NodeApps>,
    calls: Vec<(usize, AppCall)>,
    results: Vec<(usize, Result<Effects, String>)>,
}

/// A batch of calls, node by node: each part is one node's calls.
struct CallBatch {
    catalog: Catalog,
    nodes: Vec<Mutex<NodeCalls>>,
}

impl SharedWork for CallBatch {
    fn parts(&self) -> usize {
        self.nodes.len()
    }

    fn do_part(&self, part: usize) {
        let mut slot = self.nodes[part].lock().unwrap_or_else(|e| e.into_inner());
        let NodeCalls {
            node,
            apps,
            calls,
            results,
        } = &mut *slot;
        for (place, call) in calls.drain(..) {
            let result = match apps.as_mut() {
                Some(apps) => apps.call(&self.catalog, *node, call),
                None => Ok(Effects::default()),
            };
            results.push((place, result));
        }
    }
}

/// Every node's apps, and how peer ids map to nodes.
pub struct SimApps {
    apps: Arc<Vec<SimApp>>,
    ids: Arc<[String]>,
    index: HashMap<PeerId, u32>,
    nodes: Vec<Option<NodeApps>>,
    seed: u64,
    /// Messages lost by the network model.
    pub lost: u64,
}

/// Per-app totals over every node, for the run's summary.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AppTotals {
    /// Nodes that run the app.
    pub nodes: u64,
    /// Every node's counts added up (messages still in flight when the run ended are
    /// in no outcome count).
    #[serde(flatten)]
    pub counts: AppCounts,
    /// Nodes where the app stopped for good.
    pub failed: u64,
    /// Median cost of a call over every node, in µs at the nominal 1,000 instructions
    /// per µs the CPU budget counts (the same on every run; within ~19%).
    pub call_time_p50_us: u64,
    /// 99th-percentile cost of a call, likewise.
    pub call_time_p99_us: u64,
    /// The first failure's node and reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_failure: Option<String>,
}

/// What the apps of a simulation did: the last line `simulate --app` prints.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AppsSummary {
    /// Totals by app name.
    pub apps: BTreeMap<String, AppTotals>,
    /// App messages the network model lost.
    pub app_messages_lost: u64,
}

/// The peer id of virtual node `i`, the same in every run: shaped as a live node's (an
/// inlined ed25519 public key, `12D3KooW...`), its 32 key bytes hashed from `i` — no
/// node of a simulation signs anything, so no key pair is worked out (that costs a
/// scalar multiplication per node).
pub fn node_peer_id(i: u32) -> PeerId {
    use sha2::Digest as _;
    let key = sha2::Sha256::new()
        .chain_update(b"nodemanager virtual node ")
        .chain_update(i.to_le_bytes())
        .finalize();
    // Identity multihash (code 0, 36 bytes) of the protobuf PublicKey { Ed25519, key }.
    let mut bytes = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    bytes.extend_from_slice(&key);
    PeerId::from_bytes(&bytes).expect("an identity multihash of 36 bytes is a peer id")
}

impl SimApps {
    /// `apps` on each node, except those `runs_apps` says not (attackers); node `i`'s
    /// wall clock is `skews[i]` µs off virtual time.
    pub fn new(
        apps: Vec<SimApp>,
        runs_apps: impl Fn(u32) -> bool,
        seed: u64,
        skews: Vec<i64>,
    ) -> SimApps {
        let nodes = skews.len();
        let peers: Vec<PeerId> = (0..nodes as u32).map(node_peer_id).collect();
        let index = peers
            .iter()
            .enumerate()
            .map(|(i, p)| (*p, i as u32))
            .collect();
        let ids: Vec<String> = peers.iter().map(PeerId::to_string).collect();
        let nodes = (0..nodes as u32)
            .map(|i| {
                runs_apps(i).then(|| NodeApps {
                    context: AppContext {
                        clock: Clock::manual(),
                        wall_skew_us: skews[i as usize],
                        ..AppContext::new(ids[i as usize].clone())
                    },
                    instances: apps.iter().map(|_| None).collect(),
                    stats: apps.iter().map(|_| Arc::default()).collect(),
                    generations: vec![0; apps.len()],
                    started: vec![false; apps.len()],
                })
            })
            .collect();
        SimApps {
            apps: Arc::new(apps),
            ids: ids.into(),
            index,
            nodes,
            seed,
            lost: 0,
        }
    }

    /// How many apps each node runs.
    pub fn count(&self) -> usize {
        self.apps.len()
    }

    /// App `app`'s name.
    pub fn name(&self, app: usize) -> &str {
        &self.apps[app].spec.name
    }

    /// The number of the app named `name`, if the run has it.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.apps.iter().position(|a| a.spec.name == name)
    }

    /// Adds an app no node runs yet (to load on some later); returns its number.
    pub fn add_app(&mut self, app: SimApp) -> usize {
        Arc::make_mut(&mut self.apps).push(app);
        for node in self.nodes.iter_mut().flatten() {
            node.instances.push(None);
            node.stats.push(Arc::default());
            node.generations.push(0);
            node.started.push(false);
        }
        self.apps.len() - 1
    }

    /// Makes `app` what app number `index` starts from now on.
    pub fn set_app(&mut self, index: usize, app: SimApp) {
        Arc::make_mut(&mut self.apps)[index] = app;
    }

    /// Makes the component at `path` what app number `index` starts from now on.
    pub fn set_component(&mut self, index: usize, prepared: Prepared, path: &std::path::Path) {
        let app = &mut Arc::make_mut(&mut self.apps)[index];
        app.prepared = prepared;
        app.spec.path = path.to_path_buf();
    }

    /// Whether node `node` has a running instance of app `app`.
    pub fn runs(&self, node: u32, app: usize) -> bool {
        self.instance(node, app).is_some_and(|i| !i.stopped())
    }

    /// The generation of app `app` on node `node` (0 on a node without apps).
    pub fn generation(&self, node: u32, app: usize) -> u32 {
        self.nodes[node as usize]
            .as_ref()
            .map_or(0, |apps| apps.generations[app])
    }

    /// Replaces app `app` on node `node` with `prepared` at `now`: the old instance's
    /// `snapshot` goes to the new one's `restore`, as `apps replace` does live; the
    /// counters go on.
    pub fn replace(&mut self, node: u32, app: usize, prepared: &Prepared, now: u64) -> Effects {
        let spec = self.catalog().node_spec(node, app);
        let Some(apps) = self.nodes[node as usize].as_mut() else {
            return Effects::default();
        };
        let (now, _tag) = apps.enter(node, now);
        let Some(mut old) = apps.instances[app].take() else {
            return Effects::default();
        };
        let state = if old.stopped() {
            Vec::new()
        } else {
            old.snapshot()
        };
        old.unload();
        let counts = apps.stats[app]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counts;
        let mut stats = AppStats::default();
        stats.counts = counts;
        apps.stats[app] = Arc::new(Mutex::new(stats));
        apps.generations[app] += 1;
        let seed = derive_seed(
            self.seed,
            &format!("node{node}/{}/{}", spec.name, apps.generations[app]),
        );
        let mut effects = apps.launch(app, prepared, &spec, seed, now);
        if let Some(instance) = apps.instances[app].as_mut() {
            if !state.is_empty() && !instance.stopped() {
                let restored = instance.restore(state);
                effects.messages.extend(restored.messages);
                effects.finished |= restored.finished;
            }
        }
        effects
    }

    /// Unloads app `app` from node `node`.
    pub fn unload(&mut self, node: u32, app: usize) {
        if let Some(apps) = self.nodes[node as usize].as_mut() {
            if let Some(mut instance) = apps.instances[app].take() {
                instance.unload();
                apps.generations[app] += 1;
            }
        }
    }

    /// Each app's period.
    pub fn period(&self, app: usize) -> Duration {
        self.apps[app].spec.period
    }

    /// Whether node `node` runs apps.
    pub fn on_node(&self, node: u32) -> bool {
        self.nodes[node as usize].is_some()
    }

    /// Node `node`'s peer id, as apps see it.
    pub fn id(&self, node: u32) -> &str {
        &self.ids[node as usize]
    }

    /// The node a peer id names, if it is one of the run's.
    pub fn node_of(&self, peer: &PeerId) -> Option<u32> {
        self.index.get(peer).copied()
    }

    /// What every node's calls read.
    fn catalog(&self) -> Catalog {
        Catalog {
            apps: self.apps.clone(),
            ids: self.ids.clone(),
            seed: self.seed,
        }
    }

    /// Starts app `app` on node `node` at `now`; returns its first effects.
    pub fn start(&mut self, node: u32, app: usize, now: u64) -> Effects {
        let call = AppCall {
            node,
            app,
            now,
            input: CallInput::Start,
        };
        let catalog = self.catalog();
        match self.nodes[node as usize].as_mut() {
            Some(apps) => apps.call(&catalog, node, call).unwrap_or_default(),
            None => Effects::default(),
        }
    }

    /// Runs `calls` — each node's in the order given — and returns their results in
    /// that order (`Err`: a message refused, and why). Calls of different nodes touch
    /// nothing in common, so `helpers` take nodes' calls while this thread does too;
    /// the results do not depend on how many helpers there are. Without helpers the
    /// calls run in the order given, so a log keeps that order.
    pub fn run_calls(
        &mut self,
        calls: Vec<AppCall>,
        helpers: &Helpers,
    ) -> Vec<Result<Effects, String>> {
        let catalog = self.catalog();
        if helpers.is_empty() {
            return calls
                .into_iter()
                .map(|call| match self.nodes[call.node as usize].as_mut() {
                    Some(apps) => apps.call(&catalog, call.node, call),
                    None => Ok(Effects::default()),
                })
                .collect();
        }
        let count = calls.len();
        let mut placed: Vec<(usize, AppCall)> = calls.into_iter().enumerate().collect();
        placed.sort_by_key(|(place, call)| (call.node, *place));
        let mut nodes: Vec<NodeCalls> = Vec::new();
        for (place, call) in placed {
            match nodes.last_mut() {
                Some(last) if last.node == call.node => last.calls.push((place, call)),
                _ => nodes.push(NodeCalls {
                    node: call.node,
                    apps: self.nodes[call.node as usize].take(),
                    calls: vec![(place, call)],
                    results: Vec::new(),
                }),
            }
        }
        let batch = Arc::new(CallBatch {
            catalog,
            nodes: nodes.into_iter().map(Mutex::new).collect(),
        });
        helpers.run(batch.clone());
        let mut results = Vec::with_capacity(count);
        for slot in &batch.nodes {
            let done = std::mem::take(&mut *slot.lock().unwrap_or_else(|e| e.into_inner()));
            self.nodes[done.node as usize] = done.apps;
            results.extend(done.results);
        }
        results.sort_by_key(|(place, _)| *place);
        results.into_iter().map(|(_, result)| result).collect()
    }

    /// When app `app` of node `node` next needs a cycle, in µs.
    pub fn next_cycle(&self, node: u32, app: usize) -> Option<u64> {
        let instance = self.instance(node, app)?;
        instance
            .poll_timeout()
            .map(|due| due.as_micros().min(u128::from(u64::MAX)) as u64)
    }

    fn instance(&self, node: u32, app: usize) -> Option<&AppInstance> {
        self.nodes[node as usize].as_ref()?.instances[app].as_ref()
    }

    /// Node `node`'s apps, by name (none on an attacker).
    pub fn node_apps(&self, node: u32) -> BTreeMap<String, NodeApp> {
        let Some(apps) = &self.nodes[node as usize] else {
            return BTreeMap::new();
        };
        self.apps
            .iter()
            .zip(&apps.stats)
            .zip(&apps.started)
            .filter(|(_, started)| **started)
            .map(|((app, stats), _)| {
                let stats = stats.lock().unwrap_or_else(|e| e.into_inner());
                let row = NodeApp {
                    state: stats.state.clone(),
                    reason: stats.reason.clone(),
                    memory_bytes: stats.memory_bytes,
                    bytes_in: stats.bytes_in,
                    bytes_out: stats.bytes_out,
                    call_time_p50_us: stats.call_time_p50_us,
                    call_time_p99_us: stats.call_time_p99_us,
                    counts: stats.counts,
                };
                (app.spec.name.clone(), row)
            })
            .collect()
    }

    /// Per-app totals over every node, and the messages the network lost.
    pub fn summary(&self) -> AppsSummary {
        let apps = self
            .apps
            .iter()
            .enumerate()
            .map(|(a, app)| {
                let mut totals = AppTotals::default();
                let mut call_times = CallTimes::default();
                for (node, apps) in self.nodes.iter().enumerate() {
                    let Some(apps) = apps.as_ref().filter(|apps| apps.started[a]) else {
                        continue;
                    };
                    let stats = apps.stats[a].lock().unwrap_or_else(|e| e.into_inner());
                    totals.nodes += 1;
                    totals.counts += stats.counts;
                    call_times.merge(stats.call_times());
                    if stats.state == AppState::Failed {
                        totals.failed += 1;
                        if totals.first_failure.is_none() {
                            let reason = stats.reason.clone().unwrap_or_default();
                            totals.first_failure = Some(format!("node {node}: {reason}"));
                        }
                    }
                }
                totals.call_time_p50_us = call_times.quantile(0.5);
                totals.call_time_p99_us = call_times.quantile(0.99);
                (app.spec.name.clone(), totals)
            })
            .collect();
        AppsSummary {
            apps,
            app_messages_lost: self.lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_peer_ids_look_like_live_ones_and_differ() {
        let a = node_peer_id(0).to_string();
        assert!(a.starts_with("12D3KooW") && a.len() == 52, "{a}");
        assert_eq!(node_peer_id(0), node_peer_id(0));
        let ids: std::collections::HashSet<PeerId> = (0..1000).map(node_peer_id).collect();
        assert_eq!(ids.len(), 1000);
        let live = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        assert_eq!(live.to_string().len(), a.len());
    }
}
