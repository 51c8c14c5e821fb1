//! The event-driven engine: ticks, deliveries and timeouts in virtual time (µs), in a
//! priority queue ordered by (time, insertion order), so equal seeds replay exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::RngExt;

use super::apps::{AppCall, CallInput};
use super::scenario::Action;
use super::{CycleMetrics, SimApps, Simulation};
use crate::runtime::{Effects, Outcome};
use crate::sampling::{Outgoing, SamplingMessage};

/// What happens at an instant.
enum Happening {
    /// A node's period passed (ignored if the node left since: `incarnation` differs).
    Tick { node: u32, incarnation: u32 },
    /// A message arrives.
    Deliver {
        from: u32,
        to: u32,
        sent_at: u64,
        message: SamplingMessage<u32>,
    },
    /// A sender's request to a node that was down timed out.
    Unreachable {
        node: u32,
        incarnation: u32,
        peer: u32,
    },
    /// A node's apps start (at the node's phase).
    AppStart { node: u32 },
    /// A cycle of app `app` on `node` is due (ignored if the app was loaded, replaced
    /// or unloaded since: `generation` differs).
    AppCycle {
        node: u32,
        app: usize,
        generation: u32,
    },
    /// An app message arrives at `to`; its sender (of `generation`) waits until
    /// `deadline`.
    AppDeliver {
        from: u32,
        to: u32,
        app: usize,
        message_id: u64,
        payload: Vec<u8>,
        deadline: u64,
        sent_at: u64,
        generation: u32,
    },
    /// App `app` on `node` learns how its message ended (not if the instance that sent
    /// it, of `generation`, was replaced since). An answer that travelled back over the
    /// network carries the sender's deadline: it is lost if the sender went offline.
    AppReport {
        node: u32,
        app: usize,
        message_id: u64,
        outcome: Outcome,
        generation: u32,
        answer_deadline: Option<u64>,
    },
    /// The scenario's action number `index` happens.
    Action { index: usize },
    /// A node goes offline for `duration` µs (for good if `None`).
    Disconnect { node: u32, duration: Option<u64> },
    /// A node offline until now comes back (ignored if its outage was extended).
    Reconnect { node: u32 },
    /// Random failures are drawn.
    FailureStep,
}

impl Happening {
    /// Whether it changes what every node sees (who is up, the latency, which apps
    /// run): it happens only once the app calls before it have run.
    fn is_global(&self) -> bool {
        matches!(
            self,
            Happening::Action { .. }
                | Happening::Disconnect { .. }
                | Happening::Reconnect { .. }
                | Happening::FailureStep
        )
    }
}

/// What to do with the result of an app call once its batch has run.
enum Followup {
    /// Route what a start or a cycle queued, and schedule the next cycle.
    Stepped { node: u32, app: usize },
    /// Route what a delivery report's handler queued.
    Reported { node: u32, app: usize },
    /// Answer the sender of a message handed over, and route what the receiver queued.
    Delivered {
        from: u32,
        to: u32,
        app: usize,
        message_id: u64,
        generation: u32,
        sent_at: u64,
        deadline: u64,
    },
}

/// Happenings in time order, those at the same instant in the order they were
/// scheduled (so equal seeds replay exactly). The heap holds small keys; the
/// happenings wait in a slab beside it, so sifting moves 24 bytes, not a message.
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(u64, u64, u32)>>,
    slab: Vec<Option<Happening>>,
    free: Vec<u32>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, at: u64, happening: Happening) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot as usize] = Some(happening);
                slot
            }
            None => {
                self.slab.push(Some(happening));
                (self.slab.len() - 1) as u32
            }
        };
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, slot)));
    }

    /// The next happening and its time.
    fn peek(&self) -> Option<(u64, &Happening)> {
        let Reverse((at, _, slot)) = self.heap.peek()?;
        Some((*at, self.slab[*slot as usize].as_ref()?))
    }

    fn pop(&mut self) -> Option<(u64, Happening)> {
        let Reverse((at, _, slot)) = self.heap.pop()?;
        self.free.push(slot);
        Some((at, self.slab[slot as usize].take()?))
    }
}

