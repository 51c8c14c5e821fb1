//! A small pool of threads that drives every app instance of a node (no thread per
//! app). Each app is a task: a thread takes it when it has something to do — a command
//! arrived, or its next cycle is due — runs one [`AppTask::step`], and puts it back.
//! A task is never run by two threads at once, so calls into one app never overlap and
//! its commands are handled in the order they were sent.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{mpsc as std_mpsc, Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::worker::{AppTask, Step};
use super::{AppCommand, Clock};

/// How long an idle pool thread sleeps when no cycle is due at all.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// Set once an app's task has ended (its last event sent).
#[derive(Default)]
pub struct Ended {
    ended: Mutex<bool>,
    changed: Condvar,
}

impl Ended {
    fn set(&self) {
        *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.changed.notify_all();
    }

    /// Waits until the task has ended.
    pub fn wait(&self) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        while !*ended {
            ended = self.changed.wait(ended).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Where a task stands in the pool.
struct Slot {
    /// The task, unless a thread is running it.
    task: Option<Box<AppTask>>,
    /// Whether it is in the ready queue, or must go back there when its step returns.
    queued: bool,
    /// Its current timer (older ones in the heap are ignored).
    timer: u64,
}

#[derive(Default)]
struct State {
    slots: HashMap<u64, Slot>,
    ready: VecDeque<u64>,
    /// (due, task, timer number).
    timers: BinaryHeap<Reverse<(Duration, u64, u64)>>,
    next_id: u64,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    clock: Clock,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks task `id` as having something to do.
    fn notify(&self, id: u64) {
        let mut state = self.lock();
        let Some(slot) = state.slots.get_mut(&id) else {
            return;
        };
        if slot.queued {
            return;
        }
        slot.queued = true;
        if slot.task.is_some() {
            state.ready.push_back(id);
            drop(state);
            self.wake.notify_one();
        }
    }

    /// One pool thread: runs ready tasks, fires due timers, sleeps otherwise.
    fn serve(&self) {
        let mut state = self.lock();
        loop {
            if state.shutdown {
                return;
            }
            let now = self.clock.now();
            while let Some(&Reverse((due, id, timer))) = state.timers.peek() {
                if due > now {
                    break;
                }
                state.timers.pop();
                if let Some(slot) = state.slots.get_mut(&id) {
                    if slot.timer == timer && !slot.queued && slot.task.is_some() {
                        slot.queued = true;
                        state.ready.push_back(id);
                    }
                }
            }
            let Some(id) = state.ready.pop_front() else {
                let wait = state
                    .timers
                    .peek()
                    .map_or(IDLE_WAIT, |Reverse((due, _, _))| due.saturating_sub(now));
                state = self
                    .wake
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            };
            let Some(slot) = state.slots.get_mut(&id) else {
                continue;
            };
            let Some(mut task) = slot.task.take() else {
                continue;
            };
            slot.queued = false;
            drop(state);
            let step = task.step(self.clock.now());
            if let Step::Ended = step {
                let ended = task.ended();
                drop(task);
                self.lock().slots.remove(&id);
                ended.set();
                state = self.lock();
                continue;
            }
            state = self.lock();
            let slot = state
                .slots
                .get_mut(&id)
                .expect("a running task keeps its slot");
            slot.task = Some(task);
            match step {
                Step::Again => {
                    slot.queued = true;
                    state.ready.push_back(id);
                }
                Step::Wait(due) => {
                    if slot.queued {
                        // A command came while it ran.
                        state.ready.push_back(id);
                    } else if let Some(due) = due {
                        slot.timer += 1;
                        let timer = slot.timer;
                        state.timers.push(Reverse((due, id, timer)));
                    }
                }
                Step::Ended => unreachable!("handled above"),
            }
            // Another thread may sleep while this one found more to do.
            if !state.ready.is_empty() {
                self.wake.notify_one();
            }
        }
    }
}

/// The pool; its threads start with its first task. Dropping it tells them to stop:
/// each ends after the step it is running (not waited for: a call may run up to its
/// deadline).
pub struct WorkerPool {
    shared: Arc<Shared>,
    name: String,
    size: usize,
    threads: Mutex<usize>,
}

/// A command for an app whose task has ended.
#[derive(Debug, thiserror::Error)]
#[error("the app's task has ended")]
pub struct TaskEnded;

/// Where commands for one app go: its channel, and a nudge to the pool.
#[derive(Clone)]
pub struct AppHandle {
    commands: std_mpsc::Sender<AppCommand>,
    waker: Waker,
}

impl AppHandle {
    /// Sends `command` to the app; `Err` when its task has ended.
    pub fn send(&self, command: AppCommand) -> Result<(), TaskEnded> {
        self.commands.send(command).map_err(|_| TaskEnded)?;
        self.waker.wake();
        Ok(())
    }

    /// What wakes the app's task.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }
}

/// Wakes one task of a pool (a no-op once the pool is gone).
#[derive(Clone)]
pub struct Waker {
    shared: Weak<Shared>,
    id: u64,
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Waker({})", self.id)
    }
}

impl Waker {
    /// Tells the pool the task has something to do.
    pub fn wake(&self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.notify(self.id);
        }
    }
}

impl WorkerPool {
    /// A pool of `threads` threads (at least one) on the system clock.
    pub fn new(threads: usize) -> WorkerPool {
        WorkerPool::named("apps", threads)
    }

    /// As [`WorkerPool::new`], its threads named `NAME-0`, `NAME-1`, ...
    pub fn named(name: &str, threads: usize) -> WorkerPool {
        WorkerPool {
            name: name.to_string(),
            shared: Arc::new(Shared {
                state: Mutex::default(),
                wake: Condvar::new(),
                clock: Clock::System,
            }),
            size: threads.max(1),
            threads: Mutex::default(),
        }
    }

    /// A pool with one thread per core (two at least, four at most).
    pub fn for_this_machine() -> WorkerPool {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        WorkerPool::new(cores.clamp(2, 4))
    }

    /// Starts the threads, unless they run.
    fn start_threads(&self) -> std::io::Result<()> {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        while *threads < self.size {
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name(format!("{}-{threads}", self.name))
                .spawn(move || shared.serve())?;
            *threads += 1;
        }
        Ok(())
    }

    /// Adds a task made by `make` (given its waker, for whoever hands it state) whose
    /// commands come through `commands`; it runs at once.
    pub fn spawn(
        &self,
        commands: std_mpsc::Sender<AppCommand>,
        make: impl FnOnce(Waker) -> AppTask,
    ) -> std::io::Result<AppHandle> {
        self.start_threads()?;
        let id = {
            let mut state = self.shared.lock();
            state.next_id += 1;
            state.next_id
        };
        let waker = Waker {
            shared: Arc::downgrade(&self.shared),
            id,
        };
        let task = Box::new(make(waker.clone()));
        let mut state = self.shared.lock();
        state.slots.insert(
            id,
            Slot {
                task: Some(task),
                queued: true,
                timer: 0,
            },
        );
        state.ready.push_back(id);
        drop(state);
        self.shared.wake.notify_one();
        Ok(AppHandle { commands, waker })
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
    }
}
