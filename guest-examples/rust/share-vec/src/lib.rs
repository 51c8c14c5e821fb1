//! The seed's ShareVec: every cycle multiply the vector by the matrix and send it to a
//! random peer of the view; average every vector received with our own.
//!
//! Config (optional JSON): `{"vector": [5 numbers], "matrix": [[5 numbers] x 5]}`;
//! anything left out is drawn at random as in the seed (`randint(1, 10) / 10`).

use nodemanager_guest::{export_app, host, log_info, random_index, random_u64, App};
use serde::{Deserialize, Serialize};

const DIM: usize = 5;

/// What goes on the wire; the Python ShareVec speaks the same JSON.
#[derive(Serialize, Deserialize)]
struct Message {
    sender: String,
    receiver: String,
    data: Vec<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    vector: Option<[f64; DIM]>,
    matrix: Option<[[f64; DIM]; DIM]>,
}

struct ShareVec {
    id: String,
    vector: [f64; DIM],
    matrix: [[f64; DIM]; DIM],
}

fn random_tenth() -> f64 {
    (1 + random_u64() % 9) as f64 / 10.0
}

fn show(v: &[f64]) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

impl App for ShareVec {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config = if config.trim().is_empty() {
            Config::default()
        } else {
            serde_json::from_str(config).map_err(|e| format!("bad share_vec config: {e}"))?
        };
        let app = ShareVec {
            id: host::node_id(),
            vector: config.vector.unwrap_or_else(|| std::array::from_fn(|_| random_tenth())),
            matrix: config
                .matrix
                .unwrap_or_else(|| std::array::from_fn(|_| std::array::from_fn(|_| random_tenth()))),
        };
        log_info(&format!("START vector={}", show(&app.vector)));
        Ok(app)
    }

    fn periodic_run(&mut self, view: Vec<String>) -> Result<(), String> {
        log_info(&format!("periodic_run BEFORE vector={}", show(&self.vector)));
        let v = self.vector;
        self.vector = std::array::from_fn(|j| (0..DIM).map(|i| v[i] * self.matrix[i][j]).sum());
        if view.is_empty() {
            log_info("no neighbours yet, skipping send");
            return Ok(());
        }
        let receiver = view[random_index(view.len())].clone();
        let message = Message { sender: self.id.clone(), receiver: receiver.clone(), data: self.vector.to_vec() };
        let payload = serde_json::to_vec(&message).map_err(|e| e.to_string())?;
        host::send_message(&receiver, &payload, 30_000).map_err(|e| format!("send failed: {e:?}"))?;
        log_info(&format!("periodic_run AFTER vector={} sent to {receiver}", show(&self.vector)));
        Ok(())
    }

    fn handle_message(&mut self, from: String, payload: Vec<u8>) -> Result<(), String> {
        let message: Message =
            serde_json::from_slice(&payload).map_err(|e| format!("bad message from {from}: {e}"))?;
        if message.data.len() != DIM {
            return Err(format!("message from {from} carries {} numbers, not {DIM}", message.data.len()));
        }
        log_info(&format!("received {} bytes from {from}", payload.len()));
        log_info(&format!("BEFORE vector={}", show(&self.vector)));
        for (mine, theirs) in self.vector.iter_mut().zip(&message.data) {
            *mine = (*mine + theirs) / 2.0;
        }
        log_info(&format!("AFTER vector={}", show(&self.vector)));
        Ok(())
    }
}

export_app!(ShareVec);
