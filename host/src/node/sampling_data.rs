//! What the live sampler did: counters for the final summary, and the per-tick record
//! `nodemanager run --sampling-out FILE` writes as JSON Lines (the seed's
//! `get_data_sampling()`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use libp2p::PeerId;
use serde::Serialize;

use super::jsonl::JsonLines;
use crate::sampling::SamplingDriver;

/// Sampler counters, in the final summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SamplingStats {
    /// The algorithm (`connected`, `gbps`, `brahms`, `basalt`).
    pub algorithm: String,
    /// Ticks run.
    pub ticks: u64,
    /// Sampling messages received and handed to the sampler.
    pub messages_in: u64,
    /// Sampling messages sent.
    pub messages_out: u64,
    /// Inbound sampling messages refused (malformed, oversized, another version).
    pub refused: u64,
    /// Outbound sampling messages that did not arrive.
    pub send_failures: u64,
    /// The algorithm's own counters (e.g. Brahms's `flooded_rounds`).
    pub counters: BTreeMap<String, u64>,
    /// The view at the end.
    pub view: Vec<String>,
}

impl SamplingStats {
    /// Copies the driver's counts, the sampler's own counters and its view in.
    pub fn capture(&mut self, sampler: &SamplingDriver) {
        let counts = sampler.counts();
        self.ticks = counts.ticks;
        self.messages_in = counts.messages_in;
        self.messages_out = counts.messages_out;
        self.send_failures = counts.send_failures;
        self.counters = sampler
            .algorithm_counters()
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        self.view = sampler.view().iter().map(PeerId::to_string).collect();
    }
}

/// One line of the `--sampling-out` file: one tick.
#[derive(Serialize)]
struct TickRecord<'a> {
    tick: u64,
    /// Milliseconds since the node started.
    elapsed_ms: u64,
    view: Vec<String>,
    /// Samples emitted since the previous tick.
    samples: Vec<String>,
    /// Sampling messages received since the previous tick.
    messages_in: u64,
    /// Sampling messages sent since the previous tick (this tick's included).
    messages_out: u64,
    /// Inbound sampling messages refused since the previous tick.
    refused: u64,
    counters: &'a BTreeMap<String, u64>,
}

/// Writes one JSON line per tick, flushed, so the file is whole if the node is killed.
pub struct SamplingWriter {
    out: JsonLines,
    started: Instant,
    last: SamplingStats,
}

impl SamplingWriter {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path) -> Result<SamplingWriter> {
        Ok(SamplingWriter {
            out: JsonLines::create(path, "sampling output")?,
            started: Instant::now(),
            last: SamplingStats::default(),
        })
    }

    /// Records a tick: `stats` as they are now, `samples` emitted since the last one.
    pub fn record(&mut self, stats: &SamplingStats, samples: &[PeerId]) -> Result<()> {
        let record = TickRecord {
            tick: stats.ticks,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            view: stats.view.clone(),
            samples: samples.iter().map(PeerId::to_string).collect(),
            messages_in: stats.messages_in - self.last.messages_in,
            messages_out: stats.messages_out - self.last.messages_out,
            refused: stats.refused - self.last.refused,
            counters: &stats.counters,
        };
        self.out.write(&record)?;
        self.last = stats.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_json_line_per_tick_with_deltas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sampling.jsonl");
        let mut writer = SamplingWriter::create(&path).unwrap();
        let peer = PeerId::random();
        let mut stats = SamplingStats {
            algorithm: "gbps".into(),
            ticks: 1,
            messages_in: 3,
            messages_out: 2,
            view: vec![peer.to_string()],
            ..SamplingStats::default()
        };
        writer.record(&stats, &[peer]).unwrap();
        stats.ticks = 2;
        stats.messages_in = 5;
        writer.record(&stats, &[]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["samples"][0], peer.to_string());
        assert_eq!(lines[0]["messages_in"], 3);
        assert_eq!(lines[1]["messages_in"], 2, "counts since the previous tick");
        assert_eq!(lines[1]["messages_out"], 0);
        assert_eq!(lines[1]["view"][0], peer.to_string());
    }

    #[test]
    fn an_unwritable_path_is_named() {
        let error = SamplingWriter::create(Path::new("/nonexistent/dir/s.jsonl"))
            .err()
            .unwrap();
        assert!(format!("{error:#}").contains("/nonexistent/dir/s.jsonl"));
    }
}
