//! Sampler settings: the `[sampler]` table of the node TOML, or the JSON file the seed's
//! `Gbps(...).create(path)` writes, accepted as it is.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

/// The sampler names a config may give.
pub const KNOWN_SAMPLERS: [&str; 5] = ["connected", "gbps", "brahms", "basalt", "static"];

/// Which sampler makes the view, with its parameters (`name = "..."` selects it).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum SamplerConfig {
    /// The view is every connected peer of the same context.
    #[default]
    Connected,
    /// Gossip-based peer sampling (Jelasity et al., TOCS 2007).
    Gbps(GbpsConfig),
    /// Byzantine-resilient sampling (Bortnikov et al., Computer Networks 2009).
    Brahms(BrahmsConfig),
    /// Byzantine-tolerant sampling (Auvolat et al., Middleware 2023).
    Basalt(BasaltConfig),
    /// A fixed neighbour list from a topology file.
    Static(StaticConfig),
}

/// The `static` sampler: `topology` file (the seed's YAML or CSR JSON) and this node's
/// name in it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// The topology file.
    pub topology: PathBuf,
    /// This node's name in it (required by `nodemanager run`; the simulator names
    /// node i `node_{i+1}`).
    #[serde(default)]
    pub node: Option<String>,
    /// Time between ticks (introductions to new peers go out on ticks).
    #[serde(with = "crate::duration::text", default = "one_second")]
    pub period: Duration,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

/// Brahms parameters, in the paper's terms: view l1, samplers l2, shares α, β (γ = 1 − α − β).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrahmsConfig {
    /// l1: ids in the view.
    pub view_size: usize,
    /// l2: min-wise samplers.
    pub sampler_size: usize,
    /// α: share of the view taken from pushes.
    pub alpha: f64,
    /// β: share of the view taken from pull answers.
    pub beta: f64,
    /// Time between rounds (the seed's `delay`, stored as `time`).
    #[serde(with = "crate::duration::text", default = "two_seconds")]
    pub period: Duration,
}

impl BrahmsConfig {
    /// Checks `l1 >= 1`, `l2 >= 1`, `α, β >= 0`, `α + β <= 1` and a period > 0.
    pub fn validate(&self) -> Result<()> {
        if self.view_size == 0 || self.sampler_size == 0 {
            bail!("brahms view_size and sampler_size must be at least 1");
        }
        let (a, b) = (self.alpha, self.beta);
        if !(a.is_finite() && b.is_finite() && a >= 0.0 && b >= 0.0 && a + b <= 1.0) {
            bail!("brahms alpha ({a}) and beta ({b}) must be at least 0 and add up to at most 1");
        }
        if self.period.is_zero() {
            bail!("brahms period must be greater than zero");
        }
        Ok(())
    }
}

/// Basalt parameters, in the paper's terms: v slots, k slots reset every τ rounds.
///
/// The seed documents its one `refresh` as both "frequency of refresh" and "number of
/// refreshes": `refresh` sets k, and τ too unless `reset_interval` is given.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(from = "BasaltFields")]
pub struct BasaltConfig {
    /// v: slots in the view.
    pub view_size: usize,
    /// k: slots given fresh seeds at each reset (the seed's `refresh`).
    pub refresh: usize,
    /// τ: rounds between resets (default: `refresh`, as the seed means it; at least 1).
    pub reset_interval: u64,
    /// Time between rounds (the seed's `delay`, stored as `time`).
    pub period: Duration,
}

/// [`BasaltConfig`] as written in a config, `reset_interval` optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BasaltFields {
    view_size: usize,
    refresh: usize,
    reset_interval: Option<u64>,
    #[serde(with = "crate::duration::text", default = "two_seconds")]
    period: Duration,
}

impl From<BasaltFields> for BasaltConfig {
    fn from(fields: BasaltFields) -> BasaltConfig {
        BasaltConfig {
            view_size: fields.view_size,
            refresh: fields.refresh,
            reset_interval: fields
                .reset_interval
                .unwrap_or_else(|| default_reset_interval(fields.refresh)),
            period: fields.period,
        }
    }
}

