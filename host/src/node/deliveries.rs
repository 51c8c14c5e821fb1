//! App messages on their way to peers: batched per destination, tracked until each is
//! answered, refused, fails or passes its deadline, and bounded so that an app sending
//! faster than the network carries gets failures instead of an ever-growing queue.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::request_response::OutboundRequestId;
use libp2p::PeerId;
use tokio::time::Instant;

use crate::network::{AppRequest, AppResponse, MAX_BATCH};
use crate::runtime::{AppId, AppRegistry, OutgoingMessage, WorkerEvent};

/// Most messages waiting for an answer on one node.
pub const MAX_IN_FLIGHT: usize = 65_536;

struct Pending {
    app: AppId,
    message_id: u64,
    deadline: Instant,
    timeout: Duration,
}

/// Merges consecutive `Outgoing` events of the same app (messages of calls that ran
/// while the node was busy), keeping every event's order.
pub fn coalesce(events: Vec<WorkerEvent>) -> Vec<WorkerEvent> {
    let mut merged: Vec<WorkerEvent> = Vec::with_capacity(events.len());
    for event in events {
        match (merged.last_mut(), event) {
            (
                Some(WorkerEvent::Outgoing { app, messages }),
                WorkerEvent::Outgoing {
                    app: next,
                    messages: more,
                },
            ) if *app == next => messages.extend(more),
            (_, event) => merged.push(event),
        }
    }
    merged
}

/// One request's worth of messages for one peer.
pub struct Batch {
    /// The destination.
    pub peer: PeerId,
    /// The messages, in the order the app queued them.
    pub requests: Vec<AppRequest>,
    pending: Vec<Pending>,
}

/// The messages in flight, by request; `None` once a message's outcome is reported.
#[derive(Default)]
pub struct Deliveries {
    requests: HashMap<OutboundRequestId, Vec<Option<Pending>>>,
    in_flight: usize,
}

impl Deliveries {
    /// Groups `messages` of app `app` (routed as `name`) into batches: per destination,
    /// in order, at most `MAX_BATCH` messages and `max_bytes` of payload each (a single
    /// larger message goes alone). Messages over the in-flight bound fail at once.
    pub fn batch(
        &self,
        app: AppId,
        name: &str,
        messages: Vec<OutgoingMessage>,
        max_bytes: u64,
        registry: &AppRegistry,
    ) -> Vec<Batch> {
        let mut batches: Vec<Batch> = Vec::new();
        let mut open: HashMap<PeerId, (usize, u64)> = HashMap::new();
        let mut room = MAX_IN_FLIGHT.saturating_sub(self.in_flight);
        for message in messages {
            if room == 0 {
                registry.report(
                    app,
                    message.id,
                    Some(format!(
                        "{MAX_IN_FLIGHT} messages are already waiting for an answer: sending faster than the network carries them"
                    )),
                );
                continue;
            }
            room -= 1;
            let size = message.payload.len() as u64;
            let slot = open
                .get(&message.destination)
                .copied()
                .filter(|&(i, bytes)| {
                    batches[i].requests.len() < MAX_BATCH && bytes + size <= max_bytes
                });
            let index = match slot {
                Some((i, _)) => i,
                None => {
                    batches.push(Batch {
                        peer: message.destination,
                        requests: Vec::new(),
                        pending: Vec::new(),
                    });
                    batches.len() - 1
                }
            };
            let bytes = slot.map_or(0, |(_, b)| b) + size;
            open.insert(message.destination, (index, bytes));
            batches[index].requests.push(AppRequest {
                app: name.to_string(),
                payload: message.payload,
            });
            batches[index].pending.push(Pending {
                app,
                message_id: message.id,
                deadline: Instant::now() + message.timeout,
                timeout: message.timeout,
            });
        }
        batches
    }

    /// Tracks a batch sent as request `id`.
    pub fn sent(&mut self, id: OutboundRequestId, batch: Batch) {
        self.in_flight += batch.pending.len();
        self.requests
            .insert(id, batch.pending.into_iter().map(Some).collect());
    }

    /// Reports every message whose deadline passed.
    pub fn expire(&mut self, now: Instant, registry: &AppRegistry) {
        let mut reported = 0;
        self.requests.retain(|_, batch| {
            for slot in batch.iter_mut() {
                if slot.as_ref().is_some_and(|p| p.deadline <= now) {
                    let p = slot.take().expect("checked above");
                    let reason = format!("timed out after {:?}", p.timeout);
                    registry.report(p.app, p.message_id, Some(reason));
                    reported += 1;
                }
            }
            batch.iter().any(Option::is_some)
        });
        self.in_flight -= reported;
    }

    /// The peer answered request `id`: one answer per message.
    pub fn answered(
        &mut self,
        id: OutboundRequestId,
        peer: PeerId,
        answers: Vec<AppResponse>,
        registry: &AppRegistry,
    ) {
        let Some(batch) = self.requests.remove(&id) else {
            return;
        };
        let count = batch.len();
        let mut answers = answers.into_iter();
        for p in batch.into_iter().flatten() {
            self.in_flight -= 1;
            let failure = match answers.next() {
                Some(Ok(())) => None,
                Some(Err(reason)) => Some(format!("refused by {peer}: {reason}")),
                None => Some(format!(
                    "{peer} answered fewer messages than the {count} it was sent"
                )),
            };
            registry.report(p.app, p.message_id, failure);
        }
    }

