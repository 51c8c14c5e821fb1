//! Node configuration: the TOML file given to `nodemanager run --config`, which the
//! command-line flags then override.
//!
//! ```toml
//! context = "demo"                      # nodes of different contexts never talk
//! listen = ["/ip4/127.0.0.1/tcp/0"]     # multiaddrs; port 0 picks a free port
//!                                       # (default: loopback, per network.transport)
//! identity = "node0.key"                # optional: persistent ed25519 key (made on first run)
//! bootstrap = []                        # full multiaddrs (ending in /p2p/<id>) to dial
//! cycles = 5                            # default for every app; -1 runs forever
//! period = "1s"                         # default for every app
//! linger = "2s"                         # how long to stay up after every app is done
//! seed = 7                              # optional: reproducible randomness for apps
//! log_file = "node0.log"                # optional: log here instead of stderr
//! log_format = "text"                   # or "json" (one JSON object per line)
//! log_collector = "http://127.0.0.1:8080/log"  # optional: POST log records there
//! sampling_out = "node0.sampling.jsonl"  # optional: one JSON line per sampler tick
//! admin = "node0.sock"                  # optional: admin socket (`nodemanager apps`)
//! apps_dir = "apps/"                     # optional: folder watched for NAME.wasm (+ NAME.toml)
//! metrics_out = "node0.metrics.jsonl"    # optional: counters every metrics_every ("1s")
//!
//! [sampler]
//! name = "connected"                    # the view: every connected peer
//! # or: name = "gbps", view_size = 8, heal = 1, swap = 3, selection_policy = "rand",
//! #     propagation_policy = "pushpull", age = 1, period = "2s"
//!
//! [network]                             # the seed's NetworkSettings (README: every field)
//! transport = "tcp"                     # tcp, quic or both
//! enable_kad = true
//!
//! [limits]                              # defaults for every app
//! memory_mib = 256
//! call_deadline = "1s"
//!
//! [[apps]]
//! path = "build/guests/share_vec_rust.wasm"
//! name = "share_vec"                    # default: the file name without .wasm
//! config = ""                           # string handed to the app's init
//! # cycles, period and [apps.limits] override the defaults above for this app
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use libp2p::Multiaddr;
use serde::Deserialize;

use crate::deploy::DeploySettings;
use crate::logging::LogFormat;
pub use crate::network::{NetworkSettings, Transport};
use crate::runtime::Limits;
pub use crate::sampling::SamplerConfig;

