//! `nodemanager cluster`: many full nodes in one process. Real libp2p between them and
//! with outside `run` nodes, control through the cluster's admin socket. Every wait is
//! for a condition, bounded by `WAIT_LIMIT`.

mod common;

use common::node::{nodemanager, read, sigterm_child, wait_for, RunningNode};

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use serde_json::{json, Value};

/// `--app` for the Rust ShareVec, named `share_vec`.
fn share_vec() -> String {
    format!(
        "{}:share_vec",
        common::guest("share_vec_rust.wasm").display()
    )
}

/// The Rust ShareVec on every node, forever, a call every `period`, in `context`. Not
/// a test of CPU deadlines: a busy machine may stall a call for seconds.
fn share_vec_forever(period: &str, context: &str) -> Vec<String> {
    let app = share_vec();
    let args = [
        "--app",
        &app,
        "--cycles",
        "-1",
        "--period",
        period,
        "--context",
        context,
    ];
    let mut args: Vec<String> = args.map(String::from).into();
    args.extend(["--limit".into(), "call_deadline=120s".into()]);
    args
}

/// A running cluster: its process, its first line's nodes, its admin socket and output.
struct RunningCluster {
    child: Child,
    stdout: BufReader<ChildStdout>,
    nodes: Vec<Value>,
    admin: PathBuf,
    out: PathBuf,
}

impl RunningCluster {
    /// Starts `cluster` with `args` and `apps`, an admin socket and an output folder in
    /// `dir`; returns once every node started (the first line).
    fn start(dir: &Path, args: &[&str], apps: &[String]) -> RunningCluster {
        let (admin, out) = (dir.join("cluster.sock"), dir.join("out"));
        let mut child = nodemanager()
            .arg("cluster")
            .args(args)
            .args(apps)
            .arg("--admin")
            .arg(&admin)
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let first: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{e}: {line:?}; log:\n{}", read(&out.join("cluster.log"))));
        let nodes = first["nodes"].as_array().unwrap().clone();
        RunningCluster {
            child,
            stdout,
            nodes,
            admin,
            out,
        }
    }

    /// One request to the admin socket, and its answer.
    fn ask(&self, request: Value) -> Value {
        let mut stream = UnixStream::connect(&self.admin).unwrap();
        writeln!(stream, "{request}").unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// A request that must succeed.
    fn ok(&self, request: Value) -> Value {
        let answer = self.ask(request.clone());
        assert_eq!(answer["ok"], true, "{request} -> {answer}");
        answer
    }

    /// Every node's `stats` answer, by node number.
    fn stats(&self) -> Vec<Value> {
        let answer = self.ok(json!({"cmd": "stats"}));
        answer["nodes"].as_array().unwrap().clone()
    }

    fn log(&self) -> String {
        read(&self.out.join("cluster.log"))
    }

    fn peer_id(&self, index: usize) -> String {
        self.nodes[index]["peer_id"].as_str().unwrap().to_string()
    }

    /// SIGTERM; waits for a successful exit; returns the summary and `nodes.jsonl`.
    fn stop(mut self) -> (Value, Vec<Value>) {
        sigterm_child(&self.child);
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}: {rest}");
        let summary: Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
        let lines = read(&self.out.join("nodes.jsonl"))
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        (summary, lines)
    }
}

/// A test that fails midway must not leave its cluster running.
impl Drop for RunningCluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A share_vec stats entry's `received` (0 when the node has no such app).
fn received(stats: &Value) -> u64 {
    stats["apps"]
        .as_array()
        .and_then(|apps| apps.iter().find(|app| app["name"] == "share_vec"))
        .and_then(|app| app["stats"]["received"].as_u64())
        .unwrap_or(0)
}

