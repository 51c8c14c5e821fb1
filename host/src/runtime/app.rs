//! One instantiated app: its store, its exports, and how a failed call is explained.

use wasmtime::component::Instance;
use wasmtime::Store;

use super::bindings::{App, DeliveryOutcome};
use super::host::{AppContext, HostState, OutgoingMessage};
use super::stats::Outcome;
use super::{CpuBudget, Limits, Prepared};

/// How a `failed` delivery report begins when the message may have arrived after all.
pub const UNKNOWN_OUTCOME_PREFIX: &str = "outcome unknown: ";

/// Why a call into an app did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppError {
    /// The app returned an error; it goes on running.
    #[error("the app returned an error: {0}")]
    Returned(String),
    /// The app trapped, ran past its deadline or its memory cap: it is stopped for good.
    #[error("{0}")]
    Stopped(String),
}

impl AppError {
    /// Whether the app can take further calls.
    pub fn is_fatal(&self) -> bool {
        matches!(self, AppError::Stopped(_))
    }
}

/// An app instance in its own store, with its limits.
pub struct LoadedApp {
    name: String,
    budget: CpuBudget,
    store: Store<HostState>,
    exports: App,
    /// For the optional exports of the `stateful-app` world.
    instance: Instance,
    limits: Limits,
    /// `log` lines dropped over the per-call cap, all calls together.
    logs_dropped: u64,
    /// Instructions the last call ran, when the budget counts them.
    last_call_instructions: Option<u64>,
}

impl LoadedApp {
    /// Instantiates `prepared` as app `name`. `seed` makes its randomness reproducible.
    pub fn instantiate(
        prepared: &Prepared,
        name: &str,
        limits: Limits,
        context: AppContext,
        seed: Option<u64>,
    ) -> Result<LoadedApp, AppError> {
        let engine = prepared.pre.engine();
        let mut store = Store::new(engine, HostState::new(name, context, limits.clone(), seed));
        store.limiter(|state| &mut state.limiter);
        if prepared.budget == CpuBudget::Time {
            store.epoch_deadline_trap();
        }
        refill(&mut store, prepared.budget, &limits);
        let explain = |e: wasmtime::Error, store: &Store<HostState>| {
            let limiter = &store.data().limiter;
            explain_failure(e, name, limiter.refused, limiter.cap, &limits)
        };
        let instance = match prepared.pre.instance_pre().instantiate(&mut store) {
            Ok(instance) => instance,
            Err(e) => return Err(explain(e, &store)),
        };
        let exports = match App::new(&mut store, &instance) {
            Ok(exports) => exports,
            Err(e) => return Err(explain(e, &store)),
        };
        Ok(LoadedApp {
            name: name.to_string(),
            budget: prepared.budget,
            store,
            exports,
            instance,
            limits,
            logs_dropped: 0,
            last_call_instructions: None,
        })
    }

    /// The app's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls `init(config)`.
    pub fn init(&mut self, config: &str) -> Result<(), AppError> {
        self.call(|exports, store| exports.call_init(store, config))
    }

    /// Calls `periodic-run(view)`.
    pub fn periodic_run(&mut self, view: &[String]) -> Result<(), AppError> {
        self.call(|exports, store| exports.call_periodic_run(store, view))
    }

    /// Calls `handle-message(from, payload)`.
    pub fn handle_message(&mut self, from: &str, payload: &[u8]) -> Result<(), AppError> {
        self.call(|exports, store| exports.call_handle_message(store, from, payload))
    }

    /// Calls `delivery-report(message_id, outcome)`. The world has no variant for an
    /// unknown outcome: the app is told `failed` with a text that begins
    /// [`UNKNOWN_OUTCOME_PREFIX`].
    pub fn delivery_report(&mut self, message_id: u64, outcome: &Outcome) -> Result<(), AppError> {
        let outcome = match outcome {
            Outcome::Delivered => DeliveryOutcome::Delivered,
            Outcome::Failed(reason) => DeliveryOutcome::Failed(reason.clone()),
            Outcome::Unknown(reason) => {
                DeliveryOutcome::Failed(format!("{UNKNOWN_OUTCOME_PREFIX}{reason}"))
            }
        };
        self.call(|exports, store| {
            exports
                .call_delivery_report(store, message_id, &outcome)
                .map(Ok)
        })
    }

    /// Calls the optional `snapshot` export: `None` when the app does not have it.
    pub fn snapshot(&mut self) -> Result<Option<Vec<u8>>, AppError> {
        let Some(func) = self.instance.get_func(&mut self.store, "snapshot") else {
            return Ok(None);
        };
        let func = func
            .typed::<(), (Vec<u8>,)>(&self.store)
            .map_err(|e| AppError::Returned(format!("snapshot has the wrong type: {e}")))?;
        let mut state = None;
        self.call(|_, store| {
            let (bytes,) = func.call(store, ())?;
            state = Some(bytes);
            Ok(Ok(()))
        })?;
        Ok(state)
    }

