//! The app registry: the apps a node runs, by name. Each app is a task of the node's
//! [`WorkerPool`] ([`Worker`]) with its own store, limits, schedule and config; messages
//! are routed by name. Apps can be loaded, unloaded and replaced while the node runs: an
//! unloaded app first handles the messages already queued for it (nothing accepted is
//! dropped), then its task ends and its store is freed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};

use anyhow::{bail, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::pool::{AppHandle, Ended, WorkerPool};
use super::worker::{AppTask, Handoff, InboxLevel, Worker};
use super::{AppCommand, AppContext, AppId, AppState, AppStats, Outcome, Prepared, WorkerEvent};
use crate::config::ResolvedApp;

/// A seed for `label` derived from the node's `seed` (each app and the sampler get
/// their own stream).
pub fn derive_seed(seed: u64, label: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(seed.to_le_bytes())
        .chain_update(label.as_bytes())
        .finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The outcome of one message, for the app instance that queued it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The instance that sent it (a successor under the same name never gets it).
    pub app: AppId,
    /// The id `send-message` returned.
    pub message_id: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// An app to start: its settings and its compiled component.
#[derive(Clone)]
pub struct LoadRequest {
    /// Name, config, schedule and limits.
    pub spec: ResolvedApp,
    /// The component.
    pub prepared: Prepared,
}

/// What `list` and `stats` tell about an app.
#[derive(Clone, Debug, Serialize)]
pub struct AppInfo {
    /// The routing name.
    pub name: String,
    /// The component's content hash (SHA-256, hex).
    pub component: String,
    /// `periodic-run` calls to make (`None`, written -1 as on the command line: forever).
    #[serde(serialize_with = "cycles_as_written")]
    pub cycles: Option<u64>,
    /// Milliseconds between calls.
    pub period_ms: u64,
    /// Received messages waiting.
    pub queued: usize,
    /// Counters and state.
    pub stats: AppStats,
}

/// Writes `None` (forever) as -1, as `--cycles` takes it.
fn cycles_as_written<S: serde::Serializer>(cycles: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match cycles {
        Some(n) => s.serialize_u64(*n),
        None => s.serialize_i64(-1),
    }
}

struct RunningApp {
    id: AppId,
    spec: ResolvedApp,
    component: String,
    commands: AppHandle,
    stats: Arc<Mutex<AppStats>>,
    inbox: Arc<InboxLevel>,
    finished: bool,
    /// Its task ended already (it failed, or finished and stopped): nothing is left to
    /// drain, and no other `Exited` will come.
    exited: bool,
    ended: Arc<Ended>,
}

impl RunningApp {
    fn stats(&self) -> AppStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn info(&self) -> AppInfo {
        AppInfo {
            name: self.spec.name.clone(),
            component: self.component.clone(),
            cycles: self.spec.cycles,
            period_ms: self.spec.period.as_millis() as u64,
            queued: self.inbox.messages(),
            stats: self.stats(),
        }
    }

    /// Waits until its task has ended (its store is freed).
    fn join(&self) {
        self.ended.wait();
    }
}

/// What [`AppRegistry::unload`] started.
#[derive(Debug)]
pub enum Unloading {
    /// The app handles what is queued for it; `exited` says when it is gone.
    Draining(AppId),
    /// The app's task had ended already: it is gone, with this final info.
    Gone(Box<AppInfo>),
}

/// The apps of one node.
pub struct AppRegistry {
    apps: BTreeMap<String, RunningApp>,
    /// Unloaded or replaced apps still handling their queued messages.
    leaving: HashMap<AppId, RunningApp>,
    /// Apps that were unloaded, in order: their info when they ended, and their
    /// counters, which outcomes of their messages arriving later still update.
    retired: Vec<(AppId, AppInfo, Arc<Mutex<AppStats>>)>,
    next_id: u64,
    context: AppContext,
    seed: Option<u64>,
    events: mpsc::Sender<WorkerEvent>,
    max_payload_bytes: u64,
    handoff_timeout: std::time::Duration,
    pool: Arc<WorkerPool>,
}

/// Why a message from a peer was not handed to an app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// A short key for counters: `unknown_app`, `app_stopped`, `inbox_full`.
    pub reason: &'static str,
    /// What the sender is told.
    pub message: String,
}

impl Refused {
    fn new(reason: &'static str, message: String) -> Refused {
        Refused { reason, message }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl AppRegistry {
    /// An empty registry; apps share `context` (id, view) and send their events to
    /// `events`; no app may send payloads over `max_payload_bytes` (the network's frame
    /// limit). Its apps run on a pool of its own ([`WorkerPool::for_this_machine`]).
    pub fn new(
        context: AppContext,
        seed: Option<u64>,
        events: mpsc::Sender<WorkerEvent>,
        max_payload_bytes: u64,
    ) -> AppRegistry {
        let pool = Arc::new(WorkerPool::for_this_machine());
        AppRegistry::with_pool(context, seed, events, max_payload_bytes, pool)
    }

    /// As [`AppRegistry::new`], the apps running on `pool` (which other nodes of the
    /// process may share).
    pub fn with_pool(
        context: AppContext,
        seed: Option<u64>,
        events: mpsc::Sender<WorkerEvent>,
        max_payload_bytes: u64,
        pool: Arc<WorkerPool>,
    ) -> AppRegistry {
        AppRegistry {
            pool,
            apps: BTreeMap::new(),
            leaving: HashMap::new(),
            retired: Vec::new(),
            next_id: 0,
            context,
            seed,
            events,
            max_payload_bytes,
            handoff_timeout: super::worker::HANDOFF_TIMEOUT,
        }
    }

    /// How long a replacement waits for its predecessor's state before it goes on from
    /// `init` (30 s unless set).
    pub fn with_handoff_timeout(mut self, timeout: std::time::Duration) -> AppRegistry {
        self.handoff_timeout = timeout;
        self
    }

    /// Starts an app under a name no running app has.
    pub fn load(&mut self, request: LoadRequest) -> Result<AppId> {
        Ok(self.start(request, None)?.0)
    }

    /// Starts an app, which first restores the state `restore_from` brings, if any.
    fn start(
        &mut self,
        request: LoadRequest,
        restore_from: Option<std_mpsc::Receiver<Vec<u8>>>,
    ) -> Result<(AppId, AppHandle)> {
        let name = request.spec.name.clone();
        if self.apps.contains_key(&name) {
            bail!("an app named {name:?} is already loaded (unload it, or replace it)");
        }
        self.check_payload_limit(&request.spec)?;
        self.next_id += 1;
        let id = AppId(self.next_id);
        let (commands, commands_rx) = std_mpsc::channel();
        let stats = Arc::new(Mutex::new(AppStats::default()));
        let inbox = Arc::new(InboxLevel::default());
        let ended = Arc::new(Ended::default());
        let worker = Worker {
            id,
            seed: self.seed.map(|s| derive_seed(s, &name)),
            spec: request.spec.clone(),
            prepared: request.prepared.clone(),
            context: self.context.clone(),
            commands: commands_rx,
            events: self.events.clone(),
            stats: stats.clone(),
            inbox: inbox.clone(),
            restore_from,
            handoff_timeout: self.handoff_timeout,
            ended: ended.clone(),
        };
        let handle = self.pool.spawn(commands, |_| AppTask::new(worker))?;
        tracing::info!(app = %name, component = %request.prepared.hash, "app loaded");
        self.apps.insert(
            name,
            RunningApp {
                id,
                spec: request.spec,
                component: request.prepared.hash,
                commands: handle.clone(),
                stats,
                inbox,
                finished: false,
                exited: false,
                ended,
            },
        );
        Ok((id, handle))
    }

    /// Refuses an app whose payload limit exceeds the network's frame limit.
    fn check_payload_limit(&self, spec: &ResolvedApp) -> Result<()> {
        let payload = spec.limits.max_payload_bytes;
        if payload > self.max_payload_bytes {
            bail!(
                "limits.max_payload_bytes ({payload}) is over this node's network limit ({})",
                self.max_payload_bytes
            );
        }
        Ok(())
    }

    /// Takes app `name` out of routing and lets it handle what is queued, then stop;
    /// [`exited`](Self::exited) says when it is gone — or, when its task ended already
    /// (a failed app), it is gone at once, with its final info.
    pub fn unload(&mut self, name: &str) -> Result<Unloading> {
        let Some(app) = self.apps.remove(name) else {
            bail!("no app named {name:?} is loaded");
        };
        let id = app.id;
        let exited = app.exited;
        let _ = app.commands.send(AppCommand::Drain(None));
        self.leaving.insert(id, app);
        if exited {
            let info = self.exited(id).expect("leaving, so retired");
            return Ok(Unloading::Gone(Box::new(info)));
        }
        Ok(Unloading::Draining(id))
    }

    /// Unloads the app of the request's name and loads the request in its place, handing
    /// it the old instance's snapshot (once the old one has handled its queued
    /// messages); returns the old instance (leaving) and the new one.
    pub fn replace(&mut self, request: LoadRequest) -> Result<(AppId, AppId)> {
        let name = request.spec.name.clone();
        self.check_payload_limit(&request.spec)?;
        let Some(old) = self.apps.remove(&name) else {
            bail!("no app named {name:?} is loaded to replace");
        };
        let (state, restore_from) = std_mpsc::channel();
        let old_id = old.id;
        let old_commands = old.commands.clone();
        self.leaving.insert(old_id, old);
        let (new, successor) = match self.start(request, Some(restore_from)) {
            Ok(started) => started,
            Err(e) => {
                // The old one goes on as it was.
                if let Some(old) = self.leaving.remove(&old_id) {
                    self.apps.insert(name, old);
                }
                return Err(e);
            }
        };
        let waker = successor.waker();
        let _ = old_commands.send(AppCommand::Drain(Some(Handoff {
            state,
            successor: waker.clone(),
        })));
        if self.leaving.get(&old_id).is_some_and(|old| old.exited) {
            // Its task ended (it failed): nothing to drain, and no state will come (the
            // hand-off was dropped with the command): the successor goes on from init now
            // rather than at the hand-off timeout.
            self.exited(old_id);
            waker.wake();
        }
        Ok((old_id, new))
    }

    /// App `id`'s thread ended: joins it; a leaving app is retired, with its final info.
    pub fn exited(&mut self, id: AppId) -> Option<AppInfo> {
        if let Some(app) = self.leaving.remove(&id) {
            app.join();
            let info = app.info();
            self.retired.push((id, info.clone(), app.stats.clone()));
            return Some(info);
        }
        if let Some(app) = self.apps.values_mut().find(|a| a.id == id) {
            app.join();
            app.finished = true;
            app.exited = true;
        }
        None
    }

    /// App `id` finished its cycles or failed.
    pub fn finished(&mut self, id: AppId) {
        if let Some(app) = self.apps.values_mut().find(|a| a.id == id) {
            app.finished = true;
        }
    }

    /// Whether apps are loaded and every one is done.
    pub fn all_finished(&self) -> bool {
        !self.apps.is_empty() && self.apps.values().all(|a| a.finished)
    }

    /// The settings of the loaded app `name`.
    pub fn spec_of(&self, name: &str) -> Option<&ResolvedApp> {
        self.apps.get(name).map(|app| &app.spec)
    }

    /// The name of app instance `id`, loaded or leaving.
    pub fn name_of(&self, id: AppId) -> Option<&str> {
        self.apps
            .values()
            .chain(self.leaving.values())
            .find(|a| a.id == id)
            .map(|a| a.spec.name.as_str())
    }

    /// Hands a message from peer `from` to app `app`, or says why not.
    pub fn deliver(&self, from: &str, app: &str, payload: Vec<u8>) -> Result<(), Refused> {
        let Some(running) = self.apps.get(app) else {
            return Err(Refused::new(
                "unknown_app",
                format!("no app named {app:?} on this node"),
            ));
        };
        {
            let stats = running.stats.lock().unwrap_or_else(|e| e.into_inner());
            if stats.state == AppState::Failed {
                return Err(Refused::new(
                    "app_stopped",
                    format!(
                        "app {app:?} has stopped: {}",
                        stats.reason.as_deref().unwrap_or("failed")
                    ),
                ));
            }
        }
        let limits = &running.spec.limits;
        let max_bytes = usize::try_from(limits.inbox_max_mib << 20).unwrap_or(usize::MAX);
        running
            .inbox
            .admit(payload.len(), limits.inbox_capacity, max_bytes)
            .map_err(|why| Refused::new("inbox_full", format!("app {app:?} has {why}")))?;
        running
            .commands
            .send(AppCommand::Message {
                from: from.to_string(),
                payload,
            })
            .map_err(|_| Refused::new("app_stopped", format!("app {app:?} has stopped")))
    }

    /// Tells app instance `id` how its message `message_id` ended. An instance told to
    /// drain (unloaded or replaced) ends once it reaches that command, so for it, and
    /// after its end, the outcome is only counted.
    pub fn report(&self, report: Report) {
        let Report {
            app: id,
            message_id,
            outcome,
        } = report;
        if let Some(app) = self.apps.values().find(|a| a.id == id) {
            let _ = app.commands.send(AppCommand::Delivery {
                id: message_id,
                outcome,
            });
            return;
        }
        let leaving = self.leaving.get(&id).map(|app| &app.stats);
        let retired = self.retired.iter().find(|(retired, ..)| *retired == id);
        if let Some(stats) = leaving.or(retired.map(|(_, _, stats)| stats)) {
            let mut stats = stats.lock().unwrap_or_else(|e| e.into_inner());
            stats.counts.count(&outcome);
        }
    }

    /// The loaded apps, by name.
    pub fn list(&self) -> Vec<AppInfo> {
        self.apps.values().map(RunningApp::info).collect()
    }

    /// Apps unloaded so far, with their counters.
    pub fn retired(&self) -> Vec<AppInfo> {
        self.retired
            .iter()
            .map(|(_, info, stats)| AppInfo {
                stats: stats.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                ..info.clone()
            })
            .collect()
    }

    /// Stops every app, waits for their threads, and returns the final counters of every
    /// app loaded now (by name) and of those unloaded before.
    pub fn shutdown(mut self) -> (BTreeMap<String, AppStats>, Vec<AppInfo>) {
        for app in self.apps.values().chain(self.leaving.values()) {
            let _ = app.commands.send(AppCommand::Stop);
        }
        let mut loaded = BTreeMap::new();
        for (name, app) in std::mem::take(&mut self.apps) {
            app.join();
            loaded.insert(name, app.stats());
        }
        for (id, app) in std::mem::take(&mut self.leaving) {
            app.join();
            self.retired.push((id, app.info(), app.stats.clone()));
        }
        (loaded, self.retired())
    }
}
