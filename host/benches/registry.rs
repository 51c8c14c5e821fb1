//! The app registry's per-message cost: a 1 KiB message routed by name to the Rust
//! ShareVec and handled on its thread, with that app alone on the node and with 19 other
//! apps loaded beside it (each running its own schedule every 100 ms).
//!
//! Run: `cargo bench --bench registry` (after scripts/build-guests).

#[path = "../../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use nodemanager::config::ResolvedApp;
use nodemanager::runtime::{AppContext, AppRegistry, Limits, LoadRequest, Runtime};

const IDENTITY: &str = r#"{"vector": [1, 2, 3, 4, 5], "matrix": [[1,0,0,0,0],[0,1,0,0,0],[0,0,1,0,0],[0,0,0,1,0],[0,0,0,0,1]]}"#;

fn spec(name: &str, period: Duration) -> ResolvedApp {
    ResolvedApp {
        name: name.into(),
        path: common::guest("share_vec_rust.wasm"),
        config: IDENTITY.into(),
        cycles: None,
        period,
        limits: Limits {
            inbox_capacity: 1 << 20,
            ..Limits::default()
        },
    }
}

/// Messages `target` has handled so far.
fn received(registry: &AppRegistry, target: &str) -> u64 {
    registry
        .list()
        .into_iter()
        .find(|a| a.name == target)
        .map_or(0, |a| a.stats.counts.received)
}

fn registry_benches(c: &mut Criterion) {
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(cache.path()).unwrap();
    let prepared = runtime
        .load_component(&common::guest("share_vec_rust.wasm"))
        .unwrap();
    let payload =
        serde_json::json!({"sender": "x", "receiver": "me", "data": [0.5, 0.5, 0.5, 0.5, 0.5]})
            .to_string()
            .into_bytes();
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let _guard = tokio.enter();
    let mut group = c.benchmark_group("registry");
    group.measurement_time(Duration::from_secs(3));
    for others in [0usize, 19] {
        let (events, mut drain) = tokio::sync::mpsc::channel(1024);
        tokio.spawn(async move { while drain.recv().await.is_some() {} });
        let context = AppContext::new(libp2p::PeerId::random().to_string());
        let mut registry = AppRegistry::new(context, Some(1), events, 16 << 20);
        // A target that never runs a cycle during the bench: only messages reach it.
        registry
            .load(LoadRequest {
                spec: spec("target", Duration::from_secs(3600)),
                prepared: prepared.clone(),
            })
            .unwrap();
        for i in 0..others {
            registry
                .load(LoadRequest {
                    spec: spec(&format!("other{i}"), Duration::from_millis(100)),
                    prepared: prepared.clone(),
                })
                .unwrap();
        }
        group.bench_function(format!("route_and_handle_1_of_{}", others + 1), |b| {
            b.iter_custom(|iters| {
                let goal = received(&registry, "target") + iters;
                let started = Instant::now();
                for _ in 0..iters {
                    registry.deliver("peer", "target", payload.clone()).unwrap();
                }
                while received(&registry, "target") < goal {
                    std::hint::spin_loop();
                }
                started.elapsed()
            })
        });
        registry.shutdown();
    }
    group.finish();
}

criterion_group!(benches, registry_benches);
criterion_main!(benches);
