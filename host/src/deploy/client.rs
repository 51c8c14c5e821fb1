//! The deployer's side (`nodemanager apps deploy` / `undeploy`): a short-lived libp2p
//! peer that connects to one node of the context, learns the app's current version from
//! it, hands it the signed manifest of the next one, serves the component's chunks
//! while that node fetches them, and returns once the node applied the manifest and
//! spread it over the gossip.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, Swarm};

use super::manifest::{Manifest, SignedManifest};
use super::wire::{DeployCodec, DeployRequest, DeployResponse};
use crate::network::{deploy_protocol, DEPLOY_TIMEOUT};

/// A connection to one node of a context, for deploying.
pub struct Deployer {
    swarm: Swarm<request_response::Behaviour<DeployCodec>>,
    node: PeerId,
}

impl Deployer {
    /// Connects to the node at `via` (a multiaddr; with or without `/p2p/<peer id>`) of
    /// `context`.
    pub async fn connect(via: &Multiaddr, context: &str) -> Result<Deployer> {
        let protocol = deploy_protocol(context)?;
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .context("cannot set up TCP + noise + yamux")?
            .with_quic()
            .with_dns()
            .context("cannot set up DNS resolution")?
            .with_behaviour(|_| {
                request_response::Behaviour::with_codec(
                    DeployCodec,
                    [(protocol, ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(DEPLOY_TIMEOUT),
                )
            })
            .map_err(|e| anyhow::anyhow!("cannot build the deployer: {e}"))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        swarm
            .dial(via.clone())
            .with_context(|| format!("cannot dial {via}"))?;
        let wanted = via.iter().find_map(|p| match p {
            Protocol::P2p(peer) => Some(peer),
            _ => None,
        });
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. }
                    if wanted.is_none_or(|w| w == peer_id) =>
                {
                    return Ok(Deployer {
                        swarm,
                        node: peer_id,
                    })
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    bail!("cannot reach {via}: {error}")
                }
                _ => {}
            }
        }
    }

    /// Sends `request` and waits for its answer, serving `component`'s chunks to the
    /// node meanwhile.
    async fn ask(&mut self, request: DeployRequest, component: &[u8]) -> Result<DeployResponse> {
        let id = self
            .swarm
            .behaviour_mut()
            .send_request(&self.node, Ok(request));
        loop {
            let SwarmEvent::Behaviour(event) = self.swarm.select_next_some().await else {
                continue;
            };
            match event {
                request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                } if request_id == id => return Ok(response),
                request_response::Event::Message {
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                } => {
                    let answer = match request {
                        Ok(DeployRequest::Fetch { offset, len, .. }) => {
                            let start = (offset as usize).min(component.len());
                            let end = start.saturating_add(len as usize).min(component.len());
                            DeployResponse::Chunk(component[start..end].to_vec())
                        }
                        _ => DeployResponse::Missing,
                    };
                    let _ = self.swarm.behaviour_mut().send_response(channel, answer);
                }
                request_response::Event::OutboundFailure {
                    request_id, error, ..
                } if request_id == id => bail!("the node did not answer: {error}"),
                _ => {}
            }
        }
    }

    /// The newest version of app `name` the node applied, if any.
    pub async fn current_version(&mut self, name: &str) -> Result<Option<u64>> {
        let DeployResponse::Manifests(manifests) = self.ask(DeployRequest::Manifests, &[]).await?
        else {
            bail!("the node answered the request for its manifests with something else");
        };
        Ok(manifests
            .iter()
            .filter_map(|signed| serde_json::from_str::<Manifest>(&signed.manifest).ok())
            .filter(|manifest| manifest.name == name)
            .map(|manifest| manifest.version)
            .max())
    }

    /// Hands the node `manifest`, signed with `key`, serving `component` (empty for an
    /// undeploy) until the node has applied it; the signed manifest.
    pub async fn publish(
        &mut self,
        manifest: &Manifest,
        key: &Keypair,
        component: &[u8],
    ) -> Result<SignedManifest> {
        let signed = manifest.sign(key)?;
        self.publish_signed(&signed, component)
            .await?
            .map_err(|reason| anyhow::anyhow!("the node refused it: {reason}"))?;
        Ok(signed)
    }

    /// Hands the node a manifest signed already, serving `component` meanwhile; the
    /// node's answer: applied, or why not.
    pub async fn publish_signed(
        &mut self,
        signed: &SignedManifest,
        component: &[u8],
    ) -> Result<Result<(), String>> {
        let request = DeployRequest::Publish {
            manifest: signed.clone(),
        };
        match self.ask(request, component).await? {
            DeployResponse::Published(result) => Ok(result),
            _ => bail!("the node answered the publish with something else"),
        }
    }
}

