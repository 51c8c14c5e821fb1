//! The node: joins the swarm, the sampler, the app registry and the admin socket in one
//! event loop.
//!
//! Start-up order: compile every app (from the cache when possible), listen, wait until
//! every listener has an address, dial the bootstrap peers, then start the apps. The
//! node stops once every app finished its cycles and the linger passed, or on a signal;
//! with an admin socket, only on a signal.

mod admin;
mod answers;
mod apps_dir;
mod deliveries;
mod deploying;
mod jsonl;
mod network_stats;
mod sampling_data;

pub use admin::{
    ask, parse_command, refusal, AdminCall, AdminCommand, AdminServer, Answer, Replacement,
    MAX_REQUEST as MAX_ADMIN_REQUEST,
};
pub use network_stats::NetworkStats;
pub use sampling_data::SamplingStats;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionDenied, DialError, ListenError, SwarmEvent};
use libp2p::{identify, kad, mdns, Multiaddr, PeerId, Swarm};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::{NodeConfig, ResolvedApp};
use crate::deploy::state::DeployCounts;
use crate::network::app_stream::{
    self, AnswersOwed, InboundEvent, InboundLimits, InboundRequest, LinkEvent, Links, StreamLimits,
};
use crate::network::rejoin::Rejoin;
use crate::network::sampling::{reachable_first, MAX_ADDRS_PER_PEER};
use crate::network::{self, Inbound, NodeBehaviour, NodeBehaviourEvent, SamplingEnvelope};
use crate::runtime::pool::WorkerPool;
use crate::runtime::registry::{derive_seed, Refused, Unloading};
use crate::runtime::{
    AppContext, AppId, AppInfo, AppRegistry, AppStats, LoadRequest, Outcome, Report, Runtime,
    WorkerEvent,
};
use crate::sampling::{Outgoing, SamplingDriver};
use admin::NodeAnswers;
use answers::RecentAnswers;
use deliveries::Deliveries;
use deploying::{DeployEvent, Deploying};
use jsonl::JsonLines;
use sampling_data::SamplingWriter;

/// How long start-up waits for the listeners to report their addresses.
const LISTEN_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most app events handled per wake-up of the event loop.
const MAX_EVENTS_PER_WAKE: usize = 256;
/// How often message deadlines are checked while a node stops.
const DEADLINE_SWEEP: Duration = Duration::from_millis(50);
/// How often a node with bootstrap addresses checks whether it is alone.
const REJOIN_CHECK: Duration = Duration::from_secs(1);

/// The first line `nodemanager run` prints: who the node is and where to reach it.
#[derive(Clone, Debug, Serialize)]
pub struct Ready {
    /// This node's peer id.
    pub peer_id: String,
    /// Full multiaddrs, each ending in `/p2p/<peer id>`.
    pub listen_addrs: Vec<String>,
}

/// The last line `nodemanager run` prints: per-app and sampler counters.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Counters of the apps loaded at the end, by name.
    pub apps: BTreeMap<String, AppStats>,
    /// Apps unloaded or replaced while the node ran, in order, with their last counters.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unloaded: Vec<AppInfo>,
    /// What the peer sampler did.
    pub sampling: SamplingStats,
    /// What the network layer saw.
    pub network: NetworkStats,
    /// Deployments applied and refused.
    pub deploy: DeployCounts,
}

impl Summary {
    /// Every app that ended `failed`, loaded or unloaded, with its reason.
    pub fn failed_apps(&self) -> Vec<(String, String)> {
        let loaded = self.apps.iter();
        let unloaded = self.unloaded.iter().map(|info| (&info.name, &info.stats));
        loaded
            .chain(unloaded)
            .filter(|(_, stats)| stats.state == crate::runtime::AppState::Failed)
            .map(|(name, stats)| {
                let reason = stats.reason.clone().unwrap_or_else(|| "failed".into());
                (name.clone(), reason)
            })
            .collect()
    }
}