/// The event loop. App calls do not run as their events pop: they wait in a batch
/// until the events of a window no longer than the shortest link latency have popped
/// (or something global happens), then run together, on several threads: whatever
/// one call makes happen to another node comes at least one latency later, after the
/// window. Their results are then routed in the order their events popped, so a run
/// is the same on any number of threads.
struct Engine {
    queue: Queue,
    period: u64,
    /// Per-link latencies by (sender, receiver).
    links: BTreeMap<(u32, u32), u64>,
    /// The shortest per-link latency, in µs.
    shortest_link: u64,
    /// App calls waiting for the end of their window, and what follows each.
    batch: Vec<(AppCall, u64, Followup)>,
    /// Where the batch's window ends (µs).
    window_end: u64,
    /// Threads besides this one that run app calls.
    helpers: super::helpers::Helpers,
}

fn micros(duration: Duration) -> u64 {
    duration.as_micros().min(u128::from(u64::MAX)) as u64
}

impl Engine {
    fn schedule(&mut self, at: u64, happening: Happening) {
        self.queue.push(at, happening);
    }

    fn schedule_tick(&mut self, sim: &mut Simulation, node: u32, not_before: u64) {
        let phase = sim.rng.random_range(0..self.period);
        let incarnation = sim.incarnation[node as usize];
        self.schedule(not_before + phase, Happening::Tick { node, incarnation });
    }

    /// Whether the network model loses the next message.
    fn lost(sim: &mut Simulation) -> bool {
        let loss = sim.config.network.loss;
        loss > 0.0 && sim.rng.random_bool(loss)
    }

    /// The one-way latency of the next message from `from` to `to`, in µs: the link's
    /// (or the model's), plus uniform jitter (absolute, and relative to the latency).
    fn latency(&self, sim: &mut Simulation, from: u32, to: u32) -> u64 {
        let model = &sim.config.network;
        let base = self
            .links
            .get(&(from, to))
            .copied()
            .unwrap_or(micros(model.latency));
        let jitter = micros(model.jitter) + (base as f64 * model.jitter_factor) as u64;
        base + if jitter > 0 {
            sim.rng.random_range(0..=jitter)
        } else {
            0
        }
    }

    fn send(&mut self, sim: &mut Simulation, now: u64, from: u32, outgoing: Vec<Outgoing<u32>>) {
        for Outgoing { to, message } in outgoing {
            sim.messages += 1;
            if sim.config.network.partitions.separates(from, to) {
                sim.tally.dropped += 1;
                self.unreachable_at(sim, now + self.period, from, to);
                continue;
            }
            if Self::lost(sim) {
                sim.tally.dropped += 1;
                continue;
            }
            let latency = self.latency(sim, from, to);
            self.schedule(
                now + latency,
                Happening::Deliver {
                    from,
                    to,
                    sent_at: now,
                    message,
                },
            );
        }
    }

    /// Tells `node`'s sampler at `at` that `peer` did not answer (honest nodes only).
    fn unreachable_at(&mut self, sim: &Simulation, at: u64, node: u32, peer: u32) {
        if !sim.byzantine[node as usize] {
            let incarnation = sim.incarnation[node as usize];
            self.schedule(
                at,
                Happening::Unreachable {
                    node,
                    incarnation,
                    peer,
                },
            );
        }
    }

    /// Puts a call of app `app` on `node` at `now` in the batch.
    fn defer(&mut self, sim: &Simulation, now: u64, call: (u32, usize, CallInput), then: Followup) {
        if self.batch.is_empty() {
            let shortest = micros(sim.config.network.latency).min(self.shortest_link);
            self.window_end = now.saturating_add(shortest);
        }
        let (node, app, input) = call;
        self.batch.push((
            AppCall {
                node,
                app,
                now,
                input,
            },
            now,
            then,
        ));
    }

    /// Whether the batch must run before `happening` at `at` (outside its window, or
    /// global).
    fn must_flush_before(&self, at: u64, happening: &Happening) -> bool {
        !self.batch.is_empty() && (at >= self.window_end || happening.is_global())
    }

