//! Nodes as values in one process (no `nodemanager` binary): two nodes greet each
//! other, are told each other's messages were delivered, and stop on request with a
//! summary that says so.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;

use nodemanager::config::{AppSpec, NodeConfig};
use nodemanager::node::Node;
use nodemanager::runtime::Runtime;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A node with the hostile guest in `greet` mode, forever, and an admin socket.
fn config(socket: &Path, bootstrap: Vec<libp2p::Multiaddr>) -> NodeConfig {
    NodeConfig {
        context: "in-process".into(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        cycles: -1,
        period: std::time::Duration::from_millis(100),
        admin: Some(socket.to_path_buf()),
        apps: vec![AppSpec {
            config: "greet".into(),
            ..AppSpec::from_arg(&format!(
                "{}:greet",
                common::guest("hostile.wasm").display()
            ))
            .unwrap()
        }],
        ..NodeConfig::default()
    }
}

/// One `stats` answer from a node's admin socket.
async fn stats(socket: &Path) -> Value {
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    stream.write_all(b"{\"cmd\": \"stats\"}\n").await.unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await.unwrap();
    serde_json::from_str(&line).unwrap()
}

/// The greet app's counters in a `stats` answer.
fn greet(stats: &Value) -> &Value {
    &stats["apps"][0]["stats"]
}

#[test]
fn two_nodes_in_one_process_exchange_messages_and_stop_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Arc::new(Runtime::new(&common::test_cache_dir()).unwrap());
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sockets = [dir.path().join("a.sock"), dir.path().join("b.sock")];
    let (summaries, delivered) = tokio.block_on(async {
        let key = libp2p::identity::Keypair::generate_ed25519;
        let a = Node::start(config(&sockets[0], Vec::new()), runtime.clone(), key())
            .await
            .unwrap();
        let a_addr = a.ready().listen_addrs[0].parse().unwrap();
        let b = Node::start(config(&sockets[1], vec![a_addr]), runtime.clone(), key())
            .await
            .unwrap();
        let (stop_a, stopped_a) = tokio::sync::oneshot::channel::<()>();
        let (stop_b, stopped_b) = tokio::sync::oneshot::channel::<()>();
        let a = tokio::spawn(a.run(async {
            let _ = stopped_a.await;
        }));
        let b = tokio::spawn(b.run(async {
            let _ = stopped_b.await;
        }));
        // Until each node received a greeting and was told one of its own arrived.
        let limit = tokio::time::Instant::now() + common::node::WAIT_LIMIT;
        let mut delivered = Vec::new();
        for socket in &sockets {
            loop {
                let stats = stats(socket).await;
                let app = greet(&stats);
                if app["received"].as_u64() >= Some(1) && app["sent"].as_u64() >= Some(1) {
                    let view = stats["sampling"]["view"].as_array().unwrap().len();
                    assert_eq!(view, 1, "each node sees the other: {stats}");
                    delivered.push(app["sent"].as_u64().unwrap());
                    break;
                }
                assert!(tokio::time::Instant::now() < limit, "no exchange: {stats}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        stop_a.send(()).unwrap();
        stop_b.send(()).unwrap();
        (vec![a.await.unwrap(), b.await.unwrap()], delivered)
    });
    for (summary, delivered) in summaries.iter().zip(delivered) {
        let app = &summary.apps["greet"];
        assert_eq!(app.counts.call_errors, 0, "{app:?}");
        assert!(app.counts.sent >= delivered, "counters only grow: {app:?}");
        assert!(
            app.counts.received >= 1 && app.counts.cycles >= 1,
            "{app:?}"
        );
        assert_eq!(summary.sampling.algorithm, "connected");
    }
}
