//! What the apps did in each virtual interval (a sampler period): `simulate
//! --metrics-out FILE.csv` writes one row per interval, `--plot` draws them beside the
//! sampler's panels.

use serde::Serialize;

/// Smallest, mean and largest of a set of latencies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencyTally {
    /// How many.
    pub count: u64,
    /// The smallest, in µs.
    pub min_us: u64,
    /// The mean, in µs.
    pub mean_us: u64,
    /// The largest, in µs.
    pub max_us: u64,
    #[serde(skip)]
    sum: u128,
}

impl LatencyTally {
    /// Counts one latency of `us` µs.
    pub fn record(&mut self, us: u64) {
        self.min_us = if self.count == 0 {
            us
        } else {
            self.min_us.min(us)
        };
        self.max_us = self.max_us.max(us);
        self.count += 1;
        self.sum += u128::from(us);
        self.mean_us = (self.sum / u128::from(self.count)) as u64;
    }
}

/// The header of `--metrics-out`.
pub const APPS_CSV_HEADER: &str = "cycle,t_us,nodes_online,sent,delivered,failed,unknown,dropped,\
latency_mean_us,latency_max_us,received_per_node_min,received_per_node_mean,received_per_node_max";

/// What happened to app messages in an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MessageCounts {
    /// Messages the apps queued.
    pub sent: u64,
    /// App messages handed to their destination app.
    pub delivered: u64,
    /// Delivery reports `failed` the apps got.
    pub failed: u64,
    /// Delivery reports whose outcome was unknown (lost, or no answer in time).
    pub unknown: u64,
    /// App messages the network lost or a partition cut.
    pub dropped: u64,
    /// One-way latency of the messages delivered.
    pub latency: LatencyTally,
}

/// One interval of the apps' timeline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppInterval {
    /// The cycle (interval) it ends.
    pub cycle: u64,
    /// Virtual time at its end, in µs.
    pub t_us: u64,
    /// Nodes online at its end.
    pub nodes_online: u64,
    /// The interval's messages.
    pub messages: MessageCounts,
    /// Fewest messages one node running apps received.
    pub received_min: u64,
    /// Mean messages a node running apps received.
    pub received_mean: f64,
    /// Most messages one node received.
    pub received_max: u64,
}

impl AppInterval {
    /// The interval as a CSV row under [`APPS_CSV_HEADER`].
    pub fn csv_row(&self) -> String {
        let m = &self.messages;
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{:.3},{}",
            self.cycle,
            self.t_us,
            self.nodes_online,
            m.sent,
            m.delivered,
            m.failed,
            m.unknown,
            m.dropped,
            m.latency.mean_us,
            m.latency.max_us,
            self.received_min,
            self.received_mean,
            self.received_max
        )
    }
}

/// Counters of the interval under way.
#[derive(Clone, Debug, Default)]
pub(super) struct IntervalCounts {
    /// Its messages so far.
    pub messages: MessageCounts,
    /// Messages each node received (nodes running apps only count).
    pub received: Vec<u64>,
}

impl IntervalCounts {
    /// Closes the interval: its row, with `runs_apps` saying which nodes count in the
    /// per-node figures; the counters start again from zero.
    pub fn close(
        &mut self,
        cycle: u64,
        t_us: u64,
        nodes_online: u64,
        runs_apps: impl Fn(usize) -> bool,
    ) -> AppInterval {
        let received: Vec<u64> = self
            .received
            .iter()
            .enumerate()
            .filter(|(i, _)| runs_apps(*i))
            .map(|(_, &r)| r)
            .collect();
        let row = AppInterval {
            cycle,
            t_us,
            nodes_online,
            messages: self.messages,
            received_min: received.iter().copied().min().unwrap_or(0),
            received_mean: if received.is_empty() {
                0.0
            } else {
                received.iter().sum::<u64>() as f64 / received.len() as f64
            },
            received_max: received.iter().copied().max().unwrap_or(0),
        };
        self.messages = MessageCounts::default();
        self.received.iter_mut().for_each(|r| *r = 0);
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_closes_into_a_row_and_starts_again() {
        let mut counts = IntervalCounts {
            messages: MessageCounts {
                sent: 5,
                delivered: 4,
                failed: 1,
                ..MessageCounts::default()
            },
            received: vec![3, 1, 9],
        };
        counts.messages.latency.record(5_000);
        let row = counts.close(2, 2_000_000, 3, |node| node != 2);
        assert_eq!(row.csv_row(), "2,2000000,3,5,4,1,0,0,5000,5000,1,2.000,3");
        assert_eq!(
            APPS_CSV_HEADER.split(',').count(),
            row.csv_row().split(',').count()
        );
        assert_eq!(counts.messages, MessageCounts::default());
        assert_eq!(counts.received, vec![0, 0, 0]);
    }
}
