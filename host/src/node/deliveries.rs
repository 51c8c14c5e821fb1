//! App messages on their way to peers: batched per destination, tracked until each is
//! answered, refused, fails or passes its deadline, and bounded so that an app sending
//! faster than the network carries gets failures instead of an ever-growing queue.
//!
//! A request whose stream broke before the answer (its connection closed just as the
//! request went out, the usual case) is sent once more under the same key; the
//! receiver answers a repeat from memory without delivering it twice
//! (`node/answers.rs`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;

use crate::network::app_stream::{LinkFailure, RequestId};
use crate::network::{AppBatch, AppRequest, AppResponse, MAX_BATCH};
use crate::runtime::{AppId, Outcome, OutgoingMessage, Report, WorkerEvent};

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
    /// The request: its key and the messages, in the order the app queued them.
    pub request: AppBatch,
    /// One per message; `None` once its outcome is reported.
    slots: Vec<Option<Pending>>,
    /// Why the first attempt failed, when this is the batch sent again.
    first_failure: Option<String>,
}

impl Batch {
    /// Messages of the batch still waiting for an outcome.
    fn waiting(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

/// The messages in flight, by request.
///
/// Sans-IO: every method returns the [`Report`]s it settles, and the node hands them
/// to the apps.
#[derive(Default)]
pub struct Deliveries {
    requests: HashMap<RequestId, Batch>,
    in_flight: usize,
    /// Every deadline of a message sent, earliest first (some already settled).
    deadlines: BinaryHeap<Reverse<Instant>>,
}

fn report(p: Pending, outcome: Outcome) -> Report {
    Report {
        app: p.app,
        message_id: p.message_id,
        outcome,
    }
}

/// What a request that failed as a whole means for its messages: never sent (the
/// peer could not be reached or does not speak the protocol) is a failure; sent but
/// unanswered (timeout, stream broken) is an unknown outcome, since the peer may have
/// accepted them.
fn outcome_of_failure(peer: PeerId, failure: &LinkFailure) -> Outcome {
    match failure {
        LinkFailure::NotSent(reason) => Outcome::Failed(reason.clone()),
        LinkFailure::Broken(_) | LinkFailure::TimedOut(_) => {
            Outcome::Unknown(format!("no answer from {peer}: {failure}"))
        }
    }
}

impl Deliveries {
    /// Messages waiting for an answer.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Groups `messages` of app `app` (routed as `name`) into batches: per destination,
    /// in order, at most `MAX_BATCH` messages and `max_bytes` of payload each (a single
    /// larger message goes alone). Messages over the in-flight bound fail at once.
    pub fn batch(
        &self,
        app: AppId,
        name: &str,
        messages: Vec<OutgoingMessage>,
        max_bytes: u64,
    ) -> (Vec<Batch>, Vec<Report>) {
        let mut batches: Vec<(PeerId, Vec<AppRequest>, Vec<Option<Pending>>)> = Vec::new();
        let mut refused = Vec::new();
        let mut open: HashMap<PeerId, (usize, u64)> = HashMap::new();
        let mut room = MAX_IN_FLIGHT.saturating_sub(self.in_flight);
        for message in messages {
            if room == 0 {
                refused.push(Report {
                    app,
                    message_id: message.id,
                    outcome: Outcome::Failed(format!(
                        "{MAX_IN_FLIGHT} messages are already waiting for an answer: sending faster than the network carries them"
                    )),
                });
                continue;
            }
            room -= 1;
            let size = message.payload.len() as u64;
            let slot = open
                .get(&message.destination)
                .copied()
                .filter(|&(i, bytes)| batches[i].1.len() < MAX_BATCH && bytes + size <= max_bytes);
            let index = match slot {
                Some((i, _)) => i,
                None => {
                    batches.push((message.destination, Vec::new(), Vec::new()));
                    batches.len() - 1
                }
            };
            let bytes = slot.map_or(0, |(_, b)| b) + size;
            open.insert(message.destination, (index, bytes));
            let (_, requests, slots) = &mut batches[index];
            requests.push(AppRequest {
                app: name.to_string(),
                payload: message.payload,
            });
            slots.push(Some(Pending {
                app,
                message_id: message.id,
                deadline: Instant::now() + message.timeout,
                timeout: message.timeout,
            }));
        }
        let batches = batches
            .into_iter()
            .map(|(peer, requests, slots)| Batch {
                peer,
                request: AppBatch::new(requests),
                slots,
                first_failure: None,
            })
            .collect();
        (batches, refused)
    }

    /// Tracks a batch sent as request `id` (a new one, or one sent again).
    pub fn sent(&mut self, id: RequestId, batch: Batch) {
        self.in_flight += batch.waiting();
        if batch.first_failure.is_none() {
            let deadlines = batch.slots.iter().flatten().map(|p| Reverse(p.deadline));
            self.deadlines.extend(deadlines);
        }
        self.requests.insert(id, batch);
    }

    /// When [`Deliveries::expire`] may next settle a message (perhaps none, if the
    /// message with that deadline was answered meanwhile); `None` with nothing in flight.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        if self.in_flight == 0 {
            self.deadlines.clear();
        }
        self.deadlines.peek().map(|Reverse(deadline)| *deadline)
    }

