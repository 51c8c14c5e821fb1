//! One app instance as a passive state machine: its store, its schedule and its
//! counters. It never reads a clock or waits: the driver (a worker thread in a live
//! node; an event queue in a simulation) passes `now` in, feeds it inputs, runs its
//! cycles when [`AppInstance::poll_timeout`] says, and sends the messages it returns.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::stats::{AppState, AppStats, Outcome};
use super::{AppContext, AppError, LoadedApp, OutgoingMessage, Prepared, FUEL_PER_MS};
use crate::config::ResolvedApp;

/// What a driver hands an instance.
#[derive(Debug)]
pub enum Input {
    /// A message from peer `from` for this app.
    Message { from: String, payload: Vec<u8> },
    /// How message `id` ended.
    Delivery { id: u64, outcome: Outcome },
}

/// What one step of an instance produced.
#[derive(Debug, Default)]
pub struct Effects {
    /// Messages the app queued, to send now, in order.
    pub messages: Vec<OutgoingMessage>,
    /// The app finished its cycles or stopped for good in this step (said once).
    pub finished: bool,
}

/// When an app's cycles are due, in the driver's time (offsets from its clock's
/// origin): on a fixed grid, `period` apart from the start, so a late call never shifts
/// the ones after it. A call more than a whole period late skips the slots it missed
/// (the count of cycles is kept; only their times move).
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start: Duration,
    period: Duration,
    /// The next slot, counted in periods from `start`.
    slot: u64,
}

impl Schedule {
    /// The first cycle is due one `period` after `start`.
    pub fn new(start: Duration, period: Duration) -> Schedule {
        Schedule {
            start,
            period,
            slot: 1,
        }
    }

    /// When the next cycle is due.
    pub fn due(&self) -> Duration {
        self.start.saturating_add(self.offset(self.slot))
    }

    /// Slot `slot`'s offset from the start (saturating: a schedule never wraps).
    fn offset(&self, slot: u64) -> Duration {
        let nanos = self.period.as_nanos().saturating_mul(u128::from(slot));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Takes the due cycle at `now`: returns its offset from the start and how many
    /// later slots had already passed (skipped).
    pub fn advance(&mut self, now: Duration) -> (Duration, u64) {
        let due = self.offset(self.slot);
        let late = now.saturating_sub(self.due());
        let skipped =
            u64::try_from(late.as_nanos() / self.period.as_nanos().max(1)).unwrap_or(u64::MAX);
        self.slot = self.slot.saturating_add(skipped).saturating_add(1);
        (due, skipped)
    }
}

/// A loaded app with its schedule and counters.
pub struct AppInstance {
    name: String,
    app: LoadedApp,
    /// The node's shared state (the view each cycle gets).
    context: AppContext,
    cycles: Option<u64>,
    schedule: Schedule,
    stats: Arc<Mutex<AppStats>>,
    stopped: bool,
}

impl AppInstance {
    /// Instantiates `prepared` as the app `spec` describes and calls its `init` at
    /// `now`; the first cycle is due one period later. `stats` is where its counters
    /// live (the node reads them). A failure is recorded there: the instance is then
    /// stopped and its effects say it finished.
    pub fn start(
        prepared: &Prepared,
        spec: &ResolvedApp,
        context: AppContext,
        seed: Option<u64>,
        stats: Arc<Mutex<AppStats>>,
        now: Duration,
    ) -> (Option<AppInstance>, Effects) {
        let loaded = LoadedApp::instantiate(
            prepared,
            &spec.name,
            spec.limits.clone(),
            context.clone(),
            seed,
        );
        let app = match loaded {
            Ok(app) => app,
            Err(e) => {
                let effects = stop(&spec.name, &stats, e);
                return (None, effects);
            }
        };
        let mut instance = AppInstance {
            name: spec.name.clone(),
            app,
            context,
            cycles: spec.cycles,
            schedule: Schedule::new(now, spec.period),
            stats,
            stopped: false,
        };
        let started = Instant::now();
        let init = instance.app.init(&spec.config);
        instance.record_call(started);
        let mut effects = match init {
            Ok(()) => instance.effects(),
            Err(e) => instance.stop(AppError::Stopped(format!("init failed: {e}"))),
        };
        if !instance.stopped && instance.cycles_done(0) {
            effects.finished = instance.finish_cycles();
        }
        (Some(instance), effects)
    }

