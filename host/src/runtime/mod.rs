//! The wasmtime side: one [`Runtime`] (engine, linker, compiled-code cache) per process,
//! and [`LoadedApp`]s instantiated from it, each in its own sandboxed store.

mod app;
mod cache;
mod guest_log;
mod host;
mod inspect;
mod instance;
pub mod pool;
pub mod registry;
mod sleep;
mod stats;
mod worker;

pub use app::{AppError, LoadedApp};
pub use cache::{content_hash, ComponentCache, DEFAULT_CACHE_MAX_BYTES};
pub use host::{AppContext, Clock, OutgoingMessage, MANUAL_WALL_ORIGIN};
pub use inspect::{inspect, Inspection};
pub use instance::{AppInstance, Effects, Input, Schedule};
pub use registry::{AppInfo, AppRegistry, LoadRequest, Report};
pub use stats::{AppCounts, AppState, AppStats, CallTimes, Outcome};
pub use worker::{AppCommand, AppId, WorkerEvent};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine};

/// Bindings generated from `wit/` (world `app`).
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "app",
    });
}

/// How often the epoch advances; CPU deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Fuel (about one WebAssembly instruction each) a call gets per millisecond of its
/// deadline when the budget is counted in instructions.
pub const FUEL_PER_MS: u64 = 1_000_000;

/// How the CPU budget of a call is counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuBudget {
    /// Real time, checked every [`EPOCH_TICK`]: what a live node does.
    #[default]
    Time,
    /// Instructions (wasmtime fuel, [`FUEL_PER_MS`] per ms of deadline): a call stops
    /// at the same point on every machine and under any load, as a simulation needs.
    Instructions,
}

/// Per-app sandbox limits.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most linear memory the app may hold, in MiB (all its memories together).
    pub memory_mib: u64,
    /// Longest one call into the app may run (e.g. `"500ms"`, `"2s"`).
    #[serde(with = "crate::duration::text")]
    pub call_deadline: Duration,
    /// Largest payload `send-message` accepts, in bytes.
    pub max_payload_bytes: u64,
    /// Most messages one call may queue with `send-message`.
    pub max_queued_per_call: u32,
    /// Most messages per second the app may send (a token bucket holding one second's
    /// worth); 0 means no rate limit.
    pub max_messages_per_sec: u32,
    /// Most received messages waiting for `handle-message`; more are refused.
    pub inbox_capacity: usize,
    /// Most MiB of received payloads waiting for `handle-message`; a message that would
    /// go over is refused (unless the inbox is empty: one message always fits).
    pub inbox_max_mib: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 256,
            call_deadline: Duration::from_secs(1),
            max_payload_bytes: 16 * 1024 * 1024,
            max_queued_per_call: 1024,
            max_messages_per_sec: 10_000,
            inbox_capacity: 1024,
            inbox_max_mib: 64,
        }
    }
}

impl Limits {
    /// The names of the limits, as configs and `--limit` write them.
    pub const NAMES: [&'static str; 7] = [
        "memory_mib",
        "call_deadline",
        "max_payload_bytes",
        "max_queued_per_call",
        "max_messages_per_sec",
        "inbox_capacity",
        "inbox_max_mib",
    ];

    /// Checks that `name` is one of the limits, saying which exist if not.
    pub fn check_name(name: &str) -> Result<()> {
        if !Limits::NAMES.contains(&name) {
            bail!(
                "unknown limit `{name}`: the limits are {}",
                Limits::NAMES.join(", ")
            );
        }
        Ok(())
    }

