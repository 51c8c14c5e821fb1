//! The cycle engine's exchanges, on several threads, with the output of one.
//!
//! A cycle ticks every live node in a random order, and each tick's messages (and the
//! answers they cause) are handled before the next tick: node i's *exchange*. Two
//! exchanges that touch no node in common give the same result in either order, so
//! the engine cuts the order into batches of exchanges that touch disjoint nodes and
//! runs each batch's exchanges on several threads. The calling thread goes through the
//! ticks in order and learns whom each exchange touches (the node and its tick's
//! recipients): from the sampler's plan of the tick, when it can tell ahead (the tick
//! then runs in the exchange, on any thread), else by running the tick itself. A batch
//! of [`PIPELINED_AT`] exchanges starts on the helpers while the calling thread plans
//! the next one; a tick of a node that a pending or running exchange touches, or whose
//! recipients one touches, first waits for those batches (the calling thread helps). An
//! answer to a node the exchange did not reserve (no sampler here sends one) stops the
//! exchange, which finishes on the calling thread once every other exchange of the
//! cycle is done, in the order of the ticks. The batches do not depend on the number
//! of threads: the output is the same for any number.
//!
//! Attackers draw from the simulation's one random stream, so a run with attackers
//! runs its exchanges one after the other; so does Brahms, whose ticks reach a dozen
//! peers or more (batches would be a few exchanges long).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::helpers::{Helpers, SharedWork, Started};
use crate::sampling::{prefetch, Connected, Outgoing, SamplingDriver, Step};

/// A message on its way: from, and to whom with what.
type InFlight = (u32, Outgoing<u32>);

/// One node's exchange: its tick's messages, handled until no answer is left.
struct Exchange {
    /// The nodes it may touch (the ticking node first) and, while the batch runs,
    /// their samplers.
    nodes: Vec<(u32, Option<SamplingDriver<u32>>)>,
    /// Whether the ticking node's tick is still to run (it was planned: the exchange
    /// starts with it); else the tick ran and its messages are in the queue.
    tick: bool,
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
        if std::mem::take(&mut self.tick) {
            if let Some((from, Some(driver))) = self.nodes.first_mut() {
                let from = *from;
                let sent = driver.tick();
                driver.drain_samples(&mut self.samples);
                self.queue.extend(sent.into_iter().map(|o| (from, o)));
            }
        }
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

/// A batch this long starts on the helpers while the calling thread plans the ticks of
/// the next one.
const PIPELINED_AT: usize = 64;

/// A batch under way on the helpers, and the number its nodes were reserved under.
struct Running<'a> {
    number: u64,
    batch: Arc<Batch>,
    started: Started<'a>,
}