    /// Settles every message whose deadline passed: its outcome is unknown.
    pub fn expire(&mut self, now: Instant) -> Vec<Report> {
        while self
            .deadlines
            .peek()
            .is_some_and(|Reverse(deadline)| *deadline <= now)
        {
            self.deadlines.pop();
        }
        let mut reports = Vec::new();
        self.requests.retain(|_, batch| {
            for slot in batch.slots.iter_mut() {
                if slot.as_ref().is_some_and(|p| p.deadline <= now) {
                    let p = slot.take().expect("checked above");
                    let reason = format!("timed out after {:?} without an answer", p.timeout);
                    reports.push(report(p, Outcome::Unknown(reason)));
                }
            }
            batch.slots.iter().any(Option::is_some)
        });
        self.in_flight -= reports.len();
        reports
    }

    /// The peer answered request `id`: one answer per message.
    pub fn answered(
        &mut self,
        id: RequestId,
        peer: PeerId,
        answers: Vec<AppResponse>,
    ) -> Vec<Report> {
        let Some(batch) = self.requests.remove(&id) else {
            return Vec::new();
        };
        let count = batch.slots.len();
        let mut answers = answers.into_iter();
        let mut reports = Vec::new();
        for slot in batch.slots {
            // Keep answers aligned with messages whose deadline already passed.
            let answer = answers.next();
            let Some(p) = slot else { continue };
            self.in_flight -= 1;
            let outcome = match answer {
                Some(Ok(())) => Outcome::Delivered,
                Some(Err(reason)) => Outcome::Failed(format!("refused by {peer}: {reason}")),
                None => Outcome::Unknown(format!(
                    "{peer} answered fewer messages than the {count} it was sent"
                )),
            };
            reports.push(report(p, outcome));
        }
        reports
    }

    /// Request `id` to `peer` failed as a whole. When its stream broke before an answer
    /// on the first attempt, the batch comes back to be sent again (same key);
    /// otherwise every message still waiting gets its outcome: failed if it was never
    /// sent, unknown if the peer may have accepted it (on either attempt).
    pub fn failed(
        &mut self,
        id: RequestId,
        peer: PeerId,
        failure: &LinkFailure,
    ) -> (Vec<Report>, Option<Batch>) {
        let Some(mut batch) = self.requests.remove(&id) else {
            return (Vec::new(), None);
        };
        let waiting = batch.waiting();
        self.in_flight -= waiting;
        let broken = matches!(failure, LinkFailure::Broken(_));
        if waiting > 0 && broken && batch.first_failure.is_none() {
            batch.first_failure = Some(failure.to_string());
            return (Vec::new(), Some(batch));
        }
        let outcome = match batch.first_failure {
            Some(first) => Outcome::Unknown(format!(
                "no answer from {peer}: {first}; sent again: {failure}"
            )),
            None => outcome_of_failure(peer, failure),
        };
        let reports = batch
            .slots
            .into_iter()
            .flatten()
            .map(|p| report(p, outcome.clone()))
            .collect();
        (reports, None)
    }