    /// Runs the batch's calls and routes their results, in the order they were put in.
    fn flush(&mut self, sim: &mut Simulation) {
        let batch = std::mem::take(&mut self.batch);
        let Some(apps) = sim.apps.as_mut() else {
            return;
        };
        let (calls, rest): (Vec<AppCall>, Vec<(u64, Followup)>) = batch
            .into_iter()
            .map(|(call, now, then)| (call, (now, then)))
            .unzip();
        let results = apps.run_calls(calls, &self.helpers);
        for ((now, then), result) in rest.into_iter().zip(results) {
            match then {
                Followup::Stepped { node, app } => {
                    self.app_stepped(sim, now, (node, app), result.unwrap_or_default())
                }
                Followup::Reported { node, app } => {
                    self.app_effects(sim, now, node, app, result.unwrap_or_default())
                }
                Followup::Delivered {
                    from,
                    to,
                    app,
                    message_id,
                    generation,
                    sent_at,
                    deadline,
                } => {
                    let back = now + self.latency(sim, to, from);
                    let outcome = match result {
                        Ok(effects) => {
                            self.app_effects(sim, now, to, app, effects);
                            Outcome::Delivered
                        }
                        Err(reason) => {
                            let id = sim.apps.as_ref().map_or("", |apps| apps.id(to));
                            Outcome::Failed(format!("refused by {id}: {reason}"))
                        }
                    };
                    self.app_answer(
                        sim,
                        now,
                        (from, to, app, message_id, generation),
                        (sent_at, deadline),
                        (true, back, outcome),
                    );
                }
            }
        }
    }

    fn handle(&mut self, sim: &mut Simulation, now: u64, happening: Happening) {
        match happening {
            Happening::Tick { node, incarnation } => {
                if sim.incarnation[node as usize] != incarnation || !sim.is_present(node) {
                    return;
                }
                // A node offline keeps its phase; it gossips again once back.
                if sim.is_online(node) {
                    let out = sim.tick(node);
                    self.send(sim, now, node, out);
                }
                self.schedule(now + self.period, Happening::Tick { node, incarnation });
            }
            Happening::Deliver {
                from,
                to,
                sent_at,
                message,
            } => {
                if (to as usize) < sim.nodes.len() && sim.is_up(to) {
                    sim.tally.delivered += 1;
                    let answers = sim.receive(from, to, message);
                    self.send(sim, now, to, answers);
                } else {
                    sim.tally.dropped += 1;
                    self.unreachable_at(sim, (sent_at + self.period).max(now), from, to);
                }
            }
            Happening::Unreachable {
                node,
                incarnation,
                peer,
            } => {
                if sim.incarnation[node as usize] == incarnation && sim.is_up(node) {
                    sim.nodes.send_failed(node, peer);
                }
            }
            Happening::AppStart { node } => {
                let count = sim.apps.as_ref().map_or(0, SimApps::count);
                for app in 0..count {
                    let input = (node, app, CallInput::Start);
                    self.defer(sim, now, input, Followup::Stepped { node, app });
                }
            }
            Happening::AppCycle {
                node,
                app,
                generation,
            } => {
                if sim.apps.as_ref().map(|apps| apps.generation(node, app)) != Some(generation) {
                    return;
                }
                if !sim.is_present(node) {
                    // A node that left keeps its apps; their cycles wait for its return.
                    // (A node offline runs them: only its network is cut.)
                    let period = sim.apps.as_ref().map_or(1, |apps| micros(apps.period(app)));
                    self.schedule(
                        now + period.max(1),
                        Happening::AppCycle {
                            node,
                            app,
                            generation,
                        },
                    );
                    return;
                }
                let view = sim.nodes.view(node);
                let input = (node, app, CallInput::Cycle(view));
                self.defer(sim, now, input, Followup::Stepped { node, app });
            }
            Happening::AppDeliver {
                from,
                to,
                app,
                message_id,
                payload,
                deadline,
                sent_at,
                generation,
            } => self.app_deliver(
                sim,
                now,
                (from, to, app, message_id, generation),
                payload,
                (sent_at, deadline),
            ),
            Happening::AppReport {
                node,
                app,
                message_id,
                outcome,
                generation,
                answer_deadline,
            } => {
                if let Some(deadline) = answer_deadline.filter(|_| !sim.is_online(node)) {
                    // The answer cannot reach a node that is offline: its sender waits
                    // until the deadline and never learns what happened.
                    let reason = "no answer: this node was offline when it came back".into();
                    self.schedule(
                        deadline.max(now),
                        Happening::AppReport {
                            node,
                            app,
                            message_id,
                            outcome: Outcome::Unknown(reason),
                            generation,
                            answer_deadline: None,
                        },
                    );
                    return;
                }
                let Some(apps) = sim.apps.as_mut() else {
                    return;
                };
                if apps.generation(node, app) != generation {
                    return;
                }
                match outcome {
                    Outcome::Delivered => {}
                    Outcome::Failed(_) => sim.tally.interval.messages.failed += 1,
                    Outcome::Unknown(_) => sim.tally.interval.messages.unknown += 1,
                }
                let input = CallInput::Report {
                    message_id,
                    outcome,
                };
                self.defer(
                    sim,
                    now,
                    (node, app, input),
                    Followup::Reported { node, app },
                );
            }
            Happening::Action { index } => self.act(sim, now, index),
            Happening::Disconnect { node, duration } => {
                let until = duration.map_or(u64::MAX, |d| now.saturating_add(d));
                if sim.disconnect(node, until, now) && until != u64::MAX {
                    self.schedule(until, Happening::Reconnect { node });
                }
            }
            Happening::Reconnect { node } => sim.reconnect(node, now),
            Happening::FailureStep => {
                let Some(failures) = sim.config.outages.random.clone() else {
                    return;
                };
                for node in 0..sim.nodes.len() as u32 {
                    if sim.is_up(node)
                        && !sim.byzantine[node as usize]
                        && sim.rng.random_bool(failures.probability)
                    {
                        let duration = failures.draw_recovery(&mut sim.rng);
                        self.handle(
                            sim,
                            now,
                            Happening::Disconnect {
                                node,
                                duration: Some(duration),
                            },
                        );
                    }
                }
                let step = micros(failures.time_step).max(1);
                self.schedule(now + step, Happening::FailureStep);
            }
        }
    }

