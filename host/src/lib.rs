//! nodemanager: a host for peer-to-peer apps written as sandboxed WebAssembly components.
//!
//! A node runs a libp2p swarm, a peer-sampling service that makes its view, and apps
//! (components of the world in `wit/`) that see the view, receive messages and send
//! messages to the same-named app on other nodes.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod deploy;
pub mod duration;
pub mod logging;
pub mod network;
pub mod node;
pub mod project;
pub mod runtime;
pub mod sampling;
pub mod sim;
