//! End to end: real `nodemanager` processes on 127.0.0.1 with random free ports.
//! Readiness comes from each node's first JSON line; nothing waits on a bare sleep.

mod common;

use common::node::{
    ids_and_logs, logged_views, nodemanager, read, sigterm, stop_all, wait_for, RunningNode,
};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// `--app` arguments for the hostile guest in `calm` mode.
fn calm_app() -> Vec<String> {
    vec![
        "--app".into(),
        format!("{}:calm", common::guest("hostile.wasm").display()),
        "--app-config".into(),
        "calm=calm".into(),
    ]
}

/// Every `vector=[...]` the app logged, in order.
fn logged_vectors(log: &str) -> Vec<Vec<f64>> {
    log.lines()
        .filter_map(|line| line.split("vector=").nth(1))
        .map(|rest| {
            let json = &rest[..=rest.find(']').expect("closing bracket")];
            serde_json::from_str(json).expect("a vector")
        })
        .collect()
}

/// Largest per-coordinate distance between any two of `vectors`.
fn spread(vectors: &[Vec<f64>]) -> f64 {
    (0..5)
        .map(|i| {
            let values = vectors.iter().map(|v| v[i]);
            values.clone().fold(f64::MIN, f64::max) - values.fold(f64::MAX, f64::min)
        })
        .fold(0.0, f64::max)
}

fn identity_config(vector: [f64; 5]) -> String {
    serde_json::json!({
        "vector": vector,
        "matrix": (0..5).map(|i| (0..5).map(|j| if i == j { 1.0 } else { 0.0 }).collect::<Vec<_>>()).collect::<Vec<_>>(),
    })
    .to_string()
}

#[test]
fn three_nodes_python_and_rust_share_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let guests = [
        common::guest("share_vec_py.wasm"),
        common::guest("share_vec_rust.wasm"),
        common::guest("share_vec_rust.wasm"),
    ];
    let starts = [
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [10.0, 10.0, 10.0, 10.0, 10.0],
        [20.0, 0.0, 20.0, 0.0, 20.0],
    ];
    let mut nodes: Vec<RunningNode> = Vec::new();
    for (i, (guest, start)) in guests.iter().zip(starts).enumerate() {
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "/ip4/127.0.0.1/tcp/0".into(),
            "--context".into(),
            "e2e-share-vec".into(),
            "--app".into(),
            format!("{}:share_vec", guest.display()),
            "--app-config".into(),
            format!("share_vec={}", identity_config(start)),
            // Runs until the test saw what it checks, however long that takes here.
            "--cycles".into(),
            "-1".into(),
            "--period".into(),
            "200ms".into(),
            "--seed".into(),
            i.to_string(),
            // Not a test of CPU deadlines: a busy machine may stall a call for seconds.
            "--limit".into(),
            "call_deadline=120s".into(),
        ];
        for earlier in &nodes {
            args.extend(["--bootstrap".to_string(), earlier.addr()]);
        }
        let node = RunningNode::spawn(&args, dir.path().join(format!("node{i}.log")));
        let ready = &node.ready;
        let peer = ready["peer_id"].as_str().unwrap();
        assert!(
            node.addr().starts_with("/ip4/127.0.0.1/tcp/")
                && node.addr().ends_with(&format!("/p2p/{peer}")),
            "{ready}"
        );
        nodes.push(node);
    }
    let logs: Vec<PathBuf> = nodes.iter().map(|n| n.log.clone()).collect();
    let last_vectors = || -> Vec<Vec<f64>> {
        logs.iter()
            .filter_map(|l| logged_vectors(&read(l)).last().cloned())
            .collect()
    };
    wait_for(
        "every node to receive a vector and the vectors to move together",
        || {
            let vectors = last_vectors();
            logs.iter().all(|l| read(l).contains("received "))
                && vectors.len() == 3
                && spread(&vectors) < 0.75 * 20.0
        },
    );
    let summaries = stop_all(nodes);
    let (mut first, mut last) = (Vec::new(), Vec::new());
    for (summary, log) in summaries.iter().zip(&logs) {
        let app = &summary["apps"]["share_vec"];
        let log = read(log);
        assert_eq!(app["state"], "running", "{summary}\n{log}");
        assert_eq!(app["call_errors"], 0, "{summary}");
        assert!(
            app["sent"].as_u64().unwrap() >= 1,
            "every node sent: {summary}\n{log}"
        );
        assert!(
            app["received"].as_u64().unwrap() >= 1,
            "every node received: {summary}\n{log}"
        );
        let vectors = logged_vectors(&log);
        first.push(vectors.first().expect("logged a start vector").clone());
        last.push(vectors.last().unwrap().clone());
    }
    assert_eq!(spread(&first), 20.0);
    assert!(
        spread(&last) < 0.75 * spread(&first),
        "vectors moved toward each other: {first:?} -> {last:?}"
    );
}

#[test]
fn a_hostile_app_is_stopped_and_its_neighbours_finish() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = common::guest("hostile.wasm");
    let mut args: Vec<String> = vec![
        "--cycles".into(),
        "3".into(),
        "--period".into(),
        "100ms".into(),
        "--linger".into(),
        "0s".into(),
    ];
    for mode in ["spin", "alloc", "trap", "print", "calm"] {
        args.extend([
            "--app".into(),
            format!("{}:{mode}", hostile.display()),
            "--app-config".into(),
            format!("{mode}={mode}"),
        ]);
    }
    let config = dir.path().join("limits.toml");
    std::fs::write(
        &config,
        "[limits]\nmemory_mib = 64\ncall_deadline = \"300ms\"\n",
    )
    .unwrap();
    args.extend(["--config".into(), config.display().to_string()]);
    let node = RunningNode::spawn(&args, dir.path().join("node.log"));
    let log = node.log.clone();
    let (status, summary) = node.finish_with_status();
    assert_eq!(status.code(), Some(3), "apps failed: exit code 3");
    let apps = &summary["apps"];
    let reason = |name: &str| {
        apps[name]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(apps["spin"]["state"], "failed");
    assert!(
        reason("spin").contains("CPU deadline of 300ms"),
        "{summary}"
    );
    assert_eq!(apps["alloc"]["state"], "failed");
    assert!(
        reason("alloc").contains("memory cap of 64 MiB"),
        "{summary}"
    );
    assert_eq!(apps["trap"]["state"], "failed");
    assert!(reason("trap").contains("unreachable"), "{summary}");
    assert_eq!(apps["calm"]["state"], "done", "{summary}");
    assert_eq!(apps["calm"]["cycles"], 3);
    let log = read(&log);
    assert!(
        log.contains("app stopped: app spin ran past its CPU deadline"),
        "{log}"
    );
    assert!(log.contains("calm cycle 3"), "{log}");
    // Guest stdout and stderr land in the node log, tagged with the app and stream.
    assert_eq!(apps["print"]["state"], "done", "{summary}");
    for expected in [
        r#"hello from stdout, cycle 3 app=print stream="stdout""#,
        r#"hello from stderr, cycle 3 app=print stream="stderr""#,
        r#"a last line without newline app=print stream="stderr""#,
    ] {
        assert!(log.contains(expected), "{expected:?} not in\n{log}");
    }
}

#[test]
fn nodes_of_different_contexts_never_exchange_messages() {
    let dir = tempfile::tempdir().unwrap();
    let app = format!(
        "{}:share_vec",
        common::guest("share_vec_rust.wasm").display()
    );
    let common_args = |context: &str| -> Vec<String> {
        vec![
            "--context".into(),
            context.into(),
            "--app".into(),
            app.clone(),
            "--cycles".into(),
            "-1".into(),
            "--period".into(),
            "200ms".into(),
            "--sampler".into(),
            "gbps".into(),
        ]
    };
    let red = RunningNode::spawn(&common_args("red"), dir.path().join("red.log"));
    let mut blue_args = common_args("blue");
    blue_args.extend(["--bootstrap".into(), red.addr()]);
    let blue = RunningNode::spawn(&blue_args, dir.path().join("blue.log"));
    let blue_log = blue.log.clone();
    let idle_cycles = |log: &Path| read(log).matches("no neighbours yet").count();
    for node in [&blue, &red] {
        wait_for("each node to see the other speaks another context", || {
            read(&node.log).contains("speaks another context")
        });
        // Three cycles after that, so a message that could cross would have.
        let seen = idle_cycles(&node.log);
        wait_for("three more cycles", || idle_cycles(&node.log) >= seen + 3);
    }
    for summary in stop_all(vec![blue, red]) {
        let counters = &summary["apps"]["share_vec"];
        assert_eq!(
            (counters["sent"].as_u64(), counters["received"].as_u64()),
            (Some(0), Some(0)),
            "{summary}"
        );
        assert_eq!(
            counters["send_errors"], 0,
            "no message was even attempted: {summary}"
        );
        // Each node is alone in its context: any sampling message would have crossed.
        let sampling = &summary["sampling"];
        assert_eq!(
            (
                sampling["messages_in"].as_u64(),
                sampling["view"].as_array().map(Vec::len)
            ),
            (Some(0), Some(0)),
            "{summary}"
        );
        assert!(
            summary["network"]["refused"]["other_context"].as_u64() >= Some(1),
            "{summary}"
        );
    }
    let log = read(&blue_log);
    assert!(log.contains("speaks another context"), "{log}");
}

