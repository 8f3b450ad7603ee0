//! The shared state of one domain: its memory (a memfd), its grant table, the hypervisor's
//! active-grant bookkeeping for that table, its event-channel state and its wait queue.

use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

use xenblk::proto::grant::{
    DomId, ENTRY_SIZE, GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_TYPE_MASK, GTF_WRITING, GntStatus, GrantRef,
    GrantTableV1,
};
use xenblk::proto::shmem::SharedMem;

use crate::evtchn::{PORT_WORDS, PortSet, PortTable, WakeReason};
use crate::fault::Faults;
use crate::shm::{MappedRegion, Memfd, PAGE_SIZE};
use crate::stats::{AtomicStats, bump};

/// Hypervisor-side state of one grant entry while it is in use ("active entry").
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Active {
    /// Pins: mappings plus copies in progress. GTF_reading is set while > 0.
    readers: u32,
    /// Writable pins. GTF_writing is set while > 0.
    writers: u32,
    /// Frame captured at the first pin (later changes of the entry are ignored, as in Xen).
    frame: u32,
    /// Grantee captured at the first pin.
    domid: u16,
}

/// A pending watch event in a domain's queue.
#[derive(Debug, Clone)]
pub(crate) struct QueuedWatch {
    /// The watch's identity: its path as registered (absolute or `@...`) ...
    pub(crate) watch: String,
    /// ... and its token.
    pub(crate) token: u32,
    /// The path reported to the watcher.
    pub(crate) path: String,
}

#[derive(Debug)]
pub(crate) struct Domain {
    pub(crate) id: DomId,
    pub(crate) npages: usize,
    memfd: Memfd,
    view: MappedRegion,
    _gnt_region: MappedRegion,
    pub(crate) gnt: GrantTableV1,
    active: Mutex<Vec<Active>>,
    pub(crate) dead: AtomicBool,
    pub(crate) stats: AtomicStats,
    pub(crate) faults: Faults,
    // Event channels.
    pub(crate) ports: Mutex<PortTable>,
    pending: [AtomicU64; PORT_WORDS],
    closed: [AtomicU64; PORT_WORDS],
    /// Which words of `pending` (bit `i`) and `closed` (bit `PORT_WORDS + i`) may have bits
    /// set: a poll of a domain with nothing pending reads this one word (Xen's two-level
    /// event-channel ABI keeps a selector word for the same reason).
    selector: AtomicU64,
    // Watches.
    watch_q: Mutex<VecDeque<QueuedWatch>>,
    watch_flag: AtomicBool,
    kicked: AtomicBool,
    // Blocking.
    waiting: AtomicBool,
    wait_lock: Mutex<()>,
    wait_cv: Condvar,
    /// A thread that multiplexes several domains blocks here (see [`crate::WaitGroup`]).
    pub(crate) group: OnceLock<Arc<crate::WaitGroup>>,
}

impl Domain {
    pub(crate) fn new(id: DomId, npages: usize, grant_frames: usize) -> io::Result<Domain> {
        let name = CString::new(format!("xenblk-sim-dom{}", id.0)).expect("no NUL");
        let memfd = Memfd::new(&name, npages * PAGE_SIZE)?;
        let view = MappedRegion::map_fd(memfd.as_fd(), 0, npages * PAGE_SIZE, true)?;
        let gnt_region = MappedRegion::anonymous(grant_frames * PAGE_SIZE)?;
        let gnt = GrantTableV1::new(gnt_region.shared());
        let nrefs = gnt.len() as usize;
        Ok(Domain {
            id,
            npages,
            memfd,
            view,
            _gnt_region: gnt_region,
            gnt,
            active: Mutex::new(vec![Active::default(); nrefs]),
            dead: AtomicBool::new(false),
            stats: AtomicStats::default(),
            faults: Faults::default(),
            ports: Mutex::new(PortTable::default()),
            pending: Default::default(),
            closed: Default::default(),
            selector: AtomicU64::new(0),
            watch_q: Mutex::new(VecDeque::new()),
            watch_flag: AtomicBool::new(false),
            kicked: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
            wait_lock: Mutex::new(()),
            wait_cv: Condvar::new(),
            group: OnceLock::new(),
        })
    }

