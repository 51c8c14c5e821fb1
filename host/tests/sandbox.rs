//! The runtime against real guests built from source: calls, and the sandbox holding
//! against hostile apps (CPU, memory, traps, files, environment).

#[path = "../../tests/common/mod.rs"]
mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nodemanager::runtime::{AppContext, AppError, Clock, Limits, LoadedApp, Prepared, Runtime};

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(&common::test_cache_dir()).expect("runtime"))
}

fn prepared(file: &str) -> Prepared {
    runtime()
        .load_component(&common::guest(file))
        .expect("component loads")
}

fn context() -> AppContext {
    let context = AppContext::new(libp2p::PeerId::random().to_string());
    *context.view.write().unwrap() = vec![libp2p::PeerId::random().to_string()];
    context
}

fn hostile(mode: &str, limits: Limits) -> LoadedApp {
    let mut app =
        LoadedApp::instantiate(&prepared("hostile.wasm"), mode, limits, context(), Some(1))
            .unwrap();
    app.init(mode).expect("init");
    app
}

fn stopped_reason(result: Result<(), AppError>) -> String {
    match result {
        Err(AppError::Stopped(reason)) => reason,
        other => panic!("expected the app to be stopped, got {other:?}"),
    }
}

const IDENTITY: &str = r#"{"vector": [1, 2, 3, 4, 5], "matrix": [[1,0,0,0,0],[0,1,0,0,0],[0,0,1,0,0],[0,0,0,1,0],[0,0,0,0,1]]}"#;

fn exercise_share_vec(file: &str) {
    let context = context();
    let peer = context.view()[0].clone();
    let mut app = LoadedApp::instantiate(
        &prepared(file),
        "share_vec",
        Limits::default(),
        context,
        Some(7),
    )
    .unwrap();
    app.init(IDENTITY).expect("init");
    app.periodic_run(std::slice::from_ref(&peer))
        .expect("periodic_run");
    let outbox = app.take_outbox();
    assert_eq!(outbox.len(), 1, "one message per cycle");
    assert_eq!(outbox[0].destination.to_string(), peer);
    let sent: serde_json::Value = serde_json::from_slice(&outbox[0].payload).unwrap();
    assert_eq!(sent["receiver"], peer.as_str());
    assert_eq!(sent["data"], serde_json::json!([1.0, 2.0, 3.0, 4.0, 5.0]));
    let reply = serde_json::json!({"sender": peer, "receiver": "me", "data": [3, 2, 1, 0, -1]});
    app.handle_message(&peer, reply.to_string().as_bytes())
        .expect("handle_message");
    app.periodic_run(std::slice::from_ref(&peer)).unwrap();
    let averaged: serde_json::Value =
        serde_json::from_slice(&app.take_outbox()[0].payload).unwrap();
    assert_eq!(
        averaged["data"],
        serde_json::json!([2.0, 2.0, 2.0, 2.0, 2.0])
    );
    // A malformed message is an error the app returns; it goes on.
    let bad = app.handle_message(&peer, b"not json");
    assert!(matches!(bad, Err(AppError::Returned(_))), "{bad:?}");
    app.periodic_run(&[]).expect("still running");
}

#[test]
fn rust_share_vec_sends_and_averages() {
    exercise_share_vec("share_vec_rust.wasm");
}

#[test]
fn python_share_vec_sends_and_averages() {
    exercise_share_vec("share_vec_py.wasm");
}

#[test]
fn send_message_refuses_bad_destinations_and_large_payloads() {
    // The guest's send-message errors come back typed; share_vec turns them into an error.
    let limits = Limits {
        max_payload_bytes: 16,
        ..Limits::default()
    };
    let mut app = LoadedApp::instantiate(
        &prepared("share_vec_rust.wasm"),
        "share_vec",
        limits,
        context(),
        None,
    )
    .unwrap();
    app.init(IDENTITY).unwrap();
    let error = app
        .periodic_run(&["not-a-peer".into()])
        .unwrap_err()
        .to_string();
    assert!(error.contains("BadDestination"), "{error}");
    let error = app
        .periodic_run(&[libp2p::PeerId::random().to_string()])
        .unwrap_err()
        .to_string();
    assert!(error.contains("PayloadTooLarge(16)"), "{error}");
    assert_eq!(app.take_refused_sends(), 2);
    assert!(app.take_outbox().is_empty());
}