/// Five nodes in a bootstrap chain (each knows only the one before it) run `sampler`
/// (the seed's JSON, with a fast period) until every node's view came to hold a peer
/// that was never its bootstrap neighbour; views stay within the invariants. Each node
/// writes its sampling data (`--sampling-out`), which must agree with its summary.
fn views_learn_peers_beyond_the_bootstrap_neighbours(
    algorithm: &str,
    context: &str,
    sampler_json: &str,
    max_view: usize,
) {
    let dir = tempfile::tempdir().unwrap();
    let sampler = dir.path().join("sampler.json");
    std::fs::write(&sampler, sampler_json).unwrap();
    let mut nodes: Vec<RunningNode> = Vec::new();
    for i in 0..5 {
        let mut args = calm_app();
        args.extend([
            "--context".into(),
            context.into(),
            "--cycles".into(),
            "-1".into(),
            "--period".into(),
            "200ms".into(),
            "--sampler-config".into(),
            sampler.display().to_string(),
            "--seed".into(),
            i.to_string(),
            "--sampling-out".into(),
            dir.path()
                .join(format!("node{i}.jsonl"))
                .display()
                .to_string(),
        ]);
        if let Some(previous) = nodes.last() {
            args.extend(["--bootstrap".into(), previous.addr()]);
        }
        nodes.push(RunningNode::spawn(
            &args,
            dir.path().join(format!("node{i}.log")),
        ));
    }
    let (ids, logs) = ids_and_logs(&nodes);
    let neighbours = |i: usize| -> Vec<&String> {
        [i.checked_sub(1), Some(i + 1)]
            .into_iter()
            .flatten()
            .filter_map(|j| ids.get(j))
            .collect()
    };
    for (i, log) in logs.iter().enumerate() {
        wait_for(
            &format!("node{i} to learn a peer beyond its neighbours"),
            || {
                logged_views(&read(log))
                    .iter()
                    .flatten()
                    .any(|p| !neighbours(i).contains(&p))
            },
        );
    }
    let summaries = stop_all(nodes);
    let mut samples = 0;
    for (i, summary) in summaries.iter().enumerate() {
        assert_eq!(summary["apps"]["calm"]["state"], "running");
        let sampling = &summary["sampling"];
        assert_eq!(sampling["algorithm"], algorithm, "{summary}");
        assert_eq!(sampling["refused"], 0, "{summary}");
        assert!(sampling["messages_in"].as_u64().unwrap() > 0, "{summary}");
        let records: Vec<Value> = read(&dir.path().join(format!("node{i}.jsonl")))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records.len() as u64, sampling["ticks"].as_u64().unwrap());
        for (tick, record) in records.iter().enumerate() {
            assert_eq!(record["tick"], tick as u64 + 1);
            for peer in record["view"]
                .as_array()
                .unwrap()
                .iter()
                .chain(record["samples"].as_array().unwrap())
            {
                assert!(
                    ids.contains(&peer.as_str().unwrap().to_string()),
                    "{record}"
                );
            }
            // A tick never adds peers: a view after it means there was one before,
            // and every algorithm sends at least one message from a non-empty view.
            if !record["view"].as_array().unwrap().is_empty() {
                assert!(
                    record["messages_out"].as_u64().unwrap() >= 1,
                    "node{i}: a tick with a view sent nothing: {record}"
                );
            }
            samples += record["samples"].as_array().unwrap().len();
        }
    }
    assert!(samples > 0, "the samplers emitted no samples");
    for (i, (log, summary)) in logs.iter().zip(&summaries).enumerate() {
        let log = read(log);
        let views = logged_views(&log);
        assert_eq!(
            views.len() as u64,
            summary["apps"]["calm"]["cycles"].as_u64().unwrap(),
            "one logged view per cycle"
        );
        for view in &views {
            assert!(
                view.len() <= max_view,
                "node{i}: view over {max_view}: {view:?}"
            );
            assert!(!view.contains(&ids[i]), "a node is never in its own view");
            assert!(
                view.iter().all(|p| ids.contains(p)),
                "only known ids: {view:?}"
            );
        }
    }
}

fn seed_fixture(name: &str) -> String {
    std::fs::read_to_string(common::repo_root().join("tests/fixtures").join(name)).unwrap()
}

#[test]
fn gbps_views_learn_peers_beyond_the_bootstrap_neighbours() {
    let json = seed_fixture("seed_gbps.json")
        .replace("\"time\": 2", "\"time\": 0.2")
        .replace("\"old\"", "\"rand\"");
    views_learn_peers_beyond_the_bootstrap_neighbours("gbps", "e2e-gbps", &json, 4);
}

#[test]
fn brahms_views_learn_peers_beyond_the_bootstrap_neighbours() {
    let json = seed_fixture("seed_brahms.json").replace("\"time\": 2", "\"time\": 0.2");
    views_learn_peers_beyond_the_bootstrap_neighbours("brahms", "e2e-brahms", &json, 8);
}

#[test]
fn basalt_views_learn_peers_beyond_the_bootstrap_neighbours() {
    let json = seed_fixture("seed_basalt.json").replace("\"time\": 2", "\"time\": 0.2");
    views_learn_peers_beyond_the_bootstrap_neighbours("basalt", "e2e-basalt", &json, 8);
}

#[test]
fn sigterm_stops_a_node_cleanly_with_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = calm_app();
    args.extend([
        "--cycles".into(),
        "-1".into(),
        "--period".into(),
        "50ms".into(),
    ]);
    let log = dir.path().join("node.log");
    let node = RunningNode::spawn(&args, log.clone());
    // A second of cycles: long past libp2p-kad's start-up bootstrap attempt.
    wait_for("20 cycles", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        logged_views(&text).len() >= 20
    });
    sigterm(&node);
    let summary = node.finish();
    assert_eq!(summary["apps"]["calm"]["state"], "running", "{summary}");
    // A first node with no peer to bootstrap from is normal: no warning says otherwise.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("Failed to trigger bootstrap"), "{text}");
}

#[test]
fn simulate_writes_the_same_csv_for_the_same_seed() {
    let dir = tempfile::tempdir().unwrap();
    let run = |seed: &str, out: &str| {
        run_ok(
            nodemanager()
                .args([
                    "simulate",
                    "--sampler",
                    "basalt",
                    "--nodes",
                    "150",
                    "--cycles",
                    "20",
                    "--seed",
                    seed,
                ])
                .args(["--fail-fraction", "0.3", "--fail-at", "10", "--out"])
                .arg(dir.path().join(out)),
        );
        std::fs::read_to_string(dir.path().join(out)).unwrap()
    };
    let first = run("3", "a.csv");
    assert_eq!(first.lines().count(), 21);
    assert!(first.starts_with(
        "cycle,indegree_mean,indegree_std,indegree_max,clustering,avg_path,partitions,dead_links,"
    ));
    assert_eq!(first, run("3", "b.csv"));
    assert_ne!(first, run("4", "c.csv"));
    let stderr = run_failing(&[
        "simulate",
        "--nodes",
        "1",
        "--cycles",
        "3",
        "--out",
        "/dev/null",
    ]);
    assert!(stderr.contains("--nodes must be at least 2"), "{stderr}");
    let stderr = run_failing(&[
        "simulate",
        "--nodes",
        "10",
        "--cycles",
        "3",
        "--fail-fraction",
        "2",
        "--out",
        "/dev/null",
    ]);
    assert!(
        stderr.contains("--fail-fraction must be between 0 and 1"),
        "{stderr}"
    );
    let stderr = run_failing(&[
        "simulate",
        "--nodes",
        "10",
        "--cycles",
        "3",
        "--engine",
        "cycle",
        "--loss",
        "0.1",
        "--out",
        "/dev/null",
    ]);
    assert!(stderr.contains("need --engine event"), "{stderr}");
}

#[test]
fn simulate_attacks_churn_and_latency_fill_every_column() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("attack.csv");
    run_ok(
        nodemanager()
            .args([
                "simulate",
                "--sampler",
                "basalt",
                "--nodes",
                "200",
                "--cycles",
                "12",
            ])
            .args(["--seed", "1", "--byzantine", "0.1", "--attack-force", "2"])
            .args(["--latency", "30ms", "--jitter", "10ms", "--loss", "0.01"])
            .args([
                "--leave-rate",
                "0.01",
                "--join-rate",
                "0.2",
                "--link",
                "0-1=300ms",
            ])
            .args(["--costly-metrics-every", "4", "--out"])
            .arg(&out)
            .arg("--plot")
            .arg(dir.path().join("attack.svg")),
    );
    assert!(read(&dir.path().join("attack.svg")).contains("Byzantine in views"));
    let csv = read(&out);
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 12);
    let last = &rows[11];
    assert_eq!(last.len(), 11, "{csv}");
    assert!(
        last.iter().all(|cell| !cell.is_empty()),
        "cycle 12 has every metric: {csv}"
    );
}

#[test]
fn compile_warms_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let compile = || {
        let stdout = run_ok(
            nodemanager()
                .args(["compile", "--cache-dir"])
                .arg(cache.path())
                .arg(common::guest("hostile.wasm")),
        );
        String::from_utf8(stdout).unwrap()
    };
    assert!(compile().contains("hostile.wasm: compiled in"));
    assert!(compile().contains("hostile.wasm: already cached"));
}