    /// Sets limit `name` from its text, as `--limit NAME=VALUE` writes it.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        Limits::check_name(name)?;
        fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T> {
            value
                .trim()
                .parse()
                .ok()
                .with_context(|| format!("limit {name}: {value:?} is not a whole number"))
        }
        match name {
            "memory_mib" => self.memory_mib = number(name, value)?,
            "call_deadline" => {
                self.call_deadline = crate::duration::parse_duration(value)
                    .map_err(|e| anyhow::anyhow!("limit {name}: {e}"))?
            }
            "max_payload_bytes" => self.max_payload_bytes = number(name, value)?,
            "max_queued_per_call" => self.max_queued_per_call = number(name, value)?,
            "max_messages_per_sec" => self.max_messages_per_sec = number(name, value)?,
            "inbox_capacity" => self.inbox_capacity = number(name, value)?,
            _ => self.inbox_max_mib = number(name, value)?,
        }
        Ok(())
    }

    /// Checks the limits are usable, naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        if self.memory_mib == 0 || self.memory_mib > 4096 {
            bail!(
                "limits.memory_mib must be between 1 and 4096, not {}",
                self.memory_mib
            );
        }
        if self.call_deadline < EPOCH_TICK {
            bail!(
                "limits.call_deadline must be at least {:?}, not {:?}",
                EPOCH_TICK,
                self.call_deadline
            );
        }
        if self.max_queued_per_call == 0 || self.inbox_capacity == 0 || self.inbox_max_mib == 0 {
            bail!("limits.max_queued_per_call, limits.inbox_capacity and limits.inbox_max_mib must be at least 1");
        }
        Ok(())
    }

    /// The deadline in fuel, for a budget counted in instructions.
    fn deadline_fuel(&self) -> u64 {
        (self.call_deadline.as_micros() as u64).saturating_mul(FUEL_PER_MS / 1000)
    }

    /// The deadline in epoch ticks: rounded up, plus one because the current tick is
    /// already partly gone, so a call gets at least its deadline (and at most one tick more).
    fn deadline_ticks(&self) -> u64 {
        self.call_deadline
            .as_nanos()
            .div_ceil(EPOCH_TICK.as_nanos()) as u64
            + 1
    }
}

/// One per process: the wasmtime engine, the linker holding the host functions, and
/// the on-disk cache of compiled components. An epoch thread ticks while it lives.
pub struct Runtime {
    engine: Engine,
    budget: CpuBudget,
    linker: Linker<host::HostState>,
    cache: ComponentCache,
    /// Components prepared in this process, by content hash: loading one again (under
    /// another name, or after an unload) reuses the compiled code.
    prepared: Mutex<HashMap<String, Prepared>>,
}

impl Runtime {
    /// [`Runtime::with_cache_bound`] with the default bound.
    pub fn new(cache_dir: &Path) -> Result<Runtime> {
        Runtime::with_cache_bound(cache_dir, DEFAULT_CACHE_MAX_BYTES)
    }

    /// A runtime whose calls are budgeted in instructions ([`CpuBudget::Instructions`]),
    /// for simulations: the same run stops a spinning app at the same point every time.
    pub fn counting_instructions(cache_dir: &Path) -> Result<Runtime> {
        Runtime::build(cache_dir, DEFAULT_CACHE_MAX_BYTES, CpuBudget::Instructions)
    }

    /// Builds the engine (component model, epoch interruption) and starts its epoch
    /// ticker; compiled components are cached in `cache_dir`, at most `cache_max_bytes`.
    pub fn with_cache_bound(cache_dir: &Path, cache_max_bytes: u64) -> Result<Runtime> {
        Runtime::build(cache_dir, cache_max_bytes, CpuBudget::Time)
    }

