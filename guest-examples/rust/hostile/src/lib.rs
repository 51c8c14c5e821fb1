//! A test-only app that misbehaves on purpose, to prove the sandbox holds.
//!
//! The config string picks the mode; the misbehaviour happens in `periodic_run`:
//! - `spin`: loop forever (the CPU deadline must stop it);
//! - `alloc`: allocate and touch memory forever (the memory cap must stop it);
//! - `trap`: hit an `unreachable` (a trap, isolated to this app);
//! - `fs`: try to read and create files; succeeds only if both fail (no preopens);
//! - `env`: succeeds only if the app sees no environment variables and no args;
//! - `print`: write to stdout and stderr (they must land in the node log);
//! - `calm`: behave (log each cycle with the view it was given);
//! - `greet`: as `calm`, and send `hello` to every peer of the view each cycle, logging
//!   what arrives (`greet got hello from <peer>`);
//! - `greet_known`: as `greet`, to every peer the node ever knew of, dead ones included;
//! - `echo`: send every message back to its sender, unlogged (the network bench);
//! - `sink`: take every message, silently (the network bench);
//! - `flood`: each cycle, queue 1 KiB messages to the first peer of the view until
//!   `send-message` refuses (the per-call queue bound must stop it);
//! - `log`: each cycle, log 1 MiB lines, 1,000 of them (the log caps must hold);
//! - `bytes`: each cycle, send the first peer of the view 4 bytes that are not UTF-8,
//!   and log what arrives in hex;
//! - `dice`: each cycle, log a random number (`--seed` must make the run reproducible);
//! - `grow`: each cycle, busy work that doubles every cycle (2^cycle × 10,000 steps),
//!   logging `grew N` after it (a budget counted in instructions stops it at the same
//!   cycle on every run);
//! - `sleep`: each cycle, sleep 300 ms (WASI monotonic clock) and return the error
//!   `slept N ms`, N as that clock measured it (virtual time in a simulation);
//! - `time`: each cycle, send the first peer of the view `WALL_MS,MS_SINCE_INIT` as the
//!   WASI wall and monotonic clocks tell them (they must follow the node's clock).

use nodemanager_guest::{export_app, host, log_info, random_u64, App};

struct Hostile {
    mode: String,
    cycles: u64,
    /// When `init` ran, by the monotonic clock.
    started: std::time::Instant,
}

impl App for Hostile {
    fn init(config: &str) -> Result<Self, String> {
        match config {
            "spin" | "alloc" | "trap" | "fs" | "env" | "print" | "calm" | "greet" | "greet_known" | "echo" | "sink" | "flood" | "log" | "dice" | "time" | "bytes" | "grow" | "sleep" => {
                Ok(Hostile { mode: config.to_string(), cycles: 0, started: std::time::Instant::now() })
            }
            other => Err(format!("unknown hostile mode {other:?}")),
        }
    }

    fn periodic_run(&mut self, view: Vec<String>) -> Result<(), String> {
        self.cycles += 1;
        match self.mode.as_str() {
            "spin" => spin(),
            "sleep" => {
                let started = std::time::Instant::now();
                std::thread::sleep(std::time::Duration::from_millis(300));
                Err(format!("slept {} ms", started.elapsed().as_millis()))
            }
            "grow" => {
                let mut x: u64 = 0;
                for _ in 0..(10_000u64 << self.cycles.min(40)) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                log_info(&format!("grew {}", self.cycles));
                Ok(())
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => core::arch::wasm32::unreachable(),
            "fs" => {
                let read = std::fs::read("/etc/passwd");
                let create = std::fs::write("escape.txt", b"x");
                let dir = std::fs::read_dir(".");
                log_info(&format!("fs read={read:?} create={create:?} dir_ok={}", dir.is_ok()));
                if read.is_ok() || create.is_ok() || dir.is_ok() {
                    return Err("filesystem access was granted".into());
                }
                Ok(())
            }
            "env" => {
                let vars: Vec<_> = std::env::vars().collect();
                let args: Vec<_> = std::env::args().collect();
                log_info(&format!("env vars={} args={}", vars.len(), args.len()));
                if !vars.is_empty() || !args.is_empty() {
                    return Err(format!("saw env {vars:?} args {args:?}"));
                }
                Ok(())
            }
            "flood" => {
                let Some(peer) = view.first() else {
                    return Ok(());
                };
                let payload = vec![0x55u8; 1024];
                let mut queued = 0u64;
                while host::send_message(peer, &payload, 5_000).is_ok() {
                    queued += 1;
                }
                log_info(&format!("flood queued {queued} messages"));
                Ok(())
            }
            "log" => {
                let line = "x".repeat(1 << 20);
                for _ in 0..1_000 {
                    log_info(&line);
                }
                Ok(())
            }
            "time" => {
                let wall = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_err(|e| e.to_string())?;
                let since_init = self.started.elapsed();
                let report = format!("{},{}", wall.as_millis(), since_init.as_millis());
                if let Some(peer) = view.first() {
                    host::send_message(peer, report.as_bytes(), 1_000).map_err(|e| format!("{e:?}"))?;
                }
                Ok(())
            }
            "bytes" => {
                if let Some(peer) = view.first() {
                    host::send_message(peer, &[0xff, 0x00, 0xfe, 0x80], 5_000).map_err(|e| format!("{e:?}"))?;
                }
                Ok(())
            }
            "dice" => {
                log_info(&format!("dice cycle {} rolled {}", self.cycles, random_u64()));
                Ok(())
            }
            "print" => {
                println!("hello from stdout, cycle {}", self.cycles);
                eprintln!("hello from stderr, cycle {}", self.cycles);
                eprint!("a last line without newline");
                Ok(())
            }
            mode => {
                log_info(&format!("calm cycle {} view={}", self.cycles, view.join(",")));
                // greet: every peer in the view; greet_known: every peer ever known,
                // reachable or not (delivery failures then come back as reports).
                let peers = match mode {
                    "greet" => view,
                    "greet_known" => host::known_peers(),
                    _ => Vec::new(),
                };
                for peer in &peers {
                    host::send_message(peer, b"hello", 2_000)
                        .map_err(|e| format!("send to {peer} failed: {e:?}"))?;
                }
                Ok(())
            }
        }
    }

    /// The cycle count, so a replaced `calm` app goes on counting.
    fn snapshot(&self) -> Vec<u8> {
        self.cycles.to_le_bytes().to_vec()
    }

    fn restore(&mut self, state: Vec<u8>) -> Result<(), String> {
        let bytes: [u8; 8] = state.try_into().map_err(|s: Vec<u8>| format!("expected 8 bytes of state, got {}", s.len()))?;
        self.cycles = u64::from_le_bytes(bytes);
        log_info(&format!("restored at cycle {}", self.cycles));
        Ok(())
    }

    fn handle_message(&mut self, from: String, payload: Vec<u8>) -> Result<(), String> {
        if self.mode == "spin" {
            spin();
        }
        if self.mode == "bytes" {
            let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
            log_info(&format!("bytes got {hex} from {from}"));
            return Ok(());
        }
        if self.mode == "sink" {
            return Ok(());
        }
        if self.mode == "echo" {
            return host::send_message(&from, &payload, 5_000)
                .map(drop)
                .map_err(|e| format!("echo to {from} failed: {e:?}"));
        }
        log_info(&format!("greet got {} from {from}", String::from_utf8_lossy(&payload)));
        Ok(())
    }
}

/// Loops until the node stops the call.
fn spin() -> ! {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

export_app!(Hostile);