#[test]
fn unknown_app_on_the_receiver_is_an_error_for_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = calm_app();
    args.extend(["--cycles", "-1", "--period", "100ms"].map(String::from));
    let receiver = RunningNode::spawn(&args, dir.path().join("receiver.log"));
    let sender = RunningNode::spawn(
        &[
            "--app".into(),
            format!(
                "{}:only_here",
                common::guest("share_vec_rust.wasm").display()
            ),
            "--bootstrap".into(),
            receiver.addr(),
            "--cycles".into(),
            "-1".into(),
            "--period".into(),
            "200ms".into(),
        ],
        dir.path().join("sender.log"),
    );
    let sender_log = sender.log.clone();
    wait_for("the receiver to refuse a message", || {
        read(&sender_log).contains("message not delivered")
    });
    let summaries = stop_all(vec![sender, receiver]);
    let summary = &summaries[0];
    let app = &summary["apps"]["only_here"];
    assert_eq!(app["sent"], 0, "{summary}");
    assert!(app["send_errors"].as_u64().unwrap() >= 1, "{summary}");
    let log = read(&sender_log);
    assert!(
        log.contains(r#"no app named \"only_here\" on this node"#)
            || log.contains(r#"no app named "only_here" on this node"#),
        "{log}"
    );
    let received = &summaries[1]["apps"]["calm"];
    assert_eq!(received["received"], 0, "{received}");
    assert!(
        summaries[1]["network"]["refused"]["unknown_app"].as_u64() >= Some(1),
        "{}",
        summaries[1]
    );
}

/// Runs `command`, which must succeed; returns its stdout.
fn run_ok(command: &mut Command) -> Vec<u8> {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn run_failing(args: &[&str]) -> String {
    let output: Output = nodemanager().args(args).output().unwrap();
    assert!(!output.status.success(), "{args:?} should fail");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn bad_input_is_refused_with_a_message_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let rust = common::guest("share_vec_rust.wasm").display().to_string();

    let stderr = run_failing(&["run", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1"]);
    assert!(
        stderr.contains("is a QUIC address but the transport is tcp: use --transport quic or both"),
        "{stderr}"
    );

    for (limit, expected) in [
        (
            "memroy_mib=9",
            "unknown limit `memroy_mib`: the limits are memory_mib",
        ),
        (
            "call_deadline=soon",
            "limit call_deadline: \"soon\" is not a duration",
        ),
        (
            "memory_mib=lots",
            "limit memory_mib: \"lots\" is not a whole number",
        ),
        ("memory_mib", "\"memory_mib\": expected NAME=VALUE"),
    ] {
        let stderr = run_failing(&["run", "--limit", limit]);
        assert!(stderr.contains(expected), "{limit}: {stderr}");
    }

    let stderr = run_failing(&["apps", "list"]);
    assert!(
        stderr.contains("give its admin socket with --admin PATH"),
        "{stderr}"
    );

    let stderr = run_failing(&["run", "--app", &path("missing.wasm")]);
    assert!(
        stderr.contains("cannot read app file") && stderr.contains("missing.wasm"),
        "{stderr}"
    );

    std::fs::write(path("notes.wasm"), "just text").unwrap();
    let stderr = run_failing(&["run", "--app", &path("notes.wasm")]);
    assert!(
        stderr.contains("notes.wasm") && stderr.contains("not a WebAssembly file"),
        "{stderr}"
    );

    std::fs::write(path("other.wasm"), wat::parse_str("(component)").unwrap()).unwrap();
    let stderr = run_failing(&["run", "--app", &path("other.wasm")]);
    assert!(
        stderr.contains("does not fit the world")
            && stderr.contains("missing export: function `init`"),
        "{stderr}"
    );

    std::fs::write(path("bad.toml"), "context = [unclosed").unwrap();
    let stderr = run_failing(&["run", "--config", &path("bad.toml"), "--app", &rust]);
    assert!(stderr.contains("bad.toml is not valid"), "{stderr}");

    std::fs::write(path("typo.toml"), "contxt = \"x\"").unwrap();
    let stderr = run_failing(&["run", "--config", &path("typo.toml"), "--app", &rust]);
    assert!(stderr.contains("unknown field `contxt`"), "{stderr}");

    let stderr = run_failing(&["run", "--sampler", "nosuch", "--app", &rust]);
    assert!(stderr.contains("unknown sampler \"nosuch\""), "{stderr}");

    std::fs::write(
        path("brahms.json"),
        seed_fixture("seed_brahms.json").replace("0.45", "0.75"),
    )
    .unwrap();
    let stderr = run_failing(&[
        "run",
        "--sampler-config",
        &path("brahms.json"),
        "--app",
        &rust,
    ]);
    assert!(
        stderr.contains("brahms.json is not valid") && stderr.contains("add up to at most 1"),
        "{stderr}"
    );

    let stderr = run_failing(&["run", "--listen", "/ip4/999.0.0.1/tcp/0", "--app", &rust]);
    assert!(
        stderr.contains("\"/ip4/999.0.0.1/tcp/0\" is not a multiaddr"),
        "{stderr}"
    );

    let stderr = run_failing(&["run", "--bootstrap", "/ip4/127.0.0.1/tcp/1", "--app", &rust]);
    assert!(stderr.contains("has no /p2p/<peer id> part"), "{stderr}");

    let stderr = run_failing(&["run", "--period", "soon", "--app", &rust]);
    assert!(stderr.contains("\"soon\" is not a duration"), "{stderr}");

    let stderr = run_failing(&["run"]);
    assert!(stderr.contains("no apps to run"), "{stderr}");

    let output = nodemanager()
        .args(["inspect", &path("other.wasm")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("does NOT fit")
            && stdout.contains("missing export: function `handle-message`"),
        "{stdout}"
    );
}

#[test]
fn inspect_lists_imports_and_exports() {
    let stdout = run_ok(
        nodemanager()
            .args(["inspect", "--json"])
            .arg(common::guest("share_vec_rust.wasm")),
    );
    let report: Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(report["fits"], true);
    assert_eq!(report["carries_state"], true, "{report}");
    let text = run_ok(
        nodemanager()
            .arg("inspect")
            .arg(common::guest("share_vec_rust.wasm")),
    );
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("carries its state across `apps replace`"),
        "{text}"
    );

    // A component that does not fit: said, and the exit code says it too.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, wat::parse_str("(component)").unwrap()).unwrap();
    let output = nodemanager().arg("inspect").arg(&empty).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("does NOT fit the world"), "{text}");
    let imports = report["imports"].to_string();
    assert!(imports.contains("nodemanager:app/host@0.1.0"), "{imports}");
    for export in ["init", "periodic-run", "handle-message", "delivery-report"] {
        assert!(
            report["exports"]
                .to_string()
                .contains(&format!("func {export}")),
            "{report}"
        );
    }
}

/// Three nodes on a hand-written static topology: node_2 may send to node_3, but node_3
/// only receives from node_1. Views follow `can_send_to`; node_3's app never hears
/// from node_2, whose sends there fail.
#[test]
fn static_topology_views_and_receive_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("topology.yaml");
    std::fs::write(
        &topology,
        "topology:\n  nodes:\n    node_1:\n      can_send_to: [node_2, node_3]\n      can_receive_from: [node_2, node_3]\n    node_2:\n      can_send_to: [node_1, node_3]\n      can_receive_from: [node_1]\n    node_3:\n      can_send_to: [node_1]\n      can_receive_from: [node_1]\n",
    )
    .unwrap();
    let mut nodes: Vec<RunningNode> = Vec::new();
    for name in ["node_1", "node_2", "node_3"] {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "context = \"e2e-static\"\ncycles = -1\nperiod = \"250ms\"\n\n[sampler]\nname = \"static\"\ntopology = {:?}\nnode = {name:?}\nperiod = \"100ms\"\n\n[[apps]]\npath = {:?}\nname = \"greet\"\nconfig = \"greet\"\n",
                topology.display().to_string(),
                common::guest("hostile.wasm").display().to_string(),
            ),
        )
        .unwrap();
        let mut args = vec!["--config".to_string(), config.display().to_string()];
        for earlier in &nodes {
            args.extend(["--bootstrap".into(), earlier.addr()]);
        }
        nodes.push(RunningNode::spawn(
            &args,
            dir.path().join(format!("{name}.log")),
        ));
    }
    let (ids, logs) = ids_and_logs(&nodes);
    let expected = [
        vec![ids[1].clone(), ids[2].clone()],
        vec![ids[0].clone(), ids[2].clone()],
        vec![ids[0].clone()],
    ];
    for (i, log) in logs.iter().enumerate() {
        wait_for(
            &format!("node_{}'s view to be its can_send_to", i + 1),
            || logged_views(&read(log)).last() == Some(&expected[i]),
        );
    }
    wait_for("node_3 to get node_1's hello and refuse node_2's", || {
        let log = read(&logs[2]);
        log.contains(&format!("greet got hello from {}", ids[0]))
            && log.contains("not among the peers this node receives from")
    });
    wait_for("node_2 to be told its hello to node_3 was refused", || {
        read(&logs[1]).contains("message not delivered")
    });
    let summaries = stop_all(nodes);
    let views: Vec<Vec<Vec<String>>> = logs.iter().map(|l| logged_views(&read(l))).collect();
    for (i, node_views) in views.iter().enumerate() {
        assert_eq!(
            node_views.last(),
            Some(&expected[i]),
            "node_{}: {node_views:?}",
            i + 1
        );
        assert!(
            node_views.iter().flatten().all(|p| expected[i].contains(p)),
            "node_{} saw a peer outside can_send_to: {node_views:?}",
            i + 1
        );
    }
    let node3_log = read(&logs[2]);
    assert!(
        node3_log.contains(&format!("greet got hello from {}", ids[0])),
        "{node3_log}"
    );
    assert!(
        !node3_log.contains(&format!("greet got hello from {}", ids[1])),
        "{node3_log}"
    );
    assert!(
        node3_log.contains("not among the peers this node receives from"),
        "{node3_log}"
    );
    let node2 = &summaries[1]["apps"]["greet"];
    assert!(node2["send_errors"].as_u64().unwrap() > 0, "{node2}");
    assert_eq!(summaries[2]["sampling"]["algorithm"], "static");
}

