//! The host side of the WIT world: one [`HostState`] per app store, holding its WASI
//! context (nothing granted), its limits and the messages it queued.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::nodemanager::app::host::{Host, Level, SendError};
use super::guest_log::GuestLog;
use super::Limits;

/// Where the apps' time comes from: the machine's monotonic clock, or a manual clock
/// that moves only when told to (tests, and simulated time). With a manual clock the
/// guests' WASI wall and monotonic clocks follow it too.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// Real time.
    #[default]
    System,
    /// Nanoseconds set by [`Clock::advance`].
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock at zero.
    pub fn manual() -> Clock {
        Clock::Manual(Arc::default())
    }

    /// Time since the clock's origin (for the system clock: the first use in this
    /// process).
    pub fn now(&self) -> Duration {
        match self {
            Clock::System => {
                static ORIGIN: OnceLock<Instant> = OnceLock::new();
                ORIGIN.get_or_init(Instant::now).elapsed()
            }
            Clock::Manual(nanos) => Duration::from_nanos(nanos.load(Ordering::Relaxed)),
        }
    }

    /// Sets a manual clock to `to`; the system clock cannot be set.
    pub fn set(&self, to: Duration) {
        if let Clock::Manual(nanos) = self {
            let to = u64::try_from(to.as_nanos()).unwrap_or(u64::MAX);
            nanos.store(to, Ordering::Relaxed);
        }
    }

    /// Moves a manual clock forward by `by`; the system clock moves by itself.
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(nanos) = self {
            let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            nanos.fetch_add(by, Ordering::Relaxed);
        }
    }
}

/// The wall-clock time a manual clock's zero stands for: 2000-01-01T00:00:00Z.
pub const MANUAL_WALL_ORIGIN: Duration = Duration::from_secs(946_684_800);

/// WASI's wall clock for a manual clock: [`MANUAL_WALL_ORIGIN`] plus its time plus the
/// node's skew (µs).
struct ManualWallClock(Clock, i64);

impl wasmtime_wasi::HostWallClock for ManualWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        let now = MANUAL_WALL_ORIGIN + self.0.now();
        let skew = Duration::from_micros(self.1.unsigned_abs());
        if self.1 >= 0 {
            now + skew
        } else {
            now.saturating_sub(skew)
        }
    }
}

/// WASI's monotonic clock: the app's clock, in nanoseconds (what the subscriptions of
/// [`super::sleep`] count in).
struct AppMonotonicClock(Clock);

