//! Ping-pong: every cycle, ping each peer of the view with the send time; answer every
//! ping with a pong carrying it back; on each pong, record the round-trip time. Every
//! `report_every` pongs (config string, default 10), log a latency histogram:
//! `rtt n=40 p50<=2ms p99<=5ms histogram <1ms:3 <2ms:30 <5ms:7`.
//!
//! Times come from the WASI wall clock of the pinging node only, so clocks need not agree
//! between nodes.

use std::time::{SystemTime, UNIX_EPOCH};

use nodemanager_guest::{export_app, host, log_info, App};

/// Upper bounds of the histogram buckets, in microseconds (the last is open).
const BUCKETS_US: [u64; 12] = [
    100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 1_000_000, u64::MAX,
];

struct PingPong {
    report_every: u64,
    counts: [u64; BUCKETS_US.len()],
    pongs: u64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn label(bound: u64) -> String {
    match bound {
        u64::MAX => "more".into(),
        b if b >= 1_000_000 => format!("<{}s", b / 1_000_000),
        b if b >= 1_000 => format!("<{}ms", b / 1_000),
        b => format!("<{b}us"),
    }
}

impl PingPong {
    fn record(&mut self, rtt_us: u64) {
        let bucket = BUCKETS_US.iter().position(|&b| rtt_us < b).unwrap_or(BUCKETS_US.len() - 1);
        self.counts[bucket] += 1;
        self.pongs += 1;
        if self.pongs % self.report_every == 0 {
            log_info(&self.report());
        }
    }

    /// The bound under which fraction `q` of the round trips fell.
    fn quantile(&self, q: f64) -> String {
        let rank = ((q * self.pongs as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return label(BUCKETS_US[i]).replace('<', "<=");
            }
        }
        "?".into()
    }

    fn report(&self) -> String {
        let histogram: Vec<String> = self
            .counts
            .iter()
            .zip(BUCKETS_US)
            .filter(|(&n, _)| n > 0)
            .map(|(n, b)| format!("{}:{n}", label(b)))
            .collect();
        format!(
            "rtt n={} p50{} p99{} histogram {}",
            self.pongs,
            self.quantile(0.5),
            self.quantile(0.99),
            histogram.join(" ")
        )
    }
}

impl App for PingPong {
    fn init(config: &str) -> Result<Self, String> {
        let report_every = match config.trim() {
            "" => 10,
            n => n
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("config {n:?}: expected how many pongs per report (a number > 0)"))?,
        };
        Ok(PingPong { report_every, counts: [0; BUCKETS_US.len()], pongs: 0 })
    }

    fn periodic_run(&mut self, view: Vec<String>) -> Result<(), String> {
        let ping = format!("ping {}", now_us());
        for peer in &view {
            host::send_message(peer, ping.as_bytes(), 5_000).map_err(|e| format!("ping {peer}: {e:?}"))?;
        }
        Ok(())
    }

    fn handle_message(&mut self, from: String, payload: Vec<u8>) -> Result<(), String> {
        let text = String::from_utf8_lossy(&payload);
        match text.split_once(' ') {
            Some(("ping", sent)) => {
                let pong = format!("pong {sent}");
                host::send_message(&from, pong.as_bytes(), 5_000).map_err(|e| format!("pong {from}: {e:?}"))?;
            }
            Some(("pong", sent)) => {
                let sent: u64 = sent.parse().map_err(|_| format!("bad pong from {from}: {text:?}"))?;
                self.record(now_us().saturating_sub(sent));
            }
            _ => return Err(format!("unexpected message from {from}: {text:?}")),
        }
        Ok(())
    }
}

export_app!(PingPong);