#[test]
fn infinite_loop_is_stopped_at_the_deadline_and_others_go_on() {
    let deadline = Duration::from_millis(200);
    let mut calm = hostile("calm", Limits::default());
    let mut spin = hostile(
        "spin",
        Limits {
            call_deadline: deadline,
            ..Limits::default()
        },
    );
    let started = Instant::now();
    let reason = stopped_reason(spin.periodic_run(&[]));
    let took = started.elapsed();
    assert!(
        reason.contains("ran past its CPU deadline of 200ms"),
        "{reason}"
    );
    // At least its deadline (how much later depends on the machine: not asserted).
    assert!(took >= deadline, "stopped after {took:?}");
    calm.periodic_run(&[]).expect("the other app keeps running");
    calm.periodic_run(&[]).expect("and again");
}

#[test]
fn memory_growth_past_the_cap_is_stopped() {
    let mut alloc = hostile(
        "alloc",
        Limits {
            memory_mib: 32,
            ..Limits::default()
        },
    );
    let reason = stopped_reason(alloc.periodic_run(&[]));
    assert!(
        reason.contains("exceeded its memory cap of 32 MiB"),
        "{reason}"
    );
    hostile("calm", Limits::default())
        .periodic_run(&[])
        .expect("others unaffected");
}

#[test]
fn trap_is_isolated() {
    let mut trap = hostile("trap", Limits::default());
    let reason = stopped_reason(trap.periodic_run(&[]));
    assert!(
        reason.contains("trapped") && reason.contains("unreachable"),
        "{reason}"
    );
    let mut calm = hostile("calm", Limits::default());
    calm.periodic_run(&[])
        .expect("another app in the same runtime runs");
}

#[test]
fn no_files_no_environment_no_args() {
    hostile("fs", Limits::default())
        .periodic_run(&[])
        .expect("every file access fails inside the sandbox");
    hostile("env", Limits::default())
        .periodic_run(&[])
        .expect("no env vars, no args");
}

#[test]
fn compiled_components_come_from_the_cache_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::guest("hostile.wasm");
    let first = Runtime::new(dir.path()).unwrap();
    let compiled = first.load_component(&path).unwrap();
    assert!(!compiled.from_cache);
    let reused = first.load_component(&path).unwrap();
    assert!(reused.from_cache, "the process keeps its compiled copy");
    assert_eq!(first.prepared(&compiled.hash).unwrap().hash, compiled.hash);
    let second = Runtime::new(dir.path()).unwrap();
    assert!(
        second.load_component(&path).unwrap().from_cache,
        "from disk"
    );
    // A corrupt cache entry is recompiled, not trusted. (Put in place as every writer of
    // the cache does, by renaming a new file over it: `second` still maps the old one.)
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let garbage = path.with_extension("garbage");
        std::fs::write(&garbage, b"garbage").unwrap();
        std::fs::rename(&garbage, &path).unwrap();
    }
    let third = Runtime::new(dir.path()).unwrap();
    assert!(!third.load_component(&path).unwrap().from_cache);
}

#[test]
fn components_of_another_world_and_non_components_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other_world = dir.path().join("other.wasm");
    std::fs::write(&other_world, wat::parse_str("(component)").unwrap()).unwrap();
    let error = format!(
        "{:#}",
        runtime().load_component(&other_world).err().unwrap()
    );
    for export in ["init", "periodic-run", "handle-message", "delivery-report"] {
        assert!(
            error.contains(&format!("missing export: function `{export}`")),
            "{error}"
        );
    }
    let module = dir.path().join("module.wasm");
    std::fs::write(&module, wat::parse_str("(module)").unwrap()).unwrap();
    let error = format!("{:#}", runtime().load_component(&module).err().unwrap());
    assert!(
        error.contains("core WebAssembly module, not a component"),
        "{error}"
    );
    let text = dir.path().join("text.wasm");
    std::fs::write(&text, "hello").unwrap();
    let error = format!("{:#}", runtime().load_component(&text).err().unwrap());
    assert!(error.contains("not a WebAssembly file"), "{error}");
}