/// Runs the exchanges of one cycle in batches.
pub(super) struct Exchanges<'a> {
    helpers: &'a Helpers,
    up: Arc<Vec<bool>>,
    /// `reserved[i] == n`: node i is touched by an exchange of batch n (the pending one,
    /// or the one running, or one done).
    reserved: Vec<u64>,
    /// The number of the pending batch.
    batch: u64,
    pending: Vec<Exchange>,
    /// The batch the helpers work on while this thread plans the pending one.
    running: Option<Running<'a>>,
    /// Stand-ins for the samplers a running batch holds.
    spare: Vec<SamplingDriver<u32>>,
    /// Messages handled so far (delivered or lost).
    messages: u64,
    /// Samples the exchanges emitted, in exchange order.
    samples: Vec<u32>,
    /// The messages of exchanges stopped by an unreserved recipient, in tick order.
    stopped: Vec<VecDeque<InFlight>>,
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
            running: None,
            spare: Vec::new(),
            messages: 0,
            samples: Vec::new(),
            stopped: Vec::new(),
        }
    }

    /// Runs what is left, and returns the messages handled and the samples emitted by
    /// every exchange.
    pub fn done(mut self, samplers: &mut [SamplingDriver<u32>]) -> (u64, Vec<u32>) {
        self.run(samplers);
        for queue in std::mem::take(&mut self.stopped) {
            self.finish(samplers, queue);
        }
        (self.messages, self.samples)
    }

    /// Whether node `i` is touched by the pending batch.
    fn is_pending(&self, i: u32) -> bool {
        self.reserved[i as usize] == self.batch
    }

    /// Whether node `i` is touched by the running batch.
    fn is_running(&self, i: u32) -> bool {
        self.running
            .as_ref()
            .is_some_and(|running| self.reserved[i as usize] == running.number)
    }

    /// Makes node `i` free to tick: runs the exchanges that touch it, and those before
    /// them.
    pub fn free(&mut self, samplers: &mut [SamplingDriver<u32>], i: u32) {
        if self.is_pending(i) {
            self.run(samplers);
        } else if self.is_running(i) {
            self.finish_running(samplers);
        }
    }

    /// Adds node `from`'s exchange, whose tick sent `sent`, after running the batches
    /// that touch a recipient; starts the pending batch on the helpers once it is long
    /// enough. `from` must be free (see [`free`](Self::free)).
    pub fn add(
        &mut self,
        samplers: &mut [SamplingDriver<u32>],
        from: u32,
        sent: Vec<Outgoing<u32>>,
    ) {
        let nodes = self.touched(samplers, from, sent.iter().map(|o| o.to));
        let queue = sent.into_iter().map(|o| (from, o)).collect();
        self.push(samplers, nodes, false, queue);
    }

    /// Adds node `from`'s exchange, its tick included, which
    /// [`plan_tick`](SamplingDriver::plan_tick) said sends to `peers`. `from` must be
    /// free (see [`free`](Self::free)).
    pub fn add_planned(&mut self, samplers: &mut [SamplingDriver<u32>], from: u32, peers: &[u32]) {
        let nodes = self.touched(samplers, from, peers.iter().copied());
        self.push(samplers, nodes, true, VecDeque::new());
    }

    /// The nodes an exchange of `from` sending to `recipients` touches: `from` first,
    /// then each recipient that is up, once. Their drivers are asked for from memory.
    fn touched(
        &self,
        samplers: &[SamplingDriver<u32>],
        from: u32,
        recipients: impl Iterator<Item = u32>,
    ) -> Vec<(u32, Option<SamplingDriver<u32>>)> {
        let mut nodes: Vec<(u32, Option<SamplingDriver<u32>>)> = vec![(from, None)];
        for to in recipients {
            let up = self.up.get(to as usize).copied().unwrap_or(false);
            if up && !nodes.iter().any(|(n, _)| *n == to) {
                nodes.push((to, None));
            }
        }
        // The recipients' drivers, asked for now, are in the caches when the batch runs.
        nodes[1..]
            .iter()
            .for_each(|(node, _)| prefetch(&samplers[*node as usize]));
        nodes
    }

    /// Adds the exchange touching `nodes` to the pending batch, after running the
    /// batches that touch one of them; starts the pending batch on the helpers once it
    /// is long enough.
    fn push(
        &mut self,
        samplers: &mut [SamplingDriver<u32>],
        nodes: Vec<(u32, Option<SamplingDriver<u32>>)>,
        tick: bool,
        queue: VecDeque<InFlight>,
    ) {
        if nodes.iter().any(|(n, _)| self.is_pending(*n)) {
            self.run(samplers);
        } else if nodes.iter().any(|(n, _)| self.is_running(*n)) {
            self.finish_running(samplers);
        }
        for (node, _) in &nodes {
            self.reserved[*node as usize] = self.batch;
        }
        self.pending.push(Exchange {
            nodes,
            tick,
            queue,
            messages: 0,
            samples: Vec::new(),
        });
        if self.pending.len() >= PIPELINED_AT {
            self.finish_running(samplers);
            self.start_pending(samplers);
        }
    }

    /// Runs every batch not done: the running one, then the pending one.
    fn run(&mut self, samplers: &mut [SamplingDriver<u32>]) {
        self.finish_running(samplers);
        if !self.pending.is_empty() {
            self.start_pending(samplers);
            self.finish_running(samplers);
        }
    }

    /// Hands the pending batch's samplers to its exchanges and starts it (on the
    /// helpers if it is long enough to share; else
    /// [`finish_running`](Self::finish_running) runs it here).
    /// No batch may be running.
    fn start_pending(&mut self, samplers: &mut [SamplingDriver<u32>]) {
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
        let started = if batch.exchanges.len() < SHARED_FROM {
            self.helpers.defer(batch.clone())
        } else {
            self.helpers.start(batch.clone())
        };
        self.running = Some(Running {
            number: self.batch,
            batch,
            started,
        });
        self.batch += 1;
    }

    /// Finishes the running batch, if any, keeping the messages of the exchanges an
    /// unreserved recipient stopped for the end of the cycle.
    fn finish_running(&mut self, samplers: &mut [SamplingDriver<u32>]) {
        let Some(Running { batch, started, .. }) = self.running.take() else {
            return;
        };
        started.finish();
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
                self.stopped.push(std::mem::take(&mut exchange.queue));
            }
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
            exchanges.free(&mut samplers, i);
            let sent = samplers[i as usize].tick();
            exchanges.add(&mut samplers, i, sent);
        }
        let (messages, _) = exchanges.done(&mut samplers);
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