    /// App `app` of `node` started, ran a cycle or was replaced: routes what it queued
    /// and schedules its next cycle.
    fn app_stepped(
        &mut self,
        sim: &mut Simulation,
        now: u64,
        (node, app): (u32, usize),
        effects: Effects,
    ) {
        self.app_effects(sim, now, node, app, effects);
        self.schedule_app_cycle(sim, node, app);
    }

    /// Schedules the next cycle of app `app` on `node`, if it has one.
    fn schedule_app_cycle(&mut self, sim: &Simulation, node: u32, app: usize) {
        let Some(apps) = sim.apps.as_ref() else {
            return;
        };
        if let Some(due) = apps.next_cycle(node, app) {
            let generation = apps.generation(node, app);
            self.schedule(
                due,
                Happening::AppCycle {
                    node,
                    app,
                    generation,
                },
            );
        }
    }

    /// Does the scenario's action `index`.
    fn act(&mut self, sim: &mut Simulation, now: u64, index: usize) {
        let action = sim.scenario.actions[index].action.clone();
        let count = sim.nodes.len();
        match action {
            Action::Disconnect { nodes, duration } => {
                for node in nodes.list(count) {
                    let duration = duration.map(micros);
                    self.handle(sim, now, Happening::Disconnect { node, duration });
                }
            }
            Action::Reconnect { nodes } => {
                for node in nodes.list(count) {
                    sim.reconnect_now(node, now);
                }
            }
            Action::Latency {
                latency,
                jitter_factor,
            } => {
                let network = &mut sim.config.network;
                network.latency = latency.unwrap_or(network.latency);
                network.jitter_factor = jitter_factor.unwrap_or(network.jitter_factor);
            }
            Action::Load {
                app,
                path,
                config,
                nodes,
            } => {
                let Some(app) = sim.load_app(&app, &path, &config) else {
                    return;
                };
                for node in nodes.list(count) {
                    let Some(apps) = sim.apps.as_mut() else {
                        return;
                    };
                    if apps.on_node(node) && !apps.runs(node, app) {
                        let effects = apps.start(node, app, now);
                        self.app_stepped(sim, now, (node, app), effects);
                    }
                }
            }
            Action::Replace { app, path, nodes } => {
                let Some((app, prepared)) = sim.replacement(&app, &path) else {
                    return;
                };
                for node in nodes.list(count) {
                    let Some(apps) = sim.apps.as_mut() else {
                        return;
                    };
                    if apps.runs(node, app) {
                        let effects = apps.replace(node, app, &prepared, now);
                        self.app_stepped(sim, now, (node, app), effects);
                    }
                }
            }
            Action::Unload { app, nodes } => {
                let Some(apps) = sim.apps.as_mut() else {
                    return;
                };
                if let Some(app) = apps.index_of(&app) {
                    for node in nodes.list(count) {
                        apps.unload(node, app);
                    }
                }
            }
        }
    }

