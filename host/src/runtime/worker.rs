//! One app's worker: a thread that owns the app's store, runs its schedule, handles its
//! messages in order and hands what it queued to the node. A slow app delays no other.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc::Sender;

use super::{AppContext, AppError, LoadedApp, OutgoingMessage, Prepared};
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
    Drain(Option<std::sync::mpsc::Sender<Vec<u8>>>),
}

/// How a message an app queued ended, as far as this node can know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The destination accepted it for its app.
    Delivered,
    /// It certainly did not reach the destination's app (refused, unreachable, never
    /// sent); the text says why.
    Failed(String),
    /// No answer came (timed out, the connection closed or the node shut down while
    /// waiting): the destination may or may not have accepted it; the text says why.
    Unknown(String),
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

/// Where an app stands.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AppState {
    /// Starting or running its cycles.
    Running,
    /// All cycles done (it still handles messages until the node exits).
    Done,
    /// Stopped for good; `reason` says why.
    Failed,
    /// Unloaded (or replaced) while the node ran.
    Unloaded,
}

/// Call durations in buckets of a quarter power of two of microseconds (at most ~19%
/// wide), for percentiles without keeping every sample.
#[derive(Clone, Debug, Default)]
pub struct CallTimes {
    buckets: Vec<u64>,
    count: u64,
}

impl CallTimes {
    fn bucket(micros: u64) -> usize {
        if micros < 4 {
            return micros as usize;
        }
        let power = 63 - micros.leading_zeros() as usize; // micros >= 2^power
        let quarter = ((micros >> (power - 2)) & 3) as usize;
        power * 4 + quarter - 4
    }

    /// The largest duration bucket `index` holds.
    fn upper(index: usize) -> u64 {
        if index < 4 {
            return index as u64;
        }
        let (power, quarter) = ((index + 4) / 4, (index + 4) % 4);
        (1u64 << power) + ((quarter as u64 + 1) << (power - 2)) - 1
    }

    /// Counts one call of `micros` microseconds.
    pub fn record(&mut self, micros: u64) {
        let index = Self::bucket(micros);
        if self.buckets.len() <= index {
            self.buckets.resize(index + 1, 0);
        }
        self.buckets[index] += 1;
        self.count += 1;
    }

    /// The duration under which fraction `q` of the calls fell (bucket upper bound).
    pub fn quantile(&self, q: f64) -> u64 {
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::upper(index);
            }
        }
        0
    }
}

/// An app's counters, as the final summary prints them.
#[derive(Clone, Debug, Serialize)]
pub struct AppStats {
    /// Calls into the app (init, periodic-run, handle-message, delivery-report).
    pub calls: u64,
    /// Median call time, in microseconds (within ~19%).
    pub call_time_p50_us: u64,
    /// 99th-percentile call time, in microseconds (within ~19%).
    pub call_time_p99_us: u64,
    /// Linear memory the app holds, in bytes.
    pub memory_bytes: u64,
    /// Payload bytes handed to `handle-message`.
    pub bytes_in: u64,
    /// Payload bytes the app queued with `send-message`.
    pub bytes_out: u64,
    /// `periodic-run` calls made.
    pub cycles: u64,
    /// Messages the destination accepted.
    pub sent: u64,
    /// Messages handed to `handle-message`.
    pub received: u64,
    /// Messages refused by `send-message`, or certainly not delivered.
    pub send_errors: u64,
    /// Messages whose fate is unknown: no answer came (timeout, connection lost, or
    /// the node shut down while waiting); the destination may have accepted them.
    pub send_unknown: u64,
    /// Calls that returned an error (the app went on).
    pub call_errors: u64,
    /// Where the app stands.
    pub state: AppState,
    /// Why the app failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip)]
    call_times: CallTimes,
}

impl Default for AppStats {
    fn default() -> Self {
        AppStats {
            calls: 0,
            call_time_p50_us: 0,
            call_time_p99_us: 0,
            memory_bytes: 0,
            bytes_in: 0,
            bytes_out: 0,
            cycles: 0,
            sent: 0,
            received: 0,
            send_errors: 0,
            send_unknown: 0,
            call_errors: 0,
            state: AppState::Running,
            reason: None,
            call_times: CallTimes::default(),
        }
    }
}

/// When an app's cycles are due: on a fixed grid, `period` apart from the start, so a
/// late call never shifts the ones after it. A call more than a whole period late
/// skips the slots it missed (the count of cycles is kept; only their times move).
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start: Instant,
    period: Duration,
    /// The next slot, counted in periods from `start`.
    slot: u32,
}

impl Schedule {
    /// The first cycle is due one `period` after `start`.
    pub fn new(start: Instant, period: Duration) -> Schedule {
        Schedule {
            start,
            period,
            slot: 1,
        }
    }