#[test]
fn topology_generate_writes_the_seeds_yaml_and_simulate_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("random.yaml");
    let stderr = String::from_utf8(
        nodemanager()
            .args(["topology", "generate", "--kind", "random", "--nodes", "40"])
            .args(["--out-degree", "4", "--seed", "2", "--out"])
            .arg(&yaml)
            .output()
            .unwrap()
            .stderr,
    )
    .unwrap();
    assert!(stderr.contains("40 nodes written"), "{stderr}");
    let text = read(&yaml);
    assert!(
        text.starts_with("topology:\n  nodes:\n    node_1:\n      can_send_to:"),
        "{text}"
    );
    let csv = dir.path().join("static.csv");
    run_ok(
        nodemanager()
            .args([
                "simulate",
                "--sampler",
                "static",
                "--cycles",
                "3",
                "--topology",
            ])
            .arg(&yaml)
            .arg("--out")
            .arg(&csv),
    );
    let rows: Vec<String> = read(&csv).lines().skip(1).map(String::from).collect();
    assert_eq!(rows.len(), 3);
    assert!(
        rows[2].starts_with("3,4.000000,"),
        "every node keeps its 4 links: {rows:?}"
    );
    let csr = common::repo_root().join("tests/fixtures/seed_csr_basalt.json");
    run_ok(
        nodemanager()
            .args(["simulate", "--cycles", "2", "--topology"])
            .arg(&csr)
            .arg("--out")
            .arg(dir.path().join("csr.csv")),
    );
    let stderr = run_failing(&[
        "topology",
        "generate",
        "--kind",
        "ring",
        "--nodes",
        "5",
        "--out-degree",
        "2",
        "--out",
        "/dev/null",
    ]);
    assert!(stderr.contains("only apply to --kind random"), "{stderr}");
    let stderr = run_failing(&[
        "simulate",
        "--sampler",
        "static",
        "--nodes",
        "5",
        "--cycles",
        "2",
        "--out",
        "/dev/null",
    ]);
    assert!(stderr.contains("needs --topology"), "{stderr}");
}

/// Sends one raw line to an admin socket and returns the answer line as JSON.
fn admin_raw(socket: &Path, line: &[u8]) -> Value {
    use std::io::Write;
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    // The node may answer and hang up before an oversized line is all written.
    let _ = stream.write_all(line);
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("not JSON ({e}): {answer:?}"))
}

/// `nodemanager apps --admin SOCKET ARGS...`: the answer on success, the error text on
/// failure.
fn apps(socket: &Path, args: &[&str]) -> Result<Value, String> {
    // After the subcommand, as users type it (tests/network.rs puts it before).
    let output = nodemanager()
        .arg("apps")
        .args(args)
        .arg("--admin")
        .arg(socket)
        .output()
        .unwrap();
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The value of field `name` in a text log line (`name=value`).
fn log_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..].split(' ').next()
}

