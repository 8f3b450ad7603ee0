//! [`WaitGroup`]: one blocking point for a thread that runs several domains (several
//! "vCPUs" multiplexed on one host thread, as the seed benchmark does).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::Dom;

/// A wait point shared by several domains: anything that would wake one of them in
/// [`Dom::wait`] (a notification, a watch, a kick, destruction) also wakes a thread blocked in
/// [`WaitGroup::wait`]. Same protocol as `Dom::wait`: the waiter publishes "waiting" before
/// re-checking the domains (both `SeqCst`), so no wake-up is lost.
#[derive(Debug, Default)]
pub struct WaitGroup {
    waiting: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
    blocks: AtomicU64,
}

impl WaitGroup {
    /// A new, empty group.
    pub fn new() -> Arc<WaitGroup> {
        Arc::new(WaitGroup::default())
    }

    /// How many times a waiter actually went to sleep.
    pub fn blocks(&self) -> u64 {
        self.blocks.load(Ordering::Relaxed)
    }

    /// Wakes a thread blocked in [`wait`](Self::wait) (it re-checks and may sleep again;
    /// use it after changing a condition the waiter's caller looks at, such as a stop flag).
    pub fn wake_all(&self) {
        let _g = self.lock.lock().unwrap();
        self.cv.notify_all();
    }

    #[inline]
    pub(crate) fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) {
            let _g = self.lock.lock().unwrap();
            self.cv.notify_all();
        }
    }

    /// Blocks until one of `doms` has something to report (see [`Dom::has_pending`]) or
    /// `timeout` passes. Returns `true` if something is pending. It consumes nothing: call
    /// [`Dom::poll_pending`] on the domains afterwards. Each domain must have joined this
    /// group ([`Dom::join_wait_group`]).
    pub fn wait(&self, doms: &[&Dom], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let any = || doms.iter().any(|d| d.has_pending());
        if any() {
            return true;
        }
        let mut g = self.lock.lock().unwrap();
        loop {
            self.waiting.store(true, Ordering::SeqCst);
            if any() {
                self.waiting.store(false, Ordering::SeqCst);
                return true;
            }
            self.blocks.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            if now >= deadline {
                self.waiting.store(false, Ordering::SeqCst);
                return false;
            }
            g = self.cv.wait_timeout(g, deadline - now).unwrap().0;
            self.waiting.store(false, Ordering::SeqCst);
            if any() {
                return true;
            }
        }
    }
}

impl Dom {
    /// Makes `group` one more place this domain's wake-ups go. A domain joins at most one
    /// group, for good; returns `false` if it already has one.
    pub fn join_wait_group(&self, group: &Arc<WaitGroup>) -> bool {
        self.domain().group.set(group.clone()).is_ok()
    }

    /// Whether a [`wait`](Self::wait) would return at once (without consuming anything).
    pub fn has_pending(&self) -> bool {
        self.domain().anything()
    }
}