/// The whole configuration of one node.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Nodes only exchange messages with nodes of the same context.
    pub context: String,
    /// Listen multiaddrs; none listens on loopback with the chosen transports.
    pub listen: Vec<Multiaddr>,
    /// File holding the node's ed25519 key, created (mode 0600) when missing; none
    /// makes a fresh identity for the run.
    pub identity: Option<PathBuf>,
    /// Peers to dial on start (full multiaddrs ending in `/p2p/<peer id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Default number of `periodic-run` calls per app; -1 runs forever.
    pub cycles: i64,
    /// Default time between `periodic-run` calls.
    #[serde(with = "crate::duration::text")]
    pub period: Duration,
    /// How long the node stays up once every app is done.
    #[serde(with = "crate::duration::text")]
    pub linger: Duration,
    /// Seed for the apps' randomness (reproducible runs); none draws from the OS.
    pub seed: Option<u64>,
    /// Log file; none logs to stderr.
    pub log_file: Option<PathBuf>,
    /// Log lines as text or JSON.
    pub log_format: LogFormat,
    /// HTTP URL that log records are POSTed to, in JSON batches.
    pub log_collector: Option<String>,
    /// Where to write one JSON line per sampler tick (view, samples, messages).
    pub sampling_out: Option<PathBuf>,
    /// Unix socket of the admin interface; with it the node runs until a signal, and
    /// apps can be loaded and unloaded while it runs.
    pub admin: Option<PathBuf>,
    /// A folder watched for apps (`NAME.wasm` + optional `NAME.toml`); with it the node
    /// runs until a signal.
    pub apps_dir: Option<PathBuf>,
    /// Where to write the apps' and the sampler's counters as JSON Lines, every
    /// `metrics_every`.
    pub metrics_out: Option<PathBuf>,
    /// Time between two `metrics_out` lines.
    #[serde(with = "crate::duration::text")]
    pub metrics_every: Duration,
    /// Folder of compiled components; none uses the default cache folder.
    pub cache_dir: Option<PathBuf>,
    /// Most MiB of compiled components the cache folder keeps (least recently used
    /// entries are evicted).
    pub cache_max_mib: u64,
    /// The libp2p layer.
    pub network: NetworkSettings,
    /// The peer-sampling service that makes the view.
    pub sampler: SamplerConfig,
    /// Default limits for every app.
    pub limits: Limits,
    /// Deployment over the overlay: the keys trusted, the largest component.
    pub deploy: DeploySettings,
    /// The apps to run.
    pub apps: Vec<AppSpec>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            context: "default".into(),
            listen: Vec::new(),
            identity: None,
            bootstrap: Vec::new(),
            cycles: 5,
            period: Duration::from_secs(1),
            linger: Duration::from_secs(2),
            seed: None,
            log_file: None,
            log_format: LogFormat::Text,
            log_collector: None,
            sampling_out: None,
            admin: None,
            apps_dir: None,
            metrics_out: None,
            metrics_every: Duration::from_secs(1),
            cache_dir: None,
            cache_max_mib: 2048,
            network: NetworkSettings::default(),
            sampler: SamplerConfig::default(),
            limits: Limits::default(),
            deploy: DeploySettings::default(),
            apps: Vec::new(),
        }
    }
}

/// One app to run on the node.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// The component file.
    pub path: PathBuf,
    /// The name messages are routed by; default: the file name without `.wasm`.
    #[serde(default)]
    pub name: Option<String>,
    /// The string handed to the app's `init`.
    #[serde(default)]
    pub config: String,
    /// `periodic-run` calls; default: the node's `cycles`.
    #[serde(default)]
    pub cycles: Option<i64>,
    /// Time between `periodic-run` calls; default: the node's `period`.
    #[serde(
        default,
        with = "crate::duration::optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub period: Option<Duration>,
    /// Limits; default: the node's `[limits]`.
    #[serde(default)]
    pub limits: Option<Limits>,
}

impl AppSpec {
    /// Parses the command line's `PATH[:NAME]`.
    pub fn from_arg(arg: &str) -> Result<AppSpec, String> {
        let (path, name) = match arg.rsplit_once(':') {
            Some((path, name)) if !name.contains('/') => (path, Some(name.to_string())),
            _ => (arg, None),
        };
        if path.is_empty() {
            return Err(format!("--app {arg:?}: expected PATH[:NAME]"));
        }
        Ok(AppSpec {
            path: path.into(),
            name,
            config: String::new(),
            cycles: None,
            period: None,
            limits: None,
        })
    }

    /// The app's routing name.
    pub fn resolved_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
    }
}

/// An app's settings after defaults are applied.
#[derive(Clone, Debug)]
pub struct ResolvedApp {
    /// Routing name.
    pub name: String,
    /// Component file.
    pub path: PathBuf,
    /// `init` string.
    pub config: String,
    /// Number of cycles, `None` for forever.
    pub cycles: Option<u64>,
    /// Time between cycles.
    pub period: Duration,
    /// Sandbox limits.
    pub limits: Limits,
}

/// Checks an app or context name: 1 to 64 characters from `A-Z a-z 0-9 _ - .`.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        bail!("{what} {name:?} is not valid: use 1 to 64 characters from A-Z a-z 0-9 _ - .");
    }
    Ok(())
}

