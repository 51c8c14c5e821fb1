//! The libp2p side: a swarm on tokio with TCP (noise + yamux) and QUIC, connection
//! limits (the node's and the process's), identify, Kademlia and mDNS discovery, and
//! the app and sampling protocols.

pub mod app_stream;
pub mod budget;
pub mod codec;
pub mod identity;
pub mod rejoin;
pub mod sampling;
pub mod settings;

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use anyhow::{Context as _, Result};
use libp2p::identity::Keypair;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    connection_limits, gossipsub, identify, kad, mdns, noise, request_response, tcp, yamux,
    StreamProtocol, Swarm,
};
use sha2::{Digest, Sha256};

use crate::deploy::wire::DeployCodec;

pub use budget::{ConnectionBudget, ProcessLimits};
pub use codec::{
    AppBatch, AppRequest, AppResponse, Inbound, ReadBudget, MAX_BATCH, REQUEST_OVERHEAD,
};
pub use sampling::{SamplingCodec, SamplingEnvelope};
pub use settings::{NetworkSettings, Transport};

/// Bytes of app frames the node reads from all peers at once, at least (four of the
/// largest frames if that is more).
pub const MIN_READ_BUDGET: u64 = 256 << 20;

/// How long a sampling message may take to be acknowledged before its peer counts as
/// unreachable.
pub const SAMPLING_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's libp2p behaviour.
#[derive(NetworkBehaviour)]
pub struct NodeBehaviour {
    /// Refuses connections over the process's budget, shared with its other nodes.
    pub budget: budget::ConnectionGate,
    /// Refuses connections over the configured limits (total, per peer, pending).
    pub limits: connection_limits::Behaviour,
    /// Exchanges listen addresses and protocols with peers.
    pub identify: identify::Behaviour,
    /// Carries app messages, on long-lived streams (`app_stream`).
    pub streams: libp2p_stream::Behaviour,
    /// Carries the peer samplers' messages.
    pub sampling: request_response::Behaviour<SamplingCodec>,
    /// Finds peers of the same context through a DHT, when enabled.
    pub kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    /// Finds peers on the local network, when enabled.
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Spreads deployment manifests through the context.
    pub gossip: gossipsub::Behaviour,
    /// Carries deployers' manifests, component chunks and manifests for late joiners.
    pub deploy: request_response::Behaviour<DeployCodec>,
}

/// Largest gossip message: a signed manifest.
pub const MAX_GOSSIP_BYTES: usize = 64 * 1024;

/// How long a deployment request may take: a chunk, or a deployer's publish (fetch,
/// compile and load of a large component).
pub const DEPLOY_TIMEOUT: Duration = Duration::from_secs(120);

/// Protocol names for a context: the context is part of every name, so nodes of
/// different contexts never exchange messages.
pub fn app_protocol(context: &str) -> Result<StreamProtocol> {
    protocol(context, "app-stream")
}

/// The sampling protocol's name for a context.
pub fn sampling_protocol(context: &str) -> Result<StreamProtocol> {
    protocol(context, "sampling")
}

/// The deployment protocol's name for a context.
pub fn deploy_protocol(context: &str) -> Result<StreamProtocol> {
    protocol(context, "deploy")
}

/// The gossip topic of a context's deployment manifests.
pub fn deploy_topic(context: &str) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("/nodemanager/{context}/deployments"))
}

/// Gossipsub for a context: its own protocol name (contexts never mesh), messages
/// signed by the sending node, identified by their content, and judged by the node
/// before they are forwarded.
fn gossip(context: &str, key: &Keypair) -> Result<gossipsub::Behaviour> {
    let config = gossipsub::ConfigBuilder::default()
        .protocol_id_prefix(format!("/nodemanager/{context}/meshsub"))
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(MAX_GOSSIP_BYTES)
        .message_id_fn(|message| gossipsub::MessageId::new(&Sha256::digest(&message.data)))
        .build()
        .map_err(|e| anyhow::anyhow!("cannot configure gossipsub: {e}"))?;
    gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config)
        .map_err(|e| anyhow::anyhow!("cannot set up gossipsub: {e}"))
}

/// The Kademlia protocol's name for a context.
pub fn kad_protocol(context: &str) -> Result<StreamProtocol> {
    protocol(context, "kad")
}

fn protocol(context: &str, what: &str) -> Result<StreamProtocol> {
    StreamProtocol::try_from_owned(format!("/nodemanager/{context}/{what}/1"))
        .with_context(|| format!("context {context:?} cannot be part of a protocol name"))
}

