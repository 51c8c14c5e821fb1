//! The libp2p side: a swarm on tokio with TCP + noise + yamux, identify, and the app
//! protocol that carries (app name, payload) to the same-named app on another node.

pub mod codec;
pub mod sampling;

use std::time::Duration;

use anyhow::{Context as _, Result};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, noise, request_response, tcp, yamux, StreamProtocol, Swarm};

pub use codec::{AppCodec, AppRequest, AppResponse};
pub use sampling::{SamplingCodec, SamplingEnvelope};

/// How long a sampling message may take to be acknowledged before its peer counts as
/// unreachable.
pub const SAMPLING_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes a request frame adds around the payload (version, name length, name).
pub const REQUEST_OVERHEAD: u64 = 2 + 255;

/// The node's libp2p behaviour.
#[derive(NetworkBehaviour)]
pub struct NodeBehaviour {
    /// Exchanges listen addresses and protocols with peers.
    pub identify: identify::Behaviour,
    /// Carries app messages.
    pub apps: request_response::Behaviour<AppCodec>,
    /// Carries the peer samplers' messages.
    pub sampling: request_response::Behaviour<SamplingCodec>,
}

/// Protocol names for a context: the context is part of every name, so nodes of
/// different contexts never exchange messages.
pub fn app_protocol(context: &str) -> Result<StreamProtocol> {
    protocol(context, "app")
}

/// The sampling protocol's name for a context.
pub fn sampling_protocol(context: &str) -> Result<StreamProtocol> {
    protocol(context, "sampling")
}

fn protocol(context: &str, what: &str) -> Result<StreamProtocol> {
    StreamProtocol::try_from_owned(format!("/nodemanager/{context}/{what}/1"))
        .with_context(|| format!("context {context:?} cannot be part of a protocol name"))
}

/// Settings of the swarm.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// The context string.
    pub context: String,
    /// Largest app payload accepted from peers.
    pub max_payload_bytes: u64,
    /// Longest the app protocol waits for any answer (per-message timeouts are shorter).
    pub request_timeout: Duration,
    /// Idle connections close after this.
    pub idle_connection_timeout: Duration,
}

/// Builds the swarm with a fresh ed25519 identity.
pub fn build_swarm(config: &NetworkConfig) -> Result<Swarm<NodeBehaviour>> {
    let protocol = app_protocol(&config.context)?;
    let identify_protocol = format!("/nodemanager/{}/id/1", config.context);
    let codec = AppCodec {
        max_request_bytes: config.max_payload_bytes + REQUEST_OVERHEAD,
    };
    let sampling = sampling_protocol(&config.context)?;
    let rr_config =
        request_response::Config::default().with_request_timeout(config.request_timeout);
    let swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .context("cannot set up TCP + noise + yamux")?
        .with_behaviour(|key| NodeBehaviour {
            identify: identify::Behaviour::new(identify::Config::new(
                identify_protocol,
                key.public(),
            )),
            apps: request_response::Behaviour::with_codec(
                codec,
                [(protocol, request_response::ProtocolSupport::Full)],
                rr_config,
            ),
            sampling: request_response::Behaviour::with_codec(
                SamplingCodec,
                [(sampling, request_response::ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(SAMPLING_TIMEOUT),
            ),
        })
        .context("cannot build the network behaviour")?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
        .build();
    Ok(swarm)
}