/// A bootstrap address names its peer (`/p2p/<peer id>`), unless it names its host by
/// DNS (`/dns4/HOST/tcp/PORT`): on an orchestrator the peer id is not known in advance,
/// and the peer is whoever answers there.
fn check_bootstrap_address(addr: &Multiaddr) -> Result<()> {
    use libp2p::multiaddr::Protocol;
    let named = addr.iter().any(|p| matches!(p, Protocol::P2p(_)));
    let by_dns = addr
        .iter()
        .any(|p| matches!(p, Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)));
    if !named && !by_dns {
        bail!(
            "bootstrap address {addr} has no /p2p/<peer id> part (only a /dns4/HOST/... address may leave it out)"
        );
    }
    Ok(())
}

impl NodeConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<NodeConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut config: NodeConfig = toml::from_str(&text)
            .with_context(|| format!("config file {} is not valid", path.display()))?;
        // App paths in the file are relative to the file.
        let base = path.parent().unwrap_or(Path::new("."));
        for app in &mut config.apps {
            if app.path.is_relative() {
                app.path = base.join(&app.path);
            }
        }
        Ok(config)
    }

    /// The listen addresses: the configured ones, or loopback for each transport.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        if self.listen.is_empty() {
            self.network.transport.default_listen()
        } else {
            self.listen.clone()
        }
    }

    /// Refuses a node (or cluster) with no apps and no way to load any later.
    pub fn check_has_apps(&self) -> Result<()> {
        let later =
            self.admin.is_some() || self.apps_dir.is_some() || !self.deploy.trusted_keys.is_empty();
        if self.apps.is_empty() && !later {
            bail!(
                "no apps to run: give --app PATH[:NAME] or [[apps]] in the config file, \
                 or --admin PATH / --apps-dir DIR / [deploy] trusted_keys to load apps later"
            );
        }
        Ok(())
    }

    /// Checks everything that can be checked before starting, and applies defaults to
    /// the apps.
    pub fn resolve_apps(&self) -> Result<Vec<ResolvedApp>> {
        validate_name("context", &self.context)?;
        self.sampler.validate()?;
        self.limits.validate()?;
        self.network.validate()?;
        self.deploy.validate()?;
        for addr in &self.listen {
            self.network.transport.check("listen address", addr)?;
        }
        if let Some(url) = &self.log_collector {
            crate::logging::check_collector_url(url)?;
        }
        for addr in &self.bootstrap {
            self.network.transport.check("bootstrap address", addr)?;
            check_bootstrap_address(addr)?;
        }
        if self.metrics_every.is_zero() {
            bail!("metrics_every must be greater than zero");
        }
        if let Some(dir) = &self.apps_dir {
            if !dir.is_dir() {
                bail!("apps_dir {} is not a folder", dir.display());
            }
        }
        let mut resolved: Vec<ResolvedApp> = Vec::new();
        for spec in &self.apps {
            let app = self.resolve_app(spec)?;
            if resolved.iter().any(|a| a.name == app.name) {
                bail!(
                    "two apps are named {:?}: give one another name with PATH:NAME",
                    app.name
                );
            }
            resolved.push(app);
        }
        Ok(resolved)
    }

    /// One app's settings with the node's defaults applied, checked.
    pub fn resolve_app(&self, spec: &AppSpec) -> Result<ResolvedApp> {
        let name = spec.resolved_name();
        validate_name("app name", &name)?;
        let cycles = match spec.cycles.unwrap_or(self.cycles) {
            -1 => None,
            n if n >= 0 => Some(n as u64),
            n => bail!("app {name}: cycles must be -1 (forever) or at least 0, not {n}"),
        };
        let period = spec.period.unwrap_or(self.period);
        if period.is_zero() {
            bail!("app {name}: period must be greater than zero");
        }
        let limits = spec.limits.clone().unwrap_or_else(|| self.limits.clone());
        limits.validate().with_context(|| format!("app {name}"))?;
        let frame_limit = self.network.request_response.max_requests_size;
        if limits.max_payload_bytes > frame_limit {
            bail!(
                "app {name}: limits.max_payload_bytes ({}) is over network.request_response.max_requests_size ({frame_limit})",
                limits.max_payload_bytes
            );
        }
        Ok(ResolvedApp {
            name,
            path: spec.path.clone(),
            config: spec.config.clone(),
            cycles,
            period,
            limits,
        })
    }
}