/// τ when only `refresh` is given: every `refresh` rounds (every round when it is 0).
fn default_reset_interval(refresh: usize) -> u64 {
    refresh.max(1) as u64
}

impl BasaltConfig {
    /// Checks `v >= 1`, `k <= v`, `τ >= 1` and a period > 0.
    pub fn validate(&self) -> Result<()> {
        if self.view_size == 0 {
            bail!("basalt view_size must be at least 1");
        }
        if self.refresh > self.view_size {
            bail!(
                "basalt refresh ({}) must be at most view_size ({})",
                self.refresh,
                self.view_size
            );
        }
        if self.reset_interval == 0 {
            bail!("basalt reset_interval must be at least 1 round");
        }
        if self.period.is_zero() {
            bail!("basalt period must be greater than zero");
        }
        Ok(())
    }
}

/// How GBPS picks the peer to gossip with (the paper's peer selection).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// A uniformly random peer of the view.
    Rand,
    /// The peer with the highest age (the paper's "tail"; the seed's "old").
    #[serde(alias = "tail")]
    Old,
}

/// Which way GBPS exchanges views (the paper's view propagation).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// Send own descriptors; expect nothing back.
    Push,
    /// Ask for the peer's descriptors; send none.
    Pull,
    /// Send own descriptors and receive the peer's.
    Pushpull,
}

/// GBPS parameters, in the paper's terms: view size `c`, healer `H`, swapper `S`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GbpsConfig {
    /// `c`: descriptors in the view.
    pub view_size: usize,
    /// `H`: the oldest descriptors dropped at each exchange (self-healing).
    #[serde(default)]
    pub heal: usize,
    /// `S`: descriptors dropped because they were sent (swapping).
    #[serde(default)]
    pub swap: usize,
    /// Peer selection: `rand` or `old` (`tail`).
    pub selection_policy: Selection,
    /// View propagation: `push`, `pull` or `pushpull`.
    pub propagation_policy: Propagation,
    /// What a descriptor's age grows by each cycle.
    #[serde(default = "one")]
    pub age: u32,
    /// Time between active exchanges (the seed's `delay`, stored as `time`).
    #[serde(with = "crate::duration::text", default = "two_seconds")]
    pub period: Duration,
}

fn one() -> u32 {
    1
}

fn two_seconds() -> Duration {
    Duration::from_secs(2)
}

impl GbpsConfig {
    /// Checks the seed's constraints: `c >= 2`, `H <= c/2`, `S <= c/2 - H`, a period > 0.
    pub fn validate(&self) -> Result<()> {
        let c = self.view_size;
        if c < 2 {
            bail!("gbps view_size must be at least 2, not {c}");
        }
        if self.heal > c / 2 {
            bail!(
                "gbps heal ({}) must be at most view_size/2 ({})",
                self.heal,
                c / 2
            );
        }
        if self.swap > c / 2 - self.heal {
            bail!(
                "gbps swap ({}) must be at most view_size/2 - heal ({})",
                self.swap,
                c / 2 - self.heal
            );
        }
        if self.period.is_zero() {
            bail!("gbps period must be greater than zero");
        }
        Ok(())
    }

    /// Whether any choice reads descriptors' ages or a view's order beyond what a buffer
    /// draws: the healer (it drops the oldest, ties to the first) and tail selection
    /// (the oldest, ties to the first). Otherwise a view is only ever drawn from
    /// uniformly: its ages and the order of its rest need not be kept.
    pub fn reads_ages(&self) -> bool {
        self.heal > 0 || self.selection_policy != Selection::Rand
    }
}

