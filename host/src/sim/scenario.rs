//! Timed actions (`simulate --scenario FILE.toml`): at a virtual time, cut nodes off or
//! bring them back, change the latency, or load, replace or unload an app on chosen
//! nodes — what the seed does at run time with `disconnect_node`, `reconnect_node` and
//! `update_latency_config`, and what `apps load|replace|unload` do on a live node.
//!
//! ```toml
//! [[action]]
//! at = "5s"
//! do = "disconnect"      # disconnect | reconnect | latency | load | replace | unload
//! nodes = ["node_3"]     # or "all" (the default)
//! duration = "2s"        # disconnect only; without it, until a reconnect
//!
//! [[action]]
//! at = "10s"
//! do = "replace"
//! app = "share_vec"
//! path = "share_vec_v2.wasm"   # relative to this file
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

/// Which nodes an action applies to.
#[derive(Clone, Debug, PartialEq)]
pub enum Nodes {
    /// Every node.
    All,
    /// These nodes.
    Some(Vec<u32>),
}

impl Nodes {
    /// The nodes, of a run of `count`.
    pub fn list(&self, count: usize) -> Vec<u32> {
        match self {
            Nodes::All => (0..count as u32).collect(),
            Nodes::Some(nodes) => nodes.clone(),
        }
    }
}

/// What happens.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// The nodes go offline, for `duration` or until a reconnect.
    Disconnect {
        /// Which.
        nodes: Nodes,
        /// For how long.
        duration: Option<Duration>,
    },
    /// The nodes come back online.
    Reconnect {
        /// Which.
        nodes: Nodes,
    },
    /// The model's latency changes (per-pair latencies stay).
    Latency {
        /// The new one-way latency.
        latency: Option<Duration>,
        /// The new jitter factor.
        jitter_factor: Option<f64>,
    },
    /// The nodes start app `app` from `path` with `config` (`{index}`: the node).
    Load {
        /// Its name.
        app: String,
        /// The component.
        path: PathBuf,
        /// Its config.
        config: String,
        /// Which nodes.
        nodes: Nodes,
    },
    /// The nodes running app `app` replace it with `path`, handing the state over.
    Replace {
        /// Its name.
        app: String,
        /// The new component.
        path: PathBuf,
        /// Which nodes.
        nodes: Nodes,
    },
    /// The nodes stop app `app`.
    Unload {
        /// Its name.
        app: String,
        /// Which nodes.
        nodes: Nodes,
    },
}

/// An action at a virtual time.
#[derive(Clone, Debug, PartialEq)]
pub struct TimedAction {
    /// When, from the start of the run.
    pub at: Duration,
    /// What.
    pub action: Action,
}

/// The scenario's actions, in time order (the file's order for equal times).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scenario {
    /// The actions.
    pub actions: Vec<TimedAction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    action: Vec<ActionToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionToml {
    at: String,
    #[serde(rename = "do")]
    kind: String,
    nodes: Option<toml::Value>,
    duration: Option<String>,
    latency: Option<String>,
    jitter_factor: Option<f64>,
    app: Option<String>,
    path: Option<PathBuf>,
    config: Option<String>,
}

fn duration(field: &str, text: &str) -> Result<Duration> {
    humantime::parse_duration(text)
        .with_context(|| format!("{field}: {text:?} is not a duration like \"500ms\" or \"2s\""))
}

/// Node `name` (`node_I` or `I`) of a run of `count` nodes.
fn node(name: &str, count: usize) -> Result<u32> {
    let number = name.strip_prefix("node_").unwrap_or(name).parse().ok();
    super::seed_config::numbered_node("nodes", name, number, count)
}

fn nodes(value: Option<&toml::Value>, count: usize) -> Result<Nodes> {
    match value {
        None => Ok(Nodes::All),
        Some(toml::Value::String(all)) if all == "all" => Ok(Nodes::All),
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                toml::Value::String(name) => node(name, count),
                toml::Value::Integer(i) => node(&i.to_string(), count),
                other => bail!("nodes: {other} is not a node name"),
            })
            .collect::<Result<_>>()
            .map(Nodes::Some),
        Some(other) => bail!("nodes: {other} is neither \"all\" nor a list of nodes"),
    }
}

