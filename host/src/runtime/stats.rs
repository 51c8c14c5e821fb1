//! What an app did and how its messages ended: its state, counters and call times,
//! as the node's summary, `apps list` and the simulator report them.

use serde::Serialize;

/// How a message an app queued ended, as far as this node can know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The destination accepted it for its app.
    Delivered,
    /// It certainly did not reach the destination's app (refused, unreachable, never
    /// sent); the text says why.
    Failed(String),
    /// No answer came (timed out, the connection closed or the node shut down while
    /// waiting): the destination may or may not have accepted it; the text says why.
    Unknown(String),
}

/// Where an app stands.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AppState {
    /// Starting or running its cycles.
    #[default]
    Running,
    /// All cycles done (it still handles messages until the node exits).
    Done,
    /// Stopped for good; `reason` says why.
    Failed,
    /// Unloaded (or replaced) while the node ran.
    Unloaded,
}

/// Call durations in buckets of a quarter power of two of microseconds (at most ~19%
/// wide), for percentiles without keeping every sample.
#[derive(Clone, Debug, Default)]
pub struct CallTimes {
    buckets: Vec<u64>,
    count: u64,
}

impl CallTimes {
    fn bucket(micros: u64) -> usize {
        if micros < 4 {
            return micros as usize;
        }
        let power = 63 - micros.leading_zeros() as usize; // micros >= 2^power
        let quarter = ((micros >> (power - 2)) & 3) as usize;
        power * 4 + quarter - 4
    }

    /// The largest duration bucket `index` holds.
    fn upper(index: usize) -> u64 {
        if index < 4 {
            return index as u64;
        }
        let (power, quarter) = ((index + 4) / 4, (index + 4) % 4);
        (1u64 << power) + ((quarter as u64 + 1) << (power - 2)) - 1
    }

    /// Counts one call of `micros` microseconds.
    pub fn record(&mut self, micros: u64) {
        let index = Self::bucket(micros);
        if self.buckets.len() <= index {
            self.buckets.resize(index + 1, 0);
        }
        self.buckets[index] += 1;
        self.count += 1;
    }

    /// Adds `other`'s calls to these.
    pub fn merge(&mut self, other: &CallTimes) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
    }

    /// The duration under which fraction `q` of the calls fell (bucket upper bound).
    pub fn quantile(&self, q: f64) -> u64 {
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::upper(index);
            }
        }
        0
    }
}

/// What an app did with its cycles and messages: the counters that add up across
/// instances (a simulation sums them over its nodes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AppCounts {
    /// `periodic-run` calls made.
    pub cycles: u64,
    /// Messages the destination accepted.
    pub sent: u64,
    /// Messages handed to `handle-message`.
    pub received: u64,
    /// Messages refused by `send-message`, or certainly not delivered.
    pub send_errors: u64,
    /// Messages whose fate is unknown: no answer came (timeout, connection lost, or
    /// the node shut down while waiting); the destination may have accepted them.
    pub send_unknown: u64,
    /// Calls that returned an error (the app went on).
    pub call_errors: u64,
}

impl AppCounts {
    /// Counts how one sent message ended.
    pub fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Delivered => self.sent += 1,
            Outcome::Failed(_) => self.send_errors += 1,
            Outcome::Unknown(_) => self.send_unknown += 1,
        }
    }
}

impl std::ops::AddAssign for AppCounts {
    fn add_assign(&mut self, other: AppCounts) {
        self.cycles += other.cycles;
        self.sent += other.sent;
        self.received += other.received;
        self.send_errors += other.send_errors;
        self.send_unknown += other.send_unknown;
        self.call_errors += other.call_errors;
    }
}

/// An app's counters, as the final summary prints them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AppStats {
    /// Calls into the app (init, periodic-run, handle-message, delivery-report).
    pub calls: u64,
    /// Median call time, in microseconds (within ~19%).
    pub call_time_p50_us: u64,
    /// 99th-percentile call time, in microseconds (within ~19%).
    pub call_time_p99_us: u64,
    /// Median lateness of `periodic-run` calls (how long after its slot a call began),
    /// in microseconds (within ~19%; 0 in a simulation, whose clock waits for calls).
    pub cycle_lateness_p50_us: u64,
    /// 99th-percentile lateness of `periodic-run` calls, in microseconds.
    pub cycle_lateness_p99_us: u64,
    /// Linear memory the app holds, in bytes.
    pub memory_bytes: u64,
    /// Payload bytes handed to `handle-message`.
    pub bytes_in: u64,
    /// Payload bytes the app queued with `send-message`.
    pub bytes_out: u64,
    /// Cycles run and messages sent, received and failed.
    #[serde(flatten)]
    pub counts: AppCounts,
    /// Where the app stands.
    pub state: AppState,
    /// Why the app failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip)]
    call_times: CallTimes,
    #[serde(skip)]
    cycle_lateness: CallTimes,
}

impl AppStats {
    /// The durations of its calls.
    pub fn call_times(&self) -> &CallTimes {
        &self.call_times
    }

    /// How late its `periodic-run` calls began.
    pub fn cycle_lateness(&self) -> &CallTimes {
        &self.cycle_lateness
    }

    /// Counts a `periodic-run` call that began `micros` microseconds after its slot.
    pub(super) fn record_lateness(&mut self, micros: u64) {
        self.cycle_lateness.record(micros);
        self.cycle_lateness_p50_us = self.cycle_lateness.quantile(0.5);
        self.cycle_lateness_p99_us = self.cycle_lateness.quantile(0.99);
    }

    /// Counts one call of `micros` microseconds.
    pub(super) fn record_call(&mut self, micros: u64) {
        self.calls += 1;
        self.call_times.record(micros);
        self.call_time_p50_us = self.call_times.quantile(0.5);
        self.call_time_p99_us = self.call_times.quantile(0.99);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_time_buckets_cover_every_duration_and_quantiles_are_upper_bounds() {
        for micros in [0u64, 1, 3, 4, 5, 7, 8, 100, 1_000, 123_456, 10_000_000] {
            let index = CallTimes::bucket(micros);
            assert!(CallTimes::upper(index) >= micros, "{micros}");
            assert!(
                index == 0 || CallTimes::upper(index - 1) < micros,
                "{micros}"
            );
            assert!(
                CallTimes::upper(index) as f64 <= micros as f64 * 1.25 + 1.0,
                "{micros}"
            );
        }
        let mut times = CallTimes::default();
        (1..=100).for_each(|m| times.record(m));
        let p50 = times.quantile(0.5);
        assert!((50..=63).contains(&p50), "{p50}");
        let p99 = times.quantile(0.99);
        assert!((99..=127).contains(&p99), "{p99}");
        assert_eq!(CallTimes::default().quantile(0.5), 0);
    }
}
