//! The cycle engine's exchanges, on several threads, with the output of one.
//!
//! A cycle ticks every live node in a random order, and each tick's messages (and the
//! answers they cause) are handled before the next tick: node i's *exchange*. Two
//! exchanges that touch no node in common give the same result in either order, so
//! the engine cuts the order into batches of exchanges that touch disjoint nodes and
//! runs each batch's exchanges on several threads. Ticks run on the calling thread, in
//! the order: a tick's messages tell whom its exchange touches (the node and the
//! recipients), and a tick of a node a pending exchange touches, or whose recipients
//! one touches, first runs the batch. An answer to a node the exchange did not reserve
//! (no sampler here sends one) stops the exchange, which finishes after its batch, in
//! the order of the batch. The batches do not depend on the number of threads: the
//! output is the same for any number.
//!
//! Attackers draw from the simulation's one random stream, so a run with attackers
//! runs its exchanges one after the other; so does Brahms, whose ticks reach a dozen
//! peers or more (batches would be a few exchanges long).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::helpers::{Helpers, SharedWork};
use crate::sampling::{prefetch, Connected, Outgoing, SamplingDriver, Step};

/// A message on its way: from, and to whom with what.
type InFlight = (u32, Outgoing<u32>);

/// One node's exchange: its tick's messages, handled until no answer is left.
struct Exchange {
    /// The nodes it may touch (the ticking node first) and, while the batch runs,
    /// their samplers.
    nodes: Vec<(u32, Option<SamplingDriver<u32>>)>,
    queue: VecDeque<InFlight>,
    /// Messages handled (delivered or lost).
    messages: u64,
    /// Samples emitted by the nodes it touched, in order.
    samples: Vec<u32>,
}

impl Exchange {
    fn driver(&mut self, node: u32) -> Option<&mut SamplingDriver<u32>> {
        driver_of(&mut self.nodes, node)
    }

    /// Handles messages until none is left or one is for a node it did not reserve.
    fn run(&mut self, up: &[bool]) {
        while let Some((from, Outgoing { to, message })) = self.queue.pop_front() {
            if up.get(to as usize).copied().unwrap_or(false) && self.driver(to).is_none() {
                self.queue.push_front((from, Outgoing { to, message }));
                return;
            }
            self.messages += 1;
            let Some(driver) = driver_of(&mut self.nodes, to) else {
                if let Some(sender) = self.driver(from) {
                    sender.send_failed(to);
                }
                continue;
            };
            let answers = driver.receive(from, message);
            driver.drain_samples(&mut self.samples);
            self.queue.extend(answers.into_iter().map(|o| (to, o)));
        }
    }
}

/// The sampler of `node` among `nodes`, if it is there.
fn driver_of(
    nodes: &mut [(u32, Option<SamplingDriver<u32>>)],
    node: u32,
) -> Option<&mut SamplingDriver<u32>> {
    nodes
        .iter_mut()
        .find(|(n, _)| *n == node)
        .and_then(|(_, driver)| driver.as_mut())
}

/// A batch's exchanges, each done by one thread.
struct Batch {
    exchanges: Vec<Mutex<Exchange>>,
    up: Arc<Vec<bool>>,
}

impl SharedWork for Batch {
    fn parts(&self) -> usize {
        self.exchanges.len()
    }

    fn do_part(&self, part: usize) {
        let mut exchange = self.exchanges[part]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        exchange.run(&self.up);
    }
}

/// Batches of fewer exchanges run on the calling thread alone: waking the helpers would
/// cost more.
const SHARED_FROM: usize = 16;

/// Runs the exchanges of one cycle in batches.
pub(super) struct Exchanges<'a> {
    helpers: &'a Helpers,
    up: Arc<Vec<bool>>,
    /// `reserved[i] == batch`: node i is touched by an exchange of the pending batch.
    reserved: Vec<u64>,
    batch: u64,
    pending: Vec<Exchange>,
    /// Stand-ins for the samplers a running batch holds.
    spare: Vec<SamplingDriver<u32>>,
    /// Messages handled so far (delivered or lost).
    messages: u64,
    /// Samples the exchanges emitted, in exchange order.
    samples: Vec<u32>,
}