    /// Routes what app `app` of `node` queued: to the destination after its latency, or
    /// back as an outcome (an unknown destination, or a sender offline, fails at once;
    /// a lost message is an unknown outcome at its deadline, one across a partition a
    /// failure at its deadline).
    fn app_effects(
        &mut self,
        sim: &mut Simulation,
        now: u64,
        node: u32,
        app: usize,
        effects: Effects,
    ) {
        let generation = sim
            .apps
            .as_ref()
            .map_or(0, |apps| apps.generation(node, app));
        for message in effects.messages {
            sim.tally.interval.messages.sent += 1;
            let deadline = now + micros(message.timeout);
            let report = |message_id, outcome| Happening::AppReport {
                node,
                app,
                message_id,
                outcome,
                generation,
                answer_deadline: None,
            };
            let to = sim
                .apps
                .as_ref()
                .and_then(|apps| apps.node_of(&message.destination));
            let Some(to) = to else {
                let reason = format!("{} is not a node of this simulation", message.destination);
                self.schedule(now, report(message.id, Outcome::Failed(reason)));
                continue;
            };
            if !sim.is_up(node) {
                let reason = format!(
                    "could not reach {}: this node is offline",
                    message.destination
                );
                self.schedule(now, report(message.id, Outcome::Failed(reason)));
                continue;
            }
            if sim.config.network.partitions.separates(node, to) {
                sim.tally.dropped += 1;
                sim.tally.interval.messages.dropped += 1;
                sim.app_log(now, node, app, || {
                    format!("message {} to node {to} dropped: partition", message.id)
                });
                let reason = format!(
                    "could not reach {}: no route (network partition)",
                    message.destination
                );
                self.schedule(deadline, report(message.id, Outcome::Failed(reason)));
                continue;
            }
            if Self::lost(sim) {
                sim.tally.dropped += 1;
                sim.tally.interval.messages.dropped += 1;
                if let Some(apps) = sim.apps.as_mut() {
                    apps.lost += 1;
                }
                sim.app_log(now, node, app, || {
                    format!("message {} to node {to} dropped: lost", message.id)
                });
                let reason = format!("timed out after {:?} without an answer", message.timeout);
                self.schedule(deadline, report(message.id, Outcome::Unknown(reason)));
                continue;
            }
            let at = now + self.latency(sim, node, to);
            self.schedule(
                at,
                Happening::AppDeliver {
                    from: node,
                    to,
                    app,
                    message_id: message.id,
                    payload: message.payload,
                    deadline,
                    sent_at: now,
                    generation,
                },
            );
        }
    }

    /// A message of app `app` from `from` reaches `to`: handed over if `to` is up and
    /// runs the app, refused otherwise; the answer travels back, or the sender's
    /// deadline passes first.
    fn app_deliver(
        &mut self,
        sim: &mut Simulation,
        now: u64,
        (from, to, app, message_id, generation): (u32, u32, usize, u64, u32),
        payload: Vec<u8>,
        (sent_at, deadline): (u64, u64),
    ) {
        let Some(apps) = sim.apps.as_ref() else {
            return;
        };
        if sim.is_up(to) {
            let input = (to, app, CallInput::Message { from, payload });
            let then = Followup::Delivered {
                from,
                to,
                app,
                message_id,
                generation,
                sent_at,
                deadline,
            };
            self.defer(sim, now, input, then);
            return;
        }
        let reason = format!("could not reach {}: it is offline", apps.id(to));
        self.app_answer(
            sim,
            now,
            (from, to, app, message_id, generation),
            (sent_at, deadline),
            (false, deadline, Outcome::Failed(reason)),
        );
    }

