//! Push gossip of one rumour. The node whose config says `origin` starts it at its first
//! cycle; every infected node pushes it to `fanout` random peers of its view each cycle
//! (config `origin[,fanout=N]` or `fanout=N`, default fanout 2). Each node logs once:
//! `infected after 123 ms by <peer>` (the origin: `rumour started`), the delay measured
//! from the origin's wall clock, carried in the rumour (nodes on one machine share it).

use std::time::{SystemTime, UNIX_EPOCH};

use nodemanager_guest::{export_app, host, log_info, random_index, App};

struct Gossip {
    origin: bool,
    fanout: usize,
    /// When the origin started the rumour (ms since the epoch), once infected.
    rumour: Option<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl App for Gossip {
    fn init(config: &str) -> Result<Self, String> {
        let mut gossip = Gossip { origin: false, fanout: 2, rumour: None };
        for part in config.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                None if part == "origin" => gossip.origin = true,
                Some(("fanout", n)) => {
                    gossip.fanout = n.parse().map_err(|_| format!("fanout {n:?} is not a number"))?
                }
                _ => return Err(format!("unknown setting {part:?}: expected origin or fanout=N")),
            }
        }
        Ok(gossip)
    }

    fn periodic_run(&mut self, view: Vec<String>) -> Result<(), String> {
        if self.origin && self.rumour.is_none() {
            self.rumour = Some(now_ms());
            log_info("rumour started");
        }
        let Some(started) = self.rumour else {
            return Ok(());
        };
        let mut peers = view;
        let message = format!("rumour {started}");
        for _ in 0..self.fanout.min(peers.len()) {
            let peer = peers.swap_remove(random_index(peers.len()));
            host::send_message(&peer, message.as_bytes(), 5_000).map_err(|e| format!("push to {peer}: {e:?}"))?;
        }
        Ok(())
    }

    fn handle_message(&mut self, from: String, payload: Vec<u8>) -> Result<(), String> {
        let text = String::from_utf8_lossy(&payload);
        let started: u64 = text
            .strip_prefix("rumour ")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| format!("unexpected message from {from}: {text:?}"))?;
        if self.rumour.is_none() {
            self.rumour = Some(started);
            log_info(&format!("infected after {} ms by {from}", now_ms().saturating_sub(started)));
        }
        Ok(())
    }
}

export_app!(Gossip);
