//! One app's task: drives the app's [`AppInstance`] in real time — runs its cycles
//! when due, hands it the node's commands in order and passes what it queued to the
//! node. The node's [`WorkerPool`](super::pool::WorkerPool) runs it step by step.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc::Sender;

use super::instance::{AppInstance, Effects, Input};
use super::pool::{Ended, Waker};
use super::stats::{AppStats, Outcome};
use super::{AppContext, OutgoingMessage, Prepared};
use crate::config::ResolvedApp;

/// What the node asks of an app.
#[derive(Debug)]
pub enum AppCommand {
    /// Deliver a message from peer `from`.
    Message { from: String, payload: Vec<u8> },
    /// Report how message `id` ended.
    Delivery { id: u64, outcome: Outcome },
    /// Stop now.
    Stop,
    /// Handle the commands sent before this one, then stop (an unload); for a replace,
    /// send the app's `snapshot` (empty if it has none) to its successor first.
    Drain(Option<Handoff>),
}

/// Where a replaced app's state goes: its successor's channel, and what wakes it.
#[derive(Debug)]
pub struct Handoff {
    /// The successor's end of the state channel.
    pub state: std::sync::mpsc::Sender<Vec<u8>>,
    /// Wakes the successor once the state is sent.
    pub successor: Waker,
}

/// How long a replacement waits for its predecessor's state, unless the registry says.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(30);

/// One loaded instance of an app: never reused, so a late event from an unloaded app
/// cannot reach its successor under the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct AppId(pub u64);

/// What waits in an app's inbox: messages and payload bytes.
#[derive(Debug, Default)]
pub struct InboxLevel {
    messages: AtomicUsize,
    bytes: AtomicUsize,
}

impl InboxLevel {
    /// Messages waiting.
    pub fn messages(&self) -> usize {
        self.messages.load(Ordering::Relaxed)
    }

    /// Counts a message in, unless `capacity` messages or `max_bytes` bytes would be
    /// exceeded (one message always fits an empty inbox); the refusal says which.
    pub fn admit(&self, len: usize, capacity: usize, max_bytes: usize) -> Result<(), String> {
        let messages = self.messages();
        if messages >= capacity {
            return Err(format!("{capacity} messages waiting already"));
        }
        let bytes = self.bytes.load(Ordering::Relaxed);
        if messages > 0 && bytes + len > max_bytes {
            return Err(format!(
                "{bytes} bytes waiting already; {len} more would pass the inbox limit of {max_bytes}"
            ));
        }
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Counts a message of `len` bytes out.
    pub fn taken(&self, len: usize) {
        self.messages.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(len, Ordering::Relaxed);
    }
}

/// What a worker tells the node.
#[derive(Debug)]
pub enum WorkerEvent {
    /// Messages app `app` queued, to send now.
    Outgoing {
        app: AppId,
        messages: Vec<OutgoingMessage>,
    },
    /// App `app` finished its cycles or stopped for good.
    Finished { app: AppId },
    /// App `app`'s thread ended (after a stop, a drain, or a failure).
    Exited { app: AppId },
}

/// Everything an app's task needs.
pub struct Worker {
    /// This instance.
    pub id: AppId,
    /// The app's settings.
    pub spec: ResolvedApp,
    /// The compiled component.
    pub prepared: Prepared,
    /// The node's shared state.
    pub context: AppContext,
    /// Seed for the app's randomness.
    pub seed: Option<u64>,
    /// Commands from the node.
    pub commands: Receiver<AppCommand>,
    /// Events to the node.
    pub events: Sender<WorkerEvent>,
    /// Counters, read by the node.
    pub stats: Arc<Mutex<AppStats>>,
    /// Messages and bytes waiting in `commands`.
    pub inbox: Arc<InboxLevel>,
    /// The state of the instance this one replaces, to `restore` after `init`.
    pub restore_from: Option<Receiver<Vec<u8>>>,
    /// How long to wait for that state before going on from `init`.
    pub handoff_timeout: Duration,
    /// Set once the task has ended.
    pub ended: Arc<Ended>,
}

/// What a task asks of the pool after a step.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Run me again now (there may be more to do).
    Again,
    /// Run me when a command comes, or at this time of the clock.
    Wait(Option<Duration>),
    /// I have ended (my last event is sent).
    Ended,
}

/// Where an app's task stands.
enum Phase {
    /// Not instantiated yet.
    Starting,
    /// A replacement waiting (until the deadline) for its predecessor's state.
    AwaitingState {
        instance: AppInstance,
        deadline: Duration,
    },
    /// Running its cycles and commands.
    Running(AppInstance),
    /// Gone.
    Ended,
}

/// Commands handled in one step at most, so one busy app cannot hold a pool thread.
const COMMANDS_PER_STEP: usize = 64;

/// One app, driven step by step by the pool.
pub struct AppTask {
    worker: Worker,
    phase: Phase,
    /// The span the app was loaded in (a cluster's node): what the app logs, on
    /// whichever pool thread, is tagged with it.
    span: tracing::Span,
}

impl AppTask {
    /// The task of `worker`'s app, not started yet, in the current span.
    pub fn new(worker: Worker) -> AppTask {
        AppTask {
            worker,
            phase: Phase::Starting,
            span: tracing::Span::current(),
        }
    }

    /// What is set when the task ends.
    pub fn ended(&self) -> Arc<Ended> {
        self.worker.ended.clone()
    }

