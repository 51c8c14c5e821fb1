//! The admin interface: a Unix socket (mode 0600) speaking JSON Lines. Each request is
//! one line, at most [`MAX_REQUEST`] bytes; each answer is one line with `"ok": true`
//! and the result, or `"ok": false` and an `"error"` naming what is wrong. Requests:
//!
//! - `{"cmd": "list"}` → `{"ok": true, "apps": [AppInfo...]}`
//! - `{"cmd": "stats"}` → `{"ok": true, "apps": [...], "unloaded": [...], "sampling": {...}}`
//! - `{"cmd": "load", "path": "app.wasm" | "component": "<sha256>", "name": "x",
//!   "config": "", "cycles": 10, "period": "1s", "limits": {"memory_mib": 64, ...}}`
//!   → `{"ok": true, "name": "x", "component": "<sha256>"}` (all but `path`/`component`
//!   optional; the node's defaults apply; `name` defaults to the file name)
//! - `{"cmd": "replace", ...as load}`: unload the app of that name, then load
//! - `{"cmd": "unload", "name": "x"}` → `{"ok": true, "app": AppInfo}` once the app has
//!   handled the messages queued for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::config::{AppSpec, NodeConfig, ResolvedApp};
use crate::runtime::{Limits, LoadRequest, Runtime};

/// The longest request line accepted.
pub const MAX_REQUEST: usize = 1024 * 1024;