/// A started node: listening, bootstrapped, apps compiled.
pub struct Node {
    swarm: Swarm<NodeBehaviour>,
    config: NodeConfig,
    apps: Vec<(ResolvedApp, crate::runtime::Prepared)>,
    /// The network's frame limit, which no app's payload limit may exceed.
    max_payload_bytes: u64,
    runtime: Arc<Runtime>,
    admin: Option<AdminServer>,
    context: AppContext,
    sampler: SamplingDriver,
    sampling: SamplingStats,
    sampling_out: Option<SamplingWriter>,
    metrics_out: Option<JsonLines>,
    /// This node's listen addresses (without /p2p), told to peers in sampling messages.
    own_addrs: Vec<Multiaddr>,
    /// Listen addresses of other peers, learned through identify and sampling messages.
    addresses: HashMap<PeerId, Vec<Multiaddr>>,
    app_protocol: libp2p::StreamProtocol,
    network: NetworkStats,
    /// When mDNS last found a new peer (for `idle_discovery_timeout_secs`).
    mdns_last_new: Instant,
    /// Whether the node still acts on mDNS discoveries.
    mdns_active: bool,
    /// When to dial the bootstrap addresses again while the node has no peer.
    rejoin: Rejoin,
    /// Stopping: inbound app messages are refused and apps' new messages not sent.
    closing: bool,
    /// Inbound app requests read but whose answer is not yet on the wire.
    answers_owed: AnswersOwed,
    /// Sends app messages to peers, a stream per peer.
    links: Links,
    /// What became of the requests sent (taken when the node runs).
    link_events: Option<mpsc::UnboundedReceiver<LinkEvent>>,
    /// Requests peers sent on their app streams (taken when the node runs).
    inbound: Option<mpsc::Receiver<InboundEvent>>,
    /// Answers given lately, for requests their senders send again.
    recent_answers: RecentAnswers,
    /// Apps deployed over the overlay.
    deploying: Deploying,
    /// What work beside the loop reports on deployments (taken when the node runs).
    deploy_events: Option<mpsc::UnboundedReceiver<DeployEvent>>,
    ready: Ready,
    /// Threads its apps run on, when shared with other nodes of the process.
    pool: Option<Arc<WorkerPool>>,
    /// The view the apps were last given.
    published_view: Vec<PeerId>,
    /// Admin commands from the socket, the apps dir and [`Node::control`].
    admin_calls: (mpsc::Sender<AdminCall>, mpsc::Receiver<AdminCall>),
    /// Whether someone holds a [`Node::control`] sender or [`Node::apps_done`]
    /// receiver: the node then stays up until told to stop.
    controlled: bool,
    /// Tells [`Node::apps_done`] whether every app is done.
    apps_done: Option<watch::Sender<bool>>,
}

impl Node {
    /// Checks the config, compiles the apps, listens and dials the bootstrap peers; the
    /// node's identity is `key`. The node has the process's limits to itself.
    pub async fn start(config: NodeConfig, runtime: Arc<Runtime>, key: Keypair) -> Result<Node> {
        let limits = network::ProcessLimits::for_this_process(&config.network, 1);
        Node::start_within(config, runtime, key, &limits).await
    }