    #[inline]
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    /// The domain's own view of frame `frame` (its "physical" page).
    pub(crate) fn page(&self, frame: u64) -> SharedMem {
        assert!((frame as usize) < self.npages, "frame {frame} outside domain {} ({} pages)", self.id.0, self.npages);
        self.view.shared().slice(frame as usize * PAGE_SIZE, PAGE_SIZE)
    }

    // ---- grant table: the hypervisor side ----

    /// Pins `gref` of this (granting) domain for `mapper`: validates the entry and sets
    /// GTF_reading (and GTF_writing when `write`) with a compare-exchange loop, so a
    /// concurrent revocation by the granter either happens entirely before (and the pin
    /// fails) or is refused (the flags are set). Returns the frame.
    pub(crate) fn pin(&self, gref: GrantRef, mapper: DomId, write: bool) -> Result<u32, GntStatus> {
        if self.is_dead() {
            return Err(GntStatus::BadDomain);
        }
        if gref.0 >= self.gnt.len() {
            return Err(GntStatus::BadGntref);
        }
        let mem = self.gnt.memory();
        let off = gref.0 as usize * ENTRY_SIZE;
        let mut act = self.active.lock().unwrap();
        let a = &mut act[gref.0 as usize];
        let want = GTF_READING | if write { GTF_WRITING } else { 0 };
        let first = a.readers == 0;
        let mut flags = mem.load_u16(off, Ordering::Acquire);
        let added = loop {
            if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS {
                return Err(GntStatus::BadGntref);
            }
            let domid = if first { self.entry_domid(off) } else { a.domid };
            if domid != mapper.0 {
                return Err(GntStatus::BadGntref);
            }
            if write && flags & GTF_READONLY != 0 {
                return Err(GntStatus::PermissionDenied);
            }
            if flags & want == want {
                break 0;
            }
            match mem.cmpxchg_u16(off, flags, flags | want) {
                Ok(_) => break want & !flags,
                Err(now) => flags = now,
            }
        };
        if first {
            // With GTF_reading set the granter can no longer revoke, so the entry is stable
            // now; re-read what a racing revoke-and-regrant might have changed.
            let domid = self.entry_domid(off);
            let frame = self.entry_frame(off);
            let fail = if domid != mapper.0 {
                Some(GntStatus::BadGntref)
            } else if frame as usize >= self.npages {
                Some(GntStatus::BadPage)
            } else {
                None
            };
            if let Some(st) = fail {
                if added != 0 {
                    mem.fetch_and_u16(off, !added);
                }
                return Err(st);
            }
            a.frame = frame;
            a.domid = domid;
        }
        a.readers += 1;
        if write {
            a.writers += 1;
        }
        Ok(a.frame)
    }

    /// Releases a pin taken by [`pin`](Self::pin); clears GTF_writing with the last writable
    /// pin and GTF_reading with the last pin.
    pub(crate) fn unpin(&self, gref: GrantRef, write: bool) {
        let mem = self.gnt.memory();
        let off = gref.0 as usize * ENTRY_SIZE;
        let mut act = self.active.lock().unwrap();
        let a = &mut act[gref.0 as usize];
        debug_assert!(a.readers > 0 && (!write || a.writers > 0), "unbalanced unpin");
        a.readers = a.readers.saturating_sub(1);
        let mut clear = 0;
        if write {
            a.writers = a.writers.saturating_sub(1);
            if a.writers == 0 {
                clear |= GTF_WRITING;
            }
        }
        if a.readers == 0 {
            clear |= GTF_READING | GTF_WRITING;
        }
        if clear != 0 {
            mem.fetch_and_u16(off, !clear);
        }
    }

    fn entry_domid(&self, off: usize) -> u16 {
        let mut b = [0u8; 2];
        self.gnt.memory().read_bytes(off + 2, &mut b);
        u16::from_le_bytes(b)
    }

    fn entry_frame(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        self.gnt.memory().read_bytes(off + 4, &mut b);
        u32::from_le_bytes(b)
    }

    // ---- event delivery and waiting ----

