//! The `nodemanager` command line: parses, then calls the library.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use libp2p::Multiaddr;
use nodemanager::cli::{limits_json, name_value, node_list, CacheArgs, NodeList};
use nodemanager::cluster::{self, run_cluster, BootstrapFrom, ClusterOptions};
use nodemanager::config::{AppSpec, NodeConfig, SamplerConfig, Transport};
use nodemanager::deploy;
use nodemanager::duration::parse_duration;
use nodemanager::logging::LogFormat;
use nodemanager::network::ProcessLimits;
use nodemanager::node::Node;
use nodemanager::project::{self, new_project, Lang};
use nodemanager::runtime::{inspect, Runtime};
use nodemanager::sampling::{StaticConfig, Topology, TopologyKind};
use nodemanager::sim::{Engine, PreparedSimulation, Scenario, SimulateArgs, APPS_CSV_HEADER};
use nodemanager::{logging, network};

/// Host for peer-to-peer apps written as sandboxed WebAssembly components.
#[derive(Parser)]
#[command(name = "nodemanager", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node with its apps until they finish their cycles (plus the linger).
    ///
    /// Prints one JSON line when listening ({"peer_id", "listen_addrs"}) and one at
    /// exit ({"apps": {name: counters}}). Flags override the config file.
    Run(Box<RunArgs>),
    /// Simulate N nodes running a sampler in one process and write per-cycle metrics (CSV).
    Simulate(Box<SimulateArgs>),
    /// Run N full nodes in one process: each its own identity, 127.0.0.1 port, sampler
    /// and apps, speaking what `run` speaks.
    ///
    /// Prints one JSON line once every node started ({"nodes": [{"index", "peer_id",
    /// "listen_addrs"}...]}) and the cluster's summary at the end; writes
    /// DIR/nodes.jsonl (one `run` summary per node and start), DIR/summary.json and
    /// DIR/cluster.log. Runs until every node's apps are done (and the linger passed),
    /// or SIGINT/SIGTERM; with --admin PATH (`nodemanager nodes`, `nodemanager apps`
    /// with --nodes), until SIGINT/SIGTERM.
    Cluster(Box<ClusterArgs>),
    /// Static topologies for the `static` sampler and `simulate --topology`.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Load, unload, replace and list the apps of a running node or cluster (its --admin
    /// socket).
    Apps {
        /// The node's or cluster's admin socket (required; before or after the subcommand).
        #[arg(long, value_name = "PATH", global = true)]
        admin: Option<PathBuf>,
        /// A cluster's nodes to act on, e.g. 0,3,5-9 [default: every running node].
        #[arg(long, value_name = "LIST", global = true, value_parser = node_list)]
        nodes: Option<NodeList>,
        #[command(subcommand)]
        command: AppsCommand,
    },
    /// Deployment keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// List, stop and restart the nodes of a running cluster (its --admin socket).
    Nodes {
        /// The cluster's admin socket (required; before or after the subcommand).
        #[arg(long, value_name = "PATH", global = true)]
        admin: Option<PathBuf>,
        #[command(subcommand)]
        command: NodesCommand,
    },
    /// Write a ready app project in a new folder DIR (the app is named after it).
    ///
    /// Python: app.py and a README (`nodemanager build` supplies the SDK). Rust: a
    /// crate with the SDK and the WIT vendored, a lock file and build settings.
    New {
        /// The app's language.
        #[arg(long, value_enum)]
        lang: Lang,
        /// The project folder: new or empty; its name is the app's.
        dir: PathBuf,
    },
    /// Build the app project in DIR into DIR/build/NAME.wasm and compile it into the
    /// cache (replacing the previous build's compiled code).
    ///
    /// Rust: Debian's rustc-web for wasm32-wasip2 ($NODEMANAGER_CARGO,
    /// $NODEMANAGER_RUSTC override it). Python: componentize-py 0.25.1 from PATH or
    /// $NODEMANAGER_COMPONENTIZE_PY. Either way for the stateful-app world.
    Build {
        /// The project folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Compile components into the cache ahead of a run.
    Compile {
        /// Component files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Print a component's imports and exports and whether it fits the app world.
    Inspect {
        /// The component file.
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
}

#[derive(Subcommand)]
enum AppsCommand {
    /// The loaded apps, with their counters.
    List,
    /// Counters of every app (loaded and unloaded) and of the sampler.
    Stats,
    /// Start an app.
    Load(LoadArgs),
    /// Unload the app of this name and load the new one in its place.
    Replace(LoadArgs),
    /// Stop an app once it has handled the messages queued for it.
    Unload {
        /// The app's name.
        name: String,
    },
    /// Deploy an app to every node of a context that trusts the key: a signed manifest
    /// goes to the node at --via, which fetches the component from here, runs it and
    /// spreads the manifest; the others fetch the component from their peers.
    Deploy(DeployArgs),
    /// Unload an app from every node of a context that trusts the key.
    Undeploy(UndeployArgs),
    /// Which version of each deployed app every node reachable from --via runs (asked
    /// node by node over the overlay, for at most --within).
    Status {
        /// A node of the context.
        #[arg(long, value_name = "MULTIADDR")]
        via: libp2p::Multiaddr,
        /// The nodes' context.
        #[arg(long, default_value = "default")]
        context: String,
        /// How long to ask, e.g. 5s.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        within: std::time::Duration,
    },
}

/// Where and as whom to deploy.
#[derive(Args)]
struct DeployTarget {
    /// The deployment key file (`nodemanager keys generate`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// A node of the context, e.g. /ip4/10.0.0.5/tcp/4001[/p2p/<peer id>].
    #[arg(long, value_name = "MULTIADDR")]
    via: libp2p::Multiaddr,
    /// The nodes' context.
    #[arg(long, default_value = "default")]
    context: String,
    /// The app's name on every node.
    #[arg(long)]
    name: String,
}

#[derive(Args)]
struct DeployArgs {
    #[command(flatten)]
    target: DeployTarget,
    /// The string given to the app's init.
    #[arg(long, default_value = "")]
    config: String,
    /// periodic-run calls; -1 runs forever [default: the nodes'].
    #[arg(long, allow_negative_numbers = true)]
    cycles: Option<i64>,
    /// Time between calls, e.g. 500ms [default: the nodes'].
    #[arg(long, value_parser = parse_duration)]
    period: Option<std::time::Duration>,
    /// A limit, e.g. memory_mib=64 (repeatable; the others are the nodes' defaults).
    #[arg(long = "limit", value_name = "KEY=VALUE", value_parser = name_value)]
    limits: Vec<(String, String)>,
    /// The component (.wasm).
    path: PathBuf,
}

#[derive(Args)]
struct UndeployArgs {
    #[command(flatten)]
    target: DeployTarget,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a deployment key pair in a new file (mode 0600) and print its public key,
    /// for the nodes' `[deploy] trusted_keys`.
    Generate {
        /// The key file to create.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum NodesCommand {
    /// Every node: number, peer id, addresses, state, starts, bootstrap addresses.
    List,
    /// Stop nodes (their apps drain and their summaries go to nodes.jsonl).
    Stop {
        /// Node numbers, e.g. 0,3,5-9.
        #[arg(value_parser = node_list)]
        nodes: NodeList,
    },
    /// Stop nodes if running, then start them again with the same identity and address.
    Restart {
        /// Node numbers, e.g. 0,3,5-9.
        #[arg(value_parser = node_list)]
        nodes: NodeList,
    },
}

#[derive(Args)]
struct LoadArgs {
    /// The component file (.wasm) [or give --component].
    #[arg(required_unless_present = "component", conflicts_with = "component")]
    path: Option<PathBuf>,
    /// The content hash of a component the node already holds, instead of a file.
    #[arg(long, value_name = "SHA256")]
    component: Option<String>,
    /// The routing name [default: the file name].
    #[arg(long)]
    name: Option<String>,
    /// The string given to the app's init.
    #[arg(long)]
    config: Option<String>,
    /// periodic-run calls; -1 runs forever [default: the node's].
    #[arg(long, allow_negative_numbers = true)]
    cycles: Option<i64>,
    /// Time between calls, e.g. 500ms [default: the node's].
    #[arg(long)]
    period: Option<String>,
    /// A limit, e.g. memory_mib=64 or call_deadline=200ms (repeatable; the others are
    /// the node's defaults).
    #[arg(long = "limit", value_name = "KEY=VALUE", value_parser = name_value)]
    limits: Vec<(String, String)>,
}

impl LoadArgs {
    /// The admin request, `cmd` being `load` or `replace`.
    fn request(&self, cmd: &str) -> Result<serde_json::Value> {
        let mut request = serde_json::json!({ "cmd": cmd });
        let path = match &self.path {
            Some(path) => Some(
                std::path::absolute(path)
                    .with_context(|| format!("cannot resolve {}", path.display()))?,
            ),
            None => None,
        };
        for (key, value) in [
            ("path", path.map(|p| serde_json::json!(p))),
            (
                "component",
                self.component.as_ref().map(|c| serde_json::json!(c)),
            ),
            ("name", self.name.as_ref().map(|n| serde_json::json!(n))),
            ("config", self.config.as_ref().map(|c| serde_json::json!(c))),
            ("cycles", self.cycles.map(|c| serde_json::json!(c))),
            ("period", self.period.as_ref().map(|p| serde_json::json!(p))),
        ] {
            if let Some(value) = value {
                request[key] = value;
            }
        }
        if !self.limits.is_empty() {
            request["limits"] = limits_json(&self.limits)?.into();
        }
        Ok(request)
    }
}

/// Sends one apps request to a node's or cluster's admin socket and prints the answer.
/// Deploys (`component`) or undeploys an app through a node of the context; prints the
/// result.
fn deploy_command(
    target: DeployTarget,
    component: Option<PathBuf>,
    settings: impl FnOnce(&mut deploy::client::Order),
) -> Result<()> {
    let mut order = deploy::client::Order {
        via: target.via,
        context: target.context,
        key: target.key,
        name: target.name,
        component,
        config: String::new(),
        cycles: None,
        period: None,
        limits: Vec::new(),
    };
    settings(&mut order);
    print_over_overlay(deploy::client::carry_out(order))
}

/// Runs `work`, a short-lived peer's talk with the nodes, and prints its answer.
fn print_over_overlay(
    work: impl std::future::Future<Output = Result<serde_json::Value>>,
) -> Result<()> {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    print_json(&tokio.block_on(work)?)
}

fn apps_command(admin: &Path, nodes: Option<NodeList>, command: AppsCommand) -> Result<()> {
    let mut request = match &command {
        AppsCommand::List => serde_json::json!({"cmd": "list"}),
        AppsCommand::Stats => serde_json::json!({"cmd": "stats"}),
        AppsCommand::Load(args) => args.request("load")?,
        AppsCommand::Replace(args) => args.request("replace")?,
        AppsCommand::Unload { name } => serde_json::json!({"cmd": "unload", "name": name}),
        AppsCommand::Deploy(_) | AppsCommand::Undeploy(_) | AppsCommand::Status { .. } => {
            bail!("deployments go through a node of the context (--via), not an admin socket")
        }
    };
    if let Some(NodeList(nodes)) = nodes {
        request["nodes"] = nodes.into();
    }
    admin_request(admin, &request)
}

/// Sends one request to a cluster's admin socket about its nodes and prints the answer.
fn nodes_command(admin: &Path, command: NodesCommand) -> Result<()> {
    let request = match command {
        NodesCommand::List => serde_json::json!({"cmd": "nodes"}),
        NodesCommand::Stop { nodes } => serde_json::json!({"cmd": "stop", "nodes": nodes.0}),
        NodesCommand::Restart { nodes } => {
            serde_json::json!({"cmd": "restart", "nodes": nodes.0})
        }
    };
    admin_request(admin, &request)
}

/// Sends `request` to an admin socket and prints the answer; an answer that is not
/// `ok` is an error (printed first when it holds several nodes' answers).
fn admin_request(admin: &Path, request: &serde_json::Value) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let mut stream = std::os::unix::net::UnixStream::connect(admin).with_context(|| {
        format!(
            "cannot reach the admin socket {} (is the node or cluster running with --admin?)",
            admin.display()
        )
    })?;
    writeln!(stream, "{request}")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let answer: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("the node answered something that is not JSON: {line:?}"))?;
    if answer["ok"] != true {
        if answer.get("nodes").is_some() {
            print_text(&serde_json::to_string_pretty(&answer)?)?;
        }
        bail!(
            "{}",
            answer["error"]
                .as_str()
                .unwrap_or("the node refused the request")
        );
    }
    print_text(&serde_json::to_string_pretty(&answer)?)
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Write a topology as the seed's YAML (nodes named node_1 ... node_N).
    Generate {
        /// Shape: random, star (node_1 is the hub), ring, full.
        #[arg(long, value_enum)]
        kind: TopologyKind,
        /// Number of nodes.
        #[arg(long)]
        nodes: usize,
        /// Random: every node sends to exactly K others.
        #[arg(long, value_name = "K", conflicts_with_all = ["min_out_degree", "max_out_degree"])]
        out_degree: Option<usize>,
        /// Random: the fewest others a node sends to [default: 1].
        #[arg(long, value_name = "K")]
        min_out_degree: Option<usize>,
        /// Random: the most others a node sends to [default: 3].
        #[arg(long, value_name = "K")]
        max_out_degree: Option<usize>,
        /// Seed of the random choices.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output file (YAML).
        #[arg(long, value_name = "FILE.yaml")]
        out: PathBuf,
    },
}

fn generate_topology(command: TopologyCommand) -> Result<()> {
    let TopologyCommand::Generate {
        kind,
        nodes,
        out_degree,
        min_out_degree,
        max_out_degree,
        seed,
        out,
    } = command;
    if kind != TopologyKind::Random
        && (out_degree.is_some() || min_out_degree.is_some() || max_out_degree.is_some())
    {
        bail!("the out-degree options only apply to --kind random");
    }
    let degrees = match out_degree {
        Some(k) => k..=k,
        None => min_out_degree.unwrap_or(1)..=max_out_degree.unwrap_or(3),
    };
    let topology = Topology::generate(kind, nodes, degrees, seed)?;
    std::fs::write(&out, topology.to_yaml()?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("{} nodes written to {}", topology.len(), out.display());
    Ok(())
}

fn simulate(args: SimulateArgs) -> Result<()> {
    let _log = logging::init_simulation(args.log_file.as_deref())?;
    let PreparedSimulation {
        mut simulation,
        title,
        nodes,
        cycles,
        engine,
        real_time_factor,
    } = args.prepare()?;
    if real_time_factor > 0.0 {
        eprintln!("virtual time runs at most {real_time_factor}x real time (--real-time-factor 0: unlimited)");
    }
    let started = Instant::now();
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let bar = ProgressBar::new(cycles).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] cycle {pos}/{len} eta {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    // Without a terminal the bar is hidden: say where the run is every 10%.
    let step = (cycles / 10).max(1);
    let mut rows = Vec::new();
    simulation.run(&mut out, |metrics| {
        bar.inc(1);
        if bar.is_hidden() && metrics.cycle % step == 0 {
            eprintln!(
                "cycle {}/{} ({:.1?})",
                metrics.cycle,
                cycles,
                started.elapsed()
            );
        }
        if args.plot.is_some() {
            rows.push(metrics.clone());
        }
    })?;
    bar.finish_and_clear();
    out.flush()?;
    if let Some(path) = &args.plot {
        nodemanager::sim::plot(&rows, simulation.app_timeline(), path, &title)?;
        eprintln!("plot in {}", path.display());
    }
    eprintln!(
        "simulated {} nodes x {} cycles, {} messages, in {:.2?}; metrics in {}",
        nodes,
        cycles,
        simulation.messages(),
        started.elapsed(),
        args.out.display()
    );
    if let Some(path) = &args.metrics_out {
        let mut text = format!("{APPS_CSV_HEADER}\n");
        for row in simulation.app_timeline() {
            text.push_str(&row.csv_row());
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("the apps' timeline in {}", path.display());
    }
    if let Some(path) = &args.nodes_out {
        write_json_lines(path, simulation.node_rows())?;
        eprintln!("one line per node in {}", path.display());
    }
    if engine == Engine::Event {
        print_json(&simulation.summary())?;
    }
    // Freeing 10,000 nodes' instances one by one takes a second; the process ends
    // here, and the OS takes their memory back at once.
    std::mem::forget(simulation);
    Ok(())
}

fn multiaddr(text: &str) -> Result<Multiaddr, String> {
    text.parse()
        .map_err(|e| format!("{text:?} is not a multiaddr like /ip4/127.0.0.1/tcp/0 ({e})"))
}

#[derive(Args)]
struct ClusterArgs {
    /// How many nodes.
    #[arg(long)]
    nodes: usize,
    /// Nodes started per second; 0: all at once.
    #[arg(long, default_value_t = 50.0)]
    start_rate: f64,
    /// Each node bootstraps from this many random running nodes of the cluster, or from
    /// node 0 with `first` (and from every --bootstrap address).
    #[arg(long, value_name = "K|first", default_value = "3")]
    bootstrap_from: BootstrapFrom,
    /// Folder for summary.json, nodes.jsonl and cluster.log.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Timed actions from when every node started, in `simulate --scenario`'s format: disconnect (stop;
    /// with `duration`, restart after it), reconnect (restart), load, replace, unload.
    #[arg(long, value_name = "FILE.toml")]
    scenario: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct RunArgs {
    /// TOML config file (see the README for its fields).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen multiaddr (repeatable; replaces the config's); port 0 picks a free port.
    #[arg(long, value_name = "MULTIADDR", value_parser = multiaddr)]
    listen: Vec<Multiaddr>,
    /// Peer to dial on start, ending in /p2p/<peer id> (repeatable; added to the config's).
    #[arg(long, value_name = "MULTIADDR", value_parser = multiaddr)]
    bootstrap: Vec<Multiaddr>,
    /// Context: nodes only talk to nodes of the same context.
    #[arg(long)]
    context: Option<String>,
    /// App component to run, routed by NAME (default: the file name) (repeatable).
    #[arg(long, value_name = "PATH[:NAME]", value_parser = AppSpec::from_arg)]
    app: Vec<AppSpec>,
    /// Config string for app NAME's init (repeatable).
    #[arg(long, value_name = "NAME=CONFIG", value_parser = name_value)]
    app_config: Vec<(String, String)>,
    /// A limit of every app, e.g. memory_mib=64 or call_deadline=2s (repeatable; over
    /// the config file's `[limits]`).
    #[arg(long = "limit", value_name = "KEY=VALUE", value_parser = name_value)]
    limits: Vec<(String, String)>,
    /// periodic-run calls for every app; -1 runs forever.
    #[arg(long, allow_negative_numbers = true)]
    cycles: Option<i64>,
    /// Time between periodic-run calls for every app, e.g. 500ms, 2s.
    #[arg(long, value_parser = parse_duration)]
    period: Option<Duration>,
    /// How long to stay up after every app is done, e.g. 2s.
    #[arg(long, value_parser = parse_duration)]
    linger: Option<Duration>,
    /// Log to this file instead of stderr (filter with RUST_LOG, e.g. info,nodemanager=debug).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Log lines as human-readable text or as one JSON object per line.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Also POST log records, as JSON batches, to this collector (http://HOST:PORT/PATH);
    /// records are dropped and counted, never waited for, when it is slow or down.
    #[arg(long, value_name = "URL")]
    log_collector: Option<String>,
    /// Keep the node's ed25519 key in this file (created with mode 0600 on first run), so
    /// a restarted node keeps its peer id [default: a new identity every run].
    #[arg(long, value_name = "PATH")]
    identity: Option<PathBuf>,
    /// Transports to listen and dial on; sets the default listen addresses.
    #[arg(long, value_enum)]
    transport: Option<Transport>,
    /// Find peers through Kademlia (`--enable-kad false` turns it off).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    enable_kad: Option<bool>,
    /// Find peers on the local network through mDNS (`--enable-mdns false` turns it off).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    enable_mdns: Option<bool>,
    /// Write one JSON line per sampler tick here (view, samples, messages in/out).
    #[arg(long, value_name = "FILE.jsonl")]
    sampling_out: Option<PathBuf>,
    /// Open an admin socket here (mode 0600) for `nodemanager apps`; the node then runs
    /// until SIGINT/SIGTERM, with or without apps.
    #[arg(long, value_name = "PATH")]
    admin: Option<PathBuf>,
    /// Write every app's counters (calls, call times, memory, bytes, queue) and the
    /// sampler's as JSON Lines here, every --metrics-every.
    #[arg(long, value_name = "FILE.jsonl")]
    metrics_out: Option<PathBuf>,
    /// Time between two --metrics-out lines, e.g. 500ms.
    #[arg(long, value_parser = parse_duration)]
    metrics_every: Option<Duration>,
    /// Watch this folder for apps: NAME.wasm (+ optional NAME.toml of settings) dropped
    /// in is loaded, replaced is reloaded, removed is unloaded; runs until a signal.
    #[arg(long, value_name = "DIR")]
    apps_dir: Option<PathBuf>,
    /// Seed for the apps' randomness (reproducible runs).
    #[arg(long)]
    seed: Option<u64>,
    /// Peer sampler that makes the view (connected, gbps, brahms, basalt), default parameters.
    #[arg(long, conflicts_with = "sampler_config")]
    sampler: Option<String>,
    /// Sampler settings as the seed's `Gbps(...).create(path)` writes them (JSON).
    #[arg(long, value_name = "FILE.json")]
    sampler_config: Option<PathBuf>,
    /// Static topology (the seed's YAML or CSR JSON): selects the static sampler.
    #[arg(long, value_name = "FILE", conflicts_with = "sampler_config")]
    topology: Option<PathBuf>,
    /// This node's name in --topology (e.g. node_2).
    #[arg(long, value_name = "NAME")]
    topology_node: Option<String>,
    /// Folder of compiled components.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Most MiB the compiled-component cache keeps; least recently used entries go.
    #[arg(long, value_name = "MIB")]
    cache_max_mib: Option<u64>,
}

impl RunArgs {
    /// The config file, if any, with the flags applied on top.
    fn into_config(self) -> Result<NodeConfig> {
        let mut config = match &self.config {
            Some(path) => NodeConfig::from_file(path)?,
            None => NodeConfig::default(),
        };
        if !self.listen.is_empty() {
            config.listen = self.listen;
        }
        config.bootstrap.extend(self.bootstrap);
        config.apps.extend(self.app);
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { config.$field = v.into(); } )* };
        }
        set!(
            context,
            linger,
            seed,
            sampling_out,
            admin,
            apps_dir,
            metrics_out,
            metrics_every,
            log_file,
            log_format,
            log_collector,
            identity,
            cache_dir,
            cache_max_mib
        );
        if let Some(transport) = self.transport {
            config.network.transport = transport;
        }
        if let Some(on) = self.enable_kad {
            config.network.enable_kad = on;
        }
        if let Some(on) = self.enable_mdns {
            config.network.enable_mdns = on;
        }
        match (self.sampler.as_deref(), self.topology, self.topology_node) {
            (Some("static"), Some(topology), Some(node)) | (None, Some(topology), Some(node)) => {
                config.sampler = SamplerConfig::Static(StaticConfig {
                    topology,
                    node: Some(node),
                    period: Duration::from_secs(1),
                });
            }
            (_, Some(_), None) | (_, None, Some(_)) => {
                bail!("--topology and --topology-node go together")
            }
            (Some("static"), None, None) => {
                bail!("--sampler static needs --topology FILE and --topology-node NAME")
            }
            (Some(_), Some(_), Some(_)) => {
                bail!("--topology and --topology-node select the static sampler; drop --sampler")
            }
            (Some(name), None, None) => config.sampler = SamplerConfig::from_name(name)?,
            (None, None, None) => {}
        }
        if let Some(path) = self.sampler_config {
            config.sampler = SamplerConfig::from_seed_json(&path)?;
        }
        for app in &mut config.apps {
            app.cycles = self.cycles.or(app.cycles);
            app.period = self.period.or(app.period);
        }
        for (name, value) in &self.limits {
            config.limits.set(name, value)?;
        }
        for (name, app_config) in self.app_config {
            let app = config
                .apps
                .iter_mut()
                .find(|a| a.resolved_name() == name)
                .with_context(|| {
                    format!("--app-config names app {name:?}, which is not among the apps")
                })?;
            app.config = app_config;
        }
        Ok(config)
    }
}

/// Writes one JSON line per item to `path`.
fn write_json_lines<T: serde::Serialize>(
    path: &Path,
    items: impl Iterator<Item = T>,
) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for item in items {
        serde_json::to_writer(&mut out, &item)?;
        out.write_all(b"\n")?;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Prints `text` and a newline; a reader that went away (`| head`) is not an error.
fn print_text(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, so
/// a signal that comes right after the ready line is not missed.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// The wasmtime runtime (with the config's cache) and the tokio runtime nodes run on.
fn runtimes(config: &NodeConfig) -> Result<(Arc<Runtime>, tokio::runtime::Runtime)> {
    let cache_dir = config
        .cache_dir
        .clone()
        .unwrap_or_else(Runtime::default_cache_dir);
    let runtime = Arc::new(Runtime::with_cache_bound(
        &cache_dir,
        config.cache_max_mib.saturating_mul(1 << 20),
    )?);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    Ok((runtime, tokio))
}

/// Runs a cluster; returns how many nodes have an app that ended `failed`.
fn cluster(args: ClusterArgs) -> Result<usize> {
    let scenario = match &args.scenario {
        Some(path) => Scenario::from_file(path, args.nodes)?,
        None => Scenario::default(),
    };
    let options = ClusterOptions {
        nodes: args.nodes,
        start_rate: args.start_rate,
        bootstrap_from: args.bootstrap_from,
        out: args.out,
        scenario,
    };
    let mut config = args.run.into_config()?;
    config.resolve_apps()?;
    cluster::check(&config, &options)?;
    let open_files = network::budget::raise_open_files_limit()?;
    let wanted = ProcessLimits::files_needed(
        options.nodes,
        options.nodes as u64 * cluster::CONNECTIONS_PER_NODE,
    );
    if open_files < wanted {
        let budget = ProcessLimits::new(&config.network, options.nodes, open_files);
        eprintln!(
            "warning: {} nodes may need {wanted} open files, and this process may open {open_files}: \
             past {} connections in all, new ones are refused (counted as `connection_budget`); \
             raise the hard limit (ulimit -Hn, or LimitNOFILE= in a systemd unit), or close idle \
             connections sooner ([network] idle_connection_timeout_secs, 60 by default)",
            options.nodes,
            budget.connections.limit()
        );
    }
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("cannot create {}", options.out.display()))?;
    let log = config
        .log_file
        .take()
        .unwrap_or_else(|| options.out.join("cluster.log"));
    let _collector = logging::init(config.log_format, Some(&log), None, "cluster")?;
    let (runtime, tokio) = runtimes(&config)?;
    tokio.block_on(async {
        let shutdown = shutdown_signal()?;
        let summary = run_cluster(
            config,
            options,
            runtime,
            |members| {
                let _ = print_json(&serde_json::json!({ "nodes": members }));
            },
            shutdown,
        )
        .await?;
        print_json(&summary)?;
        Ok(summary.nodes_with_failed_apps)
    })
}

/// Runs a node; returns the apps that ended `failed`, with their reasons.
fn run(args: RunArgs) -> Result<Vec<(String, String)>> {
    let config = args.into_config()?;
    config.resolve_apps()?;
    config.check_has_apps()?;
    let (key, created) = match &config.identity {
        Some(path) => network::identity::load_or_create(path)?,
        None => (libp2p::identity::Keypair::generate_ed25519(), true),
    };
    let peer_id = key.public().to_peer_id().to_string();
    let mut collector = logging::init(
        config.log_format,
        config.log_file.as_deref(),
        config.log_collector.as_deref(),
        &peer_id,
    )?;
    match &config.identity {
        Some(path) if created => {
            tracing::info!(%peer_id, path = %path.display(), "identity created")
        }
        Some(path) => tracing::info!(%peer_id, path = %path.display(), "identity read"),
        None => tracing::info!(%peer_id, "fresh identity for this run"),
    }
    network::budget::raise_open_files_limit()?;
    let (runtime, tokio) = runtimes(&config)?;
    tokio.block_on(async {
        let shutdown = shutdown_signal()?;
        let node = Node::start(config, runtime, key).await?;
        print_json(node.ready())?;
        let summary = node.run(shutdown).await;
        let failed = summary.failed_apps();
        let mut summary = serde_json::to_value(&summary)?;
        if let Some(collector) = &mut collector {
            summary["log_collector"] = serde_json::to_value(collector.flush())?;
        }
        print_json(&summary)?;
        Ok(failed)
    })
}

/// The exit code of a run in which apps failed (the summary is printed all the same).
const APPS_FAILED: u8 = 3;

fn compile(paths: &[PathBuf], cache: &CacheArgs) -> Result<()> {
    let runtime = Runtime::new(&cache.dir())?;
    for path in paths {
        let started = Instant::now();
        let prepared = runtime.load_component(path)?;
        let how = if prepared.from_cache {
            "already cached"
        } else {
            "compiled"
        };
        println!("{}: {how} in {:.2?}", path.display(), started.elapsed());
    }
    Ok(())
}

fn new_command(dir: &Path, lang: Lang) -> Result<()> {
    let files = new_project(dir, lang)?;
    println!("created {} ({lang:?} app):", dir.display());
    for file in files {
        println!("  {file}");
    }
    println!(
        "build it: nodemanager build {}\nthen run it: nodemanager run --app {}",
        dir.display(),
        dir.join("build")
            .join(format!(
                "{}.wasm",
                dir.file_name().unwrap_or_default().to_string_lossy()
            ))
            .display()
    );
    Ok(())
}

fn build_command(dir: &Path, cache: &CacheArgs) -> Result<()> {
    let runtime = Runtime::new(&cache.dir())?;
    let started = Instant::now();
    let built = project::build(dir, &runtime)?;
    println!(
        "built {} ({} app, {} KiB) in {:.1?}",
        built.wasm.display(),
        match built.lang {
            Lang::Python => "Python",
            Lang::Rust => "Rust",
        },
        built.bytes.div_ceil(1024),
        started.elapsed()
    );
    if built.carries_state {
        println!("carries its state across `apps replace` (exports snapshot and restore)");
    } else {
        println!("starts from init on `apps replace` (no snapshot/restore exports)");
    }
    let cached = if built.was_cached {
        "already in the cache"
    } else {
        "compiled into the cache"
    };
    match built.replaced_cache_entries {
        0 => println!("{cached}"),
        1 => println!("{cached}; the previous build's compiled code removed (1 entry)"),
        n => println!("{cached}; the previous build's compiled code removed ({n} entries)"),
    }
    println!("run it: nodemanager run --app {}", built.wasm.display());
    Ok(())
}

fn inspect_command(path: &Path, json: bool, cache: &CacheArgs) -> Result<bool> {
    let runtime = Runtime::new(&cache.dir())?;
    let report = inspect(&runtime, path)?;
    if json {
        print_json(&serde_json::json!({
            "imports": report.imports, "exports": report.exports,
            "missing_exports": report.missing_exports, "unsupported_imports": report.unsupported_imports,
            "fits": report.fits(), "carries_state": report.carries_state(),
        }))?;
    } else {
        println!("{}", path.display());
        println!("imports:");
        report.imports.iter().for_each(|i| println!("  {i}"));
        println!("exports:");
        report.exports.iter().for_each(|e| println!("  {e}"));
        if report.fits() {
            println!("fits the world nodemanager:app/app@0.1.0");
            if report.carries_state() {
                println!("carries its state across `apps replace` (exports snapshot and restore)");
            } else {
                println!("starts from init on `apps replace` (no snapshot/restore exports: build it for the stateful-app world to carry state)");
            }
        } else {
            println!(
                "does NOT fit the world nodemanager:app/app@0.1.0:\n{}",
                report.problems().trim_end()
            );
        }
    }
    Ok(report.fits())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => match run(*args) {
            Ok(failed) if !failed.is_empty() => {
                for (name, reason) in failed {
                    eprintln!("app {name} failed: {reason}");
                }
                return ExitCode::from(APPS_FAILED);
            }
            other => other.map(|_| true),
        },
        Command::Simulate(args) => simulate(*args).map(|()| true),
        Command::Cluster(args) => match cluster(*args) {
            Ok(0) => Ok(true),
            Ok(failed) => {
                eprintln!("{failed} nodes have an app that failed (their reasons are in nodes.jsonl)");
                return ExitCode::from(APPS_FAILED);
            }
            Err(e) => Err(e),
        },
        Command::Topology(command) => generate_topology(command).map(|()| true),
        Command::Apps {
            command: AppsCommand::Deploy(args),
            ..
        } => deploy_command(args.target, Some(args.path), |order| {
            order.config = args.config;
            order.cycles = args.cycles;
            order.period = args.period;
            order.limits = args.limits;
        })
        .map(|()| true),
        Command::Apps {
            command: AppsCommand::Undeploy(args),
            ..
        } => deploy_command(args.target, None, |_| {}).map(|()| true),
        Command::Apps {
            command:
                AppsCommand::Status {
                    via,
                    context,
                    within,
                },
            ..
        } => print_over_overlay(deploy::client::status(&via, &context, within)).map(|()| true),
        Command::Keys(KeysCommand::Generate { out }) => deploy::keys::generate(&out)
            .and_then(|public| print_json(&serde_json::json!({"key_file": out, "public_key": public})))
            .map(|()| true),
        Command::Apps {
            admin,
            nodes,
            command,
        } => admin
            .context("which node? give its admin socket with --admin PATH (e.g. `nodemanager apps list --admin node.sock`)")
            .and_then(|admin| apps_command(&admin, nodes, command))
            .map(|()| true),
        Command::Nodes { admin, command } => admin
            .context("which cluster? give its admin socket with --admin PATH (e.g. `nodemanager nodes list --admin cluster.sock`)")
            .and_then(|admin| nodes_command(&admin, command))
            .map(|()| true),
        Command::New { lang, dir } => new_command(&dir, lang).map(|()| true),
        Command::Build { dir, cache } => build_command(&dir, &cache).map(|()| true),
        Command::Compile { paths, cache } => compile(&paths, &cache).map(|()| true),
        Command::Inspect { path, json, cache } => inspect_command(&path, json, &cache),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
