//! The one driver of a node's [`PeerSampler`], shared by the live node and both
//! simulator engines: every tick, sampling message, connection and lost peer reaches
//! the sampler through it, and it counts them the same way everywhere. The drivers
//! differ only in *when* their network reports something (the live node when libp2p
//! says so; the cycle engine at once; the event engine after the link latency or a
//! request timeout), never in what the sampler is told.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use anyhow::Result;
use libp2p::PeerId;
use serde::Serialize;

use super::{
    new_sampler, prefetch, Deferred, NodeId, Outgoing, PeerSampler, SamplerConfig, SamplingMessage,
    Step,
};

/// What a node's sampler did, counted by its [`SamplingDriver`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SamplingCounts {
    /// Ticks run.
    pub ticks: u64,
    /// Sampling messages received and handed to the sampler.
    pub messages_in: u64,
    /// Sampling messages the sampler asked to send.
    pub messages_out: u64,
    /// Sent sampling messages that did not arrive (the peer was then dropped as
    /// unreachable).
    pub send_failures: u64,
}

/// A node's sampler and its counters. `P` holds the sampler: boxed (any sampler, the
/// default) or [`ByValue`] (one known sampler, stored in the driver).
pub struct SamplingDriver<I: NodeId = PeerId, P = Box<dyn PeerSampler<I>>> {
    sampler: P,
    counts: SamplingCounts,
    ids: PhantomData<fn() -> I>,
}

/// A sampler stored in its driver by value.
pub struct ByValue<S>(S);

impl<S> Deref for ByValue<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.0
    }
}

impl<S> DerefMut for ByValue<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.0
    }
}

impl<I: NodeId> SamplingDriver<I> {
    /// Drives the sampler `config` describes for node `me`, its randomness from `seed`.
    pub fn new(config: &SamplerConfig, me: I, seed: u64) -> Result<SamplingDriver<I>> {
        Ok(SamplingDriver::with_sampler(new_sampler(config, me, seed)?))
    }

    /// Drives `sampler` (built by the caller, e.g. a static view from a topology).
    pub fn with_sampler(sampler: Box<dyn PeerSampler<I>>) -> SamplingDriver<I> {
        SamplingDriver {
            sampler,
            counts: SamplingCounts::default(),
            ids: PhantomData,
        }
    }

    /// Asks the processor for the sampler's own memory (found from the driver alone): the
    /// first of two steps that bring a node in ahead of its turn.
    pub fn prefetch_sampler(&self) {
        prefetch(&*self.sampler as *const dyn PeerSampler<I>);
    }
}

impl<I: NodeId, S: PeerSampler<I>> SamplingDriver<I, ByValue<S>> {
    /// Drives `sampler`, stored by value.
    pub fn by_value(sampler: S) -> Self {
        SamplingDriver {
            sampler: ByValue(sampler),
            counts: SamplingCounts::default(),
            ids: PhantomData,
        }
    }

    /// The sampler.
    pub fn sampler(&self) -> &S {
        &self.sampler
    }

    /// The sampler, for a caller that hands it what it hears itself (a simulator
    /// delivering a tick's messages at once), and the counts to keep up.
    pub fn parts_mut(&mut self) -> (&mut S, &mut SamplingCounts) {
        (&mut self.sampler, &mut self.counts)
    }
}

impl<I: NodeId, P: DerefMut<Target: PeerSampler<I>>> SamplingDriver<I, P> {
    /// A period passed: the messages the sampler's active part sends (the tick's work
    /// all done, none left for later).
    pub fn tick(&mut self) -> Vec<Outgoing<I>> {
        let out = self.tick_deferring();
        if let Some(work) = self.sampler.deferred() {
            work.settle();
        }
        out
    }

    /// A period passed, as [`tick`](Self::tick), but what the sampler leaves for later
    /// ([`deferred`](Self::deferred)) may not be done yet.
    pub fn tick_deferring(&mut self) -> Vec<Outgoing<I>> {
        self.counts.ticks += 1;
        let out = self.sampler.handle_tick();
        self.counts.messages_out += out.len() as u64;
        out
    }