/// Runs `nodemanager cluster` of `nodes` nodes with `args` (the Rust ShareVec on every
/// node, forever) writing to `out`, until every node's app received a vector; stops it
/// with SIGTERM. Returns its first line and its summary.
fn run_until_every_node_received(nodes: usize, args: &[&str], out: &Path) -> (Value, Value) {
    let mut child = nodemanager()
        .args([
            "cluster",
            "--nodes",
            &nodes.to_string(),
            "--start-rate",
            "0",
        ])
        .args(args)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let first: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(first["nodes"].as_array().unwrap().len(), nodes, "{first}");
    let log = out.join("cluster.log");
    wait_for("every node's app to receive a vector", || {
        let text = read(&log);
        (0..nodes).all(|i| text.contains(&format!("node{{index={i}}}: guest: received")))
    });
    sigterm_child(&child);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{rest}");
    let summary: Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
    (first, summary)
}

#[test]
fn a_cluster_runs_many_full_nodes_in_one_process_and_sums_them_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let nodes = 12;
    let mut args = vec!["--bootstrap-from", "2"];
    let app = share_vec_forever("200ms", "e2e-cluster");
    args.extend(app.iter().map(String::as_str));
    let (first, summary) = run_until_every_node_received(nodes, &args, &out);
    let members = first["nodes"].as_array().unwrap();
    let mut peers = HashSet::new();
    for (index, member) in members.iter().enumerate() {
        assert_eq!(member["index"], index, "{member}");
        let address = member["listen_addrs"][0].as_str().unwrap();
        assert!(address.starts_with("/ip4/127.0.0.1/tcp/"), "{member}");
        peers.insert(member["peer_id"].as_str().unwrap().to_string());
    }
    assert_eq!(peers.len(), nodes, "every node its own identity");
    assert_eq!(summary["nodes"], nodes, "{summary}");
    assert_eq!(summary["restarts"], 0, "{summary}");
    let app = &summary["apps"]["share_vec"];
    assert_eq!(app["nodes"], nodes, "{summary}");
    assert!(app["received"].as_u64() >= Some(nodes as u64), "{summary}");
    assert_eq!(app["call_errors"], 0, "{summary}");
    assert_eq!(summary["nodes_with_failed_apps"], 0, "{summary}");
    let lines = read(&out.join("nodes.jsonl"));
    assert_eq!(lines.lines().count(), nodes);
    for line in lines.lines() {
        let node: Value = serde_json::from_str(line).unwrap();
        assert!(peers.contains(node["peer_id"].as_str().unwrap()), "{node}");
        assert_eq!(node["run"], 0, "{node}");
        assert_eq!(node["apps"]["share_vec"]["state"], "running", "{node}");
    }
    let stored: Value = serde_json::from_str(&read(&out.join("summary.json"))).unwrap();
    assert_eq!(stored, summary);

    let elsewhere = dir.path().join("never").display().to_string();
    for (args, error) in [
        (
            vec!["--identity", "id.key"],
            "--identity names one file or folder for one node",
        ),
        (vec!["--nodes", "0"], "--nodes must be at least 1"),
        (vec!["--start-rate=-1"], "--start-rate must be 0"),
        (vec!["--bootstrap-from", "some"], "or `first` for node 0"),
    ] {
        let output = nodemanager()
            .args(["cluster", "--out", &elsewhere, "--app", &share_vec()])
            .args(if args.contains(&"--nodes") {
                &[][..]
            } else {
                &["--nodes", "2"][..]
            })
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(error), "{args:?}: {stderr}");
    }
    assert!(
        !dir.path().join("never").exists(),
        "refused before writing anything"
    );
}