    fn build(cache_dir: &Path, cache_max_bytes: u64, budget: CpuBudget) -> Result<Runtime> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        match budget {
            CpuBudget::Time => config.epoch_interruption(true),
            CpuBudget::Instructions => config.consume_fuel(true),
        };
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("cannot create the wasmtime engine")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from)?;
        sleep::add_to_linker(&mut linker)?;
        bindings::App::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)?;
        let cache = ComponentCache::new(cache_dir.to_path_buf(), &engine, cache_max_bytes)?;
        if budget == CpuBudget::Time {
            // The ticker lives as long as the engine: compiled components hold it too, so
            // it outlives this Runtime while any app can still run.
            let weak_engine = engine.weak();
            std::thread::Builder::new()
                .name("epoch-ticker".into())
                .spawn(move || loop {
                    std::thread::sleep(EPOCH_TICK);
                    match weak_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                })?;
        }
        Ok(Runtime {
            engine,
            budget,
            linker,
            cache,
            prepared: Mutex::new(HashMap::new()),
        })
    }

    /// The default cache folder: `$NODEMANAGER_CACHE_DIR`, else `$XDG_CACHE_HOME/nodemanager`,
    /// else `~/.cache/nodemanager`.
    pub fn default_cache_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("NODEMANAGER_CACHE_DIR") {
            return dir.into();
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(std::env::temp_dir)
                    .join(".cache")
            });
        base.join("nodemanager")
    }

    /// The process's engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads and compiles the component at `path` (from the disk cache when it holds it),
    /// and checks that it fits the `app` world.
    pub fn load_component(&self, path: &Path) -> Result<Prepared> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read app file {}", path.display()))?;
        self.prepare(&bytes)
            .with_context(|| format!("cannot load app {}", path.display()))
    }

    /// Whether the disk cache holds this engine's compiled code of the component with
    /// content hash `hash`.
    pub fn has_compiled(&self, hash: &str) -> bool {
        self.cache.path_for(hash).is_file()
    }

    /// Forgets the compiled code of the component with content hash `hash` (in this
    /// process and in the disk cache, for every engine's settings); returns the cache
    /// entries removed.
    pub fn forget_compiled(&self, hash: &str) -> Result<usize> {
        self.prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hash);
        self.cache.remove(hash)
    }

    /// A component this process prepared before, by its content hash (SHA-256, hex).
    pub fn prepared(&self, hash: &str) -> Option<Prepared> {
        self.prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .cloned()
    }

    /// Compiles `bytes` (or takes them from this process's table or the disk cache) and
    /// pre-links them against the world.
    pub fn prepare(&self, bytes: &[u8]) -> Result<Prepared> {
        let hash = cache::content_hash(bytes);
        if let Some(prepared) = self.prepared(&hash) {
            return Ok(Prepared {
                from_cache: true,
                compile_time: Duration::ZERO,
                ..prepared
            });
        }
        let started = Instant::now();
        let (component, from_cache) = self.cache.get_or_compile(&self.engine, bytes, &hash)?;
        let compile_time = started.elapsed();
        let inspection = inspect::check_component(&self.engine, &component);
        if !inspection.fits() {
            bail!(
                "the component does not fit the world nodemanager:app/app@0.1.0:\n{}",
                inspection.problems()
            );
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("cannot link the component")?;
        let pre = bindings::AppPre::new(pre)
            .map_err(anyhow::Error::from)
            .context("the component does not export the app world")?;
        let prepared = Prepared {
            pre,
            budget: self.budget,
            hash: hash.clone(),
            from_cache,
            compile_time,
        };
        self.prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash, prepared.clone());
        Ok(prepared)
    }
}

/// A compiled, linked component, ready to instantiate any number of times.
#[derive(Clone)]
pub struct Prepared {
    pre: bindings::AppPre<host::HostState>,
    /// How its calls' CPU budget is counted.
    budget: CpuBudget,
    /// The component's content hash (SHA-256 of the wasm file, hex).
    pub hash: String,
    /// Whether the compiled code was reused (from this process, or the disk cache)
    /// rather than compiled now.
    pub from_cache: bool,
    /// Time spent compiling or loading from the cache.
    pub compile_time: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_name_is_a_field_and_others_are_refused_by_name() {
        for name in Limits::NAMES {
            let error = serde_json::from_value::<Limits>(serde_json::json!({ name: 1 }))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!error.contains("unknown field"), "{name}: {error}");
        }
        let error = Limits::check_name("memroy_mib").unwrap_err().to_string();
        assert!(
            error.starts_with(
                "unknown limit `memroy_mib`: the limits are memory_mib, call_deadline"
            ),
            "{error}"
        );
    }
}