    /// As [`Node::start`], within `limits` shared with the process's other nodes.
    pub async fn start_within(
        config: NodeConfig,
        runtime: Arc<Runtime>,
        key: Keypair,
        limits: &network::ProcessLimits,
    ) -> Result<Node> {
        let resolved = config.resolve_apps()?;
        let mut apps = Vec::new();
        for app in resolved {
            let runtime = runtime.clone();
            let path = app.path.clone();
            let prepared = tokio::task::spawn_blocking(move || runtime.load_component(&path))
                .await?
                .with_context(|| format!("app {:?}", app.name))?;
            tracing::info!(app = %app.name, from_cache = prepared.from_cache, compile_time = ?prepared.compile_time, "component ready");
            apps.push((app, prepared));
        }
        let max_payload_bytes = config.network.request_response.max_requests_size;
        let mut swarm = network::build_swarm(key, &config.context, &config.network, limits)?;
        let mut listeners = HashSet::new();
        for addr in &config.listen_addrs() {
            let id = swarm
                .listen_on(addr.clone())
                .with_context(|| format!("cannot listen on {addr}"))?;
            listeners.insert(id);
        }
        let peer_id = *swarm.local_peer_id();
        let (mut listen_addrs, mut own_addrs) = (Vec::new(), Vec::new());
        let waiting = tokio::time::timeout(LISTEN_READY_TIMEOUT, async {
            while !listeners.is_empty() {
                match swarm.select_next_some().await {
                    SwarmEvent::NewListenAddr {
                        listener_id,
                        address,
                    } => {
                        listeners.remove(&listener_id);
                        own_addrs.push(address.clone());
                        listen_addrs.push(address.with(Protocol::P2p(peer_id)).to_string());
                    }
                    SwarmEvent::ListenerClosed {
                        addresses, reason, ..
                    } => {
                        bail!("listener on {addresses:?} closed: {reason:?}");
                    }
                    SwarmEvent::ListenerError { error, .. } => bail!("cannot listen: {error}"),
                    _ => {}
                }
            }
            Ok(())
        });
        waiting
            .await
            .context("the listen addresses did not come up in time")??;
        reachable_first(&mut own_addrs);
        let mut network = NetworkStats::default();
        for addr in &config.bootstrap {
            dial_bootstrap(&mut swarm, addr, &mut network)?;
        }
        let rejoin = Rejoin::new(config.bootstrap.clone(), Instant::now());
        let app_protocol = network::app_protocol(&config.context)?;
        let mut control = swarm.behaviour().streams.new_control();
        let answers_owed = AnswersOwed::default();
        let inbound = app_stream::accept(
            &mut control,
            app_protocol.clone(),
            InboundLimits {
                max_payload_bytes,
                budget: limits.reads.clone(),
                frame_timeout: config.network.request_timeout(),
            },
            answers_owed.clone(),
        )?;
        let (links, link_events) = Links::new(
            control,
            app_protocol.clone(),
            StreamLimits {
                max_response_bytes: config.network.request_response.max_responses_size,
                request_timeout: config.network.request_timeout(),
                idle_timeout: config.network.idle_connection_timeout(),
            },
        );
        let context = AppContext::new(peer_id.to_string());
        let sampler_seed = config
            .seed
            .map_or_else(rand::random, |seed| derive_seed(seed, "\0sampler"));
        let sampler = SamplingDriver::new(&config.sampler, peer_id, sampler_seed)?;
        let sampling_out = config
            .sampling_out
            .as_deref()
            .map(SamplingWriter::create)
            .transpose()?;
        let sampling = SamplingStats {
            algorithm: config.sampler.name().into(),
            ..SamplingStats::default()
        };
        let admin = config.admin.as_deref().map(AdminServer::bind).transpose()?;
        let metrics_out = config
            .metrics_out
            .as_deref()
            .map(|path| JsonLines::create(path, "metrics output"))
            .transpose()?;
        let recent_answers = RecentAnswers::new(2 * config.network.request_timeout());
        let (deploying, deploy_events) = Deploying::new(&config)?;
        swarm
            .behaviour_mut()
            .gossip
            .subscribe(deploying.topic())
            .context("cannot subscribe to the deployments topic")?;
        Ok(Node {
            swarm,
            config,
            apps,
            max_payload_bytes,
            runtime,
            admin,
            context,
            sampler,
            sampling,
            sampling_out,
            metrics_out,
            app_protocol,
            own_addrs,
            addresses: HashMap::new(),
            network,
            mdns_last_new: Instant::now(),
            mdns_active: true,
            rejoin,
            closing: false,
            answers_owed,
            links,
            link_events: Some(link_events),
            inbound: Some(inbound),
            recent_answers,
            deploying,
            deploy_events: Some(deploy_events),
            pool: None,
            published_view: Vec::new(),
            admin_calls: mpsc::channel(16),
            controlled: false,
            apps_done: None,
            ready: Ready {
                peer_id: peer_id.to_string(),
                listen_addrs,
            },
        })
    }

    /// Runs this node's apps on `pool` (shared with other nodes of the process) rather
    /// than on threads of its own.
    pub fn with_pool(mut self, pool: Arc<WorkerPool>) -> Node {
        self.pool = Some(pool);
        self
    }

    /// A sender of admin commands to this node (as its admin socket sends them); the
    /// node then runs until `shutdown`, like a node with an admin socket.
    pub fn control(&mut self) -> mpsc::Sender<AdminCall> {
        self.controlled = true;
        self.admin_calls.0.clone()
    }

    /// Says whether every app is done (finished its cycles or failed); the node then
    /// stays up until `shutdown` rather than lingering and stopping by itself (many
    /// nodes of one experiment stop together).
    pub fn apps_done(&mut self) -> watch::Receiver<bool> {
        self.controlled = true;
        let (done, receiver) = watch::channel(false);
        self.apps_done = Some(done);
        receiver
    }