    /// Calls the optional `restore` export with `state`: `false` when the app does not
    /// have it.
    pub fn restore(&mut self, state: Vec<u8>) -> Result<bool, AppError> {
        let Some(func) = self.instance.get_func(&mut self.store, "restore") else {
            return Ok(false);
        };
        let func = func
            .typed::<(Vec<u8>,), (Result<(), String>,)>(&self.store)
            .map_err(|e| AppError::Returned(format!("restore has the wrong type: {e}")))?;
        self.call(|_, store| func.call(store, (state,)).map(|(result,)| result))?;
        Ok(true)
    }

    /// The messages queued by the calls so far, to send now.
    pub fn take_outbox(&mut self) -> Vec<OutgoingMessage> {
        std::mem::take(&mut self.store.data_mut().outbox)
    }

    /// Linear memory the app holds now, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.store.data().limiter.granted
    }

    /// How many instructions the last call ran, when the budget counts them
    /// ([`CpuBudget::Instructions`]): a cost that is the same on every machine.
    pub fn last_call_instructions(&self) -> Option<u64> {
        self.last_call_instructions
    }

    /// How many `log` lines were dropped over the per-call cap so far.
    pub fn logs_dropped(&self) -> u64 {
        self.logs_dropped
    }

    /// How many `send-message` calls were refused since the last time this was asked.
    pub fn take_refused_sends(&mut self) -> u64 {
        std::mem::take(&mut self.store.data_mut().refused_sends)
    }

    fn call(
        &mut self,
        f: impl FnOnce(&App, &mut Store<HostState>) -> wasmtime::Result<Result<(), String>>,
    ) -> Result<(), AppError> {
        refill(&mut self.store, self.budget, &self.limits);
        self.store.data_mut().logs_this_call = 0;
        let result = f(&self.exports, &mut self.store);
        if self.budget == CpuBudget::Instructions {
            let left = self.store.get_fuel().unwrap_or(0);
            self.last_call_instructions = Some(self.limits.deadline_fuel().saturating_sub(left));
        }
        if let Some(refusal) = self.store.data_mut().first_refusal.take() {
            tracing::warn!(app = %self.name, "send-message refused during this call (first refusal: {refusal:?})");
        }
        let dropped_logs = std::mem::take(&mut self.store.data_mut().dropped_logs);
        self.logs_dropped += dropped_logs;
        if dropped_logs > 0 {
            tracing::warn!(
                app = %self.name,
                dropped_logs,
                "the app logged over {} lines in one call; the rest were dropped",
                super::host::MAX_LOGS_PER_CALL
            );
        }
        let state = self.store.data();
        state.stdout.flush_partial();
        state.stderr.flush_partial();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(AppError::Returned(message)),
            Err(e) => {
                // A call that failed leaves its queued messages unsent: the app is gone.
                let dropped = std::mem::take(&mut self.store.data_mut().outbox).len();
                if dropped > 0 {
                    tracing::warn!(app = %self.name, dropped, "discarding messages queued by the failed call");
                }
                let limiter = &self.store.data().limiter;
                Err(explain_failure(
                    e,
                    &self.name,
                    limiter.refused,
                    limiter.cap,
                    &self.limits,
                ))
            }
        }
    }
}

/// Gives the next call its whole CPU budget.
fn refill(store: &mut Store<HostState>, budget: CpuBudget, limits: &Limits) {
    match budget {
        CpuBudget::Time => store.set_epoch_deadline(limits.deadline_ticks()),
        CpuBudget::Instructions => store
            .set_fuel(limits.deadline_fuel())
            .expect("an engine counting instructions has fuel"),
    }
}

/// Turns a wasmtime error into the reason an app stopped, in words a user can act on.
fn explain_failure(
    error: wasmtime::Error,
    app: &str,
    refused_memory: Option<usize>,
    memory_cap: u64,
    limits: &Limits,
) -> AppError {
    let deadline = limits.call_deadline;
    let reason = if let Some(asked) = refused_memory {
        const MIB: f64 = 1024.0 * 1024.0;
        format!(
            "app {app} exceeded its memory cap of {} MiB (it asked for {:.1} MiB)",
            memory_cap / (1024 * 1024),
            asked as f64 / MIB
        )
    } else if let Some(wasmtime::Trap::Interrupt) = error.downcast_ref::<wasmtime::Trap>() {
        format!("app {app} ran past its CPU deadline of {deadline:?} per call")
    } else if let Some(wasmtime::Trap::OutOfFuel) = error.downcast_ref::<wasmtime::Trap>() {
        format!(
            "app {app} ran past its CPU deadline of {deadline:?} per call, counted as {} instructions",
            limits.deadline_fuel()
        )
    } else if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        format!("app {app} trapped: {trap}")
    } else {
        format!("app {app} failed: {error:#}")
    };
    AppError::Stopped(reason)
}