    /// Whether the app stopped for good (it takes no more inputs).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// When the next cycle is due; `None` once the cycles are done or the app stopped.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let done = self.cycles_done(self.stats().counts.cycles);
        (!self.stopped && !done).then(|| self.schedule.due())
    }

    /// Runs the due cycle, if one is due at `now`.
    pub fn handle_timeout(&mut self, now: Duration) -> Effects {
        if self.poll_timeout().is_none_or(|due| now < due) {
            return Effects::default();
        }
        let late = now.saturating_sub(self.schedule.due());
        self.stats()
            .record_lateness(u64::try_from(late.as_micros()).unwrap_or(u64::MAX));
        let (due, skipped) = self.schedule.advance(now);
        let cycle = self.stats().counts.cycles + 1;
        let name = &self.name;
        if skipped > 0 {
            tracing::warn!(app = %name, cycle, skipped, "the app fell behind its schedule: skipped to the next slot");
        }
        tracing::debug!(app = %name, cycle, due_ms = due.as_millis() as u64, "periodic-run");
        let view = self.context.view();
        let started = Instant::now();
        let result = self.app.periodic_run(&view);
        self.stats().counts.cycles = cycle;
        let mut effects = self.after_call(started, result);
        if !self.stopped && self.cycles_done(cycle) {
            effects.finished |= self.finish_cycles();
        }
        effects
    }

    /// Hands `input` to the app.
    pub fn handle(&mut self, input: Input) -> Effects {
        if self.stopped {
            return Effects::default();
        }
        let started = Instant::now();
        let result = match input {
            Input::Message { from, payload } => {
                {
                    let mut stats = self.stats();
                    stats.counts.received += 1;
                    stats.bytes_in += payload.len() as u64;
                }
                self.app.handle_message(&from, &payload)
            }
            Input::Delivery { id, outcome } => {
                self.count_outcome(id, &outcome);
                self.app.delivery_report(id, &outcome)
            }
        };
        self.after_call(started, result)
    }

    /// Calls the app's `restore` with the state its predecessor handed over.
    pub fn restore(&mut self, state: Vec<u8>) -> Effects {
        let len = state.len();
        let started = Instant::now();
        let restored = self.app.restore(state);
        self.record_call(started);
        let name = &self.name;
        match restored {
            Ok(true) => {
                tracing::info!(app = %name, bytes = len, "state restored from the previous version")
            }
            Ok(false) => {
                tracing::warn!(app = %name, bytes = len, "the previous version left state, but this one has no restore export")
            }
            Err(e @ AppError::Stopped(_)) => return self.stop(e),
            Err(e) => tracing::warn!(app = %name, "restore failed; going on from init: {e}"),
        }
        self.effects()
    }

    /// The app's `snapshot`, for its successor (empty when it has none, or it failed).
    pub fn snapshot(&mut self) -> Vec<u8> {
        let started = Instant::now();
        let state = self.app.snapshot();
        self.record_call(started);
        state
            .unwrap_or_else(|e| {
                tracing::warn!(app = %self.name, "snapshot failed; the next version starts from init: {e}");
                None
            })
            .unwrap_or_default()
    }

    /// Marks the app unloaded (it takes no more inputs).
    pub fn unload(&mut self) {
        self.stats().state = AppState::Unloaded;
        self.stopped = true;
    }