    /// The node's id and full listen addresses.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// Runs the apps until they are done and the linger passed, or `shutdown` resolves
    /// (with an admin socket: until `shutdown`).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Summary {
        let (events_tx, mut events) = mpsc::channel(1024);
        let pool = self
            .pool
            .take()
            .unwrap_or_else(|| Arc::new(WorkerPool::for_this_machine()));
        let mut registry = AppRegistry::with_pool(
            self.context.clone(),
            self.config.seed,
            events_tx,
            self.max_payload_bytes,
            pool,
        );
        for (spec, prepared) in std::mem::take(&mut self.apps) {
            let name = spec.name.clone();
            if let Err(e) = registry.load(LoadRequest { spec, prepared }) {
                tracing::error!(app = %name, "cannot start the app: {e:#}");
            }
        }
        let (admin_tx, mut admin_calls) =
            std::mem::replace(&mut self.admin_calls, mpsc::channel(1));
        let defaults = Arc::new(self.config.clone());
        let mut services = Vec::new();
        if let Some(server) = self.admin.take() {
            let answers = NodeAnswers {
                runtime: self.runtime.clone(),
                defaults: defaults.clone(),
                calls: admin_tx.clone(),
            };
            services.push(tokio::spawn(server.serve(answers)));
        }
        if let Some(dir) = self.config.apps_dir.clone() {
            let watch = apps_dir::watch(dir, self.runtime.clone(), defaults, admin_tx.clone());
            services.push(tokio::spawn(watch));
        }
        drop(admin_tx);
        let stays_up = !services.is_empty() || self.controlled || self.deploying.enabled();
        let mut deploy_events = self.deploy_events.take().expect("a node runs once");
        let mut link_events = self.link_events.take().expect("a node runs once");
        let mut inbound = self.inbound.take().expect("a node runs once");
        let mut unloading: HashMap<AppId, oneshot::Sender<serde_json::Value>> = HashMap::new();

        let mut pending = Deliveries::default();
        // Wakes at the earliest deadline of a message in flight, if any.
        let expiry = tokio::time::sleep(Duration::MAX / 4);
        let mut armed: Option<Instant> = None;
        let mut sampler_tick = self
            .config
            .sampler
            .period()
            .map(|period| tokio::time::interval_at(Instant::now() + period, period));
        let started = Instant::now();
        let mut metrics_tick = self.metrics_out.as_ref().map(|_| {
            let every = self.config.metrics_every;
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            // A node stalled past a tick writes one line when it wakes, not a burst of
            // lines with the same time: lines stay at least `every` apart.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        let mut rejoin_tick = self
            .rejoin
            .has_addresses()
            .then(|| tokio::time::interval_at(Instant::now() + REJOIN_CHECK, REJOIN_CHECK));
        let linger = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(linger, shutdown, expiry);
        let mut lingering = false;
        loop {
            let next_deadline = pending.next_deadline();
            if next_deadline != armed {
                armed = next_deadline;
                let far = Instant::now() + Duration::from_secs(86_400);
                expiry.as_mut().reset(next_deadline.unwrap_or(far));
            }
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(event) = link_events.recv() => self.on_link_event(event, &registry, &mut pending),
                Some(event) = inbound.recv() => self.on_inbound(event, &registry),
                Some(first) = events.recv() => {
                    // Take what else the apps queued meanwhile, so that messages of
                    // consecutive calls of one app travel in one request per peer.
                    let mut queued = vec![first];
                    while queued.len() < MAX_EVENTS_PER_WAKE {
                        match events.try_recv() {
                            Ok(event) => queued.push(event),
                            Err(_) => break,
                        }
                    }
                    for event in deliveries::coalesce(queued) {
                        self.on_worker_event(event, &mut registry, &mut pending, &mut unloading);
                    }
                }
                Some(call) = admin_calls.recv() => self.on_admin_call(call, &mut registry, &mut unloading),
                Some(event) = deploy_events.recv() => self.on_deploy_done(event, &mut registry, &mut unloading),
                _ = &mut expiry, if armed.is_some() => {
                    report_all(&registry, pending.expire(Instant::now()));
                    armed = None;
                }
                _ = next_tick(&mut sampler_tick) => self.on_sampler_tick(),
                _ = next_tick(&mut metrics_tick) => self.write_metrics(&registry, started),
                _ = next_tick(&mut rejoin_tick) => self.rejoin_if_alone(),
                _ = &mut linger => break,
                _ = &mut shutdown => {
                    tracing::info!("shutting down on request");
                    break;
                }
            }
            if let Some(done) = &self.apps_done {
                let finished = registry.all_finished();
                done.send_if_modified(|was| std::mem::replace(was, finished) != finished);
            }
            if !stays_up && !lingering && registry.all_finished() {
                lingering = true;
                tracing::info!(linger = ?self.config.linger, "every app is done; lingering");
                linger.as_mut().reset(Instant::now() + self.config.linger);
            }
        }
        for service in services {
            service.abort();
        }
        let mut streams = (link_events, inbound);
        self.close(
            &mut events,
            &mut streams,
            &mut registry,
            &mut pending,
            &mut unloading,
        )
        .await;
        report_all(&registry, pending.shutdown());
        self.sampling.capture(&self.sampler);
        let (apps, unloaded) = registry.shutdown();
        for reply in unloading.into_values() {
            let _ = reply.send(refusal("the node shut down while the app was unloading"));
        }
        Summary {
            apps,
            unloaded,
            sampling: self.sampling.clone(),
            network: self.network.clone(),
            deploy: self.deploying.state.counts().clone(),
        }
    }