impl wasmtime_wasi::HostMonotonicClock for AppMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        u64::try_from(self.0.now().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// What the node shares with every app it runs.
#[derive(Clone, Debug, Default)]
pub struct AppContext {
    /// This node's peer id.
    pub node_id: String,
    /// The sampler's current view.
    pub view: Arc<RwLock<Vec<String>>>,
    /// Every peer this node has met.
    pub known_peers: Arc<RwLock<Vec<String>>>,
    /// The time the send-rate limit counts in.
    pub clock: Clock,
    /// How far this node's wall clock is ahead of the manual clock (negative: behind),
    /// in µs: a simulated node whose clock drifts.
    pub wall_skew_us: i64,
}

impl AppContext {
    /// A context for node `node_id` with an empty view.
    pub fn new(node_id: String) -> AppContext {
        AppContext {
            node_id,
            ..Default::default()
        }
    }

    /// A snapshot of the current view.
    pub fn view(&self) -> Vec<String> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A message an app queued with `send-message`, to send once its call returns.
#[derive(Clone, Debug, PartialEq)]
pub struct OutgoingMessage {
    /// The id `send-message` returned; its delivery report carries it.
    pub id: u64,
    /// The destination node.
    pub destination: PeerId,
    /// The bytes for the same-named app there.
    pub payload: Vec<u8>,
    /// How long to wait for the destination to accept it.
    pub timeout: Duration,
}

/// The state of one app's store.
pub struct HostState {
    app: Arc<str>,
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    pub(super) context: AppContext,
    /// This node's id, parsed once (none when the context's is not a peer id).
    own_id: Option<PeerId>,
    limits: Limits,
    pub(super) outbox: Vec<OutgoingMessage>,
    /// `send-message` calls refused since last taken.
    pub(super) refused_sends: u64,
    /// The first refusal of the current call, to log once per call.
    pub(super) first_refusal: Option<SendError>,
    /// Messages the rate limit still allows now, and when it was last refilled.
    send_tokens: (f64, Duration),
    next_message_id: u64,
    pub(super) stdout: GuestLog,
    pub(super) stderr: GuestLog,
    /// `log` calls in the current call into the app.
    pub(super) logs_this_call: u32,
    /// `log` calls dropped in the current call (over [`MAX_LOGS_PER_CALL`]).
    pub(super) dropped_logs: u64,
}

/// Most `log` lines one call into an app may write; the rest are counted and dropped.
pub const MAX_LOGS_PER_CALL: u32 = 256;
/// Longest `log` message kept; longer ones are cut, saying by how much.
pub const MAX_LOG_BYTES: usize = 4096;

/// `message` cut to at most [`MAX_LOG_BYTES`] (at a character boundary), with a note of
/// what was cut.
fn clip_log(mut message: String) -> String {
    if message.len() > MAX_LOG_BYTES {
        let mut end = MAX_LOG_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let cut = message.len() - end;
        message.truncate(end);
        message.push_str(&format!("… [{cut} more bytes cut]"));
    }
    message
}

impl HostState {
    /// A sandbox for app `app`: WASI with no files, sockets, env or args; output to the
    /// log; randomness from `seed` when given (reproducible runs), else from the OS.
    pub fn new(app: &str, context: AppContext, limits: Limits, seed: Option<u64>) -> HostState {
        let (stdout, stderr) = (GuestLog::new(app, "stdout"), GuestLog::new(app, "stderr"));
        let rate = f64::from(limits.max_messages_per_sec);
        let now = context.clock.now();
        let own_id = PeerId::from_str(&context.node_id).ok();
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        wasi.monotonic_clock(AppMonotonicClock(context.clock.clone()));
        if let Clock::Manual(_) = context.clock {
            wasi.wall_clock(ManualWallClock(context.clock.clone(), context.wall_skew_us));
        }
        if let Some(seed) = seed {
            use rand::SeedableRng;
            wasi.secure_random(rand::rngs::StdRng::seed_from_u64(seed))
                .insecure_random(rand::rngs::StdRng::seed_from_u64(
                    seed ^ 0x9e37_79b9_7f4a_7c15,
                ))
                .insecure_random_seed(u128::from(seed));
        }
        HostState {
            app: app.into(),
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(limits.memory_mib * 1024 * 1024),
            context,
            own_id,
            limits,
            outbox: Vec::new(),
            refused_sends: 0,
            first_refusal: None,
            send_tokens: (rate, now),
            logs_this_call: 0,
            dropped_logs: 0,
            next_message_id: 1,
            stdout,
            stderr,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// StoreLimits that also remember the growth they refused, to say why an app stopped.
pub(super) struct MemoryLimiter {
    inner: StoreLimits,
    /// The bytes a refused `memory.grow` asked for.
    pub refused: Option<usize>,
    /// The cap, in bytes.
    pub cap: u64,
    /// Linear memory granted so far, all memories together, in bytes.
    pub granted: u64,
}

impl MemoryLimiter {
    fn new(cap: u64) -> MemoryLimiter {
        let inner = StoreLimitsBuilder::new()
            .memory_size(usize::try_from(cap).unwrap_or(usize::MAX))
            .trap_on_grow_failure(true)
            .build();
        MemoryLimiter {
            inner,
            refused: None,
            cap,
            granted: 0,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let verdict = self.inner.memory_growing(current, desired, maximum);
        match verdict {
            Ok(true) => self.granted += desired.saturating_sub(current) as u64,
            _ => self.refused = Some(desired),
        }
        verdict
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
}

impl Host for HostState {
    fn node_id(&mut self) -> String {
        self.context.node_id.clone()
    }

    fn view(&mut self) -> Vec<String> {
        self.context.view()
    }

    fn known_peers(&mut self) -> Vec<String> {
        self.context
            .known_peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn send_message(
        &mut self,
        destination: String,
        payload: Vec<u8>,
        timeout_ms: u32,
    ) -> Result<u64, SendError> {
        let queued = self.queue_message(destination, payload, timeout_ms);
        if let Err(error) = &queued {
            self.refused_sends += 1;
            self.first_refusal.get_or_insert_with(|| error.clone());
        }
        queued
    }

    fn log(&mut self, level: Level, message: String) {
        if self.logs_this_call >= MAX_LOGS_PER_CALL {
            self.dropped_logs += 1;
            return;
        }
        self.logs_this_call += 1;
        let message = clip_log(message);
        let app = &*self.app;
        match level {
            Level::Trace => tracing::trace!(target: "guest", app, "{message}"),
            Level::Debug => tracing::debug!(target: "guest", app, "{message}"),
            Level::Info => tracing::info!(target: "guest", app, "{message}"),
            Level::Warn => tracing::warn!(target: "guest", app, "{message}"),
            Level::Error => tracing::error!(target: "guest", app, "{message}"),
        }
    }
}

impl HostState {
    fn queue_message(
        &mut self,
        destination: String,
        payload: Vec<u8>,
        timeout_ms: u32,
    ) -> Result<u64, SendError> {
        let destination = PeerId::from_str(&destination).map_err(|e| {
            SendError::BadDestination(format!("{destination:?} is not a peer id: {e}"))
        })?;
        if Some(destination) == self.own_id {
            return Err(SendError::BadDestination(
                "that is this node's own id".into(),
            ));
        }
        if payload.len() as u64 > self.limits.max_payload_bytes {
            return Err(SendError::PayloadTooLarge(self.limits.max_payload_bytes));
        }
        if self.outbox.len() >= self.limits.max_queued_per_call as usize {
            return Err(SendError::QueueFull(self.limits.max_queued_per_call));
        }
        let rate = self.limits.max_messages_per_sec;
        if rate > 0 {
            let (tokens, since) = &mut self.send_tokens;
            let now = self.context.clock.now();
            *tokens = (*tokens + now.saturating_sub(*since).as_secs_f64() * f64::from(rate))
                .min(f64::from(rate));
            *since = now;
            if *tokens < 1.0 {
                return Err(SendError::QueueFull(rate));
            }
            *tokens -= 1.0;
        }
        let id = self.next_message_id;
        self.next_message_id += 1;
        let timeout = Duration::from_millis(u64::from(timeout_ms.max(1)));
        self.outbox.push(OutgoingMessage {
            id,
            destination,
            payload,
            timeout,
        });
        Ok(id)
    }
}
