//! The node's logs: one writer (stderr or a file, text or JSON lines, filtered by
//! `RUST_LOG`), and optionally a collector that POSTs records as JSON to an HTTP URL
//! (the seed's `configure(identifier, filename, host)`).
//!
//! The collector never slows the node down: records go through a bounded buffer to a
//! thread that sends them in batches; when the buffer is full (the collector is slow
//! or down) new records are dropped and counted.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Records the buffer holds for the collector before new ones are dropped.
pub const COLLECTOR_BUFFER: usize = 8192;
/// Most records in one POST.
pub const COLLECTOR_BATCH: usize = 512;
/// Longest a record waits in the buffer before its batch is sent.
pub const COLLECTOR_LINGER: Duration = Duration::from_millis(250);
/// Longest one POST may take.
const COLLECTOR_TIMEOUT: Duration = Duration::from_secs(2);
/// How long shutdown waits for the last batch.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Filter used when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info,libp2p=warn";

/// libp2p-kad warns that it found no peer to bootstrap from each time a node listens
/// before it knows any peer — the normal start of a first (bootstrap) node. Not a
/// problem, so not a warning here.
const KAD_NO_PEERS: (&str, &str) = (
    "libp2p_kad::behaviour",
    "Failed to trigger bootstrap: No known peers",
);

/// An [`EnvFilter`] that also drops [`KAD_NO_PEERS`].
struct Quiet(EnvFilter);

/// Whether an event's message begins as [`KAD_NO_PEERS`] says.
struct KadNoPeers(bool);

impl Visit for KadNoPeers {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}").starts_with(KAD_NO_PEERS.1);
        }
    }
}

impl<S> tracing_subscriber::layer::Filter<S> for Quiet
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn enabled(&self, meta: &tracing::Metadata<'_>, cx: &Context<'_, S>) -> bool {
        tracing_subscriber::layer::Filter::<S>::enabled(&self.0, meta, cx)
    }

    fn callsite_enabled(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing_subscriber::layer::Filter::<S>::callsite_enabled(&self.0, meta)
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, cx: &Context<'_, S>) -> bool {
        if event.metadata().target() == KAD_NO_PEERS.0 {
            let mut message = KadNoPeers(false);
            event.record(&mut message);
            if message.0 {
                return false;
            }
        }
        tracing_subscriber::layer::Filter::<S>::event_enabled(&self.0, event, cx)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        tracing_subscriber::layer::Filter::<S>::max_level_hint(&self.0)
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        cx: Context<'_, S>,
    ) {
        tracing_subscriber::layer::Filter::<S>::on_new_span(&self.0, attrs, id, cx)
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        cx: Context<'_, S>,
    ) {
        tracing_subscriber::layer::Filter::<S>::on_record(&self.0, id, values, cx)
    }

    fn on_enter(&self, id: &tracing::span::Id, cx: Context<'_, S>) {
        tracing_subscriber::layer::Filter::<S>::on_enter(&self.0, id, cx)
    }

    fn on_exit(&self, id: &tracing::span::Id, cx: Context<'_, S>) {
        tracing_subscriber::layer::Filter::<S>::on_exit(&self.0, id, cx)
    }

    fn on_close(&self, id: tracing::span::Id, cx: Context<'_, S>) {
        tracing_subscriber::layer::Filter::<S>::on_close(&self.0, id, cx)
    }
}

/// What the collector shipped and dropped, for the node's summary.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CollectorStats {
    /// Records the collector accepted.
    pub shipped: u64,
    /// Records dropped: buffer full, or a POST that failed.
    pub dropped: u64,
    /// POSTs that failed.
    pub failed_posts: u64,
}

#[derive(Default)]
struct Counters {
    shipped: AtomicU64,
    dropped: AtomicU64,
    failed_posts: AtomicU64,
}