    /// Stops taking messages, then waits (at most the linger) until every message this
    /// node sent has its answer and every answer it owes is sent, so that the outcomes
    /// the apps are told stay true when many nodes stop at once.
    async fn close(
        &mut self,
        events: &mut mpsc::Receiver<WorkerEvent>,
        (link_events, inbound): &mut (
            mpsc::UnboundedReceiver<LinkEvent>,
            mpsc::Receiver<InboundEvent>,
        ),
        registry: &mut AppRegistry,
        pending: &mut Deliveries,
        unloading: &mut HashMap<AppId, oneshot::Sender<serde_json::Value>>,
    ) {
        self.closing = true;
        let drained = |node: &Node, pending: &Deliveries| {
            pending.in_flight() == 0 && node.answers_owed.count() == 0
        };
        if drained(self, pending) {
            return;
        }
        tracing::info!(
            in_flight = pending.in_flight(),
            answers_owed = self.answers_owed.count(),
            limit = ?self.config.linger,
            "stopping: waiting for the answers in flight"
        );
        let until = tokio::time::sleep(self.config.linger);
        tokio::pin!(until);
        let mut sweep = tokio::time::interval(DEADLINE_SWEEP);
        while !drained(self, pending) {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(event) = link_events.recv() => self.on_link_event(event, registry, pending),
                Some(event) = inbound.recv() => self.on_inbound(event, registry),
                Some(event) = events.recv() => self.on_worker_event(event, registry, pending, unloading),
                _ = sweep.tick() => report_all(registry, pending.expire(Instant::now())),
                _ = &mut until => break,
            }
        }
    }

    /// Sends an app's messages, or records that it finished or exited.
    fn on_worker_event(
        &mut self,
        event: WorkerEvent,
        registry: &mut AppRegistry,
        pending: &mut Deliveries,
        unloading: &mut HashMap<AppId, oneshot::Sender<serde_json::Value>>,
    ) {
        match event {
            WorkerEvent::Outgoing { app, messages } => {
                let Some(name) = registry.name_of(app).map(String::from) else {
                    return;
                };
                if self.closing {
                    let not_sent = messages.into_iter().map(|message| Report {
                        app,
                        message_id: message.id,
                        outcome: Outcome::Failed("not sent: the node is shutting down".into()),
                    });
                    return report_all(registry, not_sent);
                }
                let (batches, refused) =
                    pending.batch(app, &name, messages, self.max_payload_bytes);
                report_all(registry, refused);
                for batch in batches {
                    self.send_batch(batch, pending);
                }
            }
            WorkerEvent::Finished { app } => registry.finished(app),
            WorkerEvent::Exited { app } => {
                if let Some(info) = registry.exited(app) {
                    if let Some(reply) = unloading.remove(&app) {
                        let _ = reply.send(json!({"ok": true, "app": info}));
                    }
                }
            }
        }
    }

    /// Sends a batch of app messages to its peer (dialling it if need be) and tracks it
    /// until it is answered.
    fn send_batch(&mut self, batch: deliveries::Batch, pending: &mut Deliveries) {
        self.dial_if_new(batch.peer);
        let id = self.links.send(batch.peer, batch.request.clone());
        pending.sent(id, batch);
    }

    /// Writes one `--metrics-out` line: every loaded app's info and the sampler's counters.
    fn write_metrics(&mut self, registry: &AppRegistry, started: Instant) {
        self.sampling.capture(&self.sampler);
        let record = json!({
            "elapsed_ms": started.elapsed().as_millis() as u64,
            "apps": registry.list(),
            "unloaded": registry.retired().len(),
            "sampling": self.sampling,
            "network": self.network,
        });
        if let Some(out) = &mut self.metrics_out {
            if let Err(error) = out.write(&record) {
                tracing::error!("{error:#}; no more metrics lines");
                self.metrics_out = None;
            }
        }
    }

    /// Carries out an admin command; an unload answers once the app has drained.
    fn on_admin_call(
        &mut self,
        AdminCall { command, reply }: AdminCall,
        registry: &mut AppRegistry,
        unloading: &mut HashMap<AppId, oneshot::Sender<serde_json::Value>>,
    ) {
        let answer = match command {
            AdminCommand::List => json!({"ok": true, "apps": registry.list()}),
            AdminCommand::Stats => {
                self.sampling.capture(&self.sampler);
                json!({
                    "ok": true,
                    "apps": registry.list(),
                    "unloaded": registry.retired(),
                    "sampling": self.sampling,
                    "network": self.network,
                    "deploy": self.deploying.state.counts(),
                })
            }
            AdminCommand::Load(request) => {
                let component = request.prepared.hash.clone();
                match registry.load(request) {
                    Ok(id) => {
                        json!({"ok": true, "name": registry.name_of(id), "component": component})
                    }
                    Err(e) => refusal(format!("{e:#}")),
                }
            }
            AdminCommand::Replace(replacement) => {
                let running = registry.spec_of(&replacement.request.spec.name);
                let request = replacement.keeping(running);
                let component = request.prepared.hash.clone();
                match registry.replace(request) {
                    Ok((_, new)) => {
                        json!({"ok": true, "name": registry.name_of(new), "component": component})
                    }
                    Err(e) => refusal(format!("{e:#}")),
                }
            }
            AdminCommand::Unload(name) => match registry.unload(&name) {
                Ok(Unloading::Draining(id)) => {
                    unloading.insert(id, reply);
                    return;
                }
                Ok(Unloading::Gone(info)) => json!({"ok": true, "app": info}),
                Err(e) => refusal(format!("{e:#}")),
            },
        };
        let _ = reply.send(answer);
    }

    /// Dials the bootstrap addresses again when the node has had no peer for a while.
    fn rejoin_if_alone(&mut self) {
        if self.closing {
            return;
        }
        let peers = self.swarm.network_info().num_peers();
        let addrs = self.rejoin.due(Instant::now(), peers).to_vec();
        for addr in addrs {
            tracing::info!(%addr, "no peer: dialling the bootstrap address again");
            if let Err(e) = dial_bootstrap(&mut self.swarm, &addr, &mut self.network) {
                tracing::warn!("{e:#}");
            }
        }
    }

    /// Runs the sampler's active part and records the tick.
    fn on_sampler_tick(&mut self) {
        let outgoing = self.sampler.tick();
        self.send_sampling(outgoing);
        self.publish_view();
        let samples = self.sampler.take_samples();
        if let Some(out) = &mut self.sampling_out {
            self.sampling.capture(&self.sampler);
            if let Err(error) = out.record(&self.sampling, &samples) {
                tracing::error!("{error:#}; no more sampling records");
                self.sampling_out = None;
            }
        }
    }

    /// Sends the sampler's messages, with the addresses of the peers they mention.
    fn send_sampling(&mut self, outgoing: Vec<Outgoing>) {
        let me = *self.swarm.local_peer_id();
        for Outgoing { to, message } in outgoing {
            let addrs = message
                .peers()
                .into_iter()
                .filter_map(|peer| {
                    let known = if peer == me {
                        Some(&self.own_addrs)
                    } else {
                        self.addresses.get(&peer)
                    };
                    known.map(|a| (peer, a.iter().take(MAX_ADDRS_PER_PEER).cloned().collect()))
                })
                .collect();
            let envelope = SamplingEnvelope {
                v: network::sampling::SAMPLING_WIRE_VERSION,
                message,
                addrs,
            };
            self.swarm
                .behaviour_mut()
                .sampling
                .send_request(&to, Ok(envelope));
        }
    }

    /// Remembers `addrs` as listen addresses of `peer` (at most a few per peer).
    fn learn_addresses(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        let known = self.addresses.entry(peer).or_default();
        for addr in addrs {
            if !known.contains(&addr) {
                known.push(addr.clone());
                self.swarm.add_peer_address(peer, addr);
            }
        }
        // The few kept are those other hosts can reach, if the peer told any.
        reachable_first(known);
        known.truncate(MAX_ADDRS_PER_PEER);
        self.add_known_peer(peer);
    }

    /// Hands the sampler's view to the apps, as text, when it changed.
    fn publish_view(&mut self) {
        let view = self.sampler.view();
        if view == self.published_view {
            return;
        }
        let text: Vec<String> = view.iter().map(PeerId::to_string).collect();
        *self.context.view.write().unwrap_or_else(|e| e.into_inner()) = text;
        self.published_view = view;
    }

    /// Records `peer` as a peer of this context the node knows of.
    fn add_known_peer(&mut self, peer: PeerId) {
        if !self.network.discovered(peer) {
            return;
        }
        let peer = peer.to_string();
        let mut known = self
            .context
            .known_peers
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if !known.contains(&peer) {
            known.push(peer);
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<NodeBehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                self.network.connection_opened();
                tracing::info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                self.network.connection_closed();
                if num_established == 0 {
                    tracing::info!(peer = %peer_id, cause = ?cause.map(|c| c.to_string()), "disconnected");
                    self.sampler.disconnected(peer_id);
                    self.publish_view();
                    self.deploy_peer_gone(peer_id);
                }
            }
            // A listener on 0.0.0.0 reports each interface's address in turn.
            SwarmEvent::NewListenAddr { address, .. } if !self.own_addrs.contains(&address) => {
                self.own_addrs.push(address);
                reachable_first(&mut self.own_addrs);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.own_addrs.retain(|known| known != &address);
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                let reason = match &error {
                    ListenError::Denied { cause } if over_budget(cause) => "connection_budget",
                    ListenError::Denied { .. } => "connection_limit",
                    _ => "handshake",
                };
                self.network.refuse(
                    reason,
                    format_args!("inbound connection from {send_back_addr}: {error}"),
                );
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                match &error {
                    DialError::Denied { cause } if over_budget(cause) => self.network.refuse(
                        "connection_budget",
                        format_args!("dialling {peer_id:?}: {cause}"),
                    ),
                    _ => tracing::warn!(peer = ?peer_id, "dial failed: {error}"),
                }
                // A dial that lost the race to a connection the peer opened is no news.
                if let Some(peer) = peer_id.filter(|p| !self.swarm.is_connected(p)) {
                    self.sampler.disconnected(peer);
                    self.publish_view();
                }
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if info.protocols.contains(&self.app_protocol) {
                    if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                        for addr in &info.listen_addrs {
                            kad.add_address(&peer_id, addr.clone());
                        }
                    }
                    self.learn_addresses(peer_id, info.listen_addrs);
                    self.sampler.connected(peer_id);
                    self.publish_view();
                    self.catch_up_from(peer_id);
                } else {
                    self.network.refuse(
                        "other_context",
                        format_args!("{peer_id} speaks another context; not adding it to the view"),
                    );
                }
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer,
                addresses,
                ..
            })) => {
                // Kademlia's protocol name carries the context: these are our peers.
                self.learn_addresses(peer, addresses.into_vec());
                self.dial_if_new(peer);
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                self.on_mdns_discovered(found);
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Sampling(event)) => {
                self.on_sampling_event(event)
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Gossip(event)) => self.on_gossip_event(event),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Deploy(event)) => self.on_deploy_event(event),
            _ => {}
        }
    }

    /// Dials `peer` at the addresses the swarm knows, unless already connected.
    fn dial_if_new(&mut self, peer: PeerId) {
        if self.swarm.is_connected(&peer) || peer == *self.swarm.local_peer_id() {
            return;
        }
        // A new port: two peers that find each other at the same instant (mDNS) would
        // otherwise dial from their listen ports into a TCP simultaneous open, where
        // both sides start the noise handshake as initiator and both fail.
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .allocate_new_port()
            .build();
        if let Err(error) = self.swarm.dial(opts) {
            tracing::debug!(%peer, "not dialling a discovered peer: {error}");
        }
    }

    /// Dials peers mDNS found, until `idle_discovery_timeout_secs` passes without a new
    /// one. Their context is checked by identify once connected.
    fn on_mdns_discovered(&mut self, found: Vec<(PeerId, Multiaddr)>) {
        if !self.mdns_active {
            return;
        }
        let idle = self.config.network.mdns.idle_discovery_timeout();
        if idle.is_some_and(|idle| self.mdns_last_new.elapsed() > idle) {
            tracing::info!(after = ?idle, "mDNS found no new peer in time; no longer acting on it");
            self.mdns_active = false;
            return;
        }
        for (peer, addr) in found {
            if !self.swarm.is_connected(&peer) {
                self.mdns_last_new = Instant::now();
                tracing::info!(%peer, %addr, "mDNS found a peer");
                self.swarm.add_peer_address(peer, addr);
                self.dial_if_new(peer);
            }
        }
    }

    fn on_sampling_event(&mut self, event: request_response::Event<Inbound<SamplingEnvelope>, ()>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request: Err(reason),
                        ..
                    },
                ..
            } => {
                // Malformed, oversized or another wire version: no ack.
                self.network.refuse(
                    "bad_sampling_frame",
                    format_args!("sampling message from {peer}: {reason}"),
                );
                self.sampling.refused += 1;
            }
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request: Ok(request),
                        channel,
                        ..
                    },
                ..
            } => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .sampling
                    .send_response(channel, ());
                for (known, addrs) in request.addrs {
                    self.learn_addresses(known, addrs);
                }
                self.add_known_peer(peer);
                let outgoing = self.sampler.receive(peer, request.message);
                self.send_sampling(outgoing);
                self.publish_view();
            }
            request_response::Event::Message {
                message: request_response::Message::Response { .. },
                ..
            } => {}
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::info!(peer = %peer, "sampling message not delivered: {error}");
                self.sampler.send_failed(peer);
                self.publish_view();
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::info!(peer = %peer, "inbound sampling exchange failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Answers a request a peer sent on its app stream, message by message.
    fn on_inbound(&mut self, event: InboundEvent, registry: &AppRegistry) {
        let InboundRequest { peer, batch, reply } = match event {
            InboundEvent::Request(request) => request,
            InboundEvent::StreamRefused { peer } => {
                return self.network.refuse(
                    "too_many_streams",
                    format_args!(
                        "app stream from {peer}: it holds {} open already",
                        app_stream::MAX_STREAMS_PER_PEER
                    ),
                );
            }
        };
        let key = batch.as_ref().ok().map(|batch| batch.key);
        if let Some(answer) = key.and_then(|key| self.recent_answers.get(peer, key)) {
            // Sent again after its stream broke: delivered already.
            self.network.repeats_answered += 1;
            let _ = reply.send(answer);
            return;
        }
        let admitted = self.sampler.admits(peer);
        let closing = self.closing;
        let from = peer.to_string();
        let outcomes: Vec<Result<(), Refused>> = match batch {
            // One refusal that says what is wrong with the frame.
            Err(reason) => vec![Err(Refused {
                reason: "bad_app_frame",
                message: reason,
            })],
            Ok(batch) => batch
                .into_messages()
                .into_iter()
                .map(|request| {
                    if closing {
                        return Err(Refused {
                            reason: "shutting_down",
                            message: "the node is shutting down".into(),
                        });
                    }
                    if !admitted {
                        return Err(Refused {
                            reason: "not_admitted",
                            message: format!(
                                "{peer} is not among the peers this node receives from (static topology)"
                            ),
                        });
                    }
                    registry.deliver(&from, &request.app, request.payload)
                })
                .collect(),
        };
        let answer: Vec<network::AppResponse> = outcomes
            .into_iter()
            .map(|outcome| {
                outcome.map_err(|refused| {
                    self.network.refuse(
                        refused.reason,
                        format_args!("message from {peer}: {refused}"),
                    );
                    refused.message
                })
            })
            .collect();
        if let Some(key) = key {
            self.recent_answers
                .remember(Instant::now(), peer, key, &answer);
        }
        let _ = reply.send(answer);
    }

    /// Settles the messages of a request that was answered or failed; a request whose
    /// stream broke goes out once more.
    fn on_link_event(
        &mut self,
        event: LinkEvent,
        registry: &AppRegistry,
        pending: &mut Deliveries,
    ) {
        match event {
            LinkEvent::Answered { peer, id, answers } => {
                report_all(registry, pending.answered(id, peer, answers));
            }
            LinkEvent::Failed { peer, id, failure } => {
                let (reports, again) = pending.failed(id, peer, &failure);
                report_all(registry, reports);
                if let Some(batch) = again {
                    tracing::debug!(peer = %peer, "sending app messages again: {failure}");
                    self.network.requests_sent_again += 1;
                    self.send_batch(batch, pending);
                }
            }
        }
    }
}