    /// Counts how message `message_id` of app `app` from `from` ended at `to` (`up`:
    /// whether `to` was there to answer) and reports `outcome` to the sender at
    /// `answer_at` — or, if the deadline passes first, that nobody knows.
    fn app_answer(
        &mut self,
        sim: &mut Simulation,
        now: u64,
        (from, to, app, message_id, generation): (u32, u32, usize, u64, u32),
        (sent_at, deadline): (u64, u64),
        (up, answer_at, outcome): (bool, u64, Outcome),
    ) {
        if outcome == Outcome::Delivered {
            sim.tally.delivered += 1;
            sim.tally.latency.record(now - sent_at);
            let interval = &mut sim.tally.interval;
            interval.messages.delivered += 1;
            interval.messages.latency.record(now - sent_at);
            interval.received[to as usize] += 1;
            sim.app_log(now, to, app, || {
                format!(
                    "message {message_id} from node {from} delivered after {} us",
                    now - sent_at
                )
            });
        } else {
            sim.tally.dropped += 1;
            sim.app_log(now, to, app, || {
                format!("message {message_id} from node {from} not delivered: {outcome:?}")
            });
        }
        let (at, outcome, answer_deadline) =
            if answer_at > deadline && outcome == Outcome::Delivered {
                (
                    deadline,
                    Outcome::Unknown("timed out without an answer".into()),
                    None,
                )
            } else {
                // An answer from `to` (not a failure the sender sees by itself).
                let answered = up.then_some(deadline);
                (answer_at.min(deadline.max(now)), outcome, answered)
            };
        self.schedule(
            at,
            Happening::AppReport {
                node: from,
                app,
                message_id,
                outcome,
                generation,
                answer_deadline,
            },
        );
    }
}

/// Runs every cycle of `sim` in virtual time, handing each cycle's metrics to `record`.
pub(super) fn run(
    sim: &mut Simulation,
    record: &mut impl FnMut(CycleMetrics) -> Result<()>,
) -> Result<()> {
    let mut links = BTreeMap::new();
    for link in &sim.config.network.links {
        links.insert((link.a, link.b), micros(link.latency));
        if link.both_ways {
            links.insert((link.b, link.a), micros(link.latency));
        }
    }
    let mut engine = Engine {
        queue: Queue::default(),
        period: micros(sim.config.cycle_length()).max(1),
        shortest_link: links.values().copied().min().unwrap_or(u64::MAX),
        links,
        batch: Vec::new(),
        window_end: 0,
        helpers: super::helpers::Helpers::new(sim.config.threads.saturating_sub(1)),
    };
    for node in 0..sim.nodes.len() as u32 {
        engine.schedule_tick(sim, node, 0);
    }
    let app_nodes: Vec<u32> = match &sim.apps {
        Some(apps) => (0..sim.nodes.len() as u32)
            .filter(|&n| apps.on_node(n))
            .collect(),
        None => Vec::new(),
    };
    for node in app_nodes {
        // Apps start at each node's own phase of the first period, as live nodes do.
        let phase = sim.rng.random_range(0..engine.period);
        engine.schedule(phase, Happening::AppStart { node });
    }
    let outages = sim.config.outages.clone();
    for &node in &outages.permanently_offline {
        engine.schedule(
            0,
            Happening::Disconnect {
                node,
                duration: None,
            },
        );
    }
    for outage in &outages.scheduled {
        engine.schedule(
            micros(outage.start),
            Happening::Disconnect {
                node: outage.node,
                duration: Some(micros(outage.duration)),
            },
        );
    }
    if let Some(failures) = &outages.random {
        engine.schedule(micros(failures.time_step), Happening::FailureStep);
    }
    for index in 0..sim.scenario.actions.len() {
        let at = micros(sim.scenario.actions[index].at);
        engine.schedule(at, Happening::Action { index });
    }
    let pacer = Pacer::new(sim.config.real_time_factor);
    for cycle in 1..=sim.config.cycles {
        let start = (cycle - 1) * engine.period;
        for node in sim.begin_cycle()? {
            engine.schedule_tick(sim, node, start);
        }
        let end = cycle * engine.period;
        loop {
            match engine.queue.peek() {
                Some((at, next)) if at < end && !engine.must_flush_before(at, next) => {
                    let (at, happening) = engine.queue.pop().expect("peeked");
                    pacer.wait_for(at);
                    sim.tally.events += 1;
                    engine.handle(sim, at, happening);
                }
                _ if !engine.batch.is_empty() => engine.flush(sim),
                _ => break,
            }
        }
        // The cycle lasts to its end, events or not.
        pacer.wait_for(end);
        sim.tally.now = end;
        sim.close_interval(cycle, end);
        record(sim.metrics())?;
    }
    Ok(())
}

/// Holds virtual time back to `factor` times real time (never, for a factor of 0).
struct Pacer {
    factor: f64,
    started: Instant,
}