/// The running log collector: flush it before the process exits.
pub struct Collector {
    sender: Option<SyncSender<Value>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Collector {
    /// Counters so far.
    pub fn stats(&self) -> CollectorStats {
        CollectorStats {
            shipped: self.counters.shipped.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            failed_posts: self.counters.failed_posts.load(Ordering::Relaxed),
        }
    }

    /// Sends what is buffered (waiting at most a few seconds) and stops the thread.
    pub fn flush(&mut self) -> CollectorStats {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let deadline = Instant::now() + FLUSH_TIMEOUT;
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
        self.stats()
    }
}

/// Checks a collector URL: `http://host:port/path` (plain HTTP).
pub fn check_collector_url(url: &str) -> Result<()> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("log collector {url:?} must be an http:// URL");
    };
    if rest.is_empty() || rest.starts_with('/') {
        bail!("log collector {url:?} names no host");
    }
    url.parse::<ureq::http::Uri>()
        .map(drop)
        .with_context(|| format!("log collector {url:?} is not a valid URL"))
}

/// Sets the process's logger. Returns the collector when `collector_url` is given;
/// every record it ships is tagged with `identifier`.
pub fn init(
    format: LogFormat,
    file: Option<&Path>,
    collector_url: Option<&str>,
    identifier: &str,
) -> Result<Option<Collector>> {
    let filter = || {
        Quiet(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER)))
    };
    let writer = match file {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create log file {}", path.display()))?;
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(Mutex::new(file))
        }
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    let ansi = file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt_layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer)
            .boxed(),
    };
    let (collector_layer, collector) = match collector_url {
        Some(url) => {
            check_collector_url(url)?;
            let (layer, collector) = start_collector(url.to_string(), identifier.to_string());
            (Some(layer.with_filter(filter())), Some(collector))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter()))
        .with(collector_layer)
        .try_init()
        .context("cannot set up logging")?;
    Ok(collector)
}

thread_local! {
    /// The virtual node and time (µs) the simulator is running code for, if any.
    static VIRTUAL_NOW: std::cell::Cell<Option<(u32, u64)>> = const { std::cell::Cell::new(None) };
}

/// While alive, this thread's log lines are tagged with a virtual node and time.
pub struct VirtualNow(Option<(u32, u64)>);

impl VirtualNow {
    /// Tags what this thread logs with virtual node `node` at `t_us` µs, until dropped.
    pub fn enter(node: u32, t_us: u64) -> VirtualNow {
        VirtualNow(VIRTUAL_NOW.with(|now| now.replace(Some((node, t_us)))))
    }
}

impl Drop for VirtualNow {
    fn drop(&mut self) {
        VIRTUAL_NOW.with(|now| now.set(self.0));
    }
}

/// A log line as tracing writes it, without the time, after the virtual node and time
/// when there is one: `vnode{node=3 t_us=1250000} INFO guest: ...`.
struct VirtualTimeFormat(
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, ()>,
);

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for VirtualTimeFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if let Some((node, t_us)) = VIRTUAL_NOW.with(std::cell::Cell::get) {
            write!(writer, "vnode{{node={node} t_us={t_us}}} ")?;
        }
        self.0.format_event(ctx, writer, event)
    }
}

/// A subscriber writing simulation log lines (no wall-clock time, tagged with the
/// virtual node and time) to `writer`, filtered by `filter`.
pub fn simulation_subscriber<W>(
    writer: W,
    filter: EnvFilter,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let format = tracing_subscriber::fmt::format()
        .without_time()
        .with_ansi(false);
    let layer = tracing_subscriber::fmt::layer()
        .event_format(VirtualTimeFormat(format))
        .with_writer(writer);
    tracing_subscriber::registry().with(layer.with_filter(filter))
}