impl SamplerConfig {
    /// The sampler called `name`, with default parameters (GBPS: c = 8, rand, pushpull).
    pub fn from_name(name: &str) -> Result<SamplerConfig> {
        match name {
            "connected" => Ok(SamplerConfig::Connected),
            "gbps" => Ok(SamplerConfig::Gbps(GbpsConfig {
                view_size: 8,
                heal: 1,
                swap: 3,
                selection_policy: Selection::Rand,
                propagation_policy: Propagation::Pushpull,
                age: 1,
                period: two_seconds(),
            })),
            "brahms" => Ok(SamplerConfig::Brahms(BrahmsConfig {
                view_size: 8,
                sampler_size: 8,
                alpha: 0.45,
                beta: 0.45,
                period: two_seconds(),
            })),
            "basalt" => Ok(SamplerConfig::Basalt(BasaltConfig {
                view_size: 8,
                refresh: 2,
                reset_interval: default_reset_interval(2),
                period: two_seconds(),
            })),
            other => bail!(
                "unknown sampler {other:?}: known samplers are {}",
                KNOWN_SAMPLERS.join(", ")
            ),
        }
    }

    /// The algorithm's name, as `name` in the TOML and `--sampler` spell it.
    pub fn name(&self) -> &'static str {
        match self {
            SamplerConfig::Connected => "connected",
            SamplerConfig::Gbps(_) => "gbps",
            SamplerConfig::Brahms(_) => "brahms",
            SamplerConfig::Basalt(_) => "basalt",
            SamplerConfig::Static(_) => "static",
        }
    }

    /// The sampler and its parameters in a few words, as a plot title shows them
    /// (e.g. `gbps c=4 H=0 S=0 old pushpull`).
    pub fn summary(&self) -> String {
        match self {
            SamplerConfig::Connected | SamplerConfig::Static(_) => self.name().to_string(),
            SamplerConfig::Gbps(g) => format!(
                "gbps c={} H={} S={} {} {}",
                g.view_size,
                g.heal,
                g.swap,
                format!("{:?}", g.selection_policy).to_lowercase(),
                format!("{:?}", g.propagation_policy).to_lowercase()
            ),
            SamplerConfig::Brahms(b) => format!(
                "brahms l1={} l2={} alpha={} beta={}",
                b.view_size, b.sampler_size, b.alpha, b.beta
            ),
            SamplerConfig::Basalt(b) => format!(
                "basalt v={} k={} tau={}",
                b.view_size, b.refresh, b.reset_interval
            ),
        }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        match self {
            SamplerConfig::Connected => Ok(()),
            SamplerConfig::Gbps(gbps) => gbps.validate(),
            SamplerConfig::Brahms(brahms) => brahms.validate(),
            SamplerConfig::Basalt(basalt) => basalt.validate(),
            SamplerConfig::Static(fixed) if fixed.period.is_zero() => {
                bail!("static period must be greater than zero")
            }
            SamplerConfig::Static(_) => Ok(()),
        }
    }

    /// The time between ticks; `None` for a sampler that needs none.
    pub fn period(&self) -> Option<Duration> {
        match self {
            SamplerConfig::Connected => None,
            SamplerConfig::Gbps(gbps) => Some(gbps.period),
            SamplerConfig::Brahms(brahms) => Some(brahms.period),
            SamplerConfig::Basalt(basalt) => Some(basalt.period),
            SamplerConfig::Static(fixed) => Some(fixed.period),
        }
    }

    /// Reads the JSON file the seed's `Gbps(...).create(path)` writes.
    pub fn from_seed_json(path: &Path) -> Result<SamplerConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read sampler config {}", path.display()))?;
        Self::parse_seed_json(&text)
            .with_context(|| format!("sampler config {} is not valid", path.display()))
    }

    /// Parses the seed's sampler JSON; the fields present say which algorithm it is.
    pub fn parse_seed_json(text: &str) -> Result<SamplerConfig> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct SeedGbps {
            view_size: usize,
            time: f64,
            heal: usize,
            swap: usize,
            selection_policy: Selection,
            propagation_policy: Propagation,
            age: u32,
        }
        let value: serde_json::Value = serde_json::from_str(text)?;
        let has = |key: &str| value.get(key).is_some();
        let config = if has("sampler_size") {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct SeedBrahms {
                view_size: usize,
                time: f64,
                sampler_size: usize,
                alpha: f64,
                beta: f64,
            }
            let seed: SeedBrahms = serde_json::from_value(value)?;
            SamplerConfig::Brahms(BrahmsConfig {
                view_size: seed.view_size,
                sampler_size: seed.sampler_size,
                alpha: seed.alpha,
                beta: seed.beta,
                period: seconds(seed.time)?,
            })
        } else if has("refresh") {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct SeedBasalt {
                view_size: usize,
                time: f64,
                refresh: usize,
                /// Not written by the seed (its `refresh` is k and τ): our override.
                reset_interval: Option<u64>,
            }
            let seed: SeedBasalt = serde_json::from_value(value)?;
            SamplerConfig::Basalt(BasaltConfig {
                view_size: seed.view_size,
                refresh: seed.refresh,
                reset_interval: seed
                    .reset_interval
                    .unwrap_or_else(|| default_reset_interval(seed.refresh)),
                period: seconds(seed.time)?,
            })
        } else if has("heal") {
            let seed: SeedGbps = serde_json::from_value(value)?;
            SamplerConfig::Gbps(GbpsConfig {
                view_size: seed.view_size,
                heal: seed.heal,
                swap: seed.swap,
                selection_policy: seed.selection_policy,
                propagation_policy: seed.propagation_policy,
                age: seed.age,
                period: seconds(seed.time)?,
            })
        } else {
            bail!("not a sampler config the seed writes (expected the fields of Gbps, Brahams or Basalt)");
        };
        config.validate()?;
        Ok(config)
    }
}