    /// Request `id` failed as a whole.
    pub fn failed(&mut self, id: OutboundRequestId, reason: &str, registry: &AppRegistry) {
        if let Some(batch) = self.requests.remove(&id) {
            for p in batch.into_iter().flatten() {
                self.in_flight -= 1;
                registry.report(p.app, p.message_id, Some(reason.to_string()));
            }
        }
    }

    /// Reports every message still waiting as lost to the shutdown.
    pub fn shutdown(&mut self, registry: &AppRegistry) {
        for (_, batch) in self.requests.drain() {
            for p in batch.into_iter().flatten() {
                registry.report(
                    p.app,
                    p.message_id,
                    Some("the node shut down before an answer came".into()),
                );
            }
        }
        self.in_flight = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::AppContext;

    fn message(id: u64, to: PeerId, bytes: usize) -> OutgoingMessage {
        OutgoingMessage {
            id,
            destination: to,
            payload: vec![0; bytes],
            timeout: Duration::from_secs(5),
        }
    }

    fn registry() -> AppRegistry {
        let (events, _) = tokio::sync::mpsc::channel(1);
        AppRegistry::new(AppContext::new("me".into()), None, events, 1 << 20)
    }

    #[tokio::test]
    async fn messages_are_batched_per_peer_in_order_within_count_and_bytes() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut messages = vec![message(0, a, 10), message(1, b, 10), message(2, a, 10)];
        // Three of 40 bytes for b: after 10 + 40 + 40 bytes, the third no longer fits in 100.
        messages.extend((3..6).map(|id| message(id, b, 40)));
        let batches = Deliveries::default().batch(AppId(1), "x", messages, 100, &registry());
        let shape: Vec<(PeerId, Vec<u64>)> = batches
            .iter()
            .map(|batch| {
                (
                    batch.peer,
                    batch.pending.iter().map(|p| p.message_id).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![(a, vec![0, 2]), (b, vec![1, 3, 4]), (b, vec![5])]
        );

        let many = (0..(MAX_BATCH as u64 + 1))
            .map(|id| message(id, a, 1))
            .collect();
        let batches = Deliveries::default().batch(AppId(1), "x", many, 1 << 20, &registry());
        let sizes: Vec<usize> = batches.iter().map(|b| b.requests.len()).collect();
        assert_eq!(sizes, vec![MAX_BATCH, 1]);
    }

    #[test]
    fn consecutive_messages_of_one_app_are_merged_in_order() {
        let peer = PeerId::random();
        let out = |app, ids: &[u64]| WorkerEvent::Outgoing {
            app: AppId(app),
            messages: ids.iter().map(|&id| message(id, peer, 1)).collect(),
        };
        let merged = coalesce(vec![
            out(1, &[1, 2]),
            out(1, &[3]),
            out(2, &[4]),
            WorkerEvent::Finished { app: AppId(2) },
            out(2, &[5]),
            out(2, &[6]),
        ]);
        let shape: Vec<(u64, Vec<u64>)> = merged
            .iter()
            .map(|e| match e {
                WorkerEvent::Outgoing { app, messages } => {
                    (app.0, messages.iter().map(|m| m.id).collect())
                }
                _ => (0, Vec::new()),
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, vec![1, 2, 3]),
                (2, vec![4]),
                (0, vec![]),
                (2, vec![5, 6])
            ]
        );
    }

    #[tokio::test]
    async fn answers_expiry_and_the_in_flight_bound_are_accounted() {
        let registry = registry();
        let peer = PeerId::random();
        let mut deliveries = Deliveries {
            in_flight: MAX_IN_FLIGHT - 2,
            ..Deliveries::default()
        };
        let messages = (0..5).map(|id| message(id, peer, 1)).collect();
        let batches = deliveries.batch(AppId(1), "x", messages, 1 << 20, &registry);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].requests.len(), 2, "only two fit under the bound");
        deliveries.in_flight = 0;
        let id = outbound_request_id();
        deliveries.sent(id, batches.into_iter().next().unwrap());
        assert_eq!(deliveries.in_flight, 2);
        deliveries.expire(Instant::now() + Duration::from_secs(6), &registry);
        assert_eq!(deliveries.in_flight, 0);
        assert!(deliveries.requests.is_empty());
    }

    /// A request id, which libp2p only hands out when sending: send one to nobody.
    fn outbound_request_id() -> OutboundRequestId {
        use crate::network::AppCodec;
        use libp2p::request_response::{Behaviour, Config, ProtocolSupport};
        let codec = AppCodec {
            budget: crate::network::ReadBudget::new(1),
            max_payload_bytes: 1,
            max_response_bytes: 1,
        };
        let protocol = libp2p::StreamProtocol::new("/t");
        let mut behaviour = Behaviour::with_codec(
            codec,
            [(protocol, ProtocolSupport::Full)],
            Config::default(),
        );
        behaviour.send_request(&PeerId::random(), Ok(Vec::new()))
    }
}
