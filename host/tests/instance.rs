//! An app instance as a passive state machine against a real guest: it runs a cycle
//! only when its driver says the time has come, keeps its grid when a call is late,
//! and reports a fatal call once.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nodemanager::config::ResolvedApp;
use nodemanager::runtime::{
    AppContext, AppInstance, AppState, AppStats, Clock, Input, Limits, Outcome, Runtime,
    MANUAL_WALL_ORIGIN,
};

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(&common::test_cache_dir()).expect("runtime"))
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// The hostile guest in `mode`, `cycles` cycles of 100 ms, seeing one peer; started at
/// time zero.
fn start(mode: &str, cycles: u64, limits: Limits) -> (AppInstance, Arc<Mutex<AppStats>>, String) {
    start_with_clock(mode, cycles, limits, Clock::System)
}

/// [`start`] with the apps' time from `clock`.
fn start_with_clock(
    mode: &str,
    cycles: u64,
    limits: Limits,
    clock: Clock,
) -> (AppInstance, Arc<Mutex<AppStats>>, String) {
    let path = common::guest("hostile.wasm");
    let prepared = runtime().load_component(&path).expect("component loads");
    let spec = ResolvedApp {
        name: mode.into(),
        path,
        config: mode.into(),
        cycles: Some(cycles),
        period: ms(100),
        limits,
    };
    let peer = libp2p::PeerId::random().to_string();
    let context = AppContext {
        clock,
        ..AppContext::new(libp2p::PeerId::random().to_string())
    };
    *context.view.write().unwrap() = vec![peer.clone()];
    let stats = Arc::new(Mutex::new(AppStats::default()));
    let (instance, effects) =
        AppInstance::start(&prepared, &spec, context, Some(1), stats.clone(), ms(0));
    assert!(effects.messages.is_empty() && !effects.finished);
    (instance.expect("instantiated"), stats, peer)
}

#[test]
fn an_instance_runs_its_cycles_only_when_told_the_time() {
    let (mut instance, stats, peer) = start("greet", 3, Limits::default());
    let cycles = || stats.lock().unwrap().counts.cycles;
    assert_eq!(instance.poll_timeout(), Some(ms(100)));
    assert!(instance.handle_timeout(ms(99)).messages.is_empty());
    assert_eq!(cycles(), 0, "not due yet: nothing ran");

    // `greet` sends hello to every peer of the view each cycle.
    let effects = instance.handle_timeout(ms(100));
    assert_eq!(effects.messages.len(), 1);
    assert_eq!(effects.messages[0].destination.to_string(), peer);
    assert_eq!(effects.messages[0].payload, b"hello");
    // 50 ms late: the next cycle keeps its slot at 300 ms.
    instance.handle_timeout(ms(250));
    assert_eq!(instance.poll_timeout(), Some(ms(300)));
    let last = instance.handle_timeout(ms(300));
    assert!(last.finished, "the third cycle is the last");
    assert_eq!(instance.poll_timeout(), None);
    assert!(instance.handle_timeout(ms(10_000)).messages.is_empty());
    assert_eq!(cycles(), 3);

    // Done with its cycles, it still takes messages and delivery reports.
    instance.handle(Input::Message {
        from: peer.clone(),
        payload: b"hi".to_vec(),
    });
    instance.handle(Input::Delivery {
        id: 1,
        outcome: Outcome::Delivered,
    });
    instance.handle(Input::Delivery {
        id: 2,
        outcome: Outcome::Unknown("no answer".into()),
    });
    let stats = stats.lock().unwrap().clone();
    assert_eq!(stats.state, AppState::Done);
    assert_eq!(
        (
            stats.counts.received,
            stats.counts.sent,
            stats.counts.send_unknown
        ),
        (1, 1, 1),
        "{stats:?}"
    );
    assert_eq!(stats.calls, 1 + 3 + 3, "init, 3 cycles, 3 inputs");
}

#[test]
fn a_fatal_call_stops_the_instance_and_is_reported_once() {
    let limits = Limits {
        call_deadline: ms(100),
        ..Limits::default()
    };
    let (mut instance, stats, peer) = start("spin", 5, limits);
    let effects = instance.handle_timeout(ms(100));
    assert!(effects.finished, "a stopped app is finished for the node");
    assert!(instance.stopped());
    assert_eq!(instance.poll_timeout(), None);
    let after = instance.handle(Input::Message {
        from: peer,
        payload: b"late".to_vec(),
    });
    assert!(!after.finished && after.messages.is_empty(), "said once");
    let stats = stats.lock().unwrap().clone();
    assert_eq!(stats.state, AppState::Failed);
    assert_eq!(stats.counts.received, 0, "a stopped app takes nothing");
    assert!(
        stats
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("CPU deadline of 100ms")),
        "{stats:?}"
    );
}

#[test]
fn a_guest_reads_the_time_of_a_manual_clock_not_the_machines() {
    let clock = Clock::manual();
    let (mut instance, _, _) = start_with_clock("time", 5, Limits::default(), clock.clone());
    let mut reports = Vec::new();
    for advance in [100, 150, 1_000] {
        clock.advance(ms(advance));
        let effects = instance.handle_timeout(clock.now());
        let payload = String::from_utf8(effects.messages[0].payload.clone()).unwrap();
        reports.push(payload);
    }
    let origin = MANUAL_WALL_ORIGIN.as_millis();
    assert_eq!(
        reports,
        [
            format!("{},100", origin + 100),
            format!("{},250", origin + 250),
            format!("{},1250", origin + 1250),
        ]
    );
}
