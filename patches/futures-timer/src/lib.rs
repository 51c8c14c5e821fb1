//! [`Delay`] as futures-timer 3 defines it, on tokio's timers: a timer made inside a
//! tokio runtime is driven by that runtime (which must have its timers enabled, as
//! nodemanager's do); one made outside any runtime by a small runtime of its own,
//! started on first use on a thread named `timers`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::{Instant, Sleep};

/// A future that completes once its duration has passed.
pub struct Delay {
    sleep: Pin<Box<Sleep>>,
}

impl Delay {
    /// A delay that completes `dur` from now.
    pub fn new(dur: Duration) -> Delay {
        let sleep = match Handle::try_current() {
            Ok(_) => tokio::time::sleep(dur),
            Err(_) => {
                let _entered = fallback().enter();
                tokio::time::sleep(dur)
            }
        };
        Delay {
            sleep: Box::pin(sleep),
        }
    }

    /// Makes the delay complete `dur` from now instead.
    pub fn reset(&mut self, dur: Duration) {
        self.sleep.as_mut().reset(deadline(dur));
    }
}

/// `dur` from now, or far in the future when that cannot be written.
fn deadline(dur: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(dur)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.sleep.as_mut().poll(cx)
    }
}

impl fmt::Debug for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delay")
            .field("deadline", &self.sleep.deadline())
            .finish()
    }
}

/// The runtime that drives timers made outside any tokio runtime.
fn fallback() -> &'static Handle {
    static HANDLE: OnceLock<Handle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime for timers");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("timers".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("a thread for timers");
        handle
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_made_outside_a_runtime_completes() {
        let started = std::time::Instant::now();
        futures_executor_block_on(Delay::new(Duration::from_millis(20)));
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test]
    async fn a_reset_delay_completes_at_its_new_deadline() {
        let started = Instant::now();
        let mut delay = Delay::new(Duration::from_secs(3600));
        delay.reset(Duration::from_millis(10));
        delay.await;
        assert!(started.elapsed() >= Duration::from_millis(10));
        Delay::new(Duration::MAX).reset(Duration::MAX);
    }

    /// Polls `future` on this thread, outside any tokio runtime, until it completes.
    fn futures_executor_block_on(future: impl Future<Output = ()>) {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        while future.as_mut().poll(&mut cx).is_pending() {
            std::thread::park();
        }
    }
}