impl<'a> Exchanges<'a> {
    /// Exchanges among the nodes `up` says are up, on `helpers` and this thread.
    pub fn new(helpers: &'a Helpers, up: Vec<bool>) -> Exchanges<'a> {
        Exchanges {
            helpers,
            reserved: vec![0; up.len()],
            up: Arc::new(up),
            batch: 1,
            pending: Vec::new(),
            spare: Vec::new(),
            messages: 0,
            samples: Vec::new(),
        }
    }

    /// The messages handled and the samples emitted by every exchange run.
    pub fn done(self) -> (u64, Vec<u32>) {
        (self.messages, self.samples)
    }

    /// Whether node `i` is touched by a pending exchange (its tick must wait for them).
    pub fn is_reserved(&self, i: u32) -> bool {
        self.reserved[i as usize] == self.batch
    }

    /// Adds node `from`'s exchange, whose tick sent `sent`; runs the pending batch first
    /// when a recipient is touched by it. `from` must not be reserved.
    pub fn add(
        &mut self,
        samplers: &mut [SamplingDriver<u32>],
        from: u32,
        sent: Vec<Outgoing<u32>>,
    ) {
        let mut nodes: Vec<(u32, Option<SamplingDriver<u32>>)> = vec![(from, None)];
        for to in sent.iter().map(|o| o.to) {
            let up = self.up.get(to as usize).copied().unwrap_or(false);
            if up && !nodes.iter().any(|(n, _)| *n == to) {
                nodes.push((to, None));
            }
        }
        // The recipients' drivers, asked for now, are in the caches when the batch runs.
        nodes[1..]
            .iter()
            .for_each(|(node, _)| prefetch(&samplers[*node as usize]));
        if nodes.iter().any(|(n, _)| self.is_reserved(*n)) {
            self.run(samplers);
        }
        for (node, _) in &nodes {
            self.reserved[*node as usize] = self.batch;
        }
        self.pending.push(Exchange {
            nodes,
            queue: sent.into_iter().map(|o| (from, o)).collect(),
            messages: 0,
            samples: Vec::new(),
        });
    }

    /// Runs the pending batch: its exchanges on the helpers and this thread, then
    /// those stopped by an unreserved recipient one after the other.
    pub fn run(&mut self, samplers: &mut [SamplingDriver<u32>]) {
        if self.pending.is_empty() {
            return;
        }
        for exchange in &mut self.pending {
            for (node, driver) in &mut exchange.nodes {
                let spare = self.spare.pop().unwrap_or_else(|| {
                    SamplingDriver::with_sampler(Box::new(Connected::default()))
                });
                let taken = std::mem::replace(&mut samplers[*node as usize], spare);
                taken.prefetch_sampler();
                *driver = Some(taken);
            }
        }
        for (_, driver) in self.pending.iter().flat_map(|e| &e.nodes) {
            driver.iter().for_each(|d| d.prefetch_state(Step::Message));
        }
        let batch = Arc::new(Batch {
            exchanges: self.pending.drain(..).map(Mutex::new).collect(),
            up: self.up.clone(),
        });
        if batch.exchanges.len() < SHARED_FROM {
            (0..batch.parts()).for_each(|part| batch.do_part(part));
        } else {
            self.helpers.run(batch.clone());
        }
        let mut stopped = Vec::new();
        for exchange in &batch.exchanges {
            let mut exchange = exchange.lock().unwrap_or_else(|e| e.into_inner());
            for (node, driver) in &mut exchange.nodes {
                if let Some(driver) = driver.take() {
                    self.spare
                        .push(std::mem::replace(&mut samplers[*node as usize], driver));
                }
            }
            self.messages += exchange.messages;
            self.samples.append(&mut exchange.samples);
            if !exchange.queue.is_empty() {
                stopped.push(std::mem::take(&mut exchange.queue));
            }
        }
        self.batch += 1;
        for queue in stopped {
            self.finish(samplers, queue);
        }
    }

    /// Finishes a stopped exchange's messages on this thread.
    fn finish(&mut self, samplers: &mut [SamplingDriver<u32>], mut queue: VecDeque<InFlight>) {
        while let Some((from, Outgoing { to, message })) = queue.pop_front() {
            self.messages += 1;
            if !self.up.get(to as usize).copied().unwrap_or(false) {
                samplers[from as usize].send_failed(to);
                continue;
            }
            let answers = samplers[to as usize].receive(from, message);
            samplers[to as usize].drain_samples(&mut self.samples);
            queue.extend(answers.into_iter().map(|o| (to, o)));
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;

    use super::*;
    use crate::sampling::{BrahmsMessage, PeerSampler, SamplingMessage};

    /// Ticks send a push to the next node; a push is passed on, as a pull, to a node
    /// seven further, which no exchange reserved. The view is who sent what, in order.
    struct Relay {
        me: u32,
        nodes: u32,
        heard: Vec<u32>,
    }

    impl PeerSampler<u32> for Relay {
        fn handle_tick(&mut self) -> Vec<Outgoing<u32>> {
            vec![Outgoing {
                to: (self.me + 1) % self.nodes,
                message: SamplingMessage::Brahms(BrahmsMessage::Push),
            }]
        }

        fn handle_message(
            &mut self,
            from: u32,
            message: SamplingMessage<u32>,
        ) -> Vec<Outgoing<u32>> {
            let push = matches!(message, SamplingMessage::Brahms(BrahmsMessage::Push));
            self.heard.push(from * 2 + u32::from(push));
            push.then(|| Outgoing {
                to: (self.me + 7) % self.nodes,
                message: SamplingMessage::Brahms(BrahmsMessage::Pull),
            })
            .into_iter()
            .collect()
        }

        fn handle_peer_connected(&mut self, _peer: u32) {}

        fn handle_peer_unreachable(&mut self, _peer: u32) {}

        fn view(&self) -> Vec<u32> {
            self.heard.clone()
        }

        fn drain_samples(&mut self, _out: &mut Vec<u32>) {}
    }

    /// Every node's view after one cycle of relays, run in batches on `helpers`.
    fn relay_cycle(helpers: usize, down: u32) -> (Vec<Vec<u32>>, u64) {
        let nodes = 500;
        let mut samplers: Vec<SamplingDriver<u32>> = (0..nodes)
            .map(|me| {
                SamplingDriver::with_sampler(Box::new(Relay {
                    me,
                    nodes,
                    heard: Vec::new(),
                }))
            })
            .collect();
        let pool = Helpers::new(helpers);
        let up: Vec<bool> = (0..nodes).map(|i| i != down).collect();
        let mut order: Vec<u32> = (0..nodes).filter(|&i| i != down).collect();
        order.shuffle(&mut StdRng::seed_from_u64(3));
        let mut exchanges = Exchanges::new(&pool, up);
        for i in order {
            if exchanges.is_reserved(i) {
                exchanges.run(&mut samplers);
            }
            let sent = samplers[i as usize].tick();
            exchanges.add(&mut samplers, i, sent);
        }
        exchanges.run(&mut samplers);
        let (messages, _) = exchanges.done();
        (samplers.iter().map(|s| s.view()).collect(), messages)
    }

    #[test]
    fn answers_to_unreserved_nodes_arrive_in_the_same_order_on_any_number_of_threads() {
        let (views, messages) = relay_cycle(0, u32::MAX);
        assert_eq!(messages, 1000, "500 pushes and 500 pulls passed on");
        assert!(views.iter().all(|v| v.len() == 2), "{views:?}");
        for helpers in [1, 3] {
            assert_eq!(relay_cycle(helpers, u32::MAX), (views.clone(), messages));
        }
        // A node down: the push to it is lost (and counted), and so is the pull it
        // would have passed on.
        let (views, messages) = relay_cycle(0, 42);
        assert_eq!(messages, 499 + 498);
        assert!(views[42].is_empty());
        assert_eq!(relay_cycle(3, 42), (views, messages));
    }
}
