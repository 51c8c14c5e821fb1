//! The app registry and its workers against a real guest: unloads drain what was
//! queued, replaces hand state over (or give up waiting for it), and events of an
//! instance that left never reach its successor under the same name.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::sync::OnceLock;
use std::time::Duration;

use nodemanager::config::ResolvedApp;
use nodemanager::runtime::registry::Unloading;
use nodemanager::runtime::{
    AppContext, AppId, AppInfo, AppRegistry, AppState, Limits, LoadRequest, Outcome, Report,
    Runtime, WorkerEvent,
};
use tokio::sync::mpsc;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(&common::test_cache_dir()).expect("runtime"))
}

/// The hostile guest in `mode` as app `name`; with no period to speak of unless given.
fn request(name: &str, mode: &str, period: Option<Duration>, limits: Limits) -> LoadRequest {
    let path = common::guest("hostile.wasm");
    LoadRequest {
        prepared: runtime().load_component(&path).expect("component loads"),
        spec: ResolvedApp {
            name: name.into(),
            path,
            config: mode.into(),
            cycles: None,
            period: period.unwrap_or(Duration::from_secs(3600)),
            limits,
        },
    }
}

fn registry(handoff_timeout: Duration) -> (AppRegistry, mpsc::Receiver<WorkerEvent>) {
    let (events, receiver) = mpsc::channel(1024);
    let registry = AppRegistry::new(AppContext::new("me".into()), Some(1), events, 1 << 24)
        .with_handoff_timeout(handoff_timeout);
    (registry, receiver)
}

/// Waits for instance `id`'s thread to end, then retires it.
fn exited(
    registry: &mut AppRegistry,
    events: &mut mpsc::Receiver<WorkerEvent>,
    id: AppId,
) -> AppInfo {
    loop {
        match events.blocking_recv().expect("the registry lives") {
            WorkerEvent::Exited { app } if app == id => {
                return registry.exited(id).expect("a leaving app is retired")
            }
            _ => {}
        }
    }
}

/// The info of the loaded app `name`, once `condition` holds for it.
fn once(registry: &AppRegistry, name: &str, condition: impl Fn(&AppInfo) -> bool) -> AppInfo {
    let mut info = None;
    common::node::wait_for(&format!("app {name} to get there"), || {
        info = registry.list().into_iter().find(|a| a.name == name);
        info.as_ref().is_some_and(&condition)
    });
    info.unwrap()
}

#[test]
fn an_unloaded_app_handles_what_was_queued_for_it_then_leaves() {
    let (mut registry, mut events) = registry(Duration::from_secs(30));
    let id = registry
        .load(request("calm", "calm", None, Limits::default()))
        .unwrap();
    for i in 0..5 {
        registry
            .deliver("peer", "calm", format!("hello {i}").into_bytes())
            .unwrap();
    }
    assert!(matches!(registry.unload("calm").unwrap(), Unloading::Draining(d) if d == id));
    let refused = registry
        .deliver("peer", "calm", b"late".to_vec())
        .unwrap_err();
    assert_eq!(refused.reason, "unknown_app");
    let info = exited(&mut registry, &mut events, id);
    assert_eq!(info.stats.counts.received, 5, "nothing accepted is dropped");
    assert_eq!(info.stats.state, AppState::Unloaded);
    assert_eq!(registry.retired().len(), 1);
    assert!(registry.list().is_empty());
}

#[test]
fn a_replacement_restores_its_predecessors_state_and_never_gets_its_reports() {
    let (mut registry, mut events) = registry(Duration::from_secs(30));
    let old = registry
        .load(request(
            "counter",
            "calm",
            Some(Duration::from_millis(5)),
            Limits::default(),
        ))
        .unwrap();
    once(&registry, "counter", |a| a.stats.counts.cycles >= 3);
    let (leaving, new) = registry
        .replace(request("counter", "calm", None, Limits::default()))
        .unwrap();
    assert_eq!(leaving, old);
    assert_ne!(new, old);
    let retired = exited(&mut registry, &mut events, old);
    assert_eq!(retired.stats.state, AppState::Unloaded);
    // init, then restore: the restore call happens only when state came.
    once(&registry, "counter", |a| a.stats.calls == 2);

    // A late outcome of the old instance's message does not reach the new one...
    registry.report(Report {
        app: old,
        message_id: 1,
        outcome: Outcome::Delivered,
    });
    // ...while the new instance's own outcomes do, in order after it.
    for (message_id, outcome) in [
        (1, Outcome::Failed("refused".into())),
        (2, Outcome::Unknown("no answer".into())),
        (3, Outcome::Delivered),
    ] {
        registry.report(Report {
            app: new,
            message_id,
            outcome,
        });
    }
    let info = once(&registry, "counter", |a| a.stats.calls == 5);
    assert_eq!(
        (
            info.stats.counts.sent,
            info.stats.counts.send_errors,
            info.stats.counts.send_unknown
        ),
        (1, 1, 1),
        "{:?}",
        info.stats
    );
}

