//! Helper threads that share a batch of work with the thread that hands it out.
//!
//! The event engine hands out a batch every window of virtual time: a few hundred app
//! calls, a millisecond of work, hundreds of times per virtual second. Waking a parked
//! thread costs about as much as a tenth of that, so a helper spins (yielding the CPU
//! to anything else runnable) for a while after each batch before it parks, and the
//! thread handing out a batch works on it too instead of waiting.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Work in parts that several threads can share; each part is done once, by one.
pub trait SharedWork: Send + Sync {
    /// How many parts.
    fn parts(&self) -> usize;
    /// Does part `part`.
    fn do_part(&self, part: usize);
}

/// How long an idle helper spins before it parks.
const SPIN: Duration = Duration::from_millis(2);

/// The batch on offer, and who joined it.
struct Batch {
    work: Arc<dyn SharedWork>,
    /// The next part to hand out.
    next: AtomicUsize,
    /// Helpers that joined, with [`CLOSED`] set once the batch is no longer joinable.
    joined: AtomicUsize,
    /// Helpers that joined and finished.
    finished: AtomicUsize,
}

const CLOSED: usize = 1 << (usize::BITS - 1);

impl Batch {
    /// Takes parts and does them until none is left.
    fn take_parts(&self) {
        loop {
            let part = self.next.fetch_add(1, Ordering::AcqRel);
            if part >= self.work.parts() {
                return;
            }
            self.work.do_part(part);
        }
    }
}

struct Shared {
    batch: Mutex<Option<Arc<Batch>>>,
    /// Bumped for every batch.
    epoch: AtomicU64,
    stop: AtomicBool,
}

/// `count` helper threads.
pub struct Helpers {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Helpers {
    /// Starts `count` helpers (none: batches run on the calling thread alone).
    pub fn new(count: usize) -> Helpers {
        let shared = Arc::new(Shared {
            batch: Mutex::new(None),
            epoch: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let threads = (0..count)
            .filter_map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("sim-helper-{i}"))
                    .spawn(move || help(&shared))
                    .ok()
            })
            .collect();
        Helpers { shared, threads }
    }

    /// Whether there are no helpers (work runs on the calling thread alone).
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Does `work` on this thread and on the helpers that join in, and returns once it
    /// is all done.
    pub fn run(&self, work: Arc<dyn SharedWork>) {
        self.start(work).finish();
    }

    /// Keeps `work` for the calling thread alone: [`Started::finish`] does all of it
    /// (for work too small to be worth waking the helpers).
    pub fn defer(&self, work: Arc<dyn SharedWork>) -> Started<'_> {
        Started {
            helpers: self,
            offered: None,
            work,
        }
    }

    /// Offers `work` to the helpers and returns at once: the calling thread may do
    /// something else meanwhile, then [`Started::finish`] helps with what is left and
    /// waits for the rest. One batch at a time: finish it before starting another.
    pub fn start(&self, work: Arc<dyn SharedWork>) -> Started<'_> {
        if self.threads.is_empty() {
            return self.defer(work);
        }
        let batch = Arc::new(Batch {
            work: work.clone(),
            next: AtomicUsize::new(0),
            joined: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
        });
        *self.shared.batch.lock().unwrap_or_else(|e| e.into_inner()) = Some(batch.clone());
        self.shared.epoch.fetch_add(1, Ordering::Release);
        for thread in &self.threads {
            thread.thread().unpark();
        }
        Started {
            helpers: self,
            offered: Some(batch),
            work,
        }
    }
}

/// A batch under way on the helpers (see [`Helpers::start`]).
pub struct Started<'a> {
    helpers: &'a Helpers,
    /// The batch as offered to the helpers (none without helpers).
    offered: Option<Arc<Batch>>,
    work: Arc<dyn SharedWork>,
}

impl Started<'_> {
    /// Does the parts nobody took yet on this thread, and returns once every part is done.
    pub fn finish(self) {
        let Some(batch) = self.offered else {
            (0..self.work.parts()).for_each(|part| self.work.do_part(part));
            return;
        };
        batch.take_parts();
        let joined = batch.joined.fetch_or(CLOSED, Ordering::AcqRel) & !CLOSED;
        // A helper that joined has at most one part under way.
        let mut rounds = 0u32;
        while batch.finished.load(Ordering::Acquire) < joined {
            rounds = rounds.wrapping_add(1);
            if rounds.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        *self
            .helpers
            .shared
            .batch
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for thread in self.threads.drain(..) {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// A helper's life: wait for a new batch (spinning, then parked), join it unless it
/// closed, work on it.
fn help(shared: &Shared) {
    let mut seen = 0;
    loop {
        let idle_since = Instant::now();
        let mut rounds = 0u32;
        loop {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            let epoch = shared.epoch.load(Ordering::Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            rounds = rounds.wrapping_add(1);
            if !rounds.is_multiple_of(64) {
                std::hint::spin_loop();
            } else if idle_since.elapsed() < SPIN {
                std::thread::yield_now();
            } else {
                // Woken by the next batch (or spuriously: the loop checks again).
                std::thread::park_timeout(Duration::from_millis(100));
            }
        }
        let batch = shared
            .batch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(batch) = batch else {
            continue;
        };
        let mut joined = batch.joined.load(Ordering::Acquire);
        while joined & CLOSED == 0 {
            match batch.joined.compare_exchange_weak(
                joined,
                joined + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    batch.take_parts();
                    batch.finished.fetch_add(1, Ordering::Release);
                    break;
                }
                Err(now) => joined = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count {
        done: Vec<AtomicUsize>,
    }

    impl SharedWork for Count {
        fn parts(&self) -> usize {
            self.done.len()
        }

        fn do_part(&self, part: usize) {
            self.done[part].fetch_add(1, Ordering::AcqRel);
        }
    }

    #[test]
    fn every_part_is_done_once_whatever_the_helpers() {
        for helpers in [0, 1, 3] {
            let pool = Helpers::new(helpers);
            for batch in 0..200 {
                let work = Arc::new(Count {
                    done: (0..batch).map(|_| AtomicUsize::new(0)).collect(),
                });
                pool.run(work.clone());
                assert!(
                    work.done.iter().all(|d| d.load(Ordering::Acquire) == 1),
                    "{helpers} helpers, batch {batch}"
                );
            }
        }
    }
}