/// Dials bootstrap address `addr` (its peer id, if it has one, goes to Kademlia). A dial
/// the process's connection budget refuses is counted, not an error: the node goes on,
/// and peers may still dial it.
fn dial_bootstrap(
    swarm: &mut Swarm<NodeBehaviour>,
    addr: &Multiaddr,
    network: &mut NetworkStats,
) -> Result<()> {
    if let (Some(Protocol::P2p(peer)), Some(kad)) =
        (addr.iter().last(), swarm.behaviour_mut().kad.as_mut())
    {
        kad.add_address(&peer, addr.clone());
    }
    let opts = DialOpts::unknown_peer_id()
        .address(addr.clone())
        .allocate_new_port()
        .build();
    match swarm.dial(opts) {
        Err(DialError::Denied { cause }) if over_budget(&cause) => {
            network.refuse(
                "connection_budget",
                format_args!("bootstrap address {addr}: {cause}"),
            );
            Ok(())
        }
        dialled => dialled.with_context(|| format!("cannot dial bootstrap address {addr}")),
    }
}

/// Whether a connection was refused by the process's connection budget.
fn over_budget(cause: &ConnectionDenied) -> bool {
    cause
        .downcast_ref::<network::budget::BudgetSpent>()
        .is_some()
}

/// Hands each settled message's outcome to its app.
fn report_all(registry: &AppRegistry, reports: impl IntoIterator<Item = Report>) {
    for report in reports {
        registry.report(report);
    }
}

/// Waits for the next tick of `interval`; never resolves without one.
async fn next_tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
