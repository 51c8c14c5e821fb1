//! The virtual network's model: latency (per link or for all), jitter, loss and
//! partitions, as the event engine draws each message's fate from it.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::conditions::Partitions;

/// One link's latency, overriding the model's for messages from `a` to `b` (and from
/// `b` to `a` when `both_ways`). Written `A-B=LATENCY`, e.g. `3-7=250ms` (both ways).
#[derive(Clone, Debug, PartialEq)]
pub struct LinkLatency {
    /// One end (the sender, if one way).
    pub a: u32,
    /// The other end.
    pub b: u32,
    /// The one-way latency.
    pub latency: Duration,
    /// Whether it holds from `b` to `a` too.
    pub both_ways: bool,
}

impl FromStr for LinkLatency {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<LinkLatency> {
        let shape = || format!("link `{text}` is not A-B=LATENCY (e.g. 3-7=250ms)");
        let (ends, latency) = text.split_once('=').with_context(shape)?;
        let (a, b) = ends.split_once('-').with_context(shape)?;
        Ok(LinkLatency {
            a: a.trim().parse().with_context(shape)?,
            b: b.trim().parse().with_context(shape)?,
            latency: humantime::parse_duration(latency.trim()).with_context(shape)?,
            both_ways: true,
        })
    }
}

/// Latency, loss and partitions of the virtual network.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetworkModel {
    /// One-way latency of every link.
    pub latency: Duration,
    /// Uniform jitter added to every message's latency, in `[0, jitter]`.
    pub jitter: Duration,
    /// Uniform jitter relative to the link's latency: `[0, jitter_factor × latency]` is
    /// added (the seed's `jitter_factor`).
    pub jitter_factor: f64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Per-link latencies (jitter still added).
    pub links: Vec<LinkLatency>,
    /// Who cannot reach whom.
    pub partitions: Partitions,
}

impl NetworkModel {
    /// Whether messages arrive at once and always (what the cycle engine assumes).
    pub fn is_ideal(&self) -> bool {
        self.latency.is_zero()
            && self.jitter.is_zero()
            && self.loss == 0.0
            && self.links.is_empty()
            && self.partitions.is_empty()
    }

    /// Checks the numbers against a network of `nodes` nodes.
    pub fn validate(&self, nodes: usize) -> Result<()> {
        if !(0.0..1.0).contains(&self.loss) {
            bail!("--loss must be at least 0 and below 1, not {}", self.loss);
        }
        if !(0.0..=1.0).contains(&self.jitter_factor) {
            bail!(
                "--jitter-factor must be between 0 and 1, not {}",
                self.jitter_factor
            );
        }
        if let Some(link) = self
            .links
            .iter()
            .find(|l| l.a as usize >= nodes || l.b as usize >= nodes)
        {
            bail!(
                "--link {}-{}: nodes are numbered 0 to {}",
                link.a,
                link.b,
                nodes - 1
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_overrides_parse_and_are_checked() {
        let link: LinkLatency = "3-7=250ms".parse().unwrap();
        assert_eq!(
            link,
            LinkLatency {
                a: 3,
                b: 7,
                latency: Duration::from_millis(250),
                both_ways: true
            }
        );
        for bad in ["3-7", "3=1s", "a-7=1s", "3-7=fast"] {
            let error = bad.parse::<LinkLatency>().unwrap_err().to_string();
            assert!(error.contains(bad), "{error}");
        }
        let model = NetworkModel {
            links: vec![link],
            ..NetworkModel::default()
        };
        assert!(model.validate(5).unwrap_err().to_string().contains("3-7"));
        assert!(model.validate(8).is_ok());
    }
}
