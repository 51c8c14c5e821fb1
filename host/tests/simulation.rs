//! Whole-node simulation against real guests: the event semantics the docs promise
//! (latency and jitter, partitions, outages), checked through what the apps saw and
//! logged in virtual time.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nodemanager::config::AppSpec;
use nodemanager::runtime::{Limits, Runtime};
use nodemanager::sampling::SamplerConfig;
use nodemanager::sim::{
    apps, AppInterval, Engine, NetworkModel, RunSummary, Scenario, SeedSimConfig, SimConfig,
    Simulation,
};

/// A config of `nodes` GBPS nodes (period 1 s) for `cycles` cycles, no failures.
fn config(nodes: usize, cycles: u64) -> SimConfig {
    SimConfig {
        sampler: SamplerConfig::from_name("gbps").unwrap(),
        nodes,
        cycles,
        seed: 11,
        bootstrap_peers: 4,
        topology: None,
        fail_fraction: 0.0,
        fail_at: 0,
        leave_rate: 0.0,
        join_rate: 0.0,
        byzantine: 0.0,
        attack_force: 1.0,
        engine: Engine::Event,
        network: NetworkModel::default(),
        outages: Default::default(),
        drift: Default::default(),
        real_time_factor: 0.0,
        verbose: true,
        costly_metrics_every: 10,
        threads: 1,
    }
}

/// Takes the seed's JSON `json` into `config`.
fn with_seed_json(mut config: SimConfig, json: &str) -> SimConfig {
    let seed = SeedSimConfig::parse(json, config.nodes).unwrap();
    config.network = seed.network;
    config.outages = seed.outages;
    config.drift = seed.drift;
    config
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `config` with the ping-pong app (a report per pong): the summary and the log.
fn run_ping_pong(config: SimConfig) -> (RunSummary, Vec<serde_json::Value>, String) {
    run(
        config,
        &[("ping_pong.wasm", "ping", "1")],
        Scenario::default(),
    )
}

/// Runs `config` with `apps` (file in build/guests, name, config) and `scenario`: the
/// summary, the node rows and the log.
fn run(
    config: SimConfig,
    apps: &[(&str, &str, &str)],
    scenario: Scenario,
) -> (RunSummary, Vec<serde_json::Value>, String) {
    let (summary, rows, log, _) = run_with_timeline(config, apps, scenario);
    (summary, rows, log)
}

/// As [`run`], and the apps' timeline.
fn run_with_timeline(
    config: SimConfig,
    apps: &[(&str, &str, &str)],
    scenario: Scenario,
) -> (RunSummary, Vec<serde_json::Value>, String, Vec<AppInterval>) {
    let runtime = Runtime::counting_instructions(&common::test_cache_dir()).unwrap();
    let specs: Vec<AppSpec> = apps
        .iter()
        .map(|(file, name, _)| {
            AppSpec::from_arg(&format!("{}:{name}", common::guest(file).display())).unwrap()
        })
        .collect();
    let configs: Vec<(String, String)> = apps
        .iter()
        .map(|(_, name, config)| (name.to_string(), config.to_string()))
        .collect();
    let period = Duration::from_secs(1);
    let apps = apps::prepare(&runtime, &specs, &configs, period, &Limits::default()).unwrap();
    let components = scenario
        .paths()
        .into_iter()
        .map(|path| (path.to_path_buf(), runtime.load_component(path).unwrap()))
        .collect();
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = nodemanager::logging::simulation_subscriber(
        move || writer.clone(),
        tracing_subscriber::EnvFilter::new("info"),
    );
    let mut simulation = Simulation::new(config)
        .unwrap()
        .with_apps(apps)
        .unwrap()
        .with_scenario(scenario, components, period, Limits::default())
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        simulation.run(&mut Vec::new(), |_| {}).unwrap();
    });
    let rows = simulation
        .node_rows()
        .map(|row| serde_json::to_value(row).unwrap())
        .collect();
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let timeline = simulation.app_timeline().to_vec();
    (simulation.summary(), rows, log, timeline)
}