/// Sets the logger of a simulation: lines without wall-clock times (the same run writes
/// the same log, byte for byte), tagged with the virtual node and time of the call
/// ([`VirtualNow`]). To `file` (`RUST_LOG` or info), else to stderr (`RUST_LOG` or
/// warnings). Keep the guard until the run ends: dropping it writes out what is
/// buffered.
pub fn init_simulation(file: Option<&Path>) -> Result<tracing_appender::non_blocking::WorkerGuard> {
    let (writer, guard, default) = match file {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create log file {}", path.display()))?;
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(false)
                .finish(file);
            (writer, guard, DEFAULT_FILTER)
        }
        None => {
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(false)
                .finish(std::io::stderr());
            (writer, guard, "warn")
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    simulation_subscriber(writer, filter)
        .try_init()
        .context("cannot set up logging")?;
    Ok(guard)
}

/// The tracing layer that hands records to the collector thread.
struct CollectorLayer {
    identifier: String,
    sender: SyncSender<Value>,
    counters: Arc<Counters>,
}

fn start_collector(url: String, identifier: String) -> (CollectorLayer, Collector) {
    let (sender, receiver) = mpsc::sync_channel(COLLECTOR_BUFFER);
    let counters = Arc::new(Counters::default());
    let thread = {
        let counters = counters.clone();
        std::thread::Builder::new()
            .name("log-collector".into())
            .spawn(move || ship(&url, &receiver, &counters))
            .expect("can spawn the log collector thread")
    };
    (
        CollectorLayer {
            identifier,
            sender: sender.clone(),
            counters: counters.clone(),
        },
        Collector {
            sender: Some(sender),
            thread: Some(thread),
            counters,
        },
    )
}

/// Sends batches until every sender is gone and the buffer is empty.
fn ship(url: &str, receiver: &Receiver<Value>, counters: &Counters) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(COLLECTOR_TIMEOUT))
        .http_status_as_error(true)
        .build()
        .into();
    let mut batch = Vec::with_capacity(COLLECTOR_BATCH);
    loop {
        let open = match receiver.recv() {
            Ok(record) => {
                batch.push(record);
                let deadline = Instant::now() + COLLECTOR_LINGER;
                fill(&mut batch, receiver, deadline)
            }
            Err(_) => false,
        };
        if !batch.is_empty() {
            let n = batch.len() as u64;
            match agent.post(url).send_json(&batch) {
                Ok(_) => counters.shipped.fetch_add(n, Ordering::Relaxed),
                Err(_) => {
                    counters.failed_posts.fetch_add(1, Ordering::Relaxed);
                    counters.dropped.fetch_add(n, Ordering::Relaxed)
                }
            };
            batch.clear();
        }
        if !open {
            return;
        }
    }
}

/// Adds records to `batch` until it is full or `deadline` passes; false once the
/// channel is closed.
fn fill(batch: &mut Vec<Value>, receiver: &Receiver<Value>, deadline: Instant) -> bool {
    while batch.len() < COLLECTOR_BATCH {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(record) => batch.push(record),
            Err(RecvTimeoutError::Timeout) => return true,
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
    true
}

impl<S: tracing::Subscriber> Layer<S> for CollectorLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        // The HTTP client's own records would feed back into the collector.
        if meta.target().starts_with("ureq") {
            return;
        }
        let mut fields = FieldsToJson(Map::new());
        event.record(&mut fields);
        let mut fields = fields.0;
        let message = fields.remove("message").unwrap_or(Value::Null);
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let record = json!({
            "identifier": self.identifier,
            "time": time,
            "level": meta.level().as_str(),
            "target": meta.target(),
            "file": meta.file(),
            "line": meta.line(),
            "message": message,
            "fields": fields,
        });
        match self.sender.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Collects an event's fields as JSON values.
struct FieldsToJson(Map<String, Value>);

impl Visit for FieldsToJson {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_urls_are_checked() {
        check_collector_url("http://127.0.0.1:9000/log").unwrap();
        for bad in [
            "https://x/log",
            "127.0.0.1:9000",
            "http://",
            "http:///log",
            "http://a b/",
        ] {
            assert!(check_collector_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_down_collector_drops_and_counts_every_record() {
        // Nothing listens on this port: every POST fails fast.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/log", listener.local_addr().unwrap());
        drop(listener);
        let (layer, mut collector) = start_collector(url, "n".into());
        let records = COLLECTOR_BUFFER * 3;
        let subscriber = tracing_subscriber::registry().with(layer);
        // try_send never waits: more records than the buffer holds are dropped, not queued.
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..records {
                tracing::info!(i, "record");
            }
        });
        let stats = collector.flush();
        assert_eq!(stats.shipped, 0);
        assert_eq!(stats.dropped, records as u64, "{stats:?}");
        assert!(stats.failed_posts > 0);
    }
}