/// The seed's `time` field: a period in seconds.
fn seconds(time: f64) -> Result<Duration> {
    if !(time.is_finite() && time > 0.0 && time < 1e9) {
        bail!("time must be a positive number of seconds, not {time}");
    }
    Ok(Duration::from_secs_f64(time))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by the seed's package (nodemanager 0.1.3), as are the two files below:
    /// `Gbps(view_size=4, heal=0, swap=0, selection_policy=SelectionPolicy.OLD,
    /// propagation_policy=PropagationPolicy.PUSHPULL, delay=2, age=1).create(path)`.
    const SEED_GBPS: &str = include_str!("../../../tests/fixtures/seed_gbps.json");
    /// `Brahams(view_size=8, sampler_size=8, alpha=0.45, beta=0.45, delay=2).create(path)`.
    const SEED_BRAHMS: &str = include_str!("../../../tests/fixtures/seed_brahms.json");
    /// `Basalt(view_size=8, refresh=2, delay=2).create(path)` (nodemanager 0.1.3).
    const SEED_BASALT: &str = include_str!("../../../tests/fixtures/seed_basalt.json");

    #[test]
    fn reads_the_seeds_basalt_json() {
        let config = SamplerConfig::parse_seed_json(SEED_BASALT).unwrap();
        let expected = BasaltConfig {
            view_size: 8,
            refresh: 2,
            reset_interval: 2,
            period: Duration::from_secs(2),
        };
        assert_eq!(config, SamplerConfig::Basalt(expected));
        let bad = SEED_BASALT.replace("\"refresh\": 2", "\"refresh\": 9");
        let error = format!("{:#}", SamplerConfig::parse_seed_json(&bad).unwrap_err());
        assert!(
            error.contains("refresh (9) must be at most view_size (8)"),
            "{error}"
        );
        let with_tau =
            SEED_BASALT.replace("\"refresh\": 2", "\"refresh\": 2, \"reset_interval\": 10");
        let config = SamplerConfig::parse_seed_json(&with_tau).unwrap();
        assert!(matches!(config, SamplerConfig::Basalt(b) if b.reset_interval == 10));
    }

    #[test]
    fn reads_the_seeds_gbps_json() {
        let config = SamplerConfig::parse_seed_json(SEED_GBPS).unwrap();
        let SamplerConfig::Gbps(gbps) = config else {
            panic!("{config:?}")
        };
        assert_eq!(
            (gbps.view_size, gbps.heal, gbps.swap, gbps.age),
            (4, 0, 0, 1)
        );
        assert_eq!(gbps.selection_policy, Selection::Old);
        assert_eq!(gbps.propagation_policy, Propagation::Pushpull);
        assert_eq!(gbps.period, Duration::from_secs(2));
    }

    #[test]
    fn reads_the_seeds_brahms_json() {
        let config = SamplerConfig::parse_seed_json(SEED_BRAHMS).unwrap();
        let expected = BrahmsConfig {
            view_size: 8,
            sampler_size: 8,
            alpha: 0.45,
            beta: 0.45,
            period: Duration::from_secs(2),
        };
        assert_eq!(config, SamplerConfig::Brahms(expected));
        let bad = SEED_BRAHMS.replace("\"beta\": 0.45", "\"beta\": 0.75");
        let error = format!("{:#}", SamplerConfig::parse_seed_json(&bad).unwrap_err());
        assert!(error.contains("add up to at most 1"), "{error}");
    }

    #[test]
    fn refuses_bad_configs_with_a_reason() {
        let error = format!(
            "{:#}",
            SamplerConfig::parse_seed_json("{\"view_size\": 3}").unwrap_err()
        );
        assert!(
            error.contains("not a sampler config the seed writes"),
            "{error}"
        );
        let bad = SEED_GBPS.replace("\"old\"", "\"oldest\"");
        let error = format!("{:#}", SamplerConfig::parse_seed_json(&bad).unwrap_err());
        assert!(error.contains("unknown variant `oldest`"), "{error}");
        let bad = SEED_GBPS.replace("\"heal\": 0", "\"heal\": 3");
        let error = format!("{:#}", SamplerConfig::parse_seed_json(&bad).unwrap_err());
        assert!(
            error.contains("heal (3) must be at most view_size/2 (2)"),
            "{error}"
        );
        let error = SamplerConfig::from_name("nosuch").unwrap_err().to_string();
        assert!(error.contains("unknown sampler \"nosuch\""), "{error}");
    }

    #[test]
    fn reads_the_toml_table() {
        let config: SamplerConfig = toml::from_str(
            "name = \"gbps\"\nview_size = 6\nheal = 1\nswap = 2\nselection_policy = \"tail\"\n\
             propagation_policy = \"push\"\nperiod = \"500ms\"",
        )
        .unwrap();
        let SamplerConfig::Gbps(gbps) = config else {
            panic!()
        };
        assert_eq!(gbps.selection_policy, Selection::Old);
        assert_eq!(gbps.period, Duration::from_millis(500));
        assert!(
            toml::from_str::<SamplerConfig>("name = \"gbps\"\nview_size = 6\ntypo = 1").is_err()
        );
    }

    #[test]
    fn a_summary_names_the_sampler_and_its_parameters() {
        let gbps = SamplerConfig::parse_seed_json(
            r#"{"view_size": 8, "time": 1, "heal": 1, "swap": 2, "selection_policy": "old", "propagation_policy": "pushpull", "age": 1}"#,
        )
        .unwrap();
        assert_eq!(gbps.summary(), "gbps c=8 H=1 S=2 old pushpull");
        let basalt =
            SamplerConfig::parse_seed_json(r#"{"view_size": 30, "time": 1, "refresh": 5}"#)
                .unwrap();
        assert!(
            basalt.summary().starts_with("basalt v=30 k=5 tau="),
            "{}",
            basalt.summary()
        );
        assert_eq!(SamplerConfig::Connected.summary(), "connected");
    }
}