/// The virtual node and time (µs) of a log line.
fn node_and_time(line: &str) -> (u32, u64) {
    let field = |name: &str| -> u64 {
        let start = line
            .find(name)
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            + name.len();
        line[start..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (field("node=") as u32, field("t_us="))
}

#[test]
fn a_round_trip_takes_two_latencies_within_the_jitter_in_virtual_time() {
    let config = with_seed_json(
        config(12, 6),
        r#"{"latency_config": {"base_latency_us": 30000, "jitter_factor": 0.2}}"#,
    );
    let (summary, _, log) = run_ping_pong(config);
    let latency = summary.app_delivery_latency;
    assert!(latency.count > 100, "{summary:?}");
    assert!(
        latency.min_us >= 30_000 && latency.max_us <= 36_000,
        "one way is 30 ms plus up to 20%: {latency:?}"
    );
    assert!(
        latency.max_us > latency.min_us,
        "jitter varies: {latency:?}"
    );
    // The app measures with its own WASI wall clock: 60-72 ms, all in its 50-100 ms
    // bucket.
    let reports: Vec<&str> = log.lines().filter(|l| l.contains("rtt n=")).collect();
    assert!(reports.len() > 100, "{log}");
    for report in reports {
        let histogram = report.split("histogram ").nth(1).unwrap();
        let histogram = histogram.split(" app=").next().unwrap();
        assert!(
            histogram.starts_with("<100ms:") && !histogram.contains(' '),
            "{report}"
        );
    }
    assert_eq!(summary.apps.apps["ping"].failed, 0);
}

#[test]
fn no_message_crosses_a_partition() {
    let config = with_seed_json(
        config(16, 6),
        r#"{"latency_config": {"base_latency_us": 2000, "jitter_factor": 0,
            "partitions": {"east": ["node_0", "node_1", "node_2", "node_3", "node_4", "node_5", "node_6", "node_7"],
                           "west": ["node_8", "node_9", "node_10", "node_11", "node_12", "node_13", "node_14", "node_15"]}}}"#,
    );
    let (summary, _, log) = run_ping_pong(config);
    let side = |node: u32| node < 8;
    let delivered: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("delivered after"))
        .collect();
    assert!(delivered.len() > 50, "{log}");
    for line in &delivered {
        let (to, _) = node_and_time(line);
        let from: u32 = line
            .split("from node ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(side(from), side(to), "{line}");
    }
    let totals = &summary.apps.apps["ping"];
    assert!(
        totals.counts.send_errors > 0 && log.contains("no route (network partition)"),
        "views span both sides, so pings across fail: {summary:?}"
    );
    assert!(summary.messages_dropped > 0);
}

#[test]
fn a_scheduled_disconnection_fails_messages_for_its_window_only() {
    let config = with_seed_json(
        config(8, 8),
        r#"{"latency_config": {"base_latency_us": 1000, "jitter_factor": 0},
            "disconnection_config": {"scheduled_disconnections": [["node_3", 2000000, 3000000]]}}"#,
    );
    let (summary, rows, log) = run_ping_pong(config);
    let window = 2_000_000..5_000_000;
    let mut failures = 0;
    let mut delivered_before = false;
    let mut delivered_after = false;
    // Lines logged on node 3: messages reaching it, and the fate of its own sends.
    for line in log.lines().filter(|l| l.contains("vnode{node=3 ")) {
        let (_, t) = node_and_time(line);
        if line.contains("not delivered") {
            failures += 1;
            assert!(window.contains(&t), "a failure outside 2-5 s: {line}");
        }
        if line.contains("delivered after") {
            delivered_before |= t < window.start;
            delivered_after |= t >= window.end;
        }
    }
    assert!(failures > 0, "{log}");
    assert!(delivered_before && delivered_after, "{log}");
    assert_eq!(summary.disconnection_events, 1);
    assert!(
        log.contains("offline") && log.contains("online again"),
        "{log}"
    );
    assert_eq!(rows[3]["state"], "online");
}

