//! Runtime costs per guest (Rust and Python ShareVec): compile cold, load from the disk
//! cache, instantiate + init, and one `handle-message` call with a 1 KiB payload; and the
//! host's share of such a call: the same call into a guest that does nothing with it.
//!
//! Run: `cargo bench --bench runtime` (after scripts/build-guests).

#[path = "../../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use nodemanager::runtime::{AppContext, Limits, LoadedApp, Runtime};

const IDENTITY: &str = r#"{"vector": [1, 2, 3, 4, 5], "matrix": [[1,0,0,0,0],[0,1,0,0,0],[0,0,1,0,0],[0,0,0,1,0],[0,0,0,0,1]]}"#;

/// A ShareVec message padded (through its sender field) to exactly 1 KiB.
fn one_kib_message() -> Vec<u8> {
    let make = |pad: usize| {
        serde_json::json!({"sender": "x".repeat(pad), "receiver": "me", "data": [0.5, 0.5, 0.5, 0.5, 0.5]})
            .to_string()
            .into_bytes()
    };
    let overhead = make(0).len();
    let message = make(1024 - overhead);
    assert_eq!(message.len(), 1024);
    message
}

fn bench_guest(c: &mut Criterion, label: &str, file: &str, cold_samples: usize) {
    let bytes = std::fs::read(common::guest(file)).unwrap();
    let mut group = c.benchmark_group(label);
    group
        .sample_size(cold_samples)
        .measurement_time(Duration::from_secs(1));
    group.bench_function("compile_cold", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let runtime = Runtime::new(dir.path()).unwrap();
                (dir, runtime)
            },
            |(dir, runtime)| {
                assert!(!runtime.prepare(&bytes).unwrap().from_cache);
                (dir, runtime)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();

    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(dir.path()).unwrap();
    runtime.prepare(&bytes).unwrap();
    let mut group = c.benchmark_group(label);
    group.sample_size(20);
    group.bench_function("load_from_disk_cache", |b| {
        b.iter_batched(
            || Runtime::new(dir.path()).unwrap(),
            |fresh| {
                assert!(fresh.prepare(&bytes).unwrap().from_cache);
                fresh
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("load_again_in_process", |b| {
        b.iter(|| assert!(runtime.prepare(&bytes).unwrap().from_cache))
    });
    let prepared = runtime.prepare(&bytes).unwrap();
    let context = AppContext::new(libp2p::PeerId::random().to_string());
    let start_app = || {
        let mut app = LoadedApp::instantiate(
            &prepared,
            "share_vec",
            Limits::default(),
            context.clone(),
            Some(1),
        )
        .unwrap();
        app.init(IDENTITY).unwrap();
        app
    };
    group.bench_function("instantiate_and_init", |b| b.iter(start_app));
    group.finish();

    let mut group = c.benchmark_group(label);
    let message = one_kib_message();
    let mut app = start_app();
    group.bench_function("handle_message_1KiB", |b| {
        b.iter(|| app.handle_message("peer", &message).unwrap())
    });
    group.finish();
}

/// A `handle-message` call with a 1 KiB payload into a guest that ignores it (the hostile
/// guest's `sink` mode): what the host costs per call, without the app's own work.
fn bench_call_floor(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(dir.path()).unwrap();
    let bytes = std::fs::read(common::guest("hostile.wasm")).unwrap();
    let prepared = runtime.prepare(&bytes).unwrap();
    let context = AppContext::new(libp2p::PeerId::random().to_string());
    let mut app =
        LoadedApp::instantiate(&prepared, "sink", Limits::default(), context, Some(1)).unwrap();
    app.init("sink").unwrap();
    let message = one_kib_message();
    let mut group = c.benchmark_group("host_only");
    group.bench_function("handle_message_1KiB", |b| {
        b.iter(|| app.handle_message("peer", &message).unwrap())
    });
    group.finish();
}

fn runtime_benches(c: &mut Criterion) {
    bench_call_floor(c);
    bench_guest(c, "rust_share_vec", "share_vec_rust.wasm", 10);
    bench_guest(c, "python_share_vec", "share_vec_py.wasm", 10);
}

criterion_group!(benches, runtime_benches);
criterion_main!(benches);