#[test]
fn app_messages_cross_quic_as_they_cross_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = 5;
    let mut args = vec!["--transport", "quic", "--bootstrap-from", "2"];
    args.extend(["--enable-kad", "false"]);
    let app = share_vec_forever("200ms", "e2e-quic");
    args.extend(app.iter().map(String::as_str));
    let (first, summary) = run_until_every_node_received(nodes, &args, &dir.path().join("out"));
    for member in first["nodes"].as_array().unwrap() {
        let address = member["listen_addrs"][0].as_str().unwrap();
        assert!(address.contains("/quic-v1/"), "{member}");
    }
    let app = &summary["apps"]["share_vec"];
    let count = |key: &str| app[key].as_u64().unwrap();
    // The nodes stop together once the answers came: what was accepted arrived, and
    // nothing arrived twice.
    assert!(count("received") >= nodes as u64, "{summary}");
    assert!(count("sent") <= count("received"), "{summary}");
    assert!(
        count("received") <= count("sent") + count("send_unknown"),
        "{summary}"
    );
    assert_eq!(app["call_errors"], 0, "{summary}");
}

#[test]
fn a_cluster_raises_its_open_files_limit_says_when_the_hard_one_is_too_low_and_stays_within_it() {
    let dir = tempfile::tempdir().unwrap();
    let app = format!("{}:calm", common::guest("hostile.wasm").display());
    let script = format!(
        "ulimit -S -n 40 && ulimit -H -n 72 && exec \"$0\" cluster --nodes 3 --start-rate 0 \
         --app '{app}' --app-config calm=calm --cycles 1 --period 100ms --linger 0s \
         --out '{}'",
        dir.path().join("out").display()
    );
    let output = Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_nodemanager")])
        .env("NODEMANAGER_CACHE_DIR", common::test_cache_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "3 nodes may need 106 open files, and this process may open 72: past 2 connections in all"
        ),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["apps"]["calm"]["nodes"], 3, "{summary}");
    // Three nodes bootstrapping from each other want three connections, six open files:
    // the process's budget of two refuses the rest, counted, and the nodes go on.
    let network = &summary["network"];
    assert_eq!(network["connection_budget"], 2, "{summary}");
    assert!(network["connections_peak"].as_u64() <= Some(2), "{summary}");
    assert!(
        network["refused"]["connection_budget"].as_u64() >= Some(1),
        "{summary}"
    );
}

#[test]
fn a_hundred_node_cluster_converges_beyond_its_bootstrap_peers() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = RunningCluster::start(
        dir.path(),
        &[
            "--nodes",
            "100",
            "--start-rate",
            "100",
            "--bootstrap-from",
            "1",
            "--sampler",
            "gbps",
            "--context",
            "e2e-converge",
        ],
        &[],
    );
    let described = cluster.ok(json!({"cmd": "nodes"}));
    let bootstrap: Vec<HashSet<String>> = described["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| {
            assert_eq!(node["state"], "running", "{node}");
            let addrs = node["bootstrap"].as_array().unwrap();
            addrs
                .iter()
                .map(|addr| {
                    addr.as_str()
                        .unwrap()
                        .rsplit('/')
                        .next()
                        .unwrap()
                        .to_string()
                })
                .collect()
        })
        .collect();
    assert!(bootstrap[1..].iter().all(|peers| peers.len() == 1));
    let mut last = Vec::new();
    wait_for(
        "every view to hold a peer that is not its bootstrap",
        || {
            last = cluster.stats();
            last.iter().all(|node| {
                let index = node["index"].as_u64().unwrap() as usize;
                let view = node["sampling"]["view"].as_array().unwrap();
                view.iter()
                    .any(|peer| !bootstrap[index].contains(peer.as_str().unwrap()))
            })
        },
    );
    assert_eq!(last.len(), 100);
    let (summary, lines) = cluster.stop();
    assert_eq!(summary["nodes"], 100, "{summary}");
    assert_eq!(lines.len(), 100);
    assert!(lines
        .iter()
        .all(|node| node["sampling"]["algorithm"] == "gbps"));
}