#[test]
fn a_node_offline_for_good_never_answers() {
    let config = with_seed_json(
        config(8, 5),
        r#"{"latency_config": {"base_latency_us": 1000},
            "disconnection_config": {"permanently_offline": ["node_5"]}}"#,
    );
    let (summary, rows, _) = run_ping_pong(config);
    assert_eq!(rows[5]["state"], "offline");
    assert_eq!(rows[5]["apps"]["ping"]["received"], 0);
    assert_eq!(rows[5]["apps"]["ping"]["sent"], 0);
    assert!(rows[5]["apps"]["ping"]["send_errors"].as_u64() > Some(0));
    let others_failed: u64 = rows
        .iter()
        .filter(|r| r["node"] != 5)
        .map(|r| r["apps"]["ping"]["send_errors"].as_u64().unwrap())
        .sum();
    assert!(others_failed > 0, "pings to node 5 fail: {rows:?}");
    let states = serde_json::to_value(&summary.node_states).unwrap();
    assert_eq!(states["node_5"], "offline");
    assert_eq!(states["node_4"], "online");
}

#[test]
fn timed_actions_change_the_network_and_load_replace_and_unload_apps() {
    let guests = common::repo_root().join("build/guests");
    let scenario = Scenario::parse(
        r#"
        [[action]]
        at = "3s"
        do = "disconnect"
        nodes = ["node_2"]

        [[action]]
        at = "4500ms"
        do = "reconnect"
        nodes = ["node_2"]

        [[action]]
        at = "4s"
        do = "latency"
        latency = "20ms"

        [[action]]
        at = "5s"
        do = "load"
        app = "ping"
        path = "ping_pong.wasm"
        config = "1"
        nodes = [0, 1, 2, 3]

        [[action]]
        at = "7s"
        do = "replace"
        app = "calm"
        path = "hostile.wasm"

        [[action]]
        at = "9s"
        do = "unload"
        app = "ping"
        "#,
        8,
        &guests,
    )
    .unwrap();
    let mut config = config(8, 6);
    config.sampler = SamplerConfig::from_name("connected").unwrap();
    config.cycles = 12;
    config.network.latency = Duration::from_millis(1);
    let (summary, rows, log) = run(config, &[("hostile.wasm", "calm", "calm")], scenario);

    // The outage, from 3 s to the reconnect at 4.5 s.
    assert_eq!(summary.disconnection_events, 1);
    let outage: Vec<u64> = log
        .lines()
        .filter(|l| {
            l.contains("vnode{node=2 ") && (l.contains("offline") || l.contains("online again"))
        })
        .map(|l| node_and_time(l).1)
        .collect();
    assert_eq!(outage, vec![3_000_000, 4_500_000], "{log}");
    // Latency: 1 ms until 4 s, then 20 ms; ping started at 5 s only sees 20 ms.
    let latency = summary.app_delivery_latency;
    assert_eq!(
        (latency.min_us, latency.max_us),
        (20_000, 20_000),
        "{latency:?}"
    );
    // Loaded on nodes 0-3 only: pings to 4-7 are refused there; unloaded at 9 s.
    let ping = &summary.apps.apps["ping"];
    assert_eq!(ping.nodes, 4, "{summary:?}");
    assert!(
        ping.counts.send_errors > 0 && ping.counts.sent > 0,
        "{summary:?}"
    );
    for row in &rows {
        let node = row["node"].as_u64().unwrap();
        assert_eq!(row["apps"].get("ping").is_some(), node < 4, "{row}");
        if node < 4 {
            assert_eq!(row["apps"]["ping"]["state"], "unloaded", "{row}");
        }
    }
    let last_ping = log
        .lines()
        .filter(|l| l.contains("app=\"ping\""))
        .map(|l| node_and_time(l).1)
        .max()
        .unwrap();
    assert!(
        last_ping < 9_000_000,
        "no ping call after its unload: {last_ping}"
    );
    // Replaced at 7 s on every node, with the cycle count carried in its state.
    let restored: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("guest: restored at cycle 6"))
        .collect();
    assert_eq!(restored.len(), 8, "{log}");
    let calm = &summary.apps.apps["calm"];
    assert_eq!((calm.nodes, calm.failed), (8, 0));
    assert!(
        calm.counts.cycles >= 8 * 10,
        "the counters go on: {summary:?}"
    );
}