#[test]
fn a_replacement_waits_for_state_only_up_to_the_handoff_timeout() {
    let (mut registry, _events) = registry(Duration::from_millis(100));
    // The message makes the old instance spin, and its deadline is longer than any
    // test waits: its drain, queued behind the message, never comes while the test
    // runs (the thread ends with the test process), so the successor can only go on
    // because its wait for the state timed out, however fast or slow the machine.
    let limits = Limits {
        call_deadline: Duration::from_secs(3600),
        ..Limits::default()
    };
    let old = registry
        .load(request("busy", "spin", None, limits))
        .unwrap();
    registry.deliver("peer", "busy", b"spin".to_vec()).unwrap();
    let (_, new) = registry
        .replace(request(
            "busy",
            "calm",
            Some(Duration::from_millis(1)),
            Limits::default(),
        ))
        .unwrap();
    assert_ne!(new, old);
    once(&registry, "busy", |a| a.stats.counts.cycles >= 3);
    let info = registry
        .list()
        .into_iter()
        .find(|a| a.name == "busy")
        .unwrap();
    assert_eq!(info.stats.state, AppState::Running);
    assert!(
        info.stats.calls <= info.stats.counts.cycles + 1,
        "init and cycles only, no restore: {:?}",
        info.stats
    );
}

#[test]
fn many_apps_share_a_small_pool_of_threads_and_each_keeps_its_schedule() {
    use nodemanager::runtime::pool::WorkerPool;
    use std::sync::Arc;
    // Threads of this test's pool, by name (other tests run beside it).
    let threads = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|name| name.starts_with("pooltest-"))
            })
            .count()
    };
    let (events, _receiver) = mpsc::channel(1 << 16);
    let pool = Arc::new(WorkerPool::named("pooltest", 2));
    let mut registry =
        AppRegistry::with_pool(AppContext::new("me".into()), Some(1), events, 1 << 24, pool);
    // Warm up: the pool's threads start with its first app.
    registry
        .load(request(
            "app0",
            "calm",
            Some(Duration::from_millis(20)),
            Limits::default(),
        ))
        .unwrap();
    // A thread names itself once it runs.
    common::node::wait_for("the pool's two threads", || threads() == 2);
    for i in 1..50 {
        registry
            .load(request(
                &format!("app{i}"),
                "calm",
                Some(Duration::from_millis(20)),
                Limits::default(),
            ))
            .unwrap();
    }
    assert_eq!(threads(), 2, "no thread per app");
    for i in 0..50 {
        once(&registry, &format!("app{i}"), |a| {
            a.stats.counts.cycles >= 5
        });
    }
    // Messages to one app are handled in order, between its cycles.
    for n in 0..20 {
        registry
            .deliver("peer", "app7", format!("m{n}").into_bytes())
            .unwrap();
    }
    let info = once(&registry, "app7", |a| a.stats.counts.received == 20);
    assert_eq!(info.stats.state, AppState::Running);
}

/// Loads app `name` in a mode the guest refuses at init, and waits until its task ended.
fn load_failing(registry: &mut AppRegistry, events: &mut mpsc::Receiver<WorkerEvent>, name: &str) {
    let id = registry
        .load(request(name, "no such mode", None, Limits::default()))
        .unwrap();
    loop {
        match events.blocking_recv().expect("the registry lives") {
            WorkerEvent::Exited { app } if app == id => {
                assert!(registry.exited(id).is_none(), "still loaded, failed");
                return;
            }
            _ => {}
        }
    }
}

#[test]
fn a_failed_app_is_unloaded_or_replaced_at_once() {
    let (mut registry, mut events) = registry(Duration::from_secs(3600));
    load_failing(&mut registry, &mut events, "bad");
    // Nothing is left to drain and no `Exited` will come again: gone at once.
    let Unloading::Gone(info) = registry.unload("bad").unwrap() else {
        panic!("an unload that waits for a task that ended never answers")
    };
    assert_eq!(info.stats.state, AppState::Failed);
    assert_eq!(registry.retired().len(), 1);

    // Replaced, the failed one is retired at once and the new one starts without
    // waiting (an hour) for a state that will never come.
    load_failing(&mut registry, &mut events, "bad");
    registry
        .replace(request(
            "bad",
            "calm",
            Some(Duration::from_millis(10)),
            Limits::default(),
        ))
        .unwrap();
    assert_eq!(registry.retired().len(), 2);
    once(&registry, "bad", |app| app.stats.counts.cycles >= 1);
}
