//! The event-driven engine: ticks, deliveries and timeouts in virtual time (µs), in a
//! priority queue ordered by (time, insertion order), so equal seeds replay exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::RngExt;

use super::{CycleMetrics, SimApps, Simulation};
use crate::runtime::{Effects, Outcome};
use crate::sampling::{Outgoing, SamplingMessage};

/// One link's latency, overriding the model's for messages between `a` and `b` (both
/// ways). Written `A-B=LATENCY`, e.g. `3-7=250ms`.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkLatency {
    /// One end.
    pub a: u32,
    /// The other end.
    pub b: u32,
    /// The one-way latency.
    pub latency: Duration,
}

impl FromStr for LinkLatency {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<LinkLatency> {
        let shape = || format!("link `{text}` is not A-B=LATENCY (e.g. 3-7=250ms)");
        let (ends, latency) = text.split_once('=').with_context(shape)?;
        let (a, b) = ends.split_once('-').with_context(shape)?;
        Ok(LinkLatency {
            a: a.trim().parse().with_context(shape)?,
            b: b.trim().parse().with_context(shape)?,
            latency: humantime::parse_duration(latency.trim()).with_context(shape)?,
        })
    }
}

/// Latency and loss of the virtual network.
#[derive(Clone, Debug, Default)]
pub struct NetworkModel {
    /// One-way latency of every link.
    pub latency: Duration,
    /// Uniform jitter added to every message's latency, in `[0, jitter]`.
    pub jitter: Duration,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Per-link latencies (jitter still added).
    pub links: Vec<LinkLatency>,
}

impl NetworkModel {
    /// Whether messages arrive at once and always (what the cycle engine assumes).
    pub fn is_ideal(&self) -> bool {
        self.latency.is_zero() && self.jitter.is_zero() && self.loss == 0.0 && self.links.is_empty()
    }

    /// Checks the numbers against a network of `nodes` nodes.
    pub fn validate(&self, nodes: usize) -> Result<()> {
        if !(0.0..1.0).contains(&self.loss) {
            bail!("--loss must be at least 0 and below 1, not {}", self.loss);
        }
        if let Some(link) = self
            .links
            .iter()
            .find(|l| l.a as usize >= nodes || l.b as usize >= nodes)
        {
            bail!(
                "--link {}-{}: nodes are numbered 0 to {}",
                link.a,
                link.b,
                nodes - 1
            );
        }
        Ok(())
    }
}

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
    /// A cycle of app `app` on `node` is due.
    AppCycle { node: u32, app: usize },
    /// An app message arrives at `to`; its sender waits until `deadline`.
    AppDeliver {
        from: u32,
        to: u32,
        app: usize,
        message_id: u64,
        payload: Vec<u8>,
        deadline: u64,
    },
    /// App `app` on `node` learns how its message ended.
    AppReport {
        node: u32,
        app: usize,
        message_id: u64,
        outcome: Outcome,
    },
}

struct Event {
    at: u64,
    seq: u64,
    happening: Happening,
}

