//! The node's side of deployment (`deploy/`): manifests from the gossip, from deployers
//! and from peers asked on connecting; chunk requests answered and sent; apps loaded,
//! replaced or unloaded as the manifests say, through the same path as the admin socket.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::{gossipsub, PeerId};
use tokio::sync::{mpsc, oneshot};

use super::admin::{app_spec, AdminCall, AdminCommand, Replacement};
use super::Node;
use crate::config::NodeConfig;
use crate::deploy::manifest::{Action, Manifest, Refusal, SignedManifest, Trust};
use crate::deploy::state::{Deployments, Origin, Step};
use crate::deploy::wire::{DeployRequest, DeployResponse, DeployedApp, NodeStatus};
use crate::network::{self, Inbound};
use crate::runtime::{AppId, AppRegistry, LoadRequest, Runtime};

/// What comes back to the event loop from work done beside it.
pub(super) enum DeployEvent {
    /// A manifest's component compiled (`None`: an undeploy), or why not.
    Compiled {
        name: String,
        request: Result<Option<Box<LoadRequest>>, String>,
    },
    /// The registry's answer to applying a manifest.
    Applied {
        name: String,
        result: Result<(), String>,
    },
}

/// A node's deployments and the requests they have under way.
pub(super) struct Deploying {
    pub state: Deployments,
    topic: gossipsub::IdentTopic,
    /// Whether the node trusts any key (else it does not ask peers for manifests).
    enabled: bool,
    fetches: HashMap<OutboundRequestId, (PeerId, String, u64)>,
    catch_ups: HashSet<OutboundRequestId>,
    publishes: HashMap<u64, ResponseChannel<DeployResponse>>,
    next_publish: u64,
    events: mpsc::UnboundedSender<DeployEvent>,
}

impl Deploying {
    /// Deployments as `config` says; the receiver of what work beside the loop reports.
    pub fn new(
        config: &NodeConfig,
    ) -> anyhow::Result<(Deploying, mpsc::UnboundedReceiver<DeployEvent>)> {
        let keys = config.deploy.keys()?;
        let enabled = !keys.is_empty();
        let trust = Trust::new(keys, &config.context, config.deploy.max_component_bytes());
        let (events, receiver) = mpsc::unbounded_channel();
        Ok((
            Deploying {
                state: Deployments::new(trust),
                topic: network::deploy_topic(&config.context),
                enabled,
                fetches: HashMap::new(),
                catch_ups: HashSet::new(),
                publishes: HashMap::new(),
                next_publish: 0,
                events,
            },
            receiver,
        ))
    }

    /// The gossip topic of the node's context.
    pub fn topic(&self) -> &gossipsub::IdentTopic {
        &self.topic
    }

    /// Whether the node takes deployments (it then stays up until a signal).
    pub fn enabled(&self) -> bool {
        self.enabled
    }
}