    /// Does what is due at `now` (the context's clock): starting, a due cycle, the
    /// commands waiting (a few at most); says when to run again.
    pub fn step(&mut self, now: Duration) -> Step {
        let span = self.span.clone();
        let _entered = span.enter();
        let step = match std::mem::replace(&mut self.phase, Phase::Ended) {
            Phase::Starting => self.start(now),
            Phase::AwaitingState { instance, deadline } => {
                self.await_state(instance, deadline, now)
            }
            Phase::Running(instance) => self.run(instance, now),
            Phase::Ended => Step::Ended,
        };
        if step == Step::Ended {
            self.phase = Phase::Ended;
            let _ = self.worker.events.blocking_send(WorkerEvent::Exited {
                app: self.worker.id,
            });
        }
        step
    }

    fn start(&mut self, now: Duration) -> Step {
        let w = &self.worker;
        let (instance, effects) = AppInstance::start(
            &w.prepared,
            &w.spec,
            w.context.clone(),
            w.seed,
            w.stats.clone(),
            now,
        );
        self.emit(effects);
        let Some(instance) = instance.filter(|i| !i.stopped()) else {
            return Step::Ended;
        };
        self.phase = if self.worker.restore_from.is_some() {
            Phase::AwaitingState {
                instance,
                deadline: now + self.worker.handoff_timeout,
            }
        } else {
            self.started();
            Phase::Running(instance)
        };
        Step::Again
    }

    fn started(&self) {
        let spec = &self.worker.spec;
        tracing::info!(app = %spec.name, cycles = ?spec.cycles, period = ?spec.period, "app started");
    }

    fn await_state(
        &mut self,
        mut instance: AppInstance,
        deadline: Duration,
        now: Duration,
    ) -> Step {
        let name = &self.worker.spec.name;
        let received = match &self.worker.restore_from {
            Some(state) => state.try_recv(),
            None => Err(TryRecvError::Disconnected),
        };
        match received {
            Ok(state) => {
                if !state.is_empty() {
                    let effects = instance.restore(state);
                    self.emit(effects);
                }
            }
            Err(TryRecvError::Empty) if now < deadline => {
                self.phase = Phase::AwaitingState { instance, deadline };
                return Step::Wait(Some(deadline));
            }
            Err(TryRecvError::Empty) => tracing::warn!(
                app = %name,
                "the previous version did not hand over its state within {:?}; going on from init",
                self.worker.handoff_timeout
            ),
            Err(TryRecvError::Disconnected) => tracing::warn!(
                app = %name,
                "the previous version stopped without handing over state; going on from init"
            ),
        }
        self.worker.restore_from = None;
        if instance.stopped() {
            return Step::Ended;
        }
        self.started();
        self.phase = Phase::Running(instance);
        Step::Again
    }

    fn run(&mut self, mut instance: AppInstance, now: Duration) -> Step {
        if instance.poll_timeout().is_some_and(|due| now >= due) {
            let effects = instance.handle_timeout(now);
            self.emit(effects);
        }
        for _ in 0..COMMANDS_PER_STEP {
            if instance.stopped() {
                return Step::Ended;
            }
            let command = match self.worker.commands.try_recv() {
                Ok(command) => command,
                Err(TryRecvError::Empty) => {
                    let due = instance.poll_timeout();
                    self.phase = Phase::Running(instance);
                    return if due.is_some_and(|due| now >= due) {
                        Step::Again
                    } else {
                        Step::Wait(due)
                    };
                }
                Err(TryRecvError::Disconnected) => return Step::Ended,
            };
            let effects = match command {
                AppCommand::Message { from, payload } => {
                    self.worker.inbox.taken(payload.len());
                    instance.handle(Input::Message { from, payload })
                }
                AppCommand::Delivery { id, outcome } => {
                    instance.handle(Input::Delivery { id, outcome })
                }
                AppCommand::Stop => return Step::Ended,
                AppCommand::Drain(handoff) => {
                    let name = &self.worker.spec.name;
                    match handoff {
                        None => {
                            tracing::info!(app = %name, "app unloaded after its queued messages")
                        }
                        Some(Handoff { state, successor }) => {
                            let snapshot = instance.snapshot();
                            tracing::info!(app = %name, bytes = snapshot.len(), "app replaced after its queued messages");
                            let _ = state.send(snapshot);
                            successor.wake();
                        }
                    }
                    instance.unload();
                    return Step::Ended;
                }
            };
            self.emit(effects);
        }
        if instance.stopped() {
            return Step::Ended;
        }
        self.phase = Phase::Running(instance);
        Step::Again
    }

    /// Hands what a step produced to the node: messages to send, then whether the app
    /// finished.
    fn emit(&self, effects: Effects) {
        let w = &self.worker;
        if !effects.messages.is_empty() {
            let _ = w.events.blocking_send(WorkerEvent::Outgoing {
                app: w.id,
                messages: effects.messages,
            });
        }
        if effects.finished {
            let _ = w.events.blocking_send(WorkerEvent::Finished { app: w.id });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inbox_is_bounded_in_messages_and_bytes_and_one_message_always_fits() {
        let inbox = InboxLevel::default();
        inbox
            .admit(5000, 10, 1000)
            .expect("an empty inbox takes even a large message");
        let e = inbox.admit(1, 10, 1000).unwrap_err();
        assert!(e.contains("5000 bytes waiting"), "{e}");
        inbox.taken(5000);
        for _ in 0..10 {
            inbox.admit(10, 10, 1000).unwrap();
        }
        let e = inbox.admit(10, 10, 1000).unwrap_err();
        assert!(e.contains("10 messages waiting"), "{e}");
        assert_eq!(inbox.messages(), 10);
    }
}