    fn stats(&self) -> MutexGuard<'_, AppStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cycles_done(&self, cycles: u64) -> bool {
        self.cycles.is_some_and(|limit| cycles >= limit)
    }

    /// The cycles are done: the app still handles messages. True: tell the node.
    fn finish_cycles(&mut self) -> bool {
        tracing::info!(app = %self.name, "app finished its cycles");
        self.stats().state = AppState::Done;
        true
    }

    fn count_outcome(&self, id: u64, outcome: &Outcome) {
        let name = &self.name;
        self.stats().counts.count(outcome);
        match outcome {
            Outcome::Delivered => {}
            Outcome::Failed(reason) => {
                tracing::warn!(app = %name, message_id = id, "message not delivered: {reason}");
            }
            Outcome::Unknown(reason) => {
                tracing::warn!(app = %name, message_id = id, "message outcome unknown: {reason}");
            }
        }
    }

    /// Counts a call that began at `started` and ended with `result`; collects what it
    /// queued, or stops the app if the call was fatal.
    fn after_call(&mut self, started: Instant, result: Result<(), AppError>) -> Effects {
        self.record_call(started);
        self.stats().counts.send_errors += self.app.take_refused_sends();
        match result {
            Ok(()) => {}
            Err(AppError::Returned(message)) => {
                tracing::warn!(app = %self.name, "call returned an error: {message}");
                self.stats().counts.call_errors += 1;
            }
            Err(e @ AppError::Stopped(_)) => return self.stop(e),
        }
        self.effects()
    }

    /// The messages queued so far.
    fn effects(&mut self) -> Effects {
        let messages = self.app.take_outbox();
        if !messages.is_empty() {
            let bytes: usize = messages.iter().map(|m| m.payload.len()).sum();
            self.stats().bytes_out += bytes as u64;
        }
        Effects {
            messages,
            finished: false,
        }
    }

    /// Counts the call that began at `started`, and the app's memory after it.
    /// Counts a call that began at `started`: its real time, or with a budget counted
    /// in instructions, those at the nominal rate the budget assumes (the same on
    /// every run).
    fn record_call(&self, started: Instant) {
        let micros = match self.app.last_call_instructions() {
            Some(instructions) => instructions / (FUEL_PER_MS / 1000),
            None => started.elapsed().as_micros() as u64,
        };
        let memory = self.app.memory_bytes();
        let mut stats = self.stats();
        stats.record_call(micros);
        stats.memory_bytes = memory;
    }

    fn stop(&mut self, error: AppError) -> Effects {
        self.stopped = true;
        stop(&self.name, &self.stats, error)
    }
}

/// Records that app `name` stopped for good; it finished now unless its cycles were
/// already done.
fn stop(name: &str, stats: &Mutex<AppStats>, error: AppError) -> Effects {
    let reason = error.to_string();
    tracing::error!(app = %name, "app stopped: {reason}");
    let mut stats = stats.lock().unwrap_or_else(|e| e.into_inner());
    let already_finished = stats.state == AppState::Done;
    stats.state = AppState::Failed;
    stats.reason = Some(reason);
    Effects {
        messages: Vec::new(),
        finished: !already_finished,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_stays_on_its_grid_when_a_call_is_late() {
        let ms = Duration::from_millis;
        let start = Duration::from_secs(7);
        let mut schedule = Schedule::new(start, ms(100));
        assert_eq!(schedule.due(), start + ms(100));
        assert_eq!(schedule.advance(start + ms(100)), (ms(100), 0));
        // 30 ms late: the next cycle keeps its slot.
        assert_eq!(schedule.advance(start + ms(230)), (ms(200), 0));
        assert_eq!(schedule.due(), start + ms(300));
        // 250 ms late: the slots at 400 and 500 ms passed already.
        assert_eq!(schedule.advance(start + ms(550)), (ms(300), 2));
        assert_eq!(schedule.due(), start + ms(600));

        // A nanosecond period a million seconds late: counted in 64 bits, no wrap.
        let mut tiny = Schedule::new(Duration::ZERO, Duration::from_nanos(1));
        let late = Duration::from_secs(1_000_000);
        let (_, skipped) = tiny.advance(late);
        assert_eq!(skipped, 1_000_000_000_000_000 - 1);
        assert_eq!(tiny.due(), late + Duration::from_nanos(1));
    }
}
