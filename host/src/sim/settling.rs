//! Work the samplers' ticks leave for later ([`PeerSampler::deferred`]: Brahms's sampler
//! update), done by the helper threads in batches while the cycle goes on.
//!
//! A sampler does its deferred work itself before anything that depends on it, so the
//! helpers change when the work is done and by whom, never the result.
//!
//! [`PeerSampler::deferred`]: crate::sampling::PeerSampler::deferred

use std::ops::DerefMut;
use std::sync::Arc;

use super::helpers::{Helpers, SharedWork, Started};
use crate::sampling::{Deferred, Outgoing, PeerSampler, SamplingDriver};

/// Works handed to the helpers at once (a batch of Brahms updates holds ~1.7 KiB of ids
/// each; fewer, larger batches keep the helpers from spinning between them).
const BATCH: usize = 1024;

/// A batch of deferred work, one part each.
struct Batch(Vec<Arc<dyn Deferred>>);

impl SharedWork for Batch {
    fn parts(&self) -> usize {
        self.0.len()
    }

    fn do_part(&self, part: usize) {
        self.0[part].settle();
    }
}

/// Deferred work on its way to the helpers: one batch collects while the one before
/// runs.
pub struct Settling<'h> {
    /// None: every work is done as it comes, on this thread.
    helpers: Option<&'h Helpers>,
    collecting: Vec<Arc<dyn Deferred>>,
    running: Option<Started<'h>>,
}

impl<'h> Settling<'h> {
    /// Hands work to `helpers` (none, or no threads: this thread does it).
    pub fn new(helpers: Option<&'h Helpers>) -> Settling<'h> {
        Settling {
            helpers: helpers.filter(|helpers| !helpers.is_empty()),
            collecting: Vec::new(),
            running: None,
        }
    }

    /// Leaves `work` to the helpers.
    pub fn add(&mut self, work: Arc<dyn Deferred>) {
        if self.helpers.is_none() {
            work.settle();
            return;
        }
        self.collecting.push(work);
        if self.collecting.len() >= BATCH {
            self.hand_over();
        }
    }

    /// A tick through `driver`: the work its sampler leaves comes here.
    pub fn tick<P>(&mut self, driver: &mut SamplingDriver<u32, P>) -> Vec<Outgoing<u32>>
    where
        P: DerefMut<Target: PeerSampler<u32>>,
    {
        let sent = driver.tick_deferring();
        self.add_from(driver);
        sent
    }

    /// Leaves the work `driver`'s sampler deferred, if any, to the helpers.
    pub fn add_from<P>(&mut self, driver: &SamplingDriver<u32, P>)
    where
        P: DerefMut<Target: PeerSampler<u32>>,
    {
        if let Some(work) = driver.deferred() {
            self.add(work);
        }
    }

    /// Waits for the running batch (helping with it), then offers the one collected.
    fn hand_over(&mut self) {
        if let Some(running) = self.running.take() {
            running.finish();
        }
        if let Some(helpers) = self.helpers.filter(|_| !self.collecting.is_empty()) {
            let batch = Batch(std::mem::take(&mut self.collecting));
            self.running = Some(helpers.start(Arc::new(batch)));
        }
    }

    /// Returns once every work added is done (this thread helps).
    pub fn finish(mut self) {
        self.hand_over();
        if let Some(running) = self.running.take() {
            running.finish();
        }
    }
}
