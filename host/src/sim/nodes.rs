//! Every simulated node's sampler: GBPS nodes in flat arrays ([`GbpsNodes`]), Brahms
//! nodes by value ([`BrahmsNodes`]), any other behind its driver. The simulator reaches
//! a node only through [`Nodes`].

use anyhow::Result;
use rand::rngs::StdRng;
use rand::RngExt;

use super::brahms_nodes::BrahmsNodes;
use super::gbps_nodes::GbpsNodes;
use super::settling::Settling;
use super::SimConfig;
use crate::sampling::{
    prefetch, Outgoing, SamplerConfig, SamplingCounts, SamplingDriver, SamplingMessage, StaticView,
    Step,
};

/// Every simulated node's sampler.
pub(super) enum Nodes {
    /// GBPS nodes, stored by value.
    Gbps(GbpsNodes),
    /// Brahms nodes, stored by value.
    Brahms(BrahmsNodes),
    /// Any other sampler, each behind its driver.
    Drivers(Vec<SamplingDriver<u32>>),
}

impl Nodes {
    /// The nodes of `config`, each seeded by a draw from `rng`, in node order.
    pub fn new(config: &SimConfig, rng: &mut StdRng) -> Result<Nodes> {
        let n = config.nodes;
        if let SamplerConfig::Gbps(gbps) = &config.sampler {
            return Ok(Nodes::Gbps(GbpsNodes::new(gbps, n, || rng.random())));
        }
        if let SamplerConfig::Brahms(brahms) = &config.sampler {
            return Ok(Nodes::Brahms(BrahmsNodes::new(brahms, n, || rng.random())));
        }
        let mut drivers = Vec::with_capacity(n);
        for i in 0..n as u32 {
            drivers.push(build_driver(config, i, rng.random())?);
        }
        Ok(Nodes::Drivers(drivers))
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        match self {
            Nodes::Gbps(nodes) => nodes.len(),
            Nodes::Brahms(nodes) => nodes.len(),
            Nodes::Drivers(drivers) => drivers.len(),
        }
    }

    /// Node `i` starts again, as new, its generator seeded by `seed`.
    pub fn reset(&mut self, config: &SimConfig, i: u32, seed: u64) -> Result<()> {
        match self {
            Nodes::Gbps(nodes) => nodes.reset(i, seed),
            Nodes::Brahms(nodes) => nodes.reset(i, seed),
            Nodes::Drivers(drivers) => drivers[i as usize] = build_driver(config, i, seed)?,
        }
        Ok(())
    }

    /// Node `i` learns of `peer`.
    pub fn connected(&mut self, i: u32, peer: u32) {
        match self {
            Nodes::Gbps(nodes) => nodes.connected(i, peer),
            Nodes::Brahms(nodes) => nodes.driver(i).connected(peer),
            Nodes::Drivers(drivers) => drivers[i as usize].connected(peer),
        }
    }

    /// Node `i` could not reach `peer`.
    pub fn send_failed(&mut self, i: u32, peer: u32) {
        match self {
            Nodes::Gbps(nodes) => nodes.send_failed(i, peer),
            Nodes::Brahms(nodes) => nodes.driver(i).send_failed(peer),
            Nodes::Drivers(drivers) => drivers[i as usize].send_failed(peer),
        }
    }

    /// Node `i`'s tick: the work its sampler defers goes to `settling`.
    pub fn tick_leaving(&mut self, i: u32, settling: &mut Settling) -> Vec<Outgoing<u32>> {
        match self {
            Nodes::Gbps(nodes) => nodes.tick(i),
            Nodes::Brahms(nodes) => settling.tick(nodes.driver(i)),
            Nodes::Drivers(drivers) => settling.tick(&mut drivers[i as usize]),
        }
    }

    /// Node `i` receives `message` from `from`; returns its answers.
    pub fn receive(
        &mut self,
        i: u32,
        from: u32,
        message: SamplingMessage<u32>,
    ) -> Vec<Outgoing<u32>> {
        match self {
            Nodes::Gbps(nodes) => nodes.receive(i, from, message),
            Nodes::Brahms(nodes) => nodes.driver(i).receive(from, message),
            Nodes::Drivers(drivers) => drivers[i as usize].receive(from, message),
        }
    }

    /// Hands over node `i`'s samples not yet collected.
    pub fn drain_samples(&mut self, i: u32, out: &mut Vec<u32>) {
        match self {
            Nodes::Gbps(nodes) => nodes.drain_samples(i, out),
            Nodes::Brahms(nodes) => nodes.driver(i).drain_samples(out),
            Nodes::Drivers(drivers) => drivers[i as usize].drain_samples(out),
        }
    }