/// Builds the swarm for `context` with the identity `key` and the `[network]` settings,
/// within the process's `limits`.
pub fn build_swarm(
    key: Keypair,
    context: &str,
    settings: &NetworkSettings,
    limits: &ProcessLimits,
) -> Result<Swarm<NodeBehaviour>> {
    let rr = &settings.request_response;
    let sampling_config = request_response::Config::default()
        .with_request_timeout(SAMPLING_TIMEOUT)
        .with_max_concurrent_streams(rr.max_concurrent_streams);
    let mut yamux_config = yamux::Config::default();
    // Over this, yamux aborts the process: validation refuses it, this keeps it so.
    yamux_config.set_max_num_streams(
        settings
            .yamux
            .max_num_streams
            .min(settings::MAX_YAMUX_STREAMS),
    );
    let yamux = &settings.yamux;
    let to_u32 = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    let node_limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(settings.max_connections))
        .with_max_established_per_peer(Some(settings.max_connections_per_peer))
        .with_max_pending_incoming(Some(settings.max_pending_incoming));
    let identify_protocol = format!("/nodemanager/{context}/id/1");
    let protocols = (
        sampling_protocol(context)?,
        kad_protocol(context)?,
        deploy_protocol(context)?,
    );
    let gossip = gossip(context, &key)?;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            move || yamux_config.clone(),
        )
        .context("cannot set up TCP + noise + yamux")?
        .with_quic_config(|mut quic| {
            quic.max_stream_data = to_u32(yamux.receive_window);
            quic.max_connection_data = to_u32(yamux.max_buffer_size);
            quic.max_concurrent_stream_limit = to_u32(yamux.max_num_streams as u64);
            quic
        })
        .with_dns()
        .context("cannot set up DNS resolution (/dns4/ addresses)")?
        .with_behaviour(
            |key| -> Result<NodeBehaviour, Box<dyn std::error::Error + Send + Sync>> {
                let peer_id = key.public().to_peer_id();
                let kad = settings.enable_kad.then(|| {
                    let mut config = kad::Config::new(protocols.1.clone());
                    config.set_query_timeout(Duration::from_secs(
                        settings.kademlia.query_timeout_secs,
                    ));
                    if let Some(size) = NonZeroUsize::new(settings.kademlia.kbucket_size) {
                        config.set_kbucket_size(size);
                    }
                    let mut kad = kad::Behaviour::with_config(
                        peer_id,
                        kad::store::MemoryStore::new(peer_id),
                        config,
                    );
                    // Loopback and LAN addresses are never "confirmed external": without
                    // this the node would stay a client and nobody would learn of it.
                    kad.set_mode(Some(kad::Mode::Server));
                    kad
                });
                let mdns = if settings.enable_mdns {
                    let config = mdns::Config {
                        ttl: Duration::from_secs(settings.mdns.ttl_secs),
                        query_interval: Duration::from_secs(settings.mdns.query_interval_secs),
                        enable_ipv6: false,
                    };
                    Some(mdns::tokio::Behaviour::new(config, peer_id)?)
                } else {
                    None
                };
                Ok(NodeBehaviour {
                    budget: budget::ConnectionGate::new(limits.connections.clone()),
                    limits: connection_limits::Behaviour::new(node_limits),
                    identify: identify::Behaviour::new(identify::Config::new(
                        identify_protocol,
                        key.public(),
                    )),
                    streams: libp2p_stream::Behaviour::new(),
                    sampling: request_response::Behaviour::with_codec(
                        SamplingCodec,
                        [(protocols.0.clone(), request_response::ProtocolSupport::Full)],
                        sampling_config,
                    ),
                    kad: kad.into(),
                    mdns: mdns.into(),
                    gossip,
                    deploy: request_response::Behaviour::with_codec(
                        DeployCodec,
                        [(protocols.2.clone(), request_response::ProtocolSupport::Full)],
                        request_response::Config::default().with_request_timeout(DEPLOY_TIMEOUT),
                    ),
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot build the network behaviour: {e}"))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(settings.idle_connection_timeout())
                .with_max_negotiating_inbound_streams(settings.max_negotiating_inbound_streams)
                .with_per_connection_event_buffer_size(settings.per_connection_event_buffer_size)
                .with_dial_concurrency_factor(
                    NonZeroU8::new(settings.dial_concurrency_factor).unwrap_or(NonZeroU8::MIN),
                )
        })
        .build();
    Ok(swarm)
}