    /// Settles every message still waiting at shutdown: its outcome is unknown.
    pub fn shutdown(&mut self) -> Vec<Report> {
        self.in_flight = 0;
        self.deadlines.clear();
        self.requests
            .drain()
            .flat_map(|(_, batch)| batch.slots.into_iter().flatten())
            .map(|p| {
                report(
                    p,
                    Outcome::Unknown("the node shut down before an answer came".into()),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u64, to: PeerId, bytes: usize) -> OutgoingMessage {
        message_within(id, to, bytes, Duration::from_secs(5))
    }

    fn message_within(id: u64, to: PeerId, bytes: usize, timeout: Duration) -> OutgoingMessage {
        OutgoingMessage {
            id,
            destination: to,
            payload: vec![0; bytes],
            timeout,
        }
    }

    fn peers() -> (PeerId, PeerId) {
        let p = crate::sampling::seeded_peers(2);
        (p[0], p[1])
    }

    /// `(message id, outcome)` of each report, for app 1.
    fn outcomes(reports: Vec<Report>) -> Vec<(u64, Outcome)> {
        reports
            .into_iter()
            .map(|r| {
                assert_eq!(r.app, AppId(1));
                (r.message_id, r.outcome)
            })
            .collect()
    }

    /// Sends `messages` of app 1 as one request; returns its id.
    fn send(deliveries: &mut Deliveries, messages: Vec<OutgoingMessage>) -> RequestId {
        let (batches, refused) = deliveries.batch(AppId(1), "x", messages, 1 << 20);
        assert!(refused.is_empty());
        assert_eq!(batches.len(), 1);
        let id = outbound_request_id();
        deliveries.sent(id, batches.into_iter().next().unwrap());
        id
    }

    #[test]
    fn messages_are_batched_per_peer_in_order_within_count_and_bytes() {
        let (a, b) = peers();
        let mut messages = vec![message(0, a, 10), message(1, b, 10), message(2, a, 10)];
        // Three of 40 bytes for b: after 10 + 40 + 40 bytes, the third no longer fits in 100.
        messages.extend((3..6).map(|id| message(id, b, 40)));
        let (batches, refused) = Deliveries::default().batch(AppId(1), "x", messages, 100);
        assert!(refused.is_empty());
        let shape: Vec<(PeerId, Vec<u64>)> = batches
            .iter()
            .map(|batch| {
                (
                    batch.peer,
                    batch.slots.iter().flatten().map(|p| p.message_id).collect(),
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
        let (batches, _) = Deliveries::default().batch(AppId(1), "x", many, 1 << 20);
        let sizes: Vec<usize> = batches.iter().map(|b| b.request.messages.len()).collect();
        assert_eq!(sizes, vec![MAX_BATCH, 1]);
    }

    #[test]
    fn consecutive_messages_of_one_app_are_merged_in_order() {
        let (peer, _) = peers();
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
    async fn messages_over_the_in_flight_bound_fail_at_once_with_the_reason() {
        let (peer, _) = peers();
        let deliveries = Deliveries {
            in_flight: MAX_IN_FLIGHT - 2,
            ..Deliveries::default()
        };
        let messages = (0..5).map(|id| message(id, peer, 1)).collect();
        let (batches, refused) = deliveries.batch(AppId(1), "x", messages, 1 << 20);
        assert_eq!(batches.len(), 1);
        assert_eq!(
            batches[0].request.messages.len(),
            2,
            "only two fit under the bound"
        );
        let refused = outcomes(refused);
        assert_eq!(
            refused.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        for (_, outcome) in refused {
            let Outcome::Failed(reason) = outcome else {
                panic!("{outcome:?}")
            };
            assert!(
                reason.contains("65536 messages are already waiting"),
                "{reason}"
            );
        }
    }

    #[tokio::test]
    async fn answers_are_matched_to_messages_even_after_some_expired() {
        let (peer, _) = peers();
        let mut deliveries = Deliveries::default();
        let short = Duration::from_millis(10);
        let id = send(
            &mut deliveries,
            vec![
                message(1, peer, 1),
                message_within(2, peer, 1, short),
                message(3, peer, 1),
                message(4, peer, 1),
            ],
        );
        assert_eq!(deliveries.in_flight(), 4);
        let first = deliveries.next_deadline().expect("messages in flight");
        assert!(
            first <= Instant::now() + short,
            "the short deadline comes first"
        );
        let expired = outcomes(deliveries.expire(Instant::now() + Duration::from_secs(1)));
        let next = deliveries.next_deadline().expect("three still in flight");
        assert!(next > first, "the expired deadline is gone");
        assert_eq!(
            expired,
            [(
                2,
                Outcome::Unknown("timed out after 10ms without an answer".into())
            )]
        );
        assert_eq!(deliveries.in_flight(), 3);
        // The peer answers all four (it accepted the expired one too), minus the last.
        let answers = vec![Ok(()), Ok(()), Err("inbox full".to_string())];
        let answered = outcomes(deliveries.answered(id, peer, answers));
        assert_eq!(
            answered,
            [
                (1, Outcome::Delivered),
                (3, Outcome::Failed(format!("refused by {peer}: inbox full"))),
                (
                    4,
                    Outcome::Unknown(format!(
                        "{peer} answered fewer messages than the 4 it was sent"
                    ))
                ),
            ]
        );
        assert_eq!(deliveries.in_flight(), 0);
        assert_eq!(deliveries.next_deadline(), None, "nothing left to wake for");
        assert!(
            deliveries.answered(id, peer, Vec::new()).is_empty(),
            "settled once"
        );
    }

    #[tokio::test]
    async fn a_message_never_sent_fails_and_one_left_unanswered_is_unknown() {
        let (peer, _) = peers();
        assert!(matches!(
            outcome_of_failure(peer, &not_sent()),
            Outcome::Failed(_)
        ));
        for error in [broken(), LinkFailure::TimedOut(Duration::from_secs(30))] {
            assert!(matches!(
                outcome_of_failure(peer, &error),
                Outcome::Unknown(_)
            ));
        }

        let mut deliveries = Deliveries::default();
        let id = send(
            &mut deliveries,
            vec![message(1, peer, 1), message(2, peer, 1)],
        );
        let (failed, again) = deliveries.failed(id, peer, &not_sent());
        assert!(again.is_none(), "never sent: nothing to send again");
        let down = outcome_of_failure(peer, &not_sent());
        assert_eq!(outcomes(failed), [(1, down.clone()), (2, down)]);
        assert_eq!(deliveries.in_flight(), 0);

        send(&mut deliveries, vec![message(3, peer, 1)]);
        let at_shutdown = outcomes(deliveries.shutdown());
        assert_eq!(
            at_shutdown,
            [(
                3,
                Outcome::Unknown("the node shut down before an answer came".into())
            )]
        );
        assert_eq!(deliveries.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_request_whose_connection_closed_is_sent_once_more_under_the_same_key() {
        let (peer, _) = peers();
        let mut deliveries = Deliveries::default();
        let short = Duration::from_millis(10);
        let id = send(
            &mut deliveries,
            vec![message_within(1, peer, 1, short), message(2, peer, 1)],
        );
        // The first message's deadline passes: it is settled, but stays in the request
        // so that the answers of the repeat still line up.
        assert_eq!(
            deliveries
                .expire(Instant::now() + Duration::from_secs(1))
                .len(),
            1
        );
        let (reports, again) = deliveries.failed(id, peer, &broken());
        assert!(reports.is_empty(), "nothing settled yet");
        let again = again.expect("sent again");
        assert_eq!(again.request.messages.len(), 2, "the same request");
        let key = again.request.key;
        assert_eq!(deliveries.in_flight(), 0, "counted again when sent");
        let second = outbound_request_id();
        deliveries.sent(second, again);
        assert_eq!(deliveries.in_flight(), 1);
        let answered = outcomes(deliveries.answered(second, peer, vec![Ok(()), Ok(())]));
        assert_eq!(answered, [(2, Outcome::Delivered)]);

        // A repeat that fails too leaves the outcome unknown, whatever the second error:
        // the first attempt may have reached the app.
        let id = send(&mut deliveries, vec![message(3, peer, 1)]);
        let (_, again) = deliveries.failed(id, peer, &broken());
        let again = again.expect("sent again");
        assert_ne!(again.request.key, key, "every batch its own key");
        let third = outbound_request_id();
        deliveries.sent(third, again);
        let (reports, none) = deliveries.failed(third, peer, &not_sent());
        assert!(none.is_none(), "sent again only once");
        let [(3, Outcome::Unknown(reason))] = &outcomes(reports)[..] else {
            panic!("one unknown outcome")
        };
        assert!(
            reason.contains("the peer closed the stream") && reason.contains("sent again: "),
            "{reason}"
        );
        assert_eq!(deliveries.in_flight(), 0);

        // A timeout is not sent again: the deadline is what it waited for.
        let id = send(&mut deliveries, vec![message(4, peer, 1)]);
        let (reports, none) =
            deliveries.failed(id, peer, &LinkFailure::TimedOut(Duration::from_secs(30)));
        assert!(none.is_none());
        assert!(matches!(outcomes(reports)[0].1, Outcome::Unknown(_)));
    }

    fn not_sent() -> LinkFailure {
        LinkFailure::NotSent("could not reach the peer: dial failed".into())
    }

    fn broken() -> LinkFailure {
        LinkFailure::Broken("no answer: the peer closed the stream".into())
    }

    /// A request id not handed out before.
    fn outbound_request_id() -> RequestId {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        RequestId::numbered(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}