    /// Marks `port` pending and wakes the domain if it is blocked.
    #[inline]
    pub(crate) fn set_pending(&self, port: u32) {
        let w = port as usize / 64;
        self.pending[w].fetch_or(1 << (port % 64), Ordering::SeqCst);
        // After the word: a poll that sees the selector bit finds the port bit.
        self.selector.fetch_or(1 << w, Ordering::SeqCst);
        self.wake();
    }

    pub(crate) fn set_closed(&self, port: u32) {
        let w = port as usize / 64;
        self.closed[w].fetch_or(1 << (port % 64), Ordering::SeqCst);
        self.selector.fetch_or(1 << (PORT_WORDS + w), Ordering::SeqCst);
        self.wake();
    }

    pub(crate) fn kick(&self) {
        self.kicked.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Wakes the domain if it is blocked in `wait` (callers first publish what there is to
    /// see, with SeqCst).
    #[inline]
    pub(crate) fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) {
            let _g = self.wait_lock.lock().unwrap();
            self.wait_cv.notify_all();
        }
        if let Some(g) = self.group.get() {
            g.wake();
        }
    }

    /// Queues a watch event, coalescing with a pending one of the same (watch, token).
    pub(crate) fn queue_watch(&self, watch: &str, token: u32, path: String) {
        {
            let mut q = self.watch_q.lock().unwrap();
            if q.iter().any(|e| e.token == token && e.watch == watch) {
                bump(&self.stats.watch_coalesced);
                return;
            }
            q.push_back(QueuedWatch { watch: watch.to_owned(), token, path });
            self.watch_flag.store(true, Ordering::SeqCst);
        }
        bump(&self.stats.watch_events);
        self.wake();
    }

    /// Drops pending events of a removed watch.
    pub(crate) fn drop_watch_events(&self, watch: &str, token: u32) {
        let mut q = self.watch_q.lock().unwrap();
        q.retain(|e| !(e.token == token && e.watch == watch));
        self.watch_flag.store(!q.is_empty(), Ordering::SeqCst);
    }

    pub(crate) fn take_watch_events(&self) -> Vec<(String, u32)> {
        let mut q = self.watch_q.lock().unwrap();
        self.watch_flag.store(false, Ordering::SeqCst);
        q.drain(..).map(|e| (e.path, e.token)).collect()
    }

    pub(crate) fn anything(&self) -> bool {
        self.selector.load(Ordering::SeqCst) != 0
            || self.watch_flag.load(Ordering::SeqCst)
            || self.kicked.load(Ordering::SeqCst)
            || self.is_dead()
    }

    pub(crate) fn poll(&self) -> WakeReason {
        // Clear the selector before the words: a bit set after the swap stays for the next poll.
        let sel = if self.selector.load(Ordering::SeqCst) != 0 { self.selector.swap(0, Ordering::SeqCst) } else { 0 };
        WakeReason {
            ports: PortSet::take(&self.pending, sel & ((1 << PORT_WORDS) - 1)),
            closed: PortSet::take(&self.closed, sel >> PORT_WORDS),
            watches: self.watch_flag.load(Ordering::SeqCst),
            // Load first: a locked swap on every poll would bounce the line needlessly.
            kicked: self.kicked.load(Ordering::SeqCst) && self.kicked.swap(false, Ordering::SeqCst),
            destroyed: self.is_dead(),
            timed_out: false,
        }
    }

    pub(crate) fn wait(&self, deadline: Option<Instant>) -> WakeReason {
        loop {
            let r = self.poll();
            if !r.is_empty() {
                return r;
            }
            let mut g = self.wait_lock.lock().unwrap();
            self.waiting.store(true, Ordering::SeqCst);
            if self.anything() {
                self.waiting.store(false, Ordering::SeqCst);
                continue;
            }
            bump(&self.stats.blocks);
            match deadline {
                None => g = self.wait_cv.wait(g).unwrap(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        self.waiting.store(false, Ordering::SeqCst);
                        return WakeReason { timed_out: true, ..WakeReason::default() };
                    }
                    g = self.wait_cv.wait_timeout(g, d - now).unwrap().0;
                }
            }
            self.waiting.store(false, Ordering::SeqCst);
            drop(g);
            if self.anything() {
                bump(&self.stats.wakeups);
            } else if deadline.is_some_and(|d| Instant::now() >= d) {
                return WakeReason { timed_out: true, ..WakeReason::default() };
            }
        }
    }
}
