//! Waiting for memory to come back, without polling.
//!
//! ```text
//!   waiter (async)                               releaser (any thread)
//!   ──────────────                               ─────────────────────
//!   ready()? ─► done                             counter.fetch_sub(n, SeqCst)   (the release)
//!   waiting += 1              (SeqCst)           waiting > 0 ?                  (SeqCst load)
//!   notified = notify.notified()                   └─ yes ─► notify.notify_waiters()
//!   fence(SeqCst); ready()? ─► done              (nobody waits: one load, no lock)
//!   await notified (or the deadline), then again
//! ```
//!
//! A wake-up cannot be lost: the release and the waiter's registration are both in the one
//! order of sequentially consistent operations. Either the releaser sees the waiter counted,
//! and notifies (a `Notified` future is woken by every `notify_waiters` after it was created,
//! and the waiter reads the state after creating it), or it does not, and then the waiter's
//! check after registering sees the release. What is waited for must be written with `SeqCst`
//! before [`Waiters::wake`] is called.
//!
//! A thread that cannot await (a reservation's `try_grow` is a plain call) blocks instead
//! ([`Waiters::until_blocking`]): the same count, then a condition variable. A wake bumps a
//! count of wakes before it notifies under the lock, and the waiter sleeps only if, under that
//! lock, the count is still what it read before its check: a wake between its check and its
//! sleep is seen, one after it takes the lock and so finds the waiter asleep.

use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The tasks waiting for a condition on some counters, and the way to wake them.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    /// How many waits are registered: releases notify only when some are.
    waiting: AtomicUsize,
    notify: Notify,
    /// Wakes so far: a blocked waiter sleeps only while no wake came since its last check.
    wakes: AtomicU64,
    lock: Mutex<()>,
    woken: Condvar,
}

impl Waiters {
    /// After a change that may make the condition true: wakes the waiters, if there are any.
    /// With none (almost always) it is one load of a counter no release writes.
    #[inline]
    pub(crate) fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
            self.wakes.fetch_add(1, Ordering::SeqCst);
            drop(self.lock.lock().unwrap_or_else(PoisonError::into_inner));
            self.woken.notify_all();
        }
    }

    /// How many waits are registered now (a test's releaser waits for its waiter to listen).
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Waits until `ready()` holds, or `timeout` has passed; whether it holds. Needs a Tokio
    /// runtime with its timer (the engine's). Dropping the future stops the wait.
    pub(crate) async fn until(&self, ready: impl Fn() -> bool, timeout: Duration) -> bool {
        if ready() {
            return true;
        }
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _registered = Registered(&self.waiting);
        loop {
            let notified = std::pin::pin!(self.notify.notified());
            // Registered and listening before the check: a release after it notifies us.
            fence(Ordering::SeqCst);
            if ready() {
                return true;
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return ready();
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Blocks this thread until `ready()` holds, or `timeout` has passed; whether it holds.
    /// `ready` runs outside the lock, so it may release memory (and wake) itself.
    pub(crate) fn until_blocking(&self, mut ready: impl FnMut() -> bool, timeout: Duration) -> bool {
        if ready() {
            return true;
        }
        let deadline = Instant::now() + timeout;
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _registered = Registered(&self.waiting);
        loop {
            let seen = self.wakes.load(Ordering::SeqCst);
            if ready() {
                return true;
            }
            let guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            if self.wakes.load(Ordering::SeqCst) == seen {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    drop(guard);
                    return ready();
                }
                drop(self.woken.wait_timeout(guard, left).unwrap_or_else(PoisonError::into_inner));
            }
        }
    }
}

/// For tests: runs `act` on `on` in a new thread once `waiting` counts a waiter, so that only
/// a wake-up can end the wait (a change made before the waiter registered would prove nothing).
#[cfg(test)]
pub(crate) fn once_waiting<T: Send + Sync + 'static>(
    on: &std::sync::Arc<T>,
    waiting: fn(&T) -> usize,
    act: impl FnOnce(&T) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let on = std::sync::Arc::clone(on);
    std::thread::spawn(move || {
        while waiting(&on) == 0 {
            std::hint::spin_loop();
        }
        act(&on);
    })
}

/// One registered wait; unregistered when the wait ends, returns or is dropped.
struct Registered<'a>(&'a AtomicUsize);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_wakes_when_another_thread_makes_it_ready() {
        let (waiters, counter) = (Arc::new(Waiters::default()), Arc::new(AtomicUsize::new(1)));
        let releaser = {
            let counter = Arc::clone(&counter);
            once_waiting(&waiters, Waiters::waiting, move |waiters| {
                counter.store(0, Ordering::SeqCst);
                waiters.wake();
            })
        };
        assert!(waiters.until(|| counter.load(Ordering::SeqCst) == 0, Duration::from_secs(60)).await);
        releaser.join().unwrap();
        assert_eq!(waiters.waiting(), 0, "unregistered");
    }

    #[test]
    fn a_blocked_thread_wakes_when_another_thread_makes_it_ready() {
        let (waiters, counter) = (Arc::new(Waiters::default()), Arc::new(AtomicUsize::new(1)));
        let releaser = {
            let counter = Arc::clone(&counter);
            once_waiting(&waiters, Waiters::waiting, move |waiters| {
                counter.store(0, Ordering::SeqCst);
                waiters.wake();
            })
        };
        assert!(waiters.until_blocking(|| counter.load(Ordering::SeqCst) == 0, Duration::from_secs(60)));
        releaser.join().unwrap();
        assert_eq!(waiters.waiting(), 0, "unregistered");
        assert!(!waiters.until_blocking(|| false, Duration::from_millis(20)), "nothing changes: it times out");
    }

    #[tokio::test]
    async fn a_wait_times_out_when_nothing_changes() {
        let waiters = Waiters::default();
        assert!(!waiters.until(|| false, Duration::from_millis(20)).await);
        assert!(waiters.until(|| true, Duration::ZERO).await, "ready at once needs no time");
        assert_eq!(waiters.waiting(), 0);
    }
}
