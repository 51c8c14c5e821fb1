//! Running `nodemanager` processes from tests: spawn, wait for the ready line, read the
//! summary, signal.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use serde_json::Value;

/// `nodemanager` from this build, with the shared component cache and no RUST_LOG.
pub fn nodemanager() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nodemanager"));
    command
        .env("NODEMANAGER_CACHE_DIR", super::test_cache_dir())
        .env_remove("RUST_LOG");
    command
}

/// Runs `nodemanager` with `args`, which must succeed, and reads the JSON it prints.
fn nodemanager_json(args: &[&std::ffi::OsStr]) -> Value {
    let output = nodemanager().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "nodemanager {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `nodemanager apps stats` through the admin socket at `socket`: every app's counters,
/// the sampler's, the network's and the deployments'.
pub fn admin_stats(socket: &Path) -> Value {
    nodemanager_json(&[
        "apps".as_ref(),
        "stats".as_ref(),
        "--admin".as_ref(),
        socket.as_ref(),
    ])
}

/// A new deployment key pair in file `key` (`nodemanager keys generate`); its public
/// key, as nodes list it in `[deploy] trusted_keys`.
pub fn deploy_key(key: &Path) -> String {
    let line = nodemanager_json(&[
        "keys".as_ref(),
        "generate".as_ref(),
        "--out".as_ref(),
        key.as_ref(),
    ]);
    line["public_key"].as_str().unwrap().to_string()
}

/// A running node: its process, its stdout, and what its first line said.
pub struct RunningNode {
    pub child: Child,
    pub stdout: BufReader<ChildStdout>,
    pub ready: Value,
    pub log: PathBuf,
}

impl RunningNode {
    pub fn spawn(args: &[String], log: PathBuf) -> RunningNode {
        RunningNode::spawn_logging(args, log, None)
    }

    /// [`RunningNode::spawn`] with `RUST_LOG` set to `filter` when given.
    pub fn spawn_logging(args: &[String], log: PathBuf, filter: Option<&str>) -> RunningNode {
        let mut command = nodemanager();
        if let Some(filter) = filter {
            command.env("RUST_LOG", filter);
        }
        let mut child = command
            .arg("run")
            .args(args)
            .arg("--log-file")
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nodemanager");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the ready line");
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "first line is not JSON ({e}): {line:?}; log:\n{}",
                read(&log)
            )
        });
        RunningNode {
            child,
            stdout,
            ready,
            log,
        }
    }

    pub fn addr(&self) -> String {
        self.ready["listen_addrs"][0]
            .as_str()
            .expect("a listen address")
            .to_string()
    }

    /// Waits for exit, which must be a success; returns the summary line.
    pub fn finish(self) -> Value {
        let log = self.log.clone();
        let (status, summary) = self.finish_with_status();
        assert!(
            status.success(),
            "node exited with {status}; log:\n{}",
            read(&log)
        );
        summary
    }

    /// Waits for exit; returns how it exited and the summary line.
    pub fn finish_with_status(mut self) -> (std::process::ExitStatus, Value) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let status = self.child.wait().unwrap();
        let summary = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("summary is not JSON ({e}): {line:?}"));
        (status, summary)
    }
}

/// A test that fails midway must not leave its nodes running.
impl Drop for RunningNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every node's peer id and log file, in order.
pub fn ids_and_logs(nodes: &[RunningNode]) -> (Vec<String>, Vec<PathBuf>) {
    nodes
        .iter()
        .map(|n| {
            let id = n.ready["peer_id"].as_str().unwrap().to_string();
            (id, n.log.clone())
        })
        .unzip()
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// How long a test waits for a condition before it fails: generous, so that a busy
/// or slow machine passes; the condition is checked every 50 ms, so a fast one does
/// not wait longer than it takes.
pub const WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(180);

/// Polls `condition` (e.g. a log line appeared) until it holds or `what` times out.
pub fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT_LIMIT;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// SIGTERM to every node, then their summaries, in order.
pub fn stop_all(nodes: Vec<RunningNode>) -> Vec<Value> {
    nodes.iter().for_each(sigterm);
    nodes.into_iter().map(RunningNode::finish).collect()
}

/// Sends SIGTERM to `node`.
pub fn sigterm(node: &RunningNode) {
    sigterm_child(&node.child);
}

/// Sends SIGTERM to a `nodemanager` process.
pub fn sigterm_child(child: &Child) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
}

/// Every view a `calm` hostile app logged, as peer-id lists.
pub fn logged_views(log: &str) -> Vec<Vec<String>> {
    log.lines()
        .filter_map(|line| line.split(" view=").nth(1))
        .map(|rest| {
            rest.split(' ')
                .next()
                .unwrap_or("")
                .split(',')
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect()
        })
        .collect()
}