#[test]
fn admin_socket_loads_unloads_and_replaces_apps_while_another_keeps_its_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = common::guest("hostile.wasm").display().to_string();
    let share = common::guest("share_vec_rust.wasm").display().to_string();
    let mut nodes: Vec<RunningNode> = Vec::new();
    let mut sockets = Vec::new();
    for i in 0..3 {
        let socket = dir.path().join(format!("node{i}.sock"));
        let mut args = vec![
            "--context".to_string(),
            "e2e-admin".into(),
            "--admin".into(),
            socket.display().to_string(),
        ];
        for earlier in &nodes {
            args.extend(["--bootstrap".into(), earlier.addr()]);
        }
        if i == 0 {
            let metrics = dir.path().join("node0.metrics.jsonl").display().to_string();
            args.extend([
                "--metrics-out".into(),
                metrics,
                "--metrics-every".into(),
                "200ms".into(),
            ]);
        }
        // Node 0 logs when each cycle was due, to check the clock app's schedule.
        let filter = (i == 0).then_some("info,libp2p=warn,nodemanager::runtime::instance=debug");
        nodes.push(RunningNode::spawn_logging(
            &args,
            dir.path().join(format!("node{i}.log")),
            filter,
        ));
        sockets.push(socket);
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sockets[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the admin socket is private");
    for socket in &sockets {
        assert_eq!(
            apps(socket, &["list"]).unwrap()["apps"],
            serde_json::json!([])
        );
        let greet = [
            "load", &hostile, "--name", "greet", "--config", "greet", "--cycles", "-1", "--period",
            "200ms",
        ];
        apps(socket, &greet).unwrap();
        let clock = [
            "load", &hostile, "--name", "clock", "--config", "greet", "--cycles", "-1", "--period",
            "500ms",
        ];
        apps(socket, &clock).unwrap();
        let loaded = apps(
            socket,
            &[
                "load", &share, "--name", "share", "--cycles", "-1", "--period", "200ms",
            ],
        )
        .unwrap();
        assert_eq!(loaded["name"], "share");
    }
    let (ids, logs) = ids_and_logs(&nodes);
    for (i, log) in logs.iter().enumerate() {
        wait_for(
            &format!("node{i} to hear every other node's greet and clock apps"),
            || {
                let text = read(log);
                (0..3).filter(|&j| j != i).all(|j| {
                    ["greet", "clock"].iter().all(|app| {
                        let line = format!("greet got hello from {} app=\"{app}\"", ids[j]);
                        text.contains(&line)
                    })
                })
            },
        );
        wait_for(&format!("node{i}'s share app to receive a vector"), || {
            let stats = apps(&sockets[i], &["stats"]).unwrap();
            stats["apps"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["name"] == "share" && a["stats"]["received"].as_u64().unwrap() > 0)
        });
    }

    // Bad requests are refused with a reason, and the node goes on.
    let socket = &sockets[0];
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not wasm at all").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let huge_limit = "max_payload_bytes=999999999999";
    for (args, expected) in [
        (
            vec!["load", "/no/such/app.wasm"],
            "cannot read app file /no/such/app.wasm",
        ),
        (
            vec!["load", garbage.to_str().unwrap()],
            "not a WebAssembly file",
        ),
        (
            vec!["load", core.to_str().unwrap()],
            "a core WebAssembly module, not a component",
        ),
        (
            vec!["load", &hostile, "--name", "clock"],
            "an app named \"clock\" is already loaded",
        ),
        (
            vec![
                "load",
                &hostile,
                "--name",
                "x",
                "--limit",
                "memory_mib=100000",
            ],
            "memory_mib must be between 1 and 4096",
        ),
        (
            vec!["load", &hostile, "--name", "y", "--limit", huge_limit],
            "is over network.request_response.max_requests_size",
        ),
        (
            vec!["load", "--component", "00ff", "--name", "z"],
            "no component with hash 00ff",
        ),
        (
            vec!["load", &hostile, "--name", "z2", "--limit", "memroy_mib=9"],
            "unknown limit `memroy_mib`: the limits are memory_mib",
        ),
        (
            vec!["unload", "nosuch"],
            "no app named \"nosuch\" is loaded",
        ),
    ] {
        let error = apps(socket, &args).unwrap_err();
        assert!(error.contains(expected), "{args:?}: {error}");
    }
    for (line, expected) in [
        (b"{not json\n".to_vec(), "malformed request"),
        (
            b"{\"cmd\": \"explode\"}\n".to_vec(),
            "unknown variant `explode`",
        ),
        (b"\n".to_vec(), "empty request"),
        (
            [vec![b' '; 2 * 1024 * 1024], b"\n".to_vec()].concat(),
            "request over 1048576 bytes",
        ),
    ] {
        let answer = admin_raw(socket, &line);
        assert_eq!(answer["ok"], false);
        assert!(
            answer["error"].as_str().unwrap().contains(expected),
            "{answer}"
        );
    }

    // Unload one app, replace another with a new version (the same component in calm
    // mode), load a third copy by content hash.
    // A stateful app replaced by a new version goes on from its snapshot.
    let counter = [
        "--name", "counter", "--config", "calm", "--cycles", "-1", "--period", "100ms",
    ];
    apps(
        socket,
        &[&["load", hostile.as_str()][..], &counter].concat(),
    )
    .unwrap();
    wait_for("the counter to count 3 cycles", || {
        read(&logs[0])
            .lines()
            .any(|l| l.contains("calm cycle 3 view=") && l.ends_with("app=\"counter\""))
    });
    apps(
        socket,
        &[&["replace", hostile.as_str()][..], &counter].concat(),
    )
    .unwrap();
    wait_for("the new counter to restore and go on", || {
        let text = read(&logs[0]);
        let restored = text
            .lines()
            .find(|l| l.contains("restored at cycle") && l.contains("app=\"counter\""));
        restored.is_some_and(|line| {
            let at: u64 = line
                .split("restored at cycle ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            at >= 3 && text.contains(&format!("calm cycle {} view=", at + 1))
        })
    });
    apps(socket, &["unload", "counter"]).unwrap();

    let unloaded = apps(socket, &["unload", "greet"]).unwrap();
    assert_eq!(unloaded["app"]["stats"]["state"], "unloaded", "{unloaded}");
    let replaced = apps(
        socket,
        &["replace", &hostile, "--name", "share", "--config", "calm"],
    )
    .unwrap();
    let hash = replaced["component"].as_str().unwrap().to_string();
    // Replaced without --cycles/--period/--limit, it keeps the running version's.
    let list = apps(socket, &["list"]).unwrap();
    let share = list["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "share")
        .unwrap();
    assert_eq!(
        (&share["cycles"], &share["period_ms"]),
        (&serde_json::json!(-1), &serde_json::json!(200)),
        "{share}"
    );
    apps(
        socket,
        &[
            "load",
            "--component",
            &hash,
            "--name",
            "again",
            "--config",
            "calm",
            "--cycles",
            "2",
        ],
    )
    .unwrap();
    let list = apps(socket, &["list"]).unwrap();
    let names: Vec<&str> = list["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["again", "clock", "share"], "{list}");
    wait_for("node1's greet sends to node0 to be refused", || {
        read(&logs[1]).contains("no app named \\\"greet\\\" on this node")
            || read(&logs[1]).contains("no app named \"greet\" on this node")
    });

    wait_for("\"again\" to finish and \"clock\" to run 6 cycles", || {
        let stats = apps(socket, &["stats"]).unwrap();
        let app = |name: &str| {
            stats["apps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["name"] == name)
                .cloned()
                .unwrap()
        };
        app("again")["stats"]["state"] == "done"
            && app("clock")["stats"]["cycles"].as_u64().unwrap() >= 6
    });
    let metrics = dir.path().join("node0.metrics.jsonl");
    wait_for("node0 to write 5 metrics lines", || {
        read(&metrics).lines().count() >= 5
    });
    let summaries = stop_all(nodes);
    let first = &summaries[0];
    let gone: Vec<(&str, &str)> = first["unloaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap(),
                a["stats"]["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        gone,
        [
            ("counter", "unloaded"),
            ("counter", "unloaded"),
            ("greet", "unloaded"),
            ("share", "unloaded")
        ],
        "{first}"
    );
    assert_eq!(first["apps"]["clock"]["state"], "running", "{first}");
    assert_eq!(first["apps"]["again"]["state"], "done", "{first}");
    assert!(
        summaries[1]["apps"]["greet"]["send_errors"]
            .as_u64()
            .unwrap()
            > 0
    );

    // Node 0 wrote its counters every 200 ms, the clock app's among them.
    let lines: Vec<Value> = read(&dir.path().join("node0.metrics.jsonl"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 5, "{} metrics lines", lines.len());
    let last = lines.last().unwrap();
    let clock = last["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "clock");
    assert!(
        clock.unwrap()["stats"]["calls"].as_u64().unwrap() > 1,
        "{last}"
    );
    // In time order, never two at once: a node stalled past a tick (a busy machine)
    // writes one line when it wakes, not a burst.
    assert!(lines
        .windows(2)
        .all(|w| w[0]["elapsed_ms"].as_u64().unwrap() < w[1]["elapsed_ms"].as_u64().unwrap()));

    // The clock app kept its 500 ms schedule through all of the above: every cycle
    // was due on the grid of its period, one slot after the other, or its log says
    // which slots were skipped (only a starved machine skips).
    let log = read(&logs[0]);
    let clock_lines = log
        .lines()
        .filter(|l| l.contains("app=clock") || l.contains("app=\"clock\""));
    let due: Vec<u64> = clock_lines
        .clone()
        .filter(|l| l.contains("periodic-run"))
        .map(|l| log_field(l, "due_ms").expect("due_ms").parse().unwrap())
        .collect();
    let skipped: u64 = clock_lines
        .filter(|l| l.contains("fell behind its schedule"))
        .map(|l| log_field(l, "skipped").unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(due.len() >= 6, "{due:?}");
    assert!(due.iter().all(|d| d % 500 == 0), "{due:?}");
    assert!(due.windows(2).all(|w| w[0] < w[1]), "{due:?}");
    assert_eq!(due[0], 500);
    let slots = (due.last().unwrap() - due[0]) / 500;
    assert_eq!(slots, due.len() as u64 - 1 + skipped, "{due:?}");
}

#[test]
fn apps_dir_loads_replaces_and_unloads_what_is_dropped_in() {
    let dir = tempfile::tempdir().unwrap();
    let apps_dir = dir.path().join("apps");
    std::fs::create_dir(&apps_dir).unwrap();
    let node = RunningNode::spawn(
        &[
            "--context".into(),
            "e2e-apps-dir".into(),
            "--apps-dir".into(),
            apps_dir.display().to_string(),
        ],
        dir.path().join("node.log"),
    );
    let log = node.log.clone();
    let hostile = common::guest("hostile.wasm");
    std::fs::write(
        apps_dir.join("calm.toml"),
        "config = \"calm\"\ncycles = -1\nperiod = \"100ms\"\n",
    )
    .unwrap();
    std::fs::copy(&hostile, apps_dir.join("calm.wasm")).unwrap();
    wait_for("calm.wasm to be loaded and run", || {
        read(&log).contains("calm cycle 2 view=")
    });
    // A malformed file in between is refused with its name; the node goes on.
    std::fs::write(apps_dir.join("broken.wasm"), b"\0asm garbage").unwrap();
    wait_for("broken.wasm to be refused", || {
        read(&log).contains("apps-dir: cannot load broken.wasm")
    });
    std::fs::write(apps_dir.join("bad.toml"), "colour = \"blue\"\n").unwrap();
    std::fs::copy(&hostile, apps_dir.join("bad.wasm")).unwrap();
    wait_for("bad.toml to be refused", || {
        let text = read(&log);
        text.contains("apps-dir: cannot load bad.wasm") && text.contains("unknown field `colour`")
    });
    // Replacing the file reloads the app under the same name (now with other settings).
    std::fs::write(
        apps_dir.join("calm.toml"),
        "config = \"greet\"\ncycles = 3\nperiod = \"100ms\"\n",
    )
    .unwrap();
    wait_for("calm to be replaced", || {
        read(&log).contains("apps-dir: replaced calm.wasm")
    });
    std::fs::remove_file(apps_dir.join("calm.wasm")).unwrap();
    wait_for("calm to be unloaded", || {
        read(&log).contains("apps-dir: calm.wasm removed; unloaded")
    });
    sigterm(&node);
    let summary = node.finish();
    assert_eq!(summary["apps"], serde_json::json!({}), "{summary}");
    let gone: Vec<&str> = summary["unloaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        gone,
        ["calm", "calm"],
        "the first version, then the second: {summary}"
    );
    let stderr = run_failing(&["run", "--apps-dir", "/no/such/dir"]);
    assert!(
        stderr.contains("apps_dir /no/such/dir is not a folder"),
        "{stderr}"
    );
}

/// Peak resident memory of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn flooding_and_log_spamming_apps_are_bounded_beside_a_well_behaved_one() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = common::guest("hostile.wasm").display().to_string();
    // B receives the flood (its `flood` app is calm and logs what arrives).
    let receiver = RunningNode::spawn(
        &[
            "--context".into(),
            "e2e-flood".into(),
            "--app".into(),
            format!("{hostile}:flood"),
            "--app-config".into(),
            "flood=calm".into(),
            "--cycles".into(),
            "-1".into(),
        ],
        dir.path().join("receiver.log"),
    );
    let app = |name: &str, mode: &str, cycles: i32| {
        format!("[[apps]]\npath = {hostile:?}\nname = \"{name}\"\nconfig = \"{mode}\"\ncycles = {cycles}\n")
    };
    let config = dir.path().join("sender.toml");
    std::fs::write(
        &config,
        [
            "context = \"e2e-flood\"\nperiod = \"100ms\"\nlinger = \"500ms\"\n".to_string(),
            app("clock", "calm", 20),
            // Floods until the test saw it bounded and received.
            app("flood", "flood", -1),
            // A deadline no machine reaches: the log cap is what must stop it.
            app("logger", "log", 3),
            "[apps.limits]\ncall_deadline = \"600s\"\n".to_string(),
        ]
        .concat(),
    )
    .unwrap();
    let args = [
        "--config".to_string(),
        config.display().to_string(),
        "--bootstrap".into(),
        receiver.addr(),
    ];
    let sender = RunningNode::spawn(&args, dir.path().join("sender.log"));
    let pid = sender.child.id();
    wait_for("the sender's clock and logger apps to finish", || {
        let log = read(&sender.log);
        log.contains("app finished its cycles app=clock")
            && log.contains("app finished its cycles app=logger")
    });
    wait_for("the flood to be bounded and to reach the receiver", || {
        read(&sender.log).contains("send-message refused during this call")
            && read(&receiver.log).contains("greet got")
    });
    let peak = peak_rss_kib(pid);
    sigterm(&sender);
    let summary = sender.finish();
    sigterm(&receiver);
    let received = receiver.finish();
    let apps = &summary["apps"];
    assert_eq!(apps["clock"]["state"], "done", "{summary}");
    assert_eq!(apps["clock"]["cycles"], 20, "{summary}");
    let log = read(&dir.path().join("sender.log"));
    assert!(
        log.contains("flood queued 1024 messages"),
        "the per-call queue bound holds"
    );
    assert!(
        log.contains("send-message refused during this call"),
        "and is logged"
    );
    assert!(
        apps["flood"]["send_errors"].as_u64().unwrap() >= 1,
        "{summary}"
    );
    assert!(
        apps["flood"]["bytes_out"].as_u64().unwrap() >= 1024 * 1024,
        "{summary}"
    );
    let clock = &apps["clock"];
    assert!(
        clock["calls"].as_u64().unwrap() >= 21,
        "init and 20 cycles: {summary}"
    );
    assert!(clock["memory_bytes"].as_u64().unwrap() > 0, "{summary}");
    let (p50, p99) = (
        clock["call_time_p50_us"].as_u64().expect("a p50"),
        clock["call_time_p99_us"].as_u64().expect("a p99"),
    );
    assert!(p99 >= p50, "{summary}");
    assert!(
        received["apps"]["flood"]["received"].as_u64().unwrap() > 0,
        "{received}"
    );
    // The logger is cut to 256 lines of 4 KiB per call, three calls.
    assert_eq!(apps["logger"]["state"], "done", "{summary}");
    let cut = log
        .lines()
        .filter(|l| {
            l.contains("lines in one call; the rest were dropped") && l.contains("app=logger")
        })
        .count();
    assert_eq!(cut, 3, "one warning per call of the logger");
    assert!(log.contains("dropped_logs=744"), "1,000 lines, 256 kept");
    assert!(
        !log.lines().any(|l| l.len() > 8 * 1024),
        "no log line over the cap"
    );
    assert!(
        log.len() < 16 << 20,
        "the node log stays small: {} bytes",
        log.len()
    );
    assert!(
        peak < 400 * 1024,
        "the sender's memory stays bounded: {peak} KiB"
    );
}

#[test]
fn ping_pong_reports_round_trip_times_and_gossip_reaches_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let ping = common::guest("ping_pong.wasm").display().to_string();
    let gossip = common::guest("gossip_broadcast.wasm").display().to_string();
    let mut nodes: Vec<RunningNode> = Vec::new();
    for i in 0..4 {
        let mut args = vec![
            "--context".to_string(),
            "e2e-examples".into(),
            "--cycles".into(),
            "-1".into(),
            "--period".into(),
            "100ms".into(),
            "--app".into(),
            format!("{gossip}:gossip"),
            "--app-config".into(),
            format!(
                "gossip={}",
                if i == 0 {
                    "origin,fanout=1"
                } else {
                    "fanout=1"
                }
            ),
        ];
        if i < 2 {
            args.extend([
                "--app".into(),
                format!("{ping}:ping"),
                "--app-config".into(),
                "ping=5".into(),
            ]);
        }
        if let Some(previous) = nodes.last() {
            args.extend(["--bootstrap".into(), previous.addr()]);
        }
        nodes.push(RunningNode::spawn(
            &args,
            dir.path().join(format!("node{i}.log")),
        ));
    }
    for (i, node) in nodes.iter().enumerate() {
        let expected = if i == 0 {
            "rumour started"
        } else {
            "infected after"
        };
        wait_for(&format!("node{i}: {expected}"), || {
            read(&node.log).contains(expected)
        });
    }
    for (i, node) in nodes.iter().take(2).enumerate() {
        wait_for(&format!("node{i}'s latency histogram"), || {
            read(&node.log).contains("rtt n=5 p50<=")
        });
    }
    let log = read(&nodes[1].log);
    let infected = log.lines().filter(|l| l.contains("infected after")).count();
    assert_eq!(infected, 1, "a node is infected once: {log}");
    for node in &nodes {
        sigterm(node);
    }
    for node in nodes {
        let summary = node.finish();
        assert_eq!(summary["apps"]["gossip"]["call_errors"], 0, "{summary}");
    }
}

/// The README's ShareVec on 100 nodes, all bootstrapped from node 0 (the hot spot of
/// every initial view), all stopped by SIGTERM at once: what the apps are told must be
/// true. Every message a receiver handled was either reported delivered to its sender
/// or reported with an unknown outcome, never as failed; and no delivered message is
/// missing at its receiver.
#[test]
fn a_hundred_nodes_stopping_at_once_report_true_delivery_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let sampler = dir.path().join("gbps.json");
    std::fs::write(
        &sampler,
        seed_fixture("seed_gbps.json").replace("\"time\": 2", "\"time\": 0.5"),
    )
    .unwrap();
    let app = format!(
        "{}:share_vec",
        common::guest("share_vec_rust.wasm").display()
    );
    let mut nodes: Vec<RunningNode> = Vec::new();
    for i in 0..100 {
        let mut args: Vec<String> = [
            "--context",
            "e2e-hundred",
            "--app",
            &app,
            "--cycles",
            "-1",
            "--period",
            "500ms",
            "--linger",
            "20s",
            "--sampler-config",
            &sampler.display().to_string(),
            "--seed",
            &i.to_string(),
        ]
        .map(String::from)
        .to_vec();
        if let Some(first) = nodes.first() {
            args.extend(["--bootstrap".into(), first.addr()]);
        }
        nodes.push(RunningNode::spawn(
            &args,
            dir.path().join(format!("node{i}.log")),
        ));
    }
    let logs: Vec<PathBuf> = nodes.iter().map(|n| n.log.clone()).collect();
    for (i, log) in logs.iter().enumerate() {
        wait_for(&format!("node{i} to send and receive"), || {
            let text = read(log);
            text.contains(" sent to ") && text.contains("received ")
        });
    }
    let summaries = stop_all(nodes);
    let total = |field: &str| -> u64 {
        summaries
            .iter()
            .map(|s| s["apps"]["share_vec"][field].as_u64().unwrap())
            .sum()
    };
    let (delivered, received, unknown) = (total("sent"), total("received"), total("send_unknown"));
    eprintln!(
        "100 nodes: delivered {delivered}, received {received}, unknown {unknown}, failed {}",
        total("send_errors")
    );
    assert!(delivered > 0);
    assert!(
        delivered <= received && received <= delivered + unknown,
        "delivered {delivered}, received {received}, unknown {unknown}"
    );
    for (i, log) in logs.iter().enumerate() {
        let text = read(log);
        assert!(
            !text.contains("message not delivered: the node shut down"),
            "node{i} called a message cut short by the shutdown failed"
        );
    }
}

/// What a `dice` app rolled, one number per cycle, over a run of one node.
fn dice_rolls(dir: &Path, run: &str, seed: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--app",
        &format!("{}:dice", common::guest("hostile.wasm").display()),
        "--app-config",
        "dice=dice",
        "--cycles",
        "4",
        "--period",
        "50ms",
        "--linger",
        "0s",
    ]
    .map(String::from)
    .to_vec();
    if let Some(seed) = seed {
        args.extend(["--seed".into(), seed.into()]);
    }
    let node = RunningNode::spawn(&args, dir.join(format!("{run}.log")));
    let log = node.log.clone();
    assert_eq!(node.finish()["apps"]["dice"]["cycles"], 4);
    read(&log)
        .lines()
        .filter_map(|l| l.split(" rolled ").nth(1))
        .map(|rest| rest.split(' ').next().unwrap().to_string())
        .collect()
}

#[test]
fn the_same_seed_gives_an_app_the_same_randomness() {
    let dir = tempfile::tempdir().unwrap();
    let first = dice_rolls(dir.path(), "a", Some("7"));
    assert_eq!(first.len(), 4, "{first:?}");
    assert_eq!(dice_rolls(dir.path(), "b", Some("7")), first);
    assert_ne!(dice_rolls(dir.path(), "c", Some("8")), first);
    assert_ne!(dice_rolls(dir.path(), "d", None), first);
}

#[test]
fn a_python_exception_is_reported_with_its_traceback_and_the_run_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--app",
        &format!("{}:share_vec", common::guest("share_vec_py.wasm").display()),
        "--app-config",
        "share_vec=not json",
        "--linger",
        "0s",
        // Not a test of CPU deadlines: a busy machine may stall a call for seconds.
        "--limit",
        "call_deadline=120s",
    ]
    .map(String::from)
    .to_vec();
    let node = RunningNode::spawn(&args, dir.path().join("node.log"));
    let log = node.log.clone();
    let (status, summary) = node.finish_with_status();
    assert_eq!(status.code(), Some(3), "{summary}");
    let app = &summary["apps"]["share_vec"];
    assert_eq!(app["state"], "failed", "{summary}");
    let reason = app["reason"].as_str().unwrap();
    assert!(reason.contains("init failed: JSONDecodeError"), "{reason}");
    assert!(
        reason.contains("Traceback (most recent call last)")
            && reason.contains("File \"app.py\", line 25, in __init__"),
        "the reason points at the app's line: {reason}"
    );
    assert!(read(&log).contains("app.py\\\", line 25") || read(&log).contains("app.py\", line 25"));
}

/// `simulate --app` with `args`: its summary (last stdout line, without the two keys
/// that measure the machine) and its CSV.
fn simulate_apps(dir: &Path, run: &str, args: &[&str]) -> (Value, String) {
    let csv = dir.join(format!("{run}.csv"));
    let stdout = run_ok(
        nodemanager()
            .args(["simulate", "--out"])
            .arg(&csv)
            .args(args),
    );
    let stdout = String::from_utf8(stdout).unwrap();
    let mut summary: Value =
        serde_json::from_str(stdout.lines().last().expect("a summary line")).unwrap();
    let fields = summary.as_object_mut().unwrap();
    for wall_clock in ["real_time_elapsed_ms", "time_acceleration"] {
        assert!(
            fields.remove(wall_clock).is_some(),
            "{wall_clock} in {stdout}"
        );
    }
    (summary, std::fs::read_to_string(&csv).unwrap())
}

#[test]
fn a_simulation_with_apps_is_the_same_on_any_number_of_threads() {
    let dir = tempfile::tempdir().unwrap();
    let app = format!("{}:sv", common::guest("share_vec_rust.wasm").display());
    let outputs = |threads: &str| {
        let run = format!("t{threads}");
        let nodes = dir.path().join(format!("{run}.jsonl"));
        let metrics = dir.path().join(format!("{run}-apps.csv"));
        // A window of 100 ms of virtual time holds dozens of calls: enough to share.
        let (summary, csv) = simulate_apps(
            dir.path(),
            &run,
            &[
                "--nodes",
                "300",
                "--cycles",
                "6",
                "--seed",
                "7",
                "--latency",
                "100ms",
                "--jitter-factor",
                "0.5",
                "--loss",
                "0.05",
                "--app",
                &app,
                "--threads",
                threads,
                "--nodes-out",
                nodes.to_str().unwrap(),
                "--metrics-out",
                metrics.to_str().unwrap(),
            ],
        );
        let read = |path: &Path| std::fs::read_to_string(path).unwrap();
        (summary, csv, read(&nodes), read(&metrics))
    };
    let one = outputs("1");
    assert!(
        one.0["apps"]["sv"]["received"].as_u64() > Some(1000),
        "{}",
        one.0
    );
    assert!(one.0["messages_dropped"].as_u64() > Some(0), "{}", one.0);
    for threads in ["2", "3"] {
        assert!(outputs(threads) == one, "{threads} threads differ from one");
    }
}

#[test]
fn a_simulated_cpu_budget_stops_an_app_on_the_same_call_under_any_load() {
    let dir = tempfile::tempdir().unwrap();
    let grow = format!("{}:grow", common::guest("hostile.wasm").display());
    let rows = |run: &str| {
        let nodes = dir.path().join(format!("{run}.jsonl"));
        simulate_apps(
            dir.path(),
            run,
            &[
                "--nodes",
                "3",
                "--cycles",
                "14",
                "--latency",
                "1ms",
                "--app",
                &grow,
                "--app-config",
                "grow=grow",
                "--limit",
                "call_deadline=10ms",
                "--nodes-out",
                nodes.to_str().unwrap(),
            ],
        );
        std::fs::read_to_string(nodes).unwrap()
    };
    let quiet = rows("quiet");
    // The work doubles every cycle: 10 ms of instructions runs out at the same cycle on
    // every node (which one depends on the instructions the guest's compiler made of
    // its loop: the 7th for the hostile guest at opt-level 3).
    let mut stopped_at = None;
    for line in quiet.lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        let app = &row["apps"]["grow"];
        assert_eq!(app["state"], "failed", "{row}");
        let cycle = app["cycles"].as_u64().unwrap();
        assert!((2..14).contains(&cycle), "{row}");
        assert_eq!(*stopped_at.get_or_insert(cycle), cycle, "{row}");
        assert_eq!(
            app["reason"],
            "app grow ran past its CPU deadline of 10ms per call, counted as 10000000 instructions"
        );
    }
    // Both cores busy: the same calls stop.
    struct Hogs(Vec<std::process::Child>);
    impl Drop for Hogs {
        fn drop(&mut self) {
            for hog in &mut self.0 {
                let _ = hog.kill();
                let _ = hog.wait();
            }
        }
    }
    let hogs = Hogs(
        (0..2)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    let busy = rows("busy");
    drop(hogs);
    assert_eq!(busy, quiet);
}

#[test]
fn a_python_app_draws_its_randomness_from_its_virtual_node() {
    let dir = tempfile::tempdir().unwrap();
    let app = format!("{}:sv", common::guest("share_vec_py.wasm").display());
    let log = |run: &str, seed: &str| {
        let log = dir.path().join(format!("{run}.log"));
        simulate_apps(
            dir.path(),
            run,
            &[
                "--nodes",
                "4",
                "--cycles",
                "3",
                "--latency",
                "5ms",
                "--app",
                &app,
                "--seed",
                seed,
                "--log-file",
                log.to_str().unwrap(),
            ],
        );
        std::fs::read_to_string(log).unwrap()
    };
    let a = log("a", "5");
    // The ShareVec draws its vector with `random` at init: one per node, all different.
    let starts: std::collections::BTreeSet<&str> =
        a.lines().filter_map(|l| l.split("START ").nth(1)).collect();
    assert_eq!(starts.len(), 4, "{a}");
    assert_eq!(log("b", "5"), a, "same seed, same log");
    assert_ne!(log("c", "6"), a, "another seed, other draws");
}

#[test]
fn each_virtual_node_can_have_its_own_app_config() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = format!("{}:h", common::guest("hostile.wasm").display());
    let configs = dir.path().join("configs.txt");
    std::fs::write(&configs, "calm\ntrap\ncalm\n").unwrap();
    let nodes = dir.path().join("nodes.jsonl");
    let (summary, _) = simulate_apps(
        dir.path(),
        "per-node",
        &[
            "--nodes",
            "3",
            "--cycles",
            "3",
            "--latency",
            "1ms",
            "--app",
            &hostile,
            "--app-config-file",
            &format!("h={}", configs.display()),
            "--nodes-out",
            nodes.to_str().unwrap(),
        ],
    );
    assert_eq!(summary["apps"]["h"]["failed"], 1, "{summary}");
    let states: Vec<String> = std::fs::read_to_string(&nodes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["apps"]["h"]["state"].to_string())
        .collect();
    assert_eq!(states, ["\"running\"", "\"failed\"", "\"running\""]);
    // One line per node, no more, no less.
    std::fs::write(&configs, "calm\ncalm\n").unwrap();
    let stderr = run_failing(&[
        "simulate",
        "--nodes",
        "3",
        "--cycles",
        "3",
        "--app",
        &hostile,
        "--app-config-file",
        &format!("h={}", configs.display()),
        "--out",
        dir.path().join("x.csv").to_str().unwrap(),
    ]);
    assert!(
        stderr.contains("holds 2 configs (lines) for app \"h\", but the run has 3 nodes"),
        "{stderr}"
    );
}

#[test]
fn the_seeds_simulation_config_runs_as_it_is_and_every_output_replays() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = common::repo_root().join("tests/fixtures/seed-sim-full.json");
    let app = format!("{}:sv", common::guest("share_vec_rust.wasm").display());
    let outputs = |run: &str, seed: &str| {
        let nodes = dir.path().join(format!("{run}.jsonl"));
        let log = dir.path().join(format!("{run}.log"));
        let (summary, csv) = simulate_apps(
            dir.path(),
            run,
            &[
                "--nodes",
                "12",
                "--sim-config",
                fixture.to_str().unwrap(),
                "--real-time-factor",
                "0",
                "--app",
                &app,
                "--seed",
                seed,
                "--nodes-out",
                nodes.to_str().unwrap(),
                "--log-file",
                log.to_str().unwrap(),
            ],
        );
        let read = |path: &Path| std::fs::read_to_string(path).unwrap();
        (summary, csv, read(&nodes), read(&log))
    };
    let a = outputs("a", "1");
    let (summary, csv, nodes, log) = &a;
    // max_sim_time_us = 20 s: 10 cycles of GBPS's 2 s.
    assert_eq!(summary["current_sim_time_us"], 20_000_000, "{summary}");
    assert_eq!(csv.lines().count(), 11, "{csv}");
    for key in [
        "events_processed",
        "messages_delivered",
        "messages_dropped",
        "disconnection_events",
    ] {
        assert!(summary[key].as_u64() > Some(0), "{key}: {summary}");
    }
    assert_eq!(summary["node_states"]["node_5"], "offline", "{summary}");
    assert_eq!(summary["apps"]["sv"]["nodes"], 12, "{summary}");
    // Call costs are counted in instructions: part of what replays.
    let p50 = summary["apps"]["sv"]["call_time_p50_us"].as_u64().unwrap();
    let p99 = summary["apps"]["sv"]["call_time_p99_us"].as_u64().unwrap();
    assert!(0 < p50 && p50 <= p99, "{summary}");
    assert_eq!(nodes.lines().count(), 12);
    let row: Value = serde_json::from_str(nodes.lines().nth(5).unwrap()).unwrap();
    assert_eq!(
        (&row["name"], &row["state"]),
        (&"node_5".into(), &"offline".into())
    );
    assert!(row["apps"]["sv"]["send_errors"].as_u64() > Some(0), "{row}");
    // Guests' lines and (verbose_logging is off) no per-message lines.
    assert!(log.contains("vnode{node=0 t_us="), "{log}");
    assert!(log.contains("guest: START"), "{log}");
    assert!(!log.contains("delivered after"), "{log}");
    assert_eq!(
        outputs("b", "1"),
        a,
        "same seed, same outputs byte for byte"
    );
    let other = outputs("c", "2");
    assert!(other.0 != a.0 && other.2 != a.2 && other.3 != a.3);

    // Real time holds virtual time back: 1 virtual second at 2x takes at least 0.5 s
    // (paced to the end of the run, whenever its last event falls).
    let paced = dir.path().join("paced.json");
    std::fs::write(
        &paced,
        r#"{"max_sim_time_us": 1000000, "real_time_factor": 2}"#,
    )
    .unwrap();
    let stdout = run_ok(nodemanager().args([
        "simulate",
        "--nodes",
        "3",
        "--sampler",
        "connected",
        "--sim-config",
        paced.to_str().unwrap(),
        "--out",
        dir.path().join("paced.csv").to_str().unwrap(),
    ]));
    let stdout = String::from_utf8(stdout).unwrap();
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(
        summary["real_time_elapsed_ms"].as_u64() >= Some(400),
        "{summary}"
    );

    for (json, expected) in [
        (
            r#"{"latency_config": {"jitter_factor": 1.5}}"#,
            "latency_config.jitter_factor must be between 0 and 1, not 1.5",
        ),
        (
            r#"{"disconnection_config": {"permanently_offline": ["node_40"]}}"#,
            "disconnection_config.permanently_offline: \"node_40\" is not a node of this run (they are node_0 to node_2)",
        ),
        (r#"{"latency_config": []"#, "EOF while parsing"),
    ] {
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, json).unwrap();
        let stderr = run_failing(&[
            "simulate",
            "--nodes",
            "3",
            "--sim-config",
            bad.to_str().unwrap(),
            "--out",
            dir.path().join("bad.csv").to_str().unwrap(),
        ]);
        assert!(stderr.contains(expected), "{json}: {stderr}");
        assert!(stderr.contains("bad.json is not valid"), "{stderr}");
    }
}

#[test]
fn simulated_nodes_run_the_same_app_components_in_virtual_time_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let app = format!(
        "{}:share_vec",
        common::guest("share_vec_rust.wasm").display()
    );
    let args = |seed: &'static str| {
        vec![
            "--nodes",
            "40",
            "--cycles",
            "12",
            "--latency",
            "5ms",
            "--jitter",
            "2ms",
            "--app",
            app.as_str(),
            "--seed",
            seed,
        ]
    };
    let (summary, csv) = simulate_apps(dir.path(), "a", &args("3"));
    let totals = &summary["apps"]["share_vec"];
    let count = |field: &str| totals[field].as_u64().unwrap();
    assert_eq!(count("nodes"), 40, "{summary}");
    assert!(
        count("cycles") >= 40 * 10,
        "every node cycles each period: {summary}"
    );
    assert_eq!((count("failed"), count("send_errors")), (0, 0), "{summary}");
    // Each delivered report follows a handled message; the last ones are still on
    // their way back when the run ends.
    assert!(
        count("sent") > 0 && count("sent") <= count("received"),
        "{summary}"
    );
    let again = simulate_apps(dir.path(), "b", &args("3"));
    assert_eq!(again, (summary.clone(), csv), "same seed, same run");
    let other = simulate_apps(dir.path(), "c", &args("4")).0;
    assert_ne!(other, summary, "another seed, another run");

    // Per node, the sandbox holds: a spinning app stops on every node with its reason,
    // the calm one beside it runs every cycle.
    let hostile = common::guest("hostile.wasm").display().to_string();
    let (summary, _) = simulate_apps(
        dir.path(),
        "d",
        &[
            "--nodes",
            "3",
            "--cycles",
            "3",
            "--latency",
            "1ms",
            "--app",
            &format!("{hostile}:spin"),
            "--app-config",
            "spin=spin",
            "--app",
            &format!("{hostile}:calm"),
            "--app-config",
            "calm=calm",
        ],
    );
    let spin = &summary["apps"]["spin"];
    assert_eq!(spin["failed"], 3, "{summary}");
    assert!(
        spin["first_failure"]
            .as_str()
            .is_some_and(|r| r.contains("ran past its CPU deadline")),
        "{summary}"
    );
    assert_eq!(summary["apps"]["calm"]["failed"], 0, "{summary}");
    assert!(
        summary["apps"]["calm"]["cycles"].as_u64() >= Some(3 * 2),
        "{summary}"
    );

    for (args, expected) in [
        (
            vec!["--engine", "cycle", "--app", app.as_str()],
            "apps run in virtual time: use the event engine",
        ),
        (
            vec!["--app", app.as_str(), "--app-config", "nope=1"],
            "--app-config names app \"nope\", which is not among the apps",
        ),
    ] {
        let csv = dir.path().join("bad.csv");
        let mut all = vec![
            "simulate",
            "--nodes",
            "5",
            "--cycles",
            "2",
            "--out",
            csv.to_str().unwrap(),
        ];
        all.extend(args);
        let stderr = run_failing(&all);
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[test]
fn a_python_app_takes_bytes_that_are_not_text_from_a_rust_peer() {
    let dir = tempfile::tempdir().unwrap();
    let common_args = |app: String, config: &str| -> Vec<String> {
        [
            "--context",
            "e2e-bytes",
            "--app",
            &app,
            "--app-config",
            config,
            // Not a test of CPU deadlines: a busy machine may stall a call for seconds.
            "--limit",
            "call_deadline=120s",
            "--cycles",
            "-1",
            "--period",
            "200ms",
        ]
        .map(String::from)
        .to_vec()
    };
    let python = RunningNode::spawn(
        &common_args(
            format!("{}:bin", common::guest("bytes_echo_py.wasm").display()),
            "bin=",
        ),
        dir.path().join("python.log"),
    );
    let mut rust_args = common_args(
        format!("{}:bin", common::guest("hostile.wasm").display()),
        "bin=bytes",
    );
    rust_args.extend(["--bootstrap".into(), python.addr()]);
    let rust = RunningNode::spawn(&rust_args, dir.path().join("rust.log"));
    let nodes = vec![python, rust];
    let (ids, logs) = ids_and_logs(&nodes);
    wait_for("the Python app to get the Rust app's bytes", || {
        read(&logs[0]).contains(&format!("got 4 bytes from {}: ff00fe80", ids[1]))
    });
    wait_for("the Rust app to get them back reversed", || {
        read(&logs[1]).contains(&format!("bytes got 80fe00ff from {}", ids[0]))
    });
    for summary in stop_all(nodes) {
        assert_eq!(summary["apps"]["bin"]["call_errors"], 0, "{summary}");
    }
}

/// The functions a node runs (host/link-order.txt) are in the binary under the same names
/// and laid out together (host/build.rs), so a node keeps little of its code resident.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn the_functions_a_node_runs_are_laid_out_together() {
    let order = read(&common::repo_root().join("host/link-order.txt"));
    let wanted: Vec<&str> = order
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let listing = Command::new("nm")
        .args(["--defined-only", "--print-size"])
        .arg(env!("CARGO_BIN_EXE_nodemanager"))
        .output()
        .expect("nm (binutils) runs");
    assert!(listing.status.success(), "nm failed: {listing:?}");
    let symbols = String::from_utf8_lossy(&listing.stdout);
    let mut functions = std::collections::HashMap::new();
    for line in symbols.lines() {
        if let [address, size, kind, name] = line.split(' ').collect::<Vec<_>>()[..] {
            if kind.eq_ignore_ascii_case("t") {
                let span = (
                    u64::from_str_radix(address, 16).unwrap(),
                    u64::from_str_radix(size, 16).unwrap(),
                );
                functions.entry(name).or_insert(span);
            }
        }
    }
    let found: Vec<(u64, u64)> = wanted
        .iter()
        .filter_map(|name| functions.get(name).copied())
        .collect();
    assert!(
        found.len() * 5 >= wanted.len() * 4,
        "only {} of the {} functions in host/link-order.txt are in the binary (a toolchain, \
         dependency or code change renamed them): run scripts/link-order",
        found.len(),
        wanted.len()
    );
    let bytes: u64 = found.iter().map(|&(_, size)| size).sum();
    let start = found.iter().map(|&(address, _)| address).min().unwrap();
    let end = found
        .iter()
        .map(|&(address, size)| address + size)
        .max()
        .unwrap();
    assert!(
        end - start <= bytes + bytes / 4,
        "the {} functions of host/link-order.txt ({bytes} bytes) are spread over {} bytes: \
         the linker did not lay them out together (see host/build.rs)",
        found.len(),
        end - start
    );
}