impl PartialEq for Event {
    fn eq(&self, other: &Event) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Event {}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Event) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Event {
    fn cmp(&self, other: &Event) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Engine {
    queue: BinaryHeap<Reverse<Event>>,
    seq: u64,
    period: u64,
    links: BTreeMap<(u32, u32), u64>,
}

fn micros(duration: Duration) -> u64 {
    duration.as_micros().min(u128::from(u64::MAX)) as u64
}

impl Engine {
    fn schedule(&mut self, at: u64, happening: Happening) {
        self.seq += 1;
        self.queue.push(Reverse(Event {
            at,
            seq: self.seq,
            happening,
        }));
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

    /// The one-way latency of the next message from `from` to `to`, in µs.
    fn latency(&self, sim: &mut Simulation, from: u32, to: u32) -> u64 {
        let model = &sim.config.network;
        let (base, jitter) = (micros(model.latency), micros(model.jitter));
        let link = (from.min(to), from.max(to));
        self.links.get(&link).copied().unwrap_or(base)
            + if jitter > 0 {
                sim.rng.random_range(0..=jitter)
            } else {
                0
            }
    }

    fn send(&mut self, sim: &mut Simulation, now: u64, from: u32, outgoing: Vec<Outgoing<u32>>) {
        for Outgoing { to, message } in outgoing {
            sim.messages += 1;
            if Self::lost(sim) {
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

    fn handle(&mut self, sim: &mut Simulation, now: u64, happening: Happening) {
        match happening {
            Happening::Tick { node, incarnation } => {
                if sim.incarnation[node as usize] != incarnation || !sim.is_up(node) {
                    return;
                }
                let out = sim.tick(node);
                self.send(sim, now, node, out);
                self.schedule(now + self.period, Happening::Tick { node, incarnation });
            }
            Happening::Deliver {
                from,
                to,
                sent_at,
                message,
            } => {
                if (to as usize) < sim.samplers.len() && sim.is_up(to) {
                    let answers = sim.receive(from, to, message);
                    self.send(sim, now, to, answers);
                } else if !sim.byzantine[from as usize] {
                    let incarnation = sim.incarnation[from as usize];
                    let timeout = (sent_at + self.period).max(now);
                    self.schedule(
                        timeout,
                        Happening::Unreachable {
                            node: from,
                            incarnation,
                            peer: to,
                        },
                    );
                }
            }
            Happening::Unreachable {
                node,
                incarnation,
                peer,
            } => {
                if sim.incarnation[node as usize] == incarnation && sim.is_up(node) {
                    sim.samplers[node as usize].handle_peer_unreachable(peer);
                }
            }
            Happening::AppStart { node } => {
                let count = sim.apps.as_ref().map_or(0, SimApps::count);
                for app in 0..count {
                    let Some(apps) = sim.apps.as_mut() else {
                        return;
                    };
                    let effects = apps.start(node, app, now);
                    self.app_effects(sim, now, node, app, effects);
                    self.schedule_app_cycle(sim, node, app);
                }
            }
            Happening::AppCycle { node, app } => {
                if !sim.is_up(node) {
                    // A node that left keeps its apps; their cycles wait for its return.
                    let period = sim.apps.as_ref().map_or(1, |apps| micros(apps.period(app)));
                    self.schedule(now + period.max(1), Happening::AppCycle { node, app });
                    return;
                }
                let view = sim.samplers[node as usize].view();
                let Some(apps) = sim.apps.as_mut() else {
                    return;
                };
                let effects = apps.cycle(node, app, &view, now);
                self.app_effects(sim, now, node, app, effects);
                self.schedule_app_cycle(sim, node, app);
            }
            Happening::AppDeliver {
                from,
                to,
                app,
                message_id,
                payload,
                deadline,
            } => self.app_deliver(sim, now, (from, to, app, message_id), payload, deadline),
            Happening::AppReport {
                node,
                app,
                message_id,
                outcome,
            } => {
                let Some(apps) = sim.apps.as_mut() else {
                    return;
                };
                let effects = apps.report(node, app, message_id, outcome, now);
                self.app_effects(sim, now, node, app, effects);
            }
        }
    }

    /// Schedules the next cycle of app `app` on `node`, if it has one.
    fn schedule_app_cycle(&mut self, sim: &Simulation, node: u32, app: usize) {
        if let Some(due) = sim
            .apps
            .as_ref()
            .and_then(|apps| apps.next_cycle(node, app))
        {
            self.schedule(due, Happening::AppCycle { node, app });
        }
    }

    /// Routes what app `app` of `node` queued: to the destination after its latency, or
    /// back as an outcome (an unknown destination fails at once; a lost message is an
    /// unknown outcome at its deadline).
    fn app_effects(
        &mut self,
        sim: &mut Simulation,
        now: u64,
        node: u32,
        app: usize,
        effects: Effects,
    ) {
        for message in effects.messages {
            let deadline = now + micros(message.timeout);
            let report = |message_id, outcome| Happening::AppReport {
                node,
                app,
                message_id,
                outcome,
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
            if Self::lost(sim) {
                if let Some(apps) = sim.apps.as_mut() {
                    apps.lost += 1;
                }
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
        (from, to, app, message_id): (u32, u32, usize, u64),
        payload: Vec<u8>,
        deadline: u64,
    ) {
        let up = sim.is_up(to);
        let Some(apps) = sim.apps.as_mut() else {
            return;
        };
        let (answer_at, outcome) = if !up {
            let reason = format!("could not reach {}: it is offline", apps.id(to));
            (deadline, Outcome::Failed(reason))
        } else {
            let delivered = apps
                .deliver(from, to, app, payload, now)
                .map_err(|reason| format!("refused by {}: {reason}", apps.id(to)));
            let back = now + self.latency(sim, to, from);
            match delivered {
                Ok(effects) => {
                    self.app_effects(sim, now, to, app, effects);
                    (back, Outcome::Delivered)
                }
                Err(reason) => (back, Outcome::Failed(reason)),
            }
        };
        let (at, outcome) = if answer_at > deadline && outcome == Outcome::Delivered {
            (
                deadline,
                Outcome::Unknown("timed out without an answer".into()),
            )
        } else {
            (answer_at.min(deadline.max(now)), outcome)
        };
        self.schedule(
            at,
            Happening::AppReport {
                node: from,
                app,
                message_id,
                outcome,
            },
        );
    }
}

/// Runs every cycle of `sim` in virtual time, handing each cycle's metrics to `record`.
pub(super) fn run(
    sim: &mut Simulation,
    record: &mut impl FnMut(CycleMetrics) -> Result<()>,
) -> Result<()> {
    let mut engine = Engine {
        queue: BinaryHeap::new(),
        seq: 0,
        period: micros(sim.config.cycle_length()).max(1),
        links: sim
            .config
            .network
            .links
            .iter()
            .map(|l| ((l.a.min(l.b), l.a.max(l.b)), micros(l.latency)))
            .collect(),
    };
    for node in 0..sim.samplers.len() as u32 {
        engine.schedule_tick(sim, node, 0);
    }
    let app_nodes: Vec<u32> = match &sim.apps {
        Some(apps) => (0..sim.samplers.len() as u32)
            .filter(|&n| apps.on_node(n))
            .collect(),
        None => Vec::new(),
    };
    for node in app_nodes {
        // Apps start at each node's own phase of the first period, as live nodes do.
        let phase = sim.rng.random_range(0..engine.period);
        engine.schedule(phase, Happening::AppStart { node });
    }
    for cycle in 1..=sim.config.cycles {
        let start = (cycle - 1) * engine.period;
        for node in sim.begin_cycle()? {
            engine.schedule_tick(sim, node, start);
        }
        let end = cycle * engine.period;
        while engine.queue.peek().is_some_and(|e| e.0.at < end) {
            let Reverse(event) = engine.queue.pop().expect("peeked");
            engine.handle(sim, event.at, event.happening);
        }
        record(sim.metrics())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{column, config, csv};
    use super::super::Engine as Kind;
    use super::*;

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
        let out = csv(event_config("gbps", 4));
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
    fn link_overrides_parse_and_are_checked() {
        let link: LinkLatency = "3-7=250ms".parse().unwrap();
        assert_eq!(
            link,
            LinkLatency {
                a: 3,
                b: 7,
                latency: Duration::from_millis(250)
            }
        );
        for bad in ["3-7", "3=1s", "a-7=1s", "3-7=fast"] {
            let error = bad.parse::<LinkLatency>().unwrap_err().to_string();
            assert!(error.contains(bad), "{error}");
        }
        let model = NetworkModel {
            links: vec![link],
            ..NetworkModel::default()
        };
        assert!(model.validate(5).unwrap_err().to_string().contains("3-7"));
        assert!(model.validate(8).is_ok());
    }
}
