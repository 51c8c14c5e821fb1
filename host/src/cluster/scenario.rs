//! A cluster's timed actions (`cluster --scenario FILE.toml`), in the format of
//! `simulate --scenario` (see [`crate::sim::scenario`]), on live nodes and from when
//! every node started: `disconnect` stops nodes (for `duration`, then restarts them with
//! their identity and address; their apps start again from `init`), `reconnect`
//! restarts stopped ones (once they have stopped), `load` / `replace` / `unload` act as through the admin
//! socket. `latency` is refused: a live cluster's latency is the machine's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::config::{AppSpec, NodeConfig};
use crate::node::{AdminCommand, Replacement};
use crate::runtime::{LoadRequest, Prepared, Runtime};
use crate::sim::scenario::{Action, Nodes, Scenario};

/// What a step does.
#[derive(Clone)]
pub enum StepKind {
    /// Stop the running nodes of these; restart them after the duration, if any.
    Stop(Nodes, Option<Duration>),
    /// Restart the stopped nodes of these.
    Restart(Nodes),
    /// Hand an admin command to the running nodes of these.
    Apps(Nodes, Box<AdminCommand>),
}

/// The steps still to take, in time order.
#[derive(Default)]
pub struct Steps {
    steps: Vec<(Duration, StepKind)>,
}

impl Steps {
    /// Checks `scenario` for a cluster, compiles the components it loads (once each)
    /// and resolves its apps' settings against `base`.
    pub fn prepare(
        scenario: &Scenario,
        base: &NodeConfig,
        runtime: &Arc<Runtime>,
    ) -> Result<Steps> {
        let mut compiled: HashMap<PathBuf, Prepared> = HashMap::new();
        let mut request = |app: &str, path: &PathBuf, config: &str| -> Result<LoadRequest> {
            let spec = base.resolve_app(&AppSpec {
                path: path.clone(),
                name: Some(app.to_string()),
                config: config.to_string(),
                cycles: None,
                period: None,
                limits: None,
            })?;
            let prepared = match compiled.get(path) {
                Some(prepared) => prepared.clone(),
                None => {
                    let prepared = runtime.load_component(path)?;
                    compiled.insert(path.clone(), prepared.clone());
                    prepared
                }
            };
            Ok(LoadRequest { spec, prepared })
        };
        let mut steps = Steps::default();
        for (i, timed) in scenario.actions.iter().enumerate() {
            let which = || format!("action {} (at {:?})", i + 1, timed.at);
            let kind = match &timed.action {
                Action::Disconnect { nodes, duration } => StepKind::Stop(nodes.clone(), *duration),
                Action::Reconnect { nodes } => StepKind::Restart(nodes.clone()),
                Action::Latency { .. } => bail!(
                    "{}: do = \"latency\" is for simulations: a live cluster's latency is the machine's",
                    which()
                ),
                Action::Load { app, path, config, nodes } => {
                    let load = request(app, path, config).with_context(which)?;
                    StepKind::Apps(nodes.clone(), Box::new(AdminCommand::Load(load)))
                }
                Action::Replace { app, path, nodes } => {
                    let replacement = Replacement {
                        request: request(app, path, "").with_context(which)?,
                        keep_cycles: true,
                        keep_period: true,
                        keep_limits: true,
                    };
                    StepKind::Apps(nodes.clone(), Box::new(AdminCommand::Replace(replacement)))
                }
                Action::Unload { app, nodes } => {
                    StepKind::Apps(nodes.clone(), Box::new(AdminCommand::Unload(app.clone())))
                }
            };
            steps.add(timed.at, kind);
        }
        Ok(steps)
    }

    /// Adds a step at `at` (after those already at that time).
    pub fn add(&mut self, at: Duration, kind: StepKind) {
        let position = self.steps.partition_point(|(other, _)| *other <= at);
        self.steps.insert(position, (at, kind));
    }

    /// When the next step is due, from when every node started.
    pub fn next_at(&self) -> Option<Duration> {
        self.steps.first().map(|(at, _)| *at)
    }

    /// Takes the next step.
    pub fn take(&mut self) -> Option<(Duration, StepKind)> {
        (!self.steps.is_empty()).then(|| self.steps.remove(0))
    }

    /// Whether every step was taken.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_run_in_time_order_and_latency_is_refused() {
        let scenario = Scenario::parse(
            "[[action]]\nat = \"2s\"\ndo = \"reconnect\"\nnodes = [1]\n\
             [[action]]\nat = \"1s\"\ndo = \"disconnect\"\nnodes = [1]\nduration = \"3s\"\n\
             [[action]]\nat = \"2s\"\ndo = \"unload\"\napp = \"x\"\n",
            3,
            std::path::Path::new("."),
        )
        .unwrap();
        let runtime =
            Arc::new(Runtime::new(&std::env::temp_dir().join("nm-scenario-test")).unwrap());
        let mut steps = Steps::prepare(&scenario, &NodeConfig::default(), &runtime).unwrap();
        steps.add(Duration::from_secs(2), StepKind::Restart(Nodes::All));
        let order: Vec<(u64, &str)> = std::iter::from_fn(|| steps.take())
            .map(|(at, kind)| {
                let name = match kind {
                    StepKind::Stop(..) => "stop",
                    StepKind::Restart(Nodes::All) => "restart all",
                    StepKind::Restart(_) => "restart",
                    StepKind::Apps(..) => "apps",
                };
                (at.as_secs(), name)
            })
            .collect();
        assert_eq!(
            order,
            [(1, "stop"), (2, "restart"), (2, "apps"), (2, "restart all")]
        );

        let latency = Scenario::parse(
            "[[action]]\nat = \"1s\"\ndo = \"latency\"\nlatency = \"5ms\"\n",
            3,
            std::path::Path::new("."),
        )
        .unwrap();
        let error = Steps::prepare(&latency, &NodeConfig::default(), &runtime)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("a live cluster's latency is the machine's"),
            "{error}"
        );
    }
}