    /// The work the sampler's last tick left for any thread to do (see
    /// [`PeerSampler::deferred`]).
    pub fn deferred(&self) -> Option<Arc<dyn Deferred>> {
        self.sampler.deferred()
    }

    /// Chooses whom the next tick sends to (see [`PeerSampler::plan_tick`]); false if
    /// the sampler cannot tell ahead.
    pub fn plan_tick(&mut self, peers: &mut Vec<I>) -> bool {
        self.sampler.plan_tick(peers)
    }

    /// `from` sent `message`: the answers to send.
    pub fn receive(&mut self, from: I, message: SamplingMessage<I>) -> Vec<Outgoing<I>> {
        self.counts.messages_in += 1;
        let out = self.sampler.handle_message(from, message);
        self.counts.messages_out += out.len() as u64;
        out
    }

    /// A connection to `peer`, a node of the same context, is up.
    pub fn connected(&mut self, peer: I) {
        self.sampler.handle_peer_connected(peer);
    }

    /// The last connection to `peer` closed, or dialling it failed.
    pub fn disconnected(&mut self, peer: I) {
        self.sampler.handle_peer_unreachable(peer);
    }

    /// A sampling message to `peer` did not arrive.
    pub fn send_failed(&mut self, peer: I) {
        self.counts.send_failures += 1;
        self.sampler.handle_peer_unreachable(peer);
    }

    /// The samples emitted since the last call.
    pub fn take_samples(&mut self) -> Vec<I> {
        self.sampler.take_samples()
    }

    /// Moves the samples emitted since the last call to `out`.
    pub fn drain_samples(&mut self, out: &mut Vec<I>) {
        self.sampler.drain_samples(out)
    }

    /// The current view.
    pub fn view(&self) -> Vec<I> {
        self.sampler.view()
    }

    /// Appends the current view to `out`.
    pub fn view_into(&self, out: &mut Vec<I>) {
        self.sampler.view_into(out)
    }

    /// Whether apps may receive messages from `peer`.
    pub fn admits(&self, peer: I) -> bool {
        self.sampler.admits(peer)
    }

    /// The algorithm's own counters, by name.
    pub fn algorithm_counters(&self) -> Vec<(&'static str, u64)> {
        self.sampler.counters()
    }

    /// What was counted so far.
    pub fn counts(&self) -> SamplingCounts {
        self.counts
    }

    /// Asks the processor for what the sampler's next step reads (found through the
    /// sampler's own memory, best brought in a little earlier: a boxed one by
    /// [`prefetch_sampler`](SamplingDriver::prefetch_sampler), one by value with the
    /// driver).
    pub fn prefetch_state(&self, next: Step) {
        self.sampler.prefetch(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_reaches_the_sampler() {
        let config = SamplerConfig::from_name("gbps").unwrap();
        let mut a = SamplingDriver::<u32>::new(&config, 0, 1).unwrap();
        let mut b = SamplingDriver::<u32>::new(&config, 1, 2).unwrap();
        a.connected(1);
        let sent = a.tick();
        assert_eq!(sent.len(), 1, "a node that knows one peer gossips with it");
        let mut answers = Vec::new();
        for Outgoing { to, message } in sent {
            assert_eq!(to, 1);
            answers.extend(b.receive(0, message));
        }
        assert_eq!(a.counts().messages_out, 1);
        assert_eq!(b.counts().messages_in, 1);
        assert_eq!(b.counts().messages_out, answers.len() as u64);
        assert!(b.view().contains(&0), "the receiver learns the sender");
        a.send_failed(1);
        assert_eq!(a.counts().send_failures, 1);
        assert!(
            !a.view().contains(&1),
            "an unreachable peer leaves the view"
        );
        assert_eq!(a.counts().ticks, 1);
    }
}