#[test]
fn the_timeline_adds_up_to_the_totals_and_shows_an_outage() {
    let config = with_seed_json(
        config(10, 8),
        r#"{"latency_config": {"base_latency_us": 3000, "jitter_factor": 0.1},
            "disconnection_config": {"scheduled_disconnections": [["node_4", 4500000, 4000000]]}}"#,
    );
    let mut config = config;
    config.network.loss = 0.05;
    let (summary, _, _, timeline) = run_with_timeline(
        config,
        &[("ping_pong.wasm", "ping", "1")],
        Scenario::default(),
    );
    assert_eq!(timeline.len(), 8);
    let sum = |f: fn(&AppInterval) -> u64| timeline.iter().map(f).sum::<u64>();
    let ping = &summary.apps.apps["ping"];
    assert_eq!(
        sum(|r| r.messages.delivered),
        summary.app_delivery_latency.count
    );
    assert_eq!(sum(|r| r.messages.failed), ping.counts.send_errors);
    assert_eq!(sum(|r| r.messages.unknown), ping.counts.send_unknown);
    assert_eq!(sum(|r| r.messages.dropped), summary.apps.app_messages_lost);
    assert!(
        sum(|r| r.messages.unknown) > 0 && sum(|r| r.messages.failed) > 0,
        "{timeline:?}"
    );
    // GBPS's period is 2 s: node 4 is offline at the ends of cycles 3 and 4 (6 s, 8 s).
    let online: Vec<u64> = timeline.iter().map(|r| r.nodes_online).collect();
    assert_eq!(online, vec![10, 10, 9, 9, 10, 10, 10, 10], "{timeline:?}");
    for row in &timeline[1..] {
        assert!(
            row.messages.latency.count == 0 || (3000..=3300).contains(&row.messages.latency.max_us),
            "{row:?}"
        );
    }
}

#[test]
fn a_guests_sleep_passes_virtual_time_without_waiting() {
    let (summary, _, log) = run(
        config(3, 4),
        &[("hostile.wasm", "sleepy", "sleep")],
        Scenario::default(),
    );
    let sleepy = &summary.apps.apps["sleepy"];
    assert!(sleepy.counts.cycles >= 3 * 3, "{summary:?}");
    assert_eq!(sleepy.counts.call_errors, sleepy.counts.cycles);
    let answers: Vec<&str> = log.lines().filter(|l| l.contains("slept ")).collect();
    assert_eq!(answers.len() as u64, sleepy.counts.cycles, "{log}");
    assert!(answers.iter().all(|l| l.contains("slept 300 ms")), "{log}");
}

#[test]
fn an_answer_never_reaches_a_sender_that_went_offline_meanwhile() {
    // One way takes 600 ms: whatever its phase, node 3 pings once in the 1.2 s before
    // it goes offline at 2.5 s, and the answers come back while it is offline.
    let config = with_seed_json(
        config(6, 6),
        r#"{"latency_config": {"base_latency_us": 600000, "jitter_factor": 0},
            "disconnection_config": {"scheduled_disconnections": [["node_3", 2500000, 3000000]]}}"#,
    );
    let (_, rows, log) = run_ping_pong(config);
    let lost: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("no answer: this node was offline when it came back"))
        .collect();
    assert!(!lost.is_empty(), "{log}");
    assert!(lost.iter().all(|l| l.contains("vnode{node=3 ")), "{lost:?}");
    assert!(
        rows[3]["apps"]["ping"]["send_unknown"].as_u64() >= Some(1),
        "{}",
        rows[3]
    );
}
