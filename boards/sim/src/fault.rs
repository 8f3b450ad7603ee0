//! Fault injection: a per-domain plan, settable at runtime, that makes the hypervisor
//! misbehave on purpose towards that domain (as the *caller*: a backend's maps fail, a
//! frontend's notifications get lost).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use xenblk::proto::grant::GntStatus;

/// When a fault fires. Counting starts at 1 with the first operation after the plan was
/// installed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Trigger {
    /// Never.
    #[default]
    Never,
    /// Every operation.
    Always,
    /// Only the `n`th operation (1-based).
    Nth(u64),
    /// Every `n`th operation (`n`, `2n`, ...).
    EveryNth(u64),
    /// Each operation independently with probability `per_million / 1_000_000`, from a
    /// deterministic generator seeded with `seed`.
    Fraction {
        /// Probability in millionths.
        per_million: u32,
        /// Generator seed.
        seed: u64,
    },
}

/// What to break for one domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultPlan {
    /// Which `map_batch` elements fail.
    pub map: Trigger,
    /// The status a failed map element gets.
    pub map_status: GntStatus,
    /// Which `map_ring` calls fail (with `PlatformError::Grant(map_status)`).
    pub ring_map: Trigger,
    /// Which grant-copy elements fail.
    pub copy: Trigger,
    /// The status a failed copy element gets.
    pub copy_status: GntStatus,
    /// Which `notify` calls are silently dropped (the call returns `Ok`).
    pub drop_notify: Trigger,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            map: Trigger::Never,
            map_status: GntStatus::GeneralError,
            ring_map: Trigger::Never,
            copy: Trigger::Never,
            copy_status: GntStatus::GeneralError,
            drop_notify: Trigger::Never,
        }
    }
}

impl FaultPlan {
    /// No faults.
    pub fn none() -> FaultPlan {
        FaultPlan::default()
    }
}

/// Which operation a fault check is for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FaultKind {
    Map,
    RingMap,
    Copy,
    Notify,
}

#[derive(Debug, Default)]
struct Counter {
    n: u64,
    rng: u64,
}

impl Counter {
    fn hit(&mut self, t: Trigger) -> bool {
        self.n += 1;
        match t {
            Trigger::Never => false,
            Trigger::Always => true,
            Trigger::Nth(k) => self.n == k,
            Trigger::EveryNth(k) => k != 0 && self.n.is_multiple_of(k),
            Trigger::Fraction { per_million, seed } => {
                if self.rng == 0 {
                    self.rng = seed | 1;
                }
                // xorshift64*
                let mut x = self.rng;
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                self.rng = x;
                let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
                (r % 1_000_000) < per_million as u64
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    plan: FaultPlan,
    map: Counter,
    ring: Counter,
    copy: Counter,
    notify: Counter,
}

/// A domain's fault state: an atomic fast path (no plan: one relaxed load) and the plan.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    active: AtomicBool,
    state: Mutex<State>,
}

impl Faults {
    pub(crate) fn set(&self, plan: FaultPlan) {
        let mut s = self.state.lock().unwrap();
        *s = State { plan, ..State::default() };
        self.active.store(plan != FaultPlan::default(), Ordering::Release);
    }

    pub(crate) fn plan(&self) -> FaultPlan {
        self.state.lock().unwrap().plan
    }

    /// Whether this operation fails; `Some(status)` for grant operations.
    #[inline]
    pub(crate) fn check(&self, kind: FaultKind) -> Option<GntStatus> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let mut s = self.state.lock().unwrap();
        let p = s.plan;
        let (hit, st) = match kind {
            FaultKind::Map => (s.map.hit(p.map), p.map_status),
            FaultKind::RingMap => (s.ring.hit(p.ring_map), p.map_status),
            FaultKind::Copy => (s.copy.hit(p.copy), p.copy_status),
            FaultKind::Notify => (s.notify.hit(p.drop_notify), GntStatus::GeneralError),
        };
        hit.then_some(st)
    }
}

/// One trigger with its own counter, with an atomic fast path (storage fault injection).
#[derive(Debug, Default)]
pub(crate) struct Injector {
    active: AtomicBool,
    state: Mutex<(Trigger, Counter)>,
}

impl Injector {
    pub(crate) fn set(&self, t: Trigger) {
        *self.state.lock().unwrap() = (t, Counter::default());
        self.active.store(t != Trigger::Never, Ordering::Release);
    }

    #[inline]
    pub(crate) fn hit(&self) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return false;
        }
        let mut s = self.state.lock().unwrap();
        let t = s.0;
        s.1.hit(t)
    }
}