impl ActionToml {
    /// Refuses the fields `kind` does not take.
    fn only(&self, allowed: &[&str]) -> Result<()> {
        let given = [
            ("nodes", self.nodes.is_some()),
            ("duration", self.duration.is_some()),
            ("latency", self.latency.is_some()),
            ("jitter_factor", self.jitter_factor.is_some()),
            ("app", self.app.is_some()),
            ("path", self.path.is_some()),
            ("config", self.config.is_some()),
        ];
        if let Some((field, _)) = given
            .iter()
            .find(|(field, given)| *given && !allowed.contains(field))
        {
            bail!("`{field}` does not apply to do = {:?}", self.kind);
        }
        Ok(())
    }

    fn app(&self) -> Result<String> {
        let app = self
            .app
            .clone()
            .with_context(|| format!("do = {:?} needs `app`, the app's name", self.kind))?;
        crate::config::validate_name("app", &app)?;
        Ok(app)
    }

    fn path(&self, dir: &Path) -> Result<PathBuf> {
        let path = self
            .path
            .as_ref()
            .with_context(|| format!("do = {:?} needs `path`, the component", self.kind))?;
        Ok(dir.join(path))
    }

    fn into_action(self, count: usize, dir: &Path) -> Result<TimedAction> {
        let at = duration("at", &self.at)?;
        let nodes = || nodes(self.nodes.as_ref(), count);
        let action = match self.kind.as_str() {
            "disconnect" => {
                self.only(&["nodes", "duration"])?;
                Action::Disconnect {
                    nodes: nodes()?,
                    duration: self
                        .duration
                        .as_deref()
                        .map(|d| duration("duration", d))
                        .transpose()?,
                }
            }
            "reconnect" => {
                self.only(&["nodes"])?;
                Action::Reconnect { nodes: nodes()? }
            }
            "latency" => {
                self.only(&["latency", "jitter_factor"])?;
                if self.latency.is_none() && self.jitter_factor.is_none() {
                    bail!("do = \"latency\" needs `latency`, `jitter_factor` or both");
                }
                if let Some(f) = self.jitter_factor.filter(|f| !(0.0..=1.0).contains(f)) {
                    bail!("jitter_factor must be between 0 and 1, not {f}");
                }
                Action::Latency {
                    latency: self
                        .latency
                        .as_deref()
                        .map(|d| duration("latency", d))
                        .transpose()?,
                    jitter_factor: self.jitter_factor,
                }
            }
            "load" => {
                self.only(&["nodes", "app", "path", "config"])?;
                Action::Load {
                    app: self.app()?,
                    path: self.path(dir)?,
                    config: self.config.clone().unwrap_or_default(),
                    nodes: nodes()?,
                }
            }
            "replace" => {
                self.only(&["nodes", "app", "path"])?;
                Action::Replace {
                    app: self.app()?,
                    path: self.path(dir)?,
                    nodes: nodes()?,
                }
            }
            "unload" => {
                self.only(&["nodes", "app"])?;
                Action::Unload {
                    app: self.app()?,
                    nodes: nodes()?,
                }
            }
            other => bail!(
                "do = {other:?} is not an action: disconnect, reconnect, latency, load, replace or unload"
            ),
        };
        Ok(TimedAction { at, action })
    }
}