impl Pacer {
    fn new(factor: f64) -> Pacer {
        Pacer {
            factor,
            started: Instant::now(),
        }
    }

    /// Waits until virtual time `at` (µs) may be reached.
    fn wait_for(&self, at: u64) {
        if self.factor > 0.0 {
            let due = Duration::from_secs_f64(at as f64 / 1e6 / self.factor);
            if let Some(early) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(early);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{column, config, csv};
    use super::super::Engine as Kind;
    use super::*;
    use crate::sampling::SamplerConfig;

    fn event_config(sampler: &str, seed: u64) -> super::super::SimConfig {
        let mut c = config(sampler, 300, seed);
        c.engine = Kind::Event;
        c.network.latency = Duration::from_millis(40);
        c.network.jitter = Duration::from_millis(20);
        c.network.loss = 0.05;
        c
    }

    #[test]
    fn event_engine_is_reproducible_and_heals() {
        for sampler in ["gbps", "brahms", "basalt"] {
            let a = csv(event_config(sampler, 4));
            assert_eq!(a, csv(event_config(sampler, 4)), "{sampler}");
            assert_ne!(a, csv(event_config(sampler, 5)), "{sampler}");
        }
        // Healing, with views of 16: with c = 8, a survivor whose whole view died and
        // that nobody points to stays alone (GBPS has no way back for it), which 16 of
        // 100 seeds show; with c = 16 none of 200 seeds did, on this stream or the one
        // before.
        let mut healing = event_config("gbps", 4);
        let SamplerConfig::Gbps(gbps) = &mut healing.sampler else {
            panic!("the gbps config is GBPS's");
        };
        gbps.view_size = 16;
        let out = csv(healing);
        let dead = column(&out, "dead_links");
        assert!(dead[14] > 0.2, "{out}");
        assert!(dead[29] < dead[14] / 4.0, "{out}");
        assert_eq!(column(&out, "partitions")[29], 1.0, "{out}");
    }

    #[test]
    fn messages_slower_than_a_period_still_arrive_and_loss_loses_them() {
        let mut slow = event_config("gbps", 1);
        slow.fail_fraction = 0.0;
        slow.network.loss = 0.0;
        slow.network.latency = Duration::from_millis(1500);
        let out = csv(slow.clone());
        assert_eq!(column(&out, "partitions")[29], 1.0, "{out}");
        let mut sim = Simulation::new(slow.clone()).unwrap();
        sim.run(&mut Vec::new(), |_| {}).unwrap();
        let mut lossy = slow;
        lossy.network.loss = 0.5;
        let mut lossy_sim = Simulation::new(lossy).unwrap();
        lossy_sim.run(&mut Vec::new(), |_| {}).unwrap();
        assert!(
            lossy_sim.messages() < sim.messages(),
            "lost requests get no reply: {} vs {}",
            lossy_sim.messages(),
            sim.messages()
        );
    }

    #[test]
    fn random_failures_match_their_probability_per_step() {
        let mut c = config("gbps", 2000, 9);
        c.engine = Kind::Event;
        c.fail_fraction = 0.0;
        c.outages.random = Some(super::super::conditions::RandomFailures {
            time_step: Duration::from_secs(1),
            probability: 0.02,
            // Nobody recovers within the run: each step draws over the nodes still up.
            recovery_time: Duration::from_secs(1000),
            recovery_variance: 0.0,
        });
        let mut sim = Simulation::new(c).unwrap();
        sim.run(&mut Vec::new(), |_| {}).unwrap();
        // Steps at 1 s, 2 s, ... before the end of the run.
        let steps = (sim.summary().current_sim_time_us - 1) / 1_000_000;
        assert!(steps >= 29, "{steps}");
        let (mut up, mut expected, mut variance) = (2000.0_f64, 0.0, 0.0);
        for _ in 0..steps {
            expected += up * 0.02;
            variance += up * 0.02 * 0.98;
            up *= 0.98;
        }
        let got = sim.summary().disconnection_events as f64;
        assert!(
            (got - expected).abs() < 5.0 * variance.sqrt(),
            "{got} disconnections, expected {expected:.0} ± {:.0}",
            variance.sqrt()
        );
        let offline = sim.node_rows().filter(|r| r.state == "offline").count();
        assert_eq!(offline as f64, got, "none came back");
    }
}