/// What `apps deploy` / `apps undeploy` asks for.
pub struct Order {
    /// A node of the context.
    pub via: Multiaddr,
    /// The context.
    pub context: String,
    /// The deployment key file.
    pub key: std::path::PathBuf,
    /// The app's name.
    pub name: String,
    /// The component to deploy; `None` undeploys the app.
    pub component: Option<std::path::PathBuf>,
    /// The app's config string.
    pub config: String,
    /// Cycles (-1: forever); the nodes' default when absent.
    pub cycles: Option<i64>,
    /// Time between cycles; the nodes' default when absent.
    pub period: Option<Duration>,
    /// Limits, as `--limit NAME=VALUE` writes them.
    pub limits: Vec<(String, String)>,
}

/// Carries out `order` through its node: the next version of the app's manifest,
/// applied there and spreading. Returns what to print.
pub async fn carry_out(order: Order) -> Result<serde_json::Value> {
    let key = super::keys::load(&order.key)?;
    let component = match &order.component {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => Vec::new(),
    };
    crate::config::validate_name("app name", &order.name)?;
    let mut deployer = Deployer::connect(&order.via, &order.context).await?;
    let version = deployer.current_version(&order.name).await?.unwrap_or(0) + 1;
    let deploying = order.component.is_some();
    let manifest = Manifest {
        context: order.context.clone(),
        name: order.name.clone(),
        version,
        action: if deploying {
            super::manifest::Action::Deploy
        } else {
            super::manifest::Action::Undeploy
        },
        sha256: deploying.then(|| crate::runtime::content_hash(&component)),
        size: deploying.then_some(component.len() as u64),
        config: order.config,
        cycles: order.cycles,
        period_ms: order.period.map(|p| p.as_millis() as u64),
        limits: order.limits.into_iter().collect(),
        issued_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    deployer.publish(&manifest, &key, &component).await?;
    Ok(serde_json::json!({
        "ok": true,
        "name": manifest.name,
        "version": manifest.version,
        "action": manifest.action,
        "sha256": manifest.sha256,
        "size": manifest.size,
        "via": deployer.node.to_string(),
    }))
}

/// Which version of each deployed app every node reachable from `via` runs: asks `via`
/// for its status and the peers it knows, then those, and so on, until every node
/// answered or failed, or `within` passed. Returns what to print: per node its apps,
/// per app how many nodes run each version, the nodes that could not be asked, and how
/// many had not answered in time.
pub async fn status(via: &Multiaddr, context: &str, within: Duration) -> Result<serde_json::Value> {
    use std::collections::{BTreeMap, HashMap, HashSet};
    let mut deployer = Deployer::connect(via, context).await?;
    let deadline = tokio::time::sleep(within);
    tokio::pin!(deadline);
    let swarm = &mut deployer.swarm;
    let mut asked: HashSet<PeerId> = HashSet::from([deployer.node]);
    let mut pending = HashMap::new();
    pending.insert(
        swarm
            .behaviour_mut()
            .send_request(&deployer.node, Ok(DeployRequest::Status)),
        deployer.node,
    );
    let mut nodes = BTreeMap::new();
    let mut versions: BTreeMap<String, BTreeMap<u64, usize>> = BTreeMap::new();
    let mut unreachable = BTreeMap::new();
    while !pending.is_empty() {
        let event = tokio::select! {
            event = swarm.select_next_some() => event,
            _ = &mut deadline => break,
        };
        let SwarmEvent::Behaviour(event) = event else {
            continue;
        };
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response: DeployResponse::Status(status),
                    },
                ..
            } => {
                pending.remove(&request_id);
                for addr in status
                    .peers
                    .iter()
                    .filter_map(|a| a.parse::<Multiaddr>().ok())
                {
                    let Some(Protocol::P2p(next)) = addr.iter().last() else {
                        continue;
                    };
                    if asked.insert(next) {
                        swarm.add_peer_address(next, addr.clone());
                        let id = swarm
                            .behaviour_mut()
                            .send_request(&next, Ok(DeployRequest::Status));
                        pending.insert(id, next);
                    }
                }
                for app in &status.apps {
                    *versions
                        .entry(app.name.clone())
                        .or_default()
                        .entry(app.version)
                        .or_default() += 1;
                }
                nodes.insert(peer.to_string(), serde_json::json!({ "apps": status.apps }));
            }
            request_response::Event::Message {
                message: request_response::Message::Response { request_id, .. },
                ..
            } => {
                if let Some(peer) = pending.remove(&request_id) {
                    unreachable.insert(peer.to_string(), "answered something else".to_string());
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                pending.remove(&request_id);
                unreachable.insert(peer.to_string(), error.to_string());
            }
            _ => {}
        }
    }
    Ok(serde_json::json!({
        "ok": true,
        "nodes": nodes,
        "versions": versions,
        "unreachable": unreachable,
        "unanswered_in_time": pending.len(),
    }))
}