impl Scenario {
    /// Reads the scenario at `path` for a run of `count` nodes.
    pub fn from_file(path: &Path, count: usize) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Scenario::parse(&text, count, dir)
            .with_context(|| format!("scenario {} is not valid", path.display()))
    }

    /// Parses a scenario for a run of `count` nodes; paths are relative to `dir`.
    pub fn parse(text: &str, count: usize, dir: &Path) -> Result<Scenario> {
        let file: File = toml::from_str(text)?;
        let mut actions = file
            .action
            .into_iter()
            .enumerate()
            .map(|(i, action)| {
                action
                    .into_action(count, dir)
                    .with_context(|| format!("action {} (the {}th [[action]])", i + 1, i + 1))
            })
            .collect::<Result<Vec<_>>>()?;
        actions.sort_by_key(|a| a.at);
        Ok(Scenario { actions })
    }

    /// The components the scenario loads or replaces with.
    pub fn paths(&self) -> Vec<&Path> {
        self.actions
            .iter()
            .filter_map(|a| match &a.action {
                Action::Load { path, .. } | Action::Replace { path, .. } => Some(path.as_path()),
                _ => None,
            })
            .collect()
    }

    /// Checks that each replace or unload names an app running by then (one of
    /// `initial`, or loaded earlier).
    pub fn check_apps(&self, initial: &[String]) -> Result<()> {
        let mut known: Vec<&str> = initial.iter().map(String::as_str).collect();
        for (i, timed) in self.actions.iter().enumerate() {
            match &timed.action {
                Action::Load { app, .. } => known.push(app),
                Action::Replace { app, .. } | Action::Unload { app, .. }
                    if !known.contains(&app.as_str()) =>
                {
                    bail!(
                        "action {} at {:?} names app {app:?}, which no node runs by then (apps: {})",
                        i + 1,
                        timed.at,
                        if known.is_empty() { "none".into() } else { known.join(", ") }
                    )
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_read_in_time_order_with_paths_beside_the_file() {
        let s = Scenario::parse(
            r#"
            [[action]]
            at = "10s"
            do = "replace"
            app = "sv"
            path = "v2.wasm"
            nodes = ["node_1", 2]

            [[action]]
            at = "2s"
            do = "disconnect"
            nodes = ["node_3"]
            duration = "1500ms"

            [[action]]
            at = "4s"
            do = "latency"
            latency = "50ms"
            "#,
            5,
            Path::new("/exp"),
        )
        .unwrap();
        assert_eq!(
            s.actions,
            vec![
                TimedAction {
                    at: Duration::from_secs(2),
                    action: Action::Disconnect {
                        nodes: Nodes::Some(vec![3]),
                        duration: Some(Duration::from_millis(1500))
                    }
                },
                TimedAction {
                    at: Duration::from_secs(4),
                    action: Action::Latency {
                        latency: Some(Duration::from_millis(50)),
                        jitter_factor: None
                    }
                },
                TimedAction {
                    at: Duration::from_secs(10),
                    action: Action::Replace {
                        app: "sv".into(),
                        path: "/exp/v2.wasm".into(),
                        nodes: Nodes::Some(vec![1, 2])
                    }
                },
            ]
        );
        assert_eq!(s.paths(), vec![Path::new("/exp/v2.wasm")]);
        assert!(s.check_apps(&["sv".into()]).is_ok());
        let error = s.check_apps(&[]).unwrap_err().to_string();
        assert!(
            error.contains("names app \"sv\", which no node runs by then (apps: none)"),
            "{error}"
        );
    }

    #[test]
    fn bad_actions_are_named() {
        for (toml, expected) in [
            (
                "[[action]]\nat = \"1s\"\ndo = \"explode\"",
                "do = \"explode\" is not an action",
            ),
            (
                "[[action]]\nat = \"soon\"\ndo = \"reconnect\"",
                "at: \"soon\" is not a duration",
            ),
            (
                "[[action]]\nat = \"1s\"\ndo = \"reconnect\"\nduration = \"1s\"",
                "`duration` does not apply to do = \"reconnect\"",
            ),
            ("[[action]]\nat = \"1s\"\ndo = \"unload\"", "needs `app`"),
            (
                "[[action]]\nat = \"1s\"\ndo = \"disconnect\"\nnodes = [\"node_9\"]",
                "\"node_9\" is not a node of this run (they are node_0 to node_4)",
            ),
            (
                "[[action]]\nat = \"1s\"\ndo = \"latency\"",
                "needs `latency`, `jitter_factor` or both",
            ),
            (
                "[[action]]\nat = \"1s\"\ndo = \"latency\"\njitter_factor = 3.0",
                "jitter_factor must be between 0 and 1",
            ),
            ("[[actions]]\nat = \"1s\"", "unknown field `actions`"),
        ] {
            let error = format!(
                "{:#}",
                Scenario::parse(toml, 5, Path::new(".")).unwrap_err()
            );
            assert!(error.contains(expected), "{toml}: {error}");
        }
    }
}
