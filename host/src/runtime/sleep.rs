//! What a guest's sleeps and poll timeouts wait on (`wasi:clocks/monotonic-clock`'s
//! subscriptions), following the app's [`Clock`]: a real wait with the system clock;
//! with a manual clock (a simulation), no wait at all — the subscription is ready at
//! once and moves the clock on to its deadline, so a call's sleeps pass virtual time
//! within the call, the same on every run.

use std::time::Duration;

use anyhow::Result;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::{subscribe, DynPollable, Pollable};

use super::host::{Clock, HostState};

/// The interface whose subscriptions this replaces (guests importing an older 0.2
/// version are linked to it too).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// A subscription: until when, on which clock.
enum Wait {
    /// Until this instant of the machine's clock (never, if it cannot be told).
    Real(Option<tokio::time::Instant>),
    /// Until the manual clock reads `until`: ready at once, moving it there.
    Virtual { clock: Clock, until: Duration },
}

impl Wait {
    /// Until `until` by `clock`.
    fn until(clock: &Clock, until: Duration) -> Wait {
        match clock {
            Clock::System => Wait::Real(
                tokio::time::Instant::now().checked_add(until.saturating_sub(clock.now())),
            ),
            Clock::Manual(_) => Wait::Virtual {
                clock: clock.clone(),
                until,
            },
        }
    }
}

#[async_trait::async_trait]
impl Pollable for Wait {
    async fn ready(&mut self) {
        match self {
            Wait::Real(Some(at)) => tokio::time::sleep_until(*at).await,
            Wait::Real(None) => std::future::pending().await,
            Wait::Virtual { clock, until } => {
                if clock.now() < *until {
                    clock.set(*until);
                }
            }
        }
    }
}

/// Pushes a subscription until `until` (app clock time) and returns its pollable.
fn subscribe_until(
    state: &mut HostState,
    until: Duration,
) -> wasmtime::Result<Resource<DynPollable>> {
    let wait = Wait::until(&state.context.clock, until);
    let resource = state.table.push(wait)?;
    subscribe(&mut state.table, resource)
}

/// Replaces `subscribe-duration` and `subscribe-instant` in `linker` (which holds
/// WASI already) with ones that follow the app's clock.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker
        .instance(MONOTONIC_CLOCK)
        .map_err(anyhow::Error::from)?;
    clock
        .func_wrap("subscribe-duration", |mut store, (nanos,): (u64,)| {
            let state = store.data_mut();
            let until = state
                .context
                .clock
                .now()
                .checked_add(Duration::from_nanos(nanos))
                .unwrap_or(Duration::from_nanos(u64::MAX));
            Ok((subscribe_until(state, until)?,))
        })
        .map_err(anyhow::Error::from)?;
    clock
        .func_wrap("subscribe-instant", |mut store, (when,): (u64,)| {
            Ok((subscribe_until(
                store.data_mut(),
                Duration::from_nanos(when),
            )?,))
        })
        .map_err(anyhow::Error::from)?;
    linker.allow_shadowing(false);
    Ok(())
}