#[test]
fn cluster_nodes_stop_and_restart_through_the_admin_socket_with_their_identity_and_address() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics");
    let cluster = RunningCluster::start(
        dir.path(),
        &[
            "--metrics-out",
            metrics.to_str().unwrap(),
            "--metrics-every",
            "100ms",
            "--nodes",
            "6",
            "--start-rate",
            "0",
            "--bootstrap-from",
            "2",
        ],
        &share_vec_forever("200ms", "e2e-churn"),
    );
    wait_for("every node's app to receive", || {
        cluster.stats().iter().all(|node| received(node) > 0)
    });

    let answer = cluster.ok(json!({"cmd": "stop", "nodes": [2]}));
    assert_eq!(answer["stopped"], json!([2]));
    let described = cluster.ok(json!({"cmd": "nodes"}));
    assert_eq!(described["nodes"][2]["state"], "stopped", "{described}");
    assert_eq!(described["nodes"][3]["state"], "running", "{described}");
    for (request, error) in [
        (
            json!({"cmd": "stop", "nodes": [2]}),
            "node 2 is not running",
        ),
        (
            json!({"cmd": "list", "nodes": [2]}),
            "node 2 is not running",
        ),
        (
            json!({"cmd": "restart", "nodes": [9]}),
            "there is no node 9: the nodes are 0 to 5",
        ),
        (json!({"cmd": "stop"}), "`stop` needs `nodes`"),
        (
            json!({"cmd": "stop", "nodes": "all"}),
            "`nodes` must be a list of node numbers",
        ),
        (
            json!({"cmd": "restart", "nodes": [1], "name": "x"}),
            "`restart` takes no `name`",
        ),
        (json!({"cmd": "dance"}), "malformed request"),
    ] {
        let answer = cluster.ask(request.clone());
        assert_eq!(answer["ok"], false, "{request} -> {answer}");
        let text = answer["error"].as_str().unwrap();
        assert!(text.contains(error), "{request} -> {text}");
    }
    // The others go on without it: only running nodes answer `stats`.
    let stats = cluster.stats();
    assert_eq!(stats.len(), 5);
    assert!(stats.iter().all(|node| node["index"] != 2));

    // Node 2 stopped, node 4 running: both come back as they were.
    let answer = cluster.ok(json!({"cmd": "restart", "nodes": [2, 4]}));
    let restarted = answer["restarted"].as_array().unwrap();
    assert_eq!(restarted.len(), 2, "{answer}");
    for (member, index) in restarted.iter().zip([2, 4]) {
        assert_eq!(member["index"], index);
        assert_eq!(
            member["peer_id"], cluster.nodes[index]["peer_id"],
            "{answer}"
        );
        assert_eq!(
            member["listen_addrs"], cluster.nodes[index]["listen_addrs"],
            "{answer}"
        );
    }
    wait_for("the restarted nodes' apps to receive again", || {
        let answer = cluster.ok(json!({"cmd": "stats", "nodes": [2, 4]}));
        answer["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|node| received(node) > 0)
    });
    // Each node and run writes its own metrics file.
    let mut files: Vec<String> = (0..6).map(|index| format!("node-{index}.jsonl")).collect();
    files.extend(["node-2.run-1.jsonl".into(), "node-4.run-1.jsonl".into()]);
    wait_for("a metrics line from every node and run", || {
        files.iter().all(|file| {
            let text = read(&metrics.join(file));
            let first = text.lines().next().unwrap_or_default();
            serde_json::from_str::<Value>(first).is_ok_and(|line| line["apps"].is_array())
        })
    });
    let described = cluster.ok(json!({"cmd": "nodes"}));
    assert_eq!(described["nodes"][2]["starts"], 2, "{described}");
    assert_eq!(described["nodes"][4]["starts"], 2, "{described}");

    let (summary, lines) = cluster.stop();
    assert_eq!(summary["restarts"], 2, "{summary}");
    assert_eq!(summary["nodes_with_failed_apps"], 0, "{summary}");
    let runs: Vec<(u64, u64)> = lines
        .iter()
        .map(|line| {
            (
                line["index"].as_u64().unwrap(),
                line["run"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        runs,
        [
            (0, 0),
            (1, 0),
            (2, 0),
            (2, 1),
            (3, 0),
            (4, 0),
            (4, 1),
            (5, 0)
        ]
    );
}

#[test]
fn an_app_replaced_on_every_node_while_messages_flow_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = 8;
    let cluster = RunningCluster::start(
        dir.path(),
        &["--nodes", "8", "--start-rate", "0", "--bootstrap-from", "2"],
        &share_vec_forever("100ms", "e2e-upgrade"),
    );
    wait_for("every node's app to receive", || {
        cluster.stats().iter().all(|node| received(node) > 0)
    });
    let path = common::guest("share_vec_rust.wasm");
    let answer = cluster.ok(json!({"cmd": "replace", "path": path, "name": "share_vec"}));
    let answers = answer["nodes"].as_array().unwrap();
    assert_eq!(answers.len(), nodes, "{answer}");
    assert!(answers.iter().all(|node| node["ok"] == true), "{answer}");
    wait_for("every node's new version to receive", || {
        cluster.stats().iter().all(|node| {
            node["unloaded"]
                .as_array()
                .is_some_and(|old| old.len() == 1)
                && received(node) > 0
        })
    });
    let refused = cluster.ask(json!({"cmd": "unload", "name": "nope", "nodes": [0, 5]}));
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(
        refused["error"],
        "refused on 2 of 2 nodes (first: node 0: no app named \"nope\" is loaded)"
    );

    let (summary, lines) = cluster.stop();
    let total = &summary["apps"]["share_vec"];
    let (sent, received, unknown) = (
        total["sent"].as_u64().unwrap(),
        total["received"].as_u64().unwrap(),
        total["send_unknown"].as_u64().unwrap(),
    );
    // Every message a node accepted reached an app, old version or new.
    assert!(sent > 0, "{summary}");
    assert!(
        sent <= received && received <= sent + unknown,
        "sent {sent}, received {received}, unknown {unknown}: {summary}"
    );
    assert_eq!(total["call_errors"], 0, "{summary}");
    for line in &lines {
        assert_eq!(line["unloaded"].as_array().map(Vec::len), Some(1), "{line}");
        assert_eq!(line["apps"]["share_vec"]["state"], "running", "{line}");
    }
}

#[test]
fn a_cluster_and_outside_run_nodes_bootstrap_to_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let run_args = |bootstrap: Option<&str>| {
        let mut args: Vec<String> = vec!["--listen".into(), "/ip4/127.0.0.1/tcp/0".into()];
        args.extend(share_vec_forever("200ms", "e2e-interop"));
        if let Some(bootstrap) = bootstrap {
            args.extend(["--bootstrap".into(), bootstrap.into()]);
        }
        args
    };
    let outside_a = RunningNode::spawn(&run_args(None), dir.path().join("a.log"));
    let a_addr = outside_a.addr();
    let cluster_dir = dir.path().join("cluster");
    std::fs::create_dir(&cluster_dir).unwrap();
    let cluster = RunningCluster::start(
        &cluster_dir,
        &[
            "--nodes",
            "4",
            "--start-rate",
            "0",
            "--bootstrap-from",
            "1",
            "--bootstrap",
            &a_addr,
        ],
        &share_vec_forever("200ms", "e2e-interop"),
    );
    let into = cluster.nodes[3]["listen_addrs"][0].as_str().unwrap();
    let outside_b = RunningNode::spawn(&run_args(Some(into)), dir.path().join("b.log"));
    let cluster_ids: Vec<String> = (0..4).map(|i| cluster.peer_id(i)).collect();
    let heard_from_cluster = |log: &Path| {
        let text = read(log);
        cluster_ids
            .iter()
            .any(|id| text.contains(&format!("bytes from {id}")))
    };
    wait_for(
        "the outside node the cluster bootstrapped from to hear a cluster node",
        || heard_from_cluster(&outside_a.log),
    );
    wait_for(
        "the outside node that bootstrapped into the cluster to hear one",
        || heard_from_cluster(&outside_b.log),
    );
    for (name, node) in [("a", &outside_a), ("b", &outside_b)] {
        let id = node.ready["peer_id"].as_str().unwrap().to_string();
        wait_for(
            &format!("a cluster node to hear outside node {name}"),
            || cluster.log().contains(&format!("bytes from {id}")),
        );
    }
    let (summary, _) = cluster.stop();
    assert_eq!(summary["nodes_with_failed_apps"], 0, "{summary}");
    for node in [outside_a, outside_b] {
        let summary = {
            common::node::sigterm(&node);
            node.finish()
        };
        assert_eq!(summary["apps"]["share_vec"]["call_errors"], 0, "{summary}");
    }
}

#[test]
fn a_cluster_scenario_stops_restarts_and_loads_at_its_times_then_ends() {
    let dir = tempfile::tempdir().unwrap();
    let guest = common::guest("share_vec_rust.wasm");
    let scenario = dir.path().join("churn.toml");
    std::fs::write(
        &scenario,
        format!(
            "[[action]]\nat = \"2s\"\ndo = \"disconnect\"\nnodes = [1]\nduration = \"1s\"\n\n\
             [[action]]\nat = \"2s\"\ndo = \"load\"\napp = \"second\"\npath = \"{0}\"\nnodes = [0, 2]\n\n\
             [[action]]\nat = \"2500ms\"\ndo = \"unload\"\napp = \"second\"\nnodes = [\"node_0\"]\n",
            guest.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let output = nodemanager()
        .args([
            "cluster",
            "--nodes",
            "4",
            "--start-rate",
            "0",
            "--bootstrap-from",
            "first",
        ])
        .args(["--app", &share_vec(), "--cycles", "15", "--period", "200ms"])
        .args(["--linger", "1s", "--context", "e2e-scenario"])
        .args(["--limit", "call_deadline=120s", "--scenario"])
        .arg(&scenario)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let log = read(&out.join("cluster.log"));
    assert!(
        output.status.success(),
        "{}\n{log}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["restarts"], 1, "{summary}");
    assert_eq!(summary["nodes_with_failed_apps"], 0, "{summary}");
    assert_eq!(summary["apps"]["second"]["nodes"], 2, "{summary}");
    for step in ["stop [1]", "restart [1]", "apps on [0, 2]", "apps on [0]"] {
        assert!(
            log.contains(&format!("scenario step done: {step}")),
            "{step}:\n{log}"
        );
    }
    let lines: Vec<Value> = read(&out.join("nodes.jsonl"))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let runs: Vec<(u64, u64)> = lines
        .iter()
        .map(|line| {
            (
                line["index"].as_u64().unwrap(),
                line["run"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(runs, [(0, 0), (1, 0), (1, 1), (2, 0), (3, 0)]);
    // The restarted run did all its cycles before the cluster ended.
    assert_eq!(lines[2]["apps"]["share_vec"]["cycles"], 15, "{}", lines[2]);
    assert_eq!(lines[0]["unloaded"][0]["name"], "second", "{}", lines[0]);
    // Loaded with the node's default schedule; done before the cluster ended.
    assert_eq!(lines[3]["apps"]["second"]["state"], "done", "{}", lines[3]);

    std::fs::write(
        &scenario,
        "[[action]]\nat = \"1s\"\ndo = \"latency\"\nlatency = \"5ms\"\n",
    )
    .unwrap();
    let output = nodemanager()
        .args([
            "cluster",
            "--nodes",
            "2",
            "--app",
            &share_vec(),
            "--scenario",
        ])
        .arg(&scenario)
        .arg("--out")
        .arg(dir.path().join("never"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("a live cluster's latency is the machine's"),
        "{stderr}"
    );
}