    /// When the next cycle is due.
    pub fn due(&self) -> Instant {
        self.start + self.period * self.slot
    }

    /// Takes the due cycle at `now`: returns its offset from the start and how many
    /// later slots had already passed (skipped).
    pub fn advance(&mut self, now: Instant) -> (Duration, u32) {
        let due = self.period * self.slot;
        let late = now.saturating_duration_since(self.due());
        let skipped = (late.as_nanos() / self.period.as_nanos().max(1)) as u32;
        self.slot += 1 + skipped;
        (due, skipped)
    }
}

/// Everything a worker thread needs.
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
}

impl Worker {
    fn stats(&self) -> std::sync::MutexGuard<'_, AppStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, reason: String) {
        tracing::error!(app = %self.spec.name, "app stopped: {reason}");
        let mut stats = self.stats();
        stats.state = AppState::Failed;
        stats.reason = Some(reason);
    }

    fn finish(&self) {
        let _ = self
            .events
            .blocking_send(WorkerEvent::Finished { app: self.id });
    }

    /// Runs the app until the node says stop (or drain), or it fails; then says so.
    pub fn run(self) {
        self.serve();
        let _ = self
            .events
            .blocking_send(WorkerEvent::Exited { app: self.id });
    }

    fn serve(&self) {
        let name = self.spec.name.clone();
        let mut app = match LoadedApp::instantiate(
            &self.prepared,
            &name,
            self.spec.limits.clone(),
            self.context.clone(),
            self.seed,
        ) {
            Ok(app) => app,
            Err(e) => return self.stop_with(e),
        };
        let started = Instant::now();
        let init = app.init(&self.spec.config);
        self.record_call(&app, started);
        if let Err(e) = init {
            return self.stop_with(AppError::Stopped(format!("init failed: {e}")));
        }
        if let Some(state) = &self.restore_from {
            match state.recv_timeout(self.handoff_timeout) {
                Ok(state) if !state.is_empty() => {
                    let len = state.len();
                    let started = Instant::now();
                    let restored = app.restore(state);
                    self.record_call(&app, started);
                    match restored {
                        Ok(true) => {
                            tracing::info!(app = %name, bytes = len, "state restored from the previous version")
                        }
                        Ok(false) => {
                            tracing::warn!(app = %name, bytes = len, "the previous version left state, but this one has no restore export")
                        }
                        Err(e @ AppError::Stopped(_)) => return self.stop_with(e),
                        Err(e) => {
                            tracing::warn!(app = %name, "restore failed; going on from init: {e}")
                        }
                    }
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => tracing::warn!(
                    app = %name,
                    "the previous version did not hand over its state within {:?}; going on from init",
                    self.handoff_timeout
                ),
                Err(RecvTimeoutError::Disconnected) => tracing::warn!(
                    app = %name,
                    "the previous version stopped without handing over state; going on from init"
                ),
            }
        }
        tracing::info!(app = %name, cycles = ?self.spec.cycles, period = ?self.spec.period, "app started");
        self.flush(&mut app);
        let mut schedule = Schedule::new(Instant::now(), self.spec.period);
        let mut finished = self.cycles_done(0);
        if finished {
            self.finish_cycles();
        }
        loop {
            let now = Instant::now();
            let command = if !finished && now >= schedule.due() {
                None
            } else {
                let wait = if finished {
                    Duration::from_secs(3600)
                } else {
                    schedule.due() - now
                };
                match self.commands.recv_timeout(wait) {
                    Ok(command) => Some(command),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            let started = Instant::now();
            let result = match command {
                None => {
                    let (due, skipped) = schedule.advance(now);
                    let cycle = self.stats().cycles + 1;
                    if skipped > 0 {
                        tracing::warn!(app = %name, cycle, skipped, "the app fell behind its schedule: skipped to the next slot");
                    }
                    tracing::debug!(app = %name, cycle, due_ms = due.as_millis() as u64, "periodic-run");
                    let result = app.periodic_run(&self.context.view());
                    self.stats().cycles = cycle;
                    let cycles = cycle;
                    if self.cycles_done(cycles) {
                        finished = true;
                        self.finish_cycles();
                    }
                    result
                }
                Some(AppCommand::Message { from, payload }) => {
                    self.inbox.taken(payload.len());
                    {
                        let mut stats = self.stats();
                        stats.received += 1;
                        stats.bytes_in += payload.len() as u64;
                    }
                    app.handle_message(&from, &payload)
                }
                Some(AppCommand::Delivery { id, outcome }) => {
                    {
                        let mut stats = self.stats();
                        match &outcome {
                            Outcome::Delivered => stats.sent += 1,
                            Outcome::Failed(reason) => {
                                stats.send_errors += 1;
                                tracing::warn!(app = %name, message_id = id, "message not delivered: {reason}");
                            }
                            Outcome::Unknown(reason) => {
                                stats.send_unknown += 1;
                                tracing::warn!(app = %name, message_id = id, "message outcome unknown: {reason}");
                            }
                        }
                    }
                    app.delivery_report(id, &outcome)
                }
                Some(AppCommand::Stop) => break,
                Some(AppCommand::Drain(successor)) => {
                    match successor {
                        None => {
                            tracing::info!(app = %name, "app unloaded after its queued messages")
                        }
                        Some(next) => {
                            let state = self.snapshot(&mut app);
                            tracing::info!(app = %name, bytes = state.len(), "app replaced after its queued messages");
                            let _ = next.send(state);
                        }
                    }
                    self.stats().state = AppState::Unloaded;
                    break;
                }
            };
            self.record_call(&app, started);
            self.stats().send_errors += app.take_refused_sends();
            match result {
                Ok(()) => {}
                Err(AppError::Returned(message)) => {
                    tracing::warn!(app = %name, "call returned an error: {message}");
                    self.stats().call_errors += 1;
                }
                Err(e @ AppError::Stopped(_)) => return self.stop_with(e),
            }
            self.flush(&mut app);
        }
    }

    fn cycles_done(&self, cycles: u64) -> bool {
        self.spec.cycles.is_some_and(|limit| cycles >= limit)
    }

    fn finish_cycles(&self) {
        tracing::info!(app = %self.spec.name, "app finished its cycles");
        self.stats().state = AppState::Done;
        self.finish();
    }

    fn stop_with(&self, error: AppError) {
        let already_finished = self.stats().state == AppState::Done;
        self.fail(error.to_string());
        if !already_finished {
            self.finish();
        }
    }

    /// The app's `snapshot` (empty when it has none, or it failed).
    fn snapshot(&self, app: &mut LoadedApp) -> Vec<u8> {
        let started = Instant::now();
        let state = app.snapshot();
        self.record_call(app, started);
        state.unwrap_or_else(|e| {
            tracing::warn!(app = %self.spec.name, "snapshot failed; the next version starts from init: {e}");
            None
        })
        .unwrap_or_default()
    }

    /// Counts a call that began at `started`, and the app's memory after it.
    fn record_call(&self, app: &LoadedApp, started: Instant) {
        let micros = started.elapsed().as_micros() as u64;
        let mut stats = self.stats();
        stats.calls += 1;
        stats.call_times.record(micros);
        stats.call_time_p50_us = stats.call_times.quantile(0.5);
        stats.call_time_p99_us = stats.call_times.quantile(0.99);
        stats.memory_bytes = app.memory_bytes();
    }

    fn flush(&self, app: &mut LoadedApp) {
        let messages = app.take_outbox();
        if !messages.is_empty() {
            let bytes: usize = messages.iter().map(|m| m.payload.len()).sum();
            self.stats().bytes_out += bytes as u64;
            let _ = self.events.blocking_send(WorkerEvent::Outgoing {
                app: self.id,
                messages,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_time_buckets_cover_every_duration_and_quantiles_are_upper_bounds() {
        for micros in [0u64, 1, 3, 4, 5, 7, 8, 100, 1_000, 123_456, 10_000_000] {
            let index = CallTimes::bucket(micros);
            assert!(CallTimes::upper(index) >= micros, "{micros}");
            assert!(
                index == 0 || CallTimes::upper(index - 1) < micros,
                "{micros}"
            );
            assert!(
                CallTimes::upper(index) as f64 <= micros as f64 * 1.25 + 1.0,
                "{micros}"
            );
        }
        let mut times = CallTimes::default();
        (1..=100).for_each(|m| times.record(m));
        let p50 = times.quantile(0.5);
        assert!((50..=63).contains(&p50), "{p50}");
        let p99 = times.quantile(0.99);
        assert!((99..=127).contains(&p99), "{p99}");
        assert_eq!(CallTimes::default().quantile(0.5), 0);
    }

    #[test]
    fn the_schedule_stays_on_its_grid_when_a_call_is_late() {
        let ms = Duration::from_millis;
        let start = Instant::now();
        let mut schedule = Schedule::new(start, ms(100));
        assert_eq!(schedule.due(), start + ms(100));
        assert_eq!(schedule.advance(start + ms(100)), (ms(100), 0));
        // 30 ms late: the next cycle keeps its slot.
        assert_eq!(schedule.advance(start + ms(230)), (ms(200), 0));
        assert_eq!(schedule.due(), start + ms(300));
        // 250 ms late: the slots at 400 and 500 ms passed already.
        assert_eq!(schedule.advance(start + ms(550)), (ms(300), 2));
        assert_eq!(schedule.due(), start + ms(600));
    }

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
