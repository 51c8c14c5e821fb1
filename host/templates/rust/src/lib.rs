//! {{name}}: a nodemanager app in Rust.
//!
//! Build it with `nodemanager build`, run it with
//! `nodemanager run --app build/{{name}}.wasm` (or `nodemanager simulate --app ...`).
//! The SDK is the `nodemanager-guest` crate in `vendor/` (its page: docs/rust-sdk.md in
//! the nodemanager repository).

use nodemanager_guest::{export_app, host, log_info, App};

struct {{class}} {
    rounds: u64,
    heard: u64,
}

impl App for {{class}} {
    fn init(_config: &str) -> Result<Self, String> {
        Ok({{class}} { rounds: 0, heard: 0 })
    }

    /// Runs every period with the node's view (peer ids).
    fn periodic_run(&mut self, view: Vec<String>) -> Result<(), String> {
        self.rounds += 1;
        let text = format!("round {} from {}", self.rounds, host::node_id());
        for peer in view {
            host::send_message(&peer, text.as_bytes(), 2_000)
                .map_err(|e| format!("send to {peer} refused: {e:?}"))?;
        }
        Ok(())
    }

    /// Handles each message the same app on node `from` sent here.
    fn handle_message(&mut self, from: String, payload: Vec<u8>) -> Result<(), String> {
        self.heard += 1;
        let text = String::from_utf8_lossy(&payload);
        log_info(&format!("{from} says {text:?} ({} heard)", self.heard));
        Ok(())
    }

    /// Handed to the next version when the app is replaced.
    fn snapshot(&self) -> Vec<u8> {
        [self.rounds.to_le_bytes(), self.heard.to_le_bytes()].concat()
    }

    /// Takes over what the previous version's snapshot returned.
    fn restore(&mut self, state: Vec<u8>) -> Result<(), String> {
        let word = |i: usize| -> Result<u64, String> {
            let bytes = state.get(i * 8..i * 8 + 8).ok_or("state too short")?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| "bad state")?))
        };
        self.rounds = word(0)?;
        self.heard = word(1)?;
        Ok(())
    }
}

export_app!({{class}});
