//! Write a nodemanager app in Rust.
//!
//! Implement [`App`] for a type and export it with [`export_app!`]:
//!
//! ```ignore
//! use nodemanager_guest::{export_app, App, host};
//!
//! struct Hello;
//! impl App for Hello {
//!     fn init(_config: &str) -> Result<Self, String> { Ok(Hello) }
//!     fn periodic_run(&mut self, view: Vec<String>) -> Result<(), String> {
//!         for peer in view { host::send_message(&peer, b"hi", 2_000).map_err(|e| format!("{e:?}"))?; }
//!         Ok(())
//!     }
//!     fn handle_message(&mut self, from: String, payload: Vec<u8>) -> Result<(), String> {
//!         host::log(host::Level::Info, &format!("{from} says {}", String::from_utf8_lossy(&payload)));
//!         Ok(())
//!     }
//! }
//! export_app!(Hello);
//! ```

use std::cell::RefCell;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "stateful-app",
        pub_export_macro: true,
        default_bindings_module: "nodemanager_guest::bindings",
    });
}

/// The node's functions: `node_id`, `view`, `known_peers`, `send_message`, `log`.
pub use bindings::nodemanager::app::host;
pub use bindings::DeliveryOutcome;

/// The most delivery failures [`failed_messages`] keeps (the oldest go first).
pub const MAX_RECORDED_FAILURES: usize = 1024;

/// A nodemanager app: the node calls these in turn, never two at once.
pub trait App: 'static {
    /// Builds the app from its config string (empty when the node gives none).
    fn init(config: &str) -> Result<Self, String>
    where
        Self: Sized;

    /// Runs once per period with the node's current view.
    fn periodic_run(&mut self, view: Vec<String>) -> Result<(), String>;

    /// Handles a message the same app on node `from` sent here.
    fn handle_message(&mut self, from: String, payload: Vec<u8>) -> Result<(), String>;

    /// Learns how a message queued with [`host::send_message`] ended. Failures are
    /// already recorded in [`failed_messages`]; the default does nothing more.
    fn delivery_report(&mut self, _message_id: u64, _outcome: DeliveryOutcome) {}

    /// The state to hand to the next version of this app when it is replaced; the
    /// default (empty) hands nothing over.
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Takes over the state a previous version's [`snapshot`](App::snapshot) returned
    /// (called right after `init`, only with a non-empty state).
    fn restore(&mut self, _state: Vec<u8>) -> Result<(), String> {
        Ok(())
    }
}

thread_local! {
    static APP: RefCell<Option<Box<dyn App>>> = RefCell::new(None);
    static FAILURES: RefCell<Vec<(u64, String)>> = const { RefCell::new(Vec::new()) };
}

/// The most recent delivery failures, `(message id, reason)`, oldest first
/// (the seed's `failure_messages`).
pub fn failed_messages() -> Vec<(u64, String)> {
    FAILURES.with(|f| f.borrow().clone())
}

/// A uniformly random `u64` from the node (reproducible when the node runs with `--seed`).
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the node provides randomness");
    u64::from_le_bytes(bytes)
}

/// A uniformly random index below `n` (`n` > 0).
pub fn random_index(n: usize) -> usize {
    (random_u64() % n as u64) as usize
}

/// Logs `message` at info level (shorthand for [`host::log`]).
pub fn log_info(message: &str) {
    host::log(host::Level::Info, message);
}

fn with_app<R>(f: impl FnOnce(&mut dyn App) -> Result<R, String>) -> Result<R, String> {
    APP.with(|slot| match slot.borrow_mut().as_mut() {
        Some(app) => f(app.as_mut()),
        None => Err("the app was called before init succeeded".to_string()),
    })
}

#[doc(hidden)]
pub mod dispatch {
    //! What [`export_app!`](crate::export_app) expands to call.
    use super::*;

    pub fn init<A: App>(config: String) -> Result<(), String> {
        let app = A::init(&config)?;
        APP.with(|slot| *slot.borrow_mut() = Some(Box::new(app)));
        Ok(())
    }

    pub fn periodic_run(view: Vec<String>) -> Result<(), String> {
        with_app(|app| app.periodic_run(view))
    }

    pub fn handle_message(from: String, payload: Vec<u8>) -> Result<(), String> {
        with_app(|app| app.handle_message(from, payload))
    }

    pub fn snapshot() -> Vec<u8> {
        with_app(|app| Ok(app.snapshot())).unwrap_or_default()
    }

    pub fn restore(state: Vec<u8>) -> Result<(), String> {
        with_app(|app| app.restore(state))
    }

    pub fn delivery_report(message_id: u64, outcome: DeliveryOutcome) {
        if let DeliveryOutcome::Failed(reason) = &outcome {
            FAILURES.with(|f| {
                let mut f = f.borrow_mut();
                if f.len() == MAX_RECORDED_FAILURES {
                    f.remove(0);
                }
                f.push((message_id, reason.clone()));
            });
        }
        let _ = with_app(|app| {
            app.delivery_report(message_id, outcome);
            Ok(())
        });
    }
}

/// Exports the [`App`] type `$app` as this component's implementation of the world.
#[macro_export]
macro_rules! export_app {
    ($app:ty) => {
        struct __NodemanagerExport;
        impl $crate::bindings::Guest for __NodemanagerExport {
            fn init(config: String) -> Result<(), String> {
                $crate::dispatch::init::<$app>(config)
            }
            fn periodic_run(view: Vec<String>) -> Result<(), String> {
                $crate::dispatch::periodic_run(view)
            }
            fn handle_message(source: String, payload: Vec<u8>) -> Result<(), String> {
                $crate::dispatch::handle_message(source, payload)
            }
            fn delivery_report(message_id: u64, outcome: $crate::DeliveryOutcome) {
                $crate::dispatch::delivery_report(message_id, outcome)
            }
            fn snapshot() -> Vec<u8> {
                $crate::dispatch::snapshot()
            }
            fn restore(state: Vec<u8>) -> Result<(), String> {
                $crate::dispatch::restore(state)
            }
        }
        $crate::bindings::export!(__NodemanagerExport with_types_in $crate::bindings);
    };
}
