//! `--apps-dir DIR`: a folder watched for apps. `NAME.wasm` dropped in is loaded as app
//! `NAME`, with the settings of `NAME.toml` if there is one (`config`, `cycles`,
//! `period`, `[limits]`); a changed `.wasm` or `.toml` reloads the app (a replace); a
//! removed `.wasm` unloads it. The folder is scanned every [`SCAN_EVERY`]; a file is
//! taken once its size and modification time held still for one scan, so a file being
//! copied in is not loaded half-written. A bad file is logged once (until it changes)
//! and the node goes on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::admin::{app_spec, ask, compile, AdminCall, AdminCommand, Replacement};
use crate::config::{AppSpec, NodeConfig};
use crate::runtime::{Limits, Runtime};

/// How often the folder is scanned.
pub const SCAN_EVERY: Duration = Duration::from_millis(500);

/// The optional `NAME.toml` beside `NAME.wasm`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirAppSettings {
    #[serde(default)]
    config: String,
    cycles: Option<i64>,
    period: Option<String>,
    limits: Option<Limits>,
}

/// What a scan saw of one app: the `.wasm` and `.toml` stamps (size, modified).
type Stamp = (Option<(u64, SystemTime)>, Option<(u64, SystemTime)>);

fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Scans `dir` for `*.wasm`, by app name.
fn scan(dir: &Path) -> BTreeMap<String, Stamp> {
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            if let Some(name) = path.file_stem().and_then(|s| s.to_str()) {
                found.insert(
                    name.to_string(),
                    (stamp(&path), stamp(&path.with_extension("toml"))),
                );
            }
        }
    }
    found
}

/// Reads `NAME.toml` (if any) into the app's spec.
fn spec_for(dir: &Path, name: &str) -> Result<AppSpec> {
    let wasm = dir.join(format!("{name}.wasm"));
    let toml_path = dir.join(format!("{name}.toml"));
    let settings: DirAppSettings = match std::fs::read_to_string(&toml_path) {
        Ok(text) => toml::from_str(&text)
            .with_context(|| format!("{} is not valid", toml_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DirAppSettings::default(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", toml_path.display())),
    };
    app_spec(
        wasm,
        Some(name.to_string()),
        settings.config,
        settings.cycles,
        settings.period.as_deref(),
        settings.limits,
    )
    .with_context(|| format!("{}", toml_path.display()))
}

/// Watches `dir` until the node drops `calls`' receiver.
pub async fn watch(
    dir: PathBuf,
    runtime: Arc<Runtime>,
    defaults: Arc<NodeConfig>,
    calls: mpsc::Sender<AdminCall>,
) {
    // Apps as last acted on (loaded, or refused), and the previous scan.
    let mut acted: BTreeMap<String, Stamp> = BTreeMap::new();
    let mut loaded: BTreeMap<String, bool> = BTreeMap::new();
    let mut previous = BTreeMap::new();
    let mut ticker = tokio::time::interval(SCAN_EVERY);
    loop {
        ticker.tick().await;
        let now = scan(&dir);
        for (name, stamp) in &now {
            let settled = previous.get(name) == Some(stamp);
            if !settled || acted.get(name) == Some(stamp) {
                continue;
            }
            acted.insert(name.clone(), *stamp);
            let was_loaded = loaded.get(name).copied().unwrap_or(false);
            let request = match spec_for(&dir, name) {
                Ok(spec) => compile(spec, &runtime, &defaults).await,
                Err(e) => Err(e),
            };
            let command = match request {
                Ok(request) if was_loaded => AdminCommand::Replace(Replacement::as_given(request)),
                Ok(request) => AdminCommand::Load(request),
                Err(e) => {
                    tracing::error!(app = %name, dir = %dir.display(), "apps-dir: cannot load {name}.wasm: {e:#}");
                    continue;
                }
            };
            let verb = if was_loaded { "replaced" } else { "loaded" };
            match call(&calls, command).await {
                Some(Ok(())) => {
                    tracing::info!(app = %name, "apps-dir: {verb} {name}.wasm");
                    loaded.insert(name.clone(), true);
                }
                Some(Err(e)) => tracing::error!(app = %name, "apps-dir: {name}.wasm refused: {e}"),
                None => return,
            }
        }
        let removed: Vec<String> = acted
            .keys()
            .filter(|n| !now.contains_key(*n))
            .cloned()
            .collect();
        for name in removed {
            acted.remove(&name);
            if loaded.remove(&name) == Some(true) {
                match call(&calls, AdminCommand::Unload(name.clone())).await {
                    Some(Ok(())) => {
                        tracing::info!(app = %name, "apps-dir: {name}.wasm removed; unloaded")
                    }
                    Some(Err(e)) => tracing::error!(app = %name, "apps-dir: cannot unload: {e}"),
                    None => return,
                }
            }
        }
        previous = now;
    }
}

/// Sends `command` to the node; `None` once the node is shutting down.
async fn call(
    calls: &mpsc::Sender<AdminCall>,
    command: AdminCommand,
) -> Option<Result<(), String>> {
    let answer = ask(calls, |reply| AdminCall { command, reply }, "node")
        .await
        .ok()?;
    Some(if answer["ok"] == true {
        Ok(())
    } else {
        Err(answer["error"].as_str().unwrap_or("refused").to_string())
    })
}