/// A request as it arrives on the socket.
#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
enum Request {
    List,
    Stats,
    Load(LoadArgs),
    Replace(LoadArgs),
    Unload { name: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadArgs {
    path: Option<PathBuf>,
    component: Option<String>,
    name: Option<String>,
    #[serde(default)]
    config: String,
    cycles: Option<i64>,
    period: Option<String>,
    limits: Option<Limits>,
}

/// What the node's event loop is asked to do (components already compiled).
#[derive(Clone)]
pub enum AdminCommand {
    /// The loaded apps.
    List,
    /// Counters of every app, loaded and unloaded, and of the sampler.
    Stats,
    /// Start an app.
    Load(LoadRequest),
    /// Swap an app for a new one under the same name.
    Replace(Replacement),
    /// Drain and stop an app.
    Unload(String),
}

/// A new version of a loaded app, and which of its settings were left unsaid (those
/// the running version keeps).
#[derive(Clone)]
pub struct Replacement {
    /// The new version, its unsaid settings resolved against the node's defaults.
    pub request: LoadRequest,
    /// Keep the running version's cycles.
    pub keep_cycles: bool,
    /// Keep the running version's period.
    pub keep_period: bool,
    /// Keep the running version's limits.
    pub keep_limits: bool,
}

impl Replacement {
    /// A replacement whose settings are all given (e.g. by an apps-dir `.toml`).
    pub fn as_given(request: LoadRequest) -> Replacement {
        Replacement {
            request,
            keep_cycles: false,
            keep_period: false,
            keep_limits: false,
        }
    }

    /// The request, with the settings left unsaid taken from `running`.
    pub fn keeping(self, running: Option<&ResolvedApp>) -> LoadRequest {
        let mut request = self.request;
        if let Some(running) = running {
            if self.keep_cycles {
                request.spec.cycles = running.cycles;
            }
            if self.keep_period {
                request.spec.period = running.period;
            }
            if self.keep_limits {
                request.spec.limits = running.limits.clone();
            }
        }
        request
    }
}

/// A command and where its answer goes.
pub struct AdminCall {
    /// The command.
    pub command: AdminCommand,
    /// The answer (a JSON object with `ok`).
    pub reply: oneshot::Sender<Value>,
}

/// An error answer.
pub fn refusal(error: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": error.to_string()})
}

/// Listens on `path` and forwards commands to the node through `calls`.
pub struct AdminServer {
    listener: UnixListener,
    path: PathBuf,
}

impl AdminServer {
    /// Binds the socket (a stale socket file from a dead node is replaced) with mode 0600.
    pub fn bind(path: &Path) -> Result<AdminServer> {
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("admin socket {} is in use by another node", path.display());
            }
            std::fs::remove_file(path).with_context(|| {
                format!("cannot remove the stale admin socket {}", path.display())
            })?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot open the admin socket {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {} to its owner", path.display()))?;
        Ok(AdminServer {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serves connections, each request answered by `answers`, until aborted.
    pub async fn serve(self, answers: impl Answer) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("admin socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let answers = answers.clone();
            tokio::spawn(async move {
                if let Err(e) = connection(stream, answers).await {
                    tracing::info!("admin connection ended: {e:#}");
                }
            });
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What answers the requests of an admin socket: a node's, or a cluster's.
pub trait Answer: Clone + Send + Sync + 'static {
    /// The answer to one request (a non-empty line of UTF-8 text).
    fn answer(&self, request: String) -> impl std::future::Future<Output = Result<Value>> + Send;
}

/// Answers the requests of one connection, a line each.
async fn connection(stream: UnixStream, answers: impl Answer) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let read = (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if read == 0 {
            return Ok(());
        }
        if line.len() > MAX_REQUEST {
            let answer = refusal(format!("request over {MAX_REQUEST} bytes; closing"));
            write.write_all(format!("{answer}\n").as_bytes()).await?;
            return Ok(());
        }
        let answer = match request_text(line) {
            Ok(text) => answers.answer(text).await,
            Err(e) => Err(e),
        };
        let answer = answer.unwrap_or_else(|e| refusal(format!("{e:#}")));
        write.write_all(format!("{answer}\n").as_bytes()).await?;
    }
}

/// A request line as text, refused when it is not UTF-8 or empty.
fn request_text(line: Vec<u8>) -> Result<String> {
    let text = String::from_utf8(line).context("the request is not UTF-8")?;
    if text.trim().is_empty() {
        bail!("empty request: send one JSON object per line, e.g. {{\"cmd\": \"list\"}}");
    }
    Ok(text)
}

/// A node's admin requests, carried out by its event loop.
#[derive(Clone)]
pub struct NodeAnswers {
    /// Compiles the components to load.
    pub runtime: Arc<Runtime>,
    /// The node's settings, which an app's unsaid settings default to.
    pub defaults: Arc<NodeConfig>,
    /// The node's event loop.
    pub calls: mpsc::Sender<AdminCall>,
}

impl Answer for NodeAnswers {
    async fn answer(&self, request: String) -> Result<Value> {
        if serde_json::from_str::<Value>(&request).is_ok_and(|r| r.get("nodes").is_some()) {
            bail!("this is one node's admin socket: `nodes` selects the nodes of a cluster");
        }
        let command = parse_command(&request, &self.runtime, &self.defaults).await?;
        ask(&self.calls, |reply| AdminCall { command, reply }, "node").await
    }
}

/// Turns a request into a command, compiling the component of a load or replace.
pub async fn parse_command(
    request: &str,
    runtime: &Arc<Runtime>,
    defaults: &NodeConfig,
) -> Result<AdminCommand> {
    let request: Request = serde_json::from_str(request).context("malformed request")?;
    Ok(match request {
        Request::List => AdminCommand::List,
        Request::Stats => AdminCommand::Stats,
        Request::Unload { name } => AdminCommand::Unload(name),
        Request::Load(args) => AdminCommand::Load(prepare(args, runtime, defaults).await?),
        Request::Replace(args) => {
            let (keep_cycles, keep_period, keep_limits) = (
                args.cycles.is_none(),
                args.period.is_none(),
                args.limits.is_none(),
            );
            AdminCommand::Replace(Replacement {
                request: prepare(args, runtime, defaults).await?,
                keep_cycles,
                keep_period,
                keep_limits,
            })
        }
    })
}

/// Sends a request, made with the channel its answer comes back on, to an event loop
/// (a node's or a cluster's, `who`) and waits for the answer.
pub async fn ask<C>(
    calls: &mpsc::Sender<C>,
    request: impl FnOnce(oneshot::Sender<Value>) -> C,
    who: &str,
) -> Result<Value> {
    let (reply, answer) = oneshot::channel();
    let shutting_down = || anyhow::anyhow!("the {who} is shutting down");
    calls
        .send(request(reply))
        .await
        .map_err(|_| shutting_down())?;
    answer.await.map_err(|_| shutting_down())
}

/// Resolves a load request against the node's defaults and compiles its component (off
/// the event loop: a Python component takes seconds the first time).
async fn prepare(
    args: LoadArgs,
    runtime: &Arc<Runtime>,
    defaults: &NodeConfig,
) -> Result<LoadRequest> {
    let settings = |path| {
        app_spec(
            path,
            args.name.clone(),
            args.config.clone(),
            args.cycles,
            args.period.as_deref(),
            args.limits.clone(),
        )
    };
    match (&args.path, &args.component) {
        (Some(path), None) => compile(settings(path.clone())?, runtime, defaults).await,
        (None, Some(hash)) => {
            if args.name.is_none() {
                bail!("loading by component hash needs a name");
            }
            let spec = defaults.resolve_app(&settings(PathBuf::from(format!("{hash}.wasm")))?)?;
            let prepared = runtime.prepared(hash).with_context(|| {
                format!("this node holds no component with hash {hash}; load it by path first")
            })?;
            Ok(LoadRequest { spec, prepared })
        }
        _ => bail!("give exactly one of path (a .wasm file) or component (a content hash)"),
    }
}

/// An app's settings as the admin protocol and `--apps-dir` give them (`period` as
/// text such as `"500ms"`).
pub fn app_spec(
    path: PathBuf,
    name: Option<String>,
    config: String,
    cycles: Option<i64>,
    period: Option<&str>,
    limits: Option<Limits>,
) -> Result<AppSpec> {
    let period = period
        .map(crate::duration::parse_duration)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("period")?;
    Ok(AppSpec {
        path,
        name,
        config,
        cycles,
        period,
        limits,
    })
}

/// Resolves `spec` against the node's defaults and compiles its file off the event loop.
pub async fn compile(
    spec: AppSpec,
    runtime: &Arc<Runtime>,
    defaults: &NodeConfig,
) -> Result<LoadRequest> {
    let spec = defaults.resolve_app(&spec)?;
    let runtime = runtime.clone();
    let path = spec.path.clone();
    let prepared = tokio::task::spawn_blocking(move || runtime.load_component(&path)).await??;
    Ok(LoadRequest { spec, prepared })
}