    /// Node `i`'s view.
    pub fn view(&self, i: u32) -> Vec<u32> {
        let mut view = Vec::new();
        self.view_into(i, &mut view);
        view
    }

    /// Appends node `i`'s view to `out`.
    pub fn view_into(&self, i: u32, out: &mut Vec<u32>) {
        match self {
            Nodes::Gbps(nodes) => nodes.view_into(i, out),
            Nodes::Brahms(nodes) => nodes.view_into(i, out),
            Nodes::Drivers(drivers) => drivers[i as usize].view_into(out),
        }
    }

    /// What reached node `i`'s sampler so far.
    pub fn counts(&self, i: u32) -> SamplingCounts {
        match self {
            Nodes::Gbps(nodes) => nodes.counts(i),
            Nodes::Brahms(nodes) => nodes.counts(i),
            Nodes::Drivers(drivers) => drivers[i as usize].counts(),
        }
    }

    /// Brings in, ahead of their ticks, the nodes that tick after `order[0]`.
    pub fn prefetch_ahead(&self, order: &[u32]) {
        match self {
            Nodes::Gbps(nodes) => nodes.prefetch_ahead(order),
            Nodes::Brahms(nodes) => nodes.prefetch_ahead(order),
            Nodes::Drivers(drivers) => prefetch_drivers_ahead(drivers, order),
        }
    }

    /// Brings in the recipients of a tick's messages.
    pub fn prefetch_recipients(&self, sent: &[Outgoing<u32>]) {
        match self {
            Nodes::Drivers(drivers) => {
                let recipients = || sent.iter().filter_map(|o| drivers.get(o.to as usize));
                recipients().for_each(|driver| prefetch(driver));
                recipients().for_each(SamplingDriver::prefetch_sampler);
            }
            Nodes::Brahms(nodes) => sent.iter().for_each(|o| nodes.prefetch_node(o.to)),
            Nodes::Gbps(_) => {}
        }
    }

    /// Brings in the state of node `i`, which a message will soon reach.
    pub fn prefetch_message(&self, i: u32) {
        match self {
            Nodes::Drivers(drivers) => {
                if let Some(driver) = drivers.get(i as usize) {
                    driver.prefetch_state(Step::Message);
                }
            }
            Nodes::Brahms(nodes) => nodes.prefetch_message(i),
            Nodes::Gbps(_) => {}
        }
    }
}

/// Each node's memory is reached in three steps (its driver, the sampler the driver
/// points to, the view the sampler points to), each asked for two ticks before the
/// next step needs it. Ticks visit nodes in a random order, so without this each step
/// waits on memory.
pub(super) fn prefetch_drivers_ahead(drivers: &[SamplingDriver<u32>], order: &[u32]) {
    if let Some(&node) = order.get(6) {
        prefetch(&drivers[node as usize]);
    }
    if let Some(&node) = order.get(4) {
        drivers[node as usize].prefetch_sampler();
    }
    if let Some(&node) = order.get(2) {
        drivers[node as usize].prefetch_state(Step::Tick);
    }
}

/// Node `i`'s sampler: a `static` one from the topology, any other from its config.
fn build_driver(config: &SimConfig, i: u32, seed: u64) -> Result<SamplingDriver<u32>> {
    match (&config.sampler, &config.topology) {
        (SamplerConfig::Static(_), Some(topology)) => Ok(SamplingDriver::with_sampler(Box::new(
            StaticView::new(i, topology.neighbours_of(i as usize)),
        ))),
        (sampler, _) => SamplingDriver::new(sampler, i, seed),
    }
}

/// Delivers `sent` (from `from`) and the answers it causes to `drivers`, in the cycle
/// engine's order (a queue: a message's answers after the messages before them; to a
/// node not `up`, lost); returns the messages handled.
#[cfg(test)]
pub(super) fn deliver_to_drivers(
    drivers: &mut [SamplingDriver<u32>],
    up: &[bool],
    from: u32,
    sent: Vec<Outgoing<u32>>,
) -> u64 {
    let mut queue: std::collections::VecDeque<(u32, Outgoing<u32>)> =
        sent.into_iter().map(|o| (from, o)).collect();
    let mut messages = 0;
    while let Some((from, Outgoing { to, message })) = queue.pop_front() {
        messages += 1;
        if !up[to as usize] {
            drivers[from as usize].send_failed(to);
            continue;
        }
        let answers = drivers[to as usize].receive(from, message);
        queue.extend(answers.into_iter().map(|o| (to, o)));
    }
    messages
}