impl Node {
    /// A manifest (or something else) on the gossip.
    pub(super) fn on_gossip_event(&mut self, event: gossipsub::Event) {
        let gossipsub::Event::Message {
            propagation_source,
            message_id,
            message,
        } = event
        else {
            return;
        };
        let signed = match serde_json::from_slice::<SignedManifest>(&message.data) {
            Ok(signed) => signed,
            Err(e) => {
                self.deploying
                    .state
                    .count(&Refusal::Malformed(e.to_string()));
                self.swarm
                    .behaviour_mut()
                    .gossip
                    .report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        gossipsub::MessageAcceptance::Reject,
                    );
                return;
            }
        };
        // Judged now; forwarded only once the component is here (`Step::Forward`).
        let manifest = match self.deploying.state.judge(&signed) {
            Ok(manifest) => manifest,
            Err(refusal) => {
                tracing::info!(peer = %propagation_source, "deployment refused: {refusal}");
                self.deploying.state.count(&refusal);
                self.report_gossip(&message_id.0, propagation_source, Err(&refusal));
                return;
            }
        };
        let origin = Origin::Gossip {
            message_id: message_id.0,
            publisher: message.source,
            source: propagation_source,
        };
        let steps = self.deploying.state.judged(origin, signed, manifest);
        self.run_deploy_steps(steps);
    }

    /// Tells gossipsub what became of a message: forward it, or drop it (with a penalty
    /// for its sender when it was bad rather than old, not for this node, or not fetched).
    fn report_gossip(&mut self, message_id: &[u8], source: PeerId, verdict: Result<(), &Refusal>) {
        let acceptance = match verdict {
            Ok(()) => gossipsub::MessageAcceptance::Accept,
            Err(
                Refusal::NotNewer { .. }
                | Refusal::UnknownKey(_)
                | Refusal::TooLarge { .. }
                | Refusal::Unavailable { .. },
            ) => gossipsub::MessageAcceptance::Ignore,
            Err(_) => gossipsub::MessageAcceptance::Reject,
        };
        self.swarm
            .behaviour_mut()
            .gossip
            .report_message_validation_result(
                &gossipsub::MessageId(message_id.to_vec()),
                &source,
                acceptance,
            );
    }

    /// A request of the deployment protocol, or the answer to one of ours.
    pub(super) fn on_deploy_event(
        &mut self,
        event: request_response::Event<Inbound<DeployRequest>, DeployResponse>,
    ) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_deploy_request(peer, request, channel),
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some((from, sha256, offset)) = self.deploying.fetches.remove(&request_id) {
                    let bytes = match response {
                        DeployResponse::Chunk(bytes) => Some(bytes),
                        _ => None,
                    };
                    let steps = self
                        .deploying
                        .state
                        .chunk_arrived(from, &sha256, offset, bytes);
                    self.run_deploy_steps(steps);
                } else if self.deploying.catch_ups.remove(&request_id) {
                    if let DeployResponse::Manifests(manifests) = response {
                        for signed in manifests {
                            let steps = self
                                .deploying
                                .state
                                .received(Origin::CatchUp { peer }, signed);
                            self.run_deploy_steps(steps);
                        }
                    }
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                self.deploying.catch_ups.remove(&request_id);
                if let Some((from, sha256, offset)) = self.deploying.fetches.remove(&request_id) {
                    tracing::info!(peer = %from, "chunk of {sha256} not fetched: {error}");
                    let steps = self
                        .deploying
                        .state
                        .chunk_arrived(from, &sha256, offset, None);
                    self.run_deploy_steps(steps);
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::info!(peer = %peer, "inbound deployment exchange failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_deploy_request(
        &mut self,
        peer: PeerId,
        request: Inbound<DeployRequest>,
        channel: ResponseChannel<DeployResponse>,
    ) {
        let answer = match request {
            Err(reason) => {
                self.network.refuse(
                    "bad_deploy_frame",
                    format_args!("deployment request from {peer}: {reason}"),
                );
                DeployResponse::Published(Err(reason))
            }
            Ok(DeployRequest::Fetch {
                sha256,
                offset,
                len,
            }) => match self.deploying.state.chunk(&sha256, offset, len) {
                Some(bytes) => DeployResponse::Chunk(bytes),
                None => DeployResponse::Missing,
            },
            Ok(DeployRequest::Manifests) => {
                DeployResponse::Manifests(self.deploying.state.manifests())
            }
            Ok(DeployRequest::Status) => DeployResponse::Status(self.deploy_status()),
            Ok(DeployRequest::Publish { manifest }) => {
                let request = self.deploying.next_publish;
                self.deploying.next_publish += 1;
                self.deploying.publishes.insert(request, channel);
                let origin = Origin::Publish {
                    deployer: peer,
                    request,
                };
                let steps = self.deploying.state.received(origin, manifest);
                return self.run_deploy_steps(steps);
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .deploy
            .send_response(channel, answer);
    }

    /// The deployed apps this node runs and the peers of its context it knows.
    fn deploy_status(&self) -> NodeStatus {
        let apps = self
            .deploying
            .state
            .deployed()
            .map(|manifest| DeployedApp {
                name: manifest.name.clone(),
                version: manifest.version,
                sha256: manifest.sha256.clone(),
            })
            .collect();
        let peers = self
            .addresses
            .iter()
            .filter_map(|(peer, addrs)| {
                let addr = addrs.first()?.clone();
                Some(addr.with_p2p(*peer).unwrap_or_else(|addr| addr).to_string())
            })
            .collect();
        NodeStatus { apps, peers }
    }

    /// Asks `peer`, a peer of this context that just connected, for its manifests.
    pub(super) fn catch_up_from(&mut self, peer: PeerId) {
        if self.deploying.enabled {
            let id = self
                .swarm
                .behaviour_mut()
                .deploy
                .send_request(&peer, Ok(DeployRequest::Manifests));
            self.deploying.catch_ups.insert(id);
        }
    }

    /// A peer's last connection closed: chunks asked of it go to other holders.
    pub(super) fn deploy_peer_gone(&mut self, peer: PeerId) {
        let steps = self.deploying.state.peer_gone(peer);
        self.run_deploy_steps(steps);
    }

    fn run_deploy_steps(&mut self, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Fetch {
                    peer,
                    sha256,
                    offset,
                    len,
                } => {
                    let request = DeployRequest::Fetch {
                        sha256: sha256.clone(),
                        offset,
                        len,
                    };
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .deploy
                        .send_request(&peer, Ok(request));
                    self.deploying.fetches.insert(id, (peer, sha256, offset));
                }
                Step::Apply {
                    manifest,
                    component,
                } => self.compile_deployed(manifest, component),
                Step::Forward { origins } => {
                    for origin in origins {
                        if let Origin::Gossip {
                            message_id, source, ..
                        } = origin
                        {
                            self.report_gossip(&message_id, source, Ok(()));
                        }
                    }
                }
                Step::Settle {
                    origin,
                    signed,
                    result,
                } => self.settle(origin, signed, result),
            }
        }
    }

    /// Compiles a manifest's component beside the event loop (seconds for a Python
    /// one); the result comes back as [`DeployEvent::Compiled`].
    fn compile_deployed(&mut self, manifest: Manifest, component: Option<Arc<Vec<u8>>>) {
        let events = self.deploying.events.clone();
        let runtime = self.runtime.clone();
        let defaults = self.config.clone();
        tokio::spawn(async move {
            let name = manifest.name.clone();
            let request = match (manifest.action, component) {
                (Action::Undeploy, _) => Ok(None),
                (Action::Deploy, Some(bytes)) => prepare(manifest, bytes, runtime, &defaults)
                    .await
                    .map(|request| Some(Box::new(request))),
                (Action::Deploy, None) => Err("no component".to_string()),
            };
            let _ = events.send(DeployEvent::Compiled { name, request });
        });
    }

    /// What the work beside the loop reported: apply a compiled manifest, or settle it.
    pub(super) fn on_deploy_done(
        &mut self,
        event: DeployEvent,
        registry: &mut AppRegistry,
        unloading: &mut HashMap<AppId, oneshot::Sender<serde_json::Value>>,
    ) {
        let (name, command) = match event {
            DeployEvent::Applied { name, result } => {
                if let Err(reason) = &result {
                    tracing::warn!(app = %name, "deployment not applied: {reason}");
                } else {
                    tracing::info!(app = %name, "deployment applied");
                }
                let steps = self.deploying.state.applied(&name, result);
                return self.run_deploy_steps(steps);
            }
            DeployEvent::Compiled {
                name,
                request: Err(reason),
            } => {
                let steps = self.deploying.state.applied(&name, Err(reason));
                return self.run_deploy_steps(steps);
            }
            DeployEvent::Compiled {
                name,
                request: Ok(None),
            } => (name.clone(), AdminCommand::Unload(name)),
            DeployEvent::Compiled {
                name,
                request: Ok(Some(request)),
            } => {
                let command = match registry.spec_of(&name) {
                    Some(_) => AdminCommand::Replace(Replacement::as_given(*request)),
                    None => AdminCommand::Load(*request),
                };
                (name, command)
            }
        };
        let (reply, answer) = oneshot::channel();
        self.on_admin_call(AdminCall { command, reply }, registry, unloading);
        let events = self.deploying.events.clone();
        tokio::spawn(async move {
            let result = match answer.await {
                Ok(answer) if answer["ok"] == true => Ok(()),
                Ok(answer) => Err(answer["error"]
                    .as_str()
                    .unwrap_or("refused by the node")
                    .to_string()),
                Err(_) => Err("the node stopped first".to_string()),
            };
            let _ = events.send(DeployEvent::Applied { name, result });
        });
    }

    /// A manifest is judged: a deployer gets its answer, and one applied from a deployer
    /// goes out on the gossip.
    fn settle(&mut self, origin: Origin, signed: SignedManifest, result: Result<(), Refusal>) {
        let request = match origin {
            Origin::Publish { request, .. } => request,
            // Forwarded already if its component arrived (gossipsub ignores a second
            // verdict); a duplicate of the newest is forwarded, a refused one dropped.
            Origin::Gossip {
                message_id, source, ..
            } => {
                self.report_gossip(&message_id, source, result.as_ref().map(|_| ()));
                return;
            }
            Origin::CatchUp { .. } => return,
        };
        let Some(channel) = self.deploying.publishes.remove(&request) else {
            return;
        };
        if result.is_ok() {
            let topic = self.deploying.topic.clone();
            let data = serde_json::to_vec(&signed).expect("a manifest serialises");
            if let Err(e) = self.swarm.behaviour_mut().gossip.publish(topic, data) {
                tracing::info!("manifest not spread at once ({e}): peers ask for it on connecting");
            }
        }
        let answer = DeployResponse::Published(result.map_err(|refusal| refusal.to_string()));
        let _ = self
            .swarm
            .behaviour_mut()
            .deploy
            .send_response(channel, answer);
    }
}

/// A deployed app's settings (the manifest's, the node's defaults for the rest) and
/// its component, compiled off the event loop.
async fn prepare(
    manifest: Manifest,
    bytes: Arc<Vec<u8>>,
    runtime: Arc<Runtime>,
    defaults: &NodeConfig,
) -> Result<LoadRequest, String> {
    let mut limits = defaults.limits.clone();
    for (name, value) in &manifest.limits {
        limits.set(name, value).map_err(|e| format!("{e:#}"))?;
    }
    let period = manifest.period_ms.map(|ms| format!("{ms}ms"));
    let hash = manifest.sha256.clone().unwrap_or_default();
    let spec = app_spec(
        format!("{hash}.wasm").into(),
        Some(manifest.name.clone()),
        manifest.config.clone(),
        manifest.cycles,
        period.as_deref(),
        Some(limits),
    )
    .and_then(|spec| defaults.resolve_app(&spec))
    .map_err(|e| format!("{e:#}"))?;
    let prepared = tokio::task::spawn_blocking(move || runtime.prepare(&bytes))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("not a component this node can run: {e:#}"))?;
    Ok(LoadRequest { spec, prepared })
}