#[test]
fn sends_are_bounded_per_call_and_per_second() {
    let peer = libp2p::PeerId::random().to_string();
    let mut per_call = hostile("flood", Limits::default());
    per_call.periodic_run(std::slice::from_ref(&peer)).unwrap();
    assert_eq!(per_call.take_outbox().len(), 1024, "max_queued_per_call");
    assert_eq!(per_call.take_refused_sends(), 1);
    // The bucket counts in the context's clock: a manual one makes the refill exact.
    let context = context();
    let clock = Clock::manual();
    let context = AppContext {
        clock: clock.clone(),
        ..context
    };
    let limits = Limits {
        max_messages_per_sec: 100,
        ..Limits::default()
    };
    let mut rated =
        LoadedApp::instantiate(&prepared("hostile.wasm"), "flood", limits, context, Some(1))
            .unwrap();
    rated.init("flood").unwrap();
    let mut sends_per_call = Vec::new();
    for advance_ms in [0, 0, 50, 1000, 5000] {
        clock.advance(Duration::from_millis(advance_ms));
        rated.periodic_run(std::slice::from_ref(&peer)).unwrap();
        sends_per_call.push(rated.take_outbox().len());
    }
    // One second's worth, then none, 5 tokens after 50 ms, then full again (never more).
    assert_eq!(sends_per_call, [100, 0, 5, 100, 100]);
}

#[test]
fn log_lines_are_capped_per_call() {
    // 1,000 lines of 1 MiB in one call: 256 are kept (cut to 4 KiB), the rest dropped.
    // A deadline no machine reaches, so that the cap is what is checked.
    let mut app = hostile(
        "log",
        Limits {
            call_deadline: Duration::from_secs(600),
            ..Limits::default()
        },
    );
    app.periodic_run(&[])
        .expect("the cap drops lines, it does not stop the app");
    assert_eq!(app.logs_dropped(), 1_000 - 256);
    app.periodic_run(&[]).unwrap();
    assert_eq!(app.logs_dropped(), 2 * (1_000 - 256), "the cap is per call");
}

#[test]
fn a_python_text_app_names_a_message_that_is_not_text() {
    let context = context();
    let peer = context.view()[0].clone();
    let mut app = LoadedApp::instantiate(
        &prepared("share_vec_py.wasm"),
        "share_vec",
        Limits::default(),
        context,
        Some(7),
    )
    .unwrap();
    app.init("").expect("init");
    match app.handle_message(&peer, &[0xff, 0x00, 0xfe]) {
        Err(AppError::Returned(reason)) => assert!(
            reason.contains(&format!(
                "a 3-byte message from {peer} is not UTF-8 text: override handle_bytes to take bytes"
            )),
            "{reason}"
        ),
        other => panic!("expected the app to refuse the bytes, got {other:?}"),
    }
}

#[test]
fn a_guests_sleep_waits_in_real_time_live_and_passes_virtual_time_in_simulation() {
    let slept = |result: Result<(), AppError>| match result {
        Err(AppError::Returned(message)) => message
            .strip_prefix("slept ")
            .and_then(|rest| rest.strip_suffix(" ms"))
            .and_then(|ms| ms.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("unexpected answer {message:?}")),
        other => panic!("expected the app's `slept N ms`, got {other:?}"),
    };
    // Live: the machine's clock, at least the 300 ms asked for.
    let mut live = hostile("sleep", Limits::default());
    let started = Instant::now();
    assert!(slept(live.periodic_run(&[])) >= 300);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Simulated: no wait; the app's clock moves on by exactly the sleep.
    let clock = Clock::manual();
    clock.set(Duration::from_secs(7));
    let context = AppContext {
        clock: clock.clone(),
        ..context()
    };
    let mut simulated = LoadedApp::instantiate(
        &prepared("hostile.wasm"),
        "sleep",
        Limits::default(),
        context,
        Some(1),
    )
    .unwrap();
    simulated.init("sleep").unwrap();
    for call in 1..=3 {
        assert_eq!(slept(simulated.periodic_run(&[])), 300);
        assert_eq!(clock.now(), Duration::from_millis(7_000 + 300 * call));
    }
}
