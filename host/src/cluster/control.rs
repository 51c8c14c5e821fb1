//! A cluster's admin socket. The requests of a node's socket (`list`, `stats`, `load`,
//! `replace`, `unload`) go to every running node, or to those listed in `"nodes": [0,
//! 3]`; `{index}` in a loaded app's config becomes each node's number. Three more
//! control the nodes themselves:
//!
//! - `{"cmd": "nodes"}` → `{"ok": true, "nodes": [{"index", "peer_id", "listen_addrs",
//!   "state": "running" | "stopping" | "stopped", "starts", "bootstrap"}]}`
//! - `{"cmd": "stop", "nodes": [2]}` → `{"ok": true, "stopped": [2]}` once they stopped
//! - `{"cmd": "restart", "nodes": [2]}`: stops those running, then starts each again with
//!   its identity and address → `{"ok": true, "restarted": [{"index", "peer_id",
//!   "listen_addrs"}]}`
//!
//! An answer to a node request lists each node's own answer (`{"index", "ok", ...}`);
//! it is `ok` when every node's is.

use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::config::NodeConfig;
use crate::node::{ask, parse_command, AdminCommand, Answer};
use crate::runtime::Runtime;

/// The nodes a request is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every running node.
    All,
    /// These, by number.
    Listed(Vec<usize>),
}

/// What the cluster's loop is asked to do.
pub enum ClusterRequest {
    /// Describe every node.
    Nodes,
    /// Stop these nodes.
    Stop(Vec<usize>),
    /// Stop these nodes if running, then start them again.
    Restart(Vec<usize>),
    /// Hand a node's admin command to these nodes.
    Apps(Selection, Box<AdminCommand>),
}

/// A request and where its answer goes.
pub struct ClusterCall {
    /// The request.
    pub request: ClusterRequest,
    /// The answer (a JSON object with `ok`).
    pub reply: oneshot::Sender<Value>,
}

/// Answers a cluster's admin socket through its loop.
#[derive(Clone)]
pub struct ClusterAnswers {
    /// Compiles the components to load, once for every node.
    pub runtime: Arc<Runtime>,
    /// The nodes' common settings, which an app's unsaid settings default to.
    pub defaults: Arc<NodeConfig>,
    /// The cluster's loop.
    pub calls: mpsc::Sender<ClusterCall>,
}

impl Answer for ClusterAnswers {
    async fn answer(&self, request: String) -> Result<Value> {
        let mut fields: Map<String, Value> =
            serde_json::from_str(&request).context("malformed request")?;
        let listed = fields
            .remove("nodes")
            .map(|nodes| {
                serde_json::from_value::<Vec<usize>>(nodes)
                    .context("`nodes` must be a list of node numbers, e.g. [0, 3]")
            })
            .transpose()?;
        let cmd = fields
            .get("cmd")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let only_nodes = |cmd: &str| -> Result<()> {
            if let Some(other) = fields.keys().find(|key| *key != "cmd") {
                bail!("`{cmd}` takes no `{other}`");
            }
            Ok(())
        };
        let request = match cmd {
            "nodes" => {
                only_nodes(cmd)?;
                if listed.is_some() {
                    bail!("`nodes` describes every node: drop the list");
                }
                ClusterRequest::Nodes
            }
            "stop" | "restart" => {
                only_nodes(cmd)?;
                let listed = listed
                    .filter(|listed| !listed.is_empty())
                    .with_context(|| {
                        format!("`{cmd}` needs `nodes`: the numbers of the nodes to {cmd}")
                    })?;
                if cmd == "stop" {
                    ClusterRequest::Stop(listed)
                } else {
                    ClusterRequest::Restart(listed)
                }
            }
            _ => {
                let selection = listed.map_or(Selection::All, Selection::Listed);
                let request = Value::Object(fields).to_string();
                let command = parse_command(&request, &self.runtime, &self.defaults).await?;
                ClusterRequest::Apps(selection, Box::new(command))
            }
        };
        ask(
            &self.calls,
            |reply| ClusterCall { request, reply },
            "cluster",
        )
        .await
    }
}

/// Checks that every listed node exists, each once.
pub fn check_listed(listed: &[usize], nodes: usize) -> Result<()> {
    if let Some(index) = listed.iter().find(|&&index| index >= nodes) {
        bail!("there is no node {index}: the nodes are 0 to {}", nodes - 1);
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(index) = listed.iter().find(|index| !seen.insert(**index)) {
        bail!("node {index} is listed twice");
    }
    Ok(())
}

/// One answer for a request handed to several nodes: theirs, each with its `index`;
/// `ok` when all are.
pub fn gather(answers: Vec<(usize, Value)>) -> Value {
    let refused: Vec<String> = answers
        .iter()
        .filter(|(_, answer)| answer["ok"] != true)
        .map(|(index, answer)| {
            let error = answer["error"].as_str().unwrap_or("refused");
            format!("node {index}: {error}")
        })
        .collect();
    let total = answers.len();
    let nodes: Vec<Value> = answers
        .into_iter()
        .map(|(index, mut answer)| {
            if let Some(fields) = answer.as_object_mut() {
                fields.insert("index".into(), index.into());
            }
            answer
        })
        .collect();
    let mut answer = serde_json::json!({"ok": refused.is_empty(), "nodes": nodes});
    if let Some(first) = refused.first() {
        answer["error"] = format!(
            "refused on {} of {total} nodes (first: {first})",
            refused.len()
        )
        .into();
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn listed_nodes_must_exist_once() {
        assert!(check_listed(&[0, 2], 3).is_ok());
        let error = check_listed(&[3], 3).unwrap_err().to_string();
        assert_eq!(error, "there is no node 3: the nodes are 0 to 2");
        let error = check_listed(&[1, 1], 3).unwrap_err().to_string();
        assert_eq!(error, "node 1 is listed twice");
    }

    #[test]
    fn gathered_answers_are_ok_only_when_every_node_is() {
        let answer = gather(vec![(0, json!({"ok": true})), (4, json!({"ok": true}))]);
        assert_eq!(
            answer,
            json!({"ok": true, "nodes": [{"ok": true, "index": 0}, {"ok": true, "index": 4}]})
        );
        let answer = gather(vec![
            (0, json!({"ok": true})),
            (4, json!({"ok": false, "error": "no app named x"})),
        ]);
        assert_eq!(answer["ok"], false);
        assert_eq!(
            answer["error"],
            "refused on 1 of 2 nodes (first: node 4: no app named x)"
        );
        assert_eq!(answer["nodes"][1]["index"], 4);
    }
}
