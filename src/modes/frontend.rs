//! The frontend: a guest's view of its virtual disk.
//!
//! The board owns the event loop and calls [`Frontend::on_xenstore`] when a watch fires and
//! [`Frontend::poll`] when the event channel does (or whenever it likes). I/O is
//! non-blocking and multi-in-flight: [`Frontend::submit`] queues a request (copying write
//! data into pooled granted pages), [`Frontend::kick`] publishes queued requests and
//! notifies the backend if it asked to be, and [`Frontend::poll`] hands each completion to a
//! callback, which may copy read data out. The zero-copy path lends pooled granted pages to
//! the caller ([`Frontend::alloc_buffer`]), which fills them and submits them with no copy
//! at all. Blocking conveniences sit on top ([`Frontend::read_blocking`],
//! [`Frontend::write_blocking`]).
//!
//! Handshake: on backend InitWait (or Connected, for backends that announce it early) the
//! frontend allocates and grants its ring, allocates an event channel and writes
//! `ring-ref`/`ring-page-order`+`ring-ref<i>`, `event-channel`, `protocol` and
//! `feature-persistent` (its willingness) in one transaction, then goes Initialised. On
//! backend Connected it reads the disk's size and every `feature-*` key, decides persistence
//! locally (own willingness and the backend's key), and goes Connected. This decision is
//! re-made on every connect. If the backend goes away (Closing, Closed, or back to
//! InitWait after a restart) the frontend tears its ring down, keeps every in-flight request,
//! and re-issues them all on the next connect.
//!
//! Queues: with `multi-queue-max-queues` offered and config `ring.queues` > 1 the frontend
//! uses one ring per queue (`queue-N/ring-ref*`, `queue-N/event-channel`), each with its
//! own event channel and its own pool of granted pages (`frontend.pool_grants` is shared
//! out over the queues in use); requests go round robin. With one queue the keys are at the
//! top level. [`Frontend::resume`] rebuilds everything after suspend/resume or migration,
//! possibly against a backend in another domain.
//!
//! Hostile backends: each response is copied once; `rsp_prod` is checked against the
//! requests outstanding; the id must be in flight and the operation must match the request;
//! a page the backend keeps mapped without persistence is never reused. Any violation fails
//! the device: every in-flight request completes with an error.

use crate::config;
use crate::platform::{FrontendPlatform, Page, PlatformError, Port, Tx, Wait};
use crate::pool::front::{FrontPool, PoolError};
use crate::pool::ids::{IdTable, MAX_IDS};
use crate::proto::blkif::{
    self, MAX_SEGMENTS_PER_REQUEST, OP_DISCARD, OP_INDIRECT, Protocol, RSP_EOPNOTSUPP, RSP_ERROR, RSP_OKAY, ReqKind,
    Request, RwOp, SECTOR_SIZE, SEGMENTS_PER_INDIRECT_PAGE, SegList, Segment,
};
use crate::proto::grant::{DomId, GrantRef, RevokeError};
use crate::proto::ring::{FrontRing, PAGE_SIZE};
use crate::proto::shmem::SharedMem;
use crate::proto::xenbus::{XenbusState, keys};

use super::xs::{self, Read};

/// Data pages one request may use (direct or indirect), fixed by the config.
pub const MAX_DATA_PAGES: usize =
    if config::MAX_SEGMENTS > MAX_SEGMENTS_PER_REQUEST { config::MAX_SEGMENTS } else { MAX_SEGMENTS_PER_REQUEST };
/// Queues (rings) one frontend can use (config `ring.queues`).
pub const MAX_QUEUES: usize = config::RING_QUEUES;
/// Indirect pages one request may use.
pub const MAX_INDIRECT_PAGES: usize = if config::INDIRECT_PAGES == 0 { 1 } else { config::INDIRECT_PAGES };

/// Frontend settings (defaults from the build config).
#[derive(Clone, Copy, Debug)]
pub struct FrontendConfig {
    /// Offer persistent grants (`feature-persistent`).
    pub persistent: bool,
    /// Largest ring order to use (clamped to the backend's offer and the profile).
    pub max_ring_order: u32,
    /// Most queues to use (clamped to the backend's `multi-queue-max-queues` and the config).
    pub queues: u32,
    /// Largest request in segments (more than 11 uses indirect descriptors when offered).
    pub max_segments: usize,
    /// Pages in the grant pool.
    pub pool_grants: usize,
    /// The `protocol` to write (the ABI of our requests).
    pub protocol: Protocol,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig {
            persistent: config::FRONTEND_PERSISTENT,
            max_ring_order: config::RING_ORDER.min(crate::profile::MAX_RING_ORDER),
            queues: config::RING_QUEUES as u32,
            max_segments: config::MAX_SEGMENTS,
            pool_grants: config::FRONTEND_POOL_GRANTS,
            protocol: Protocol::native(),
        }
    }
}

/// Where the frontend is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Phase {
    /// Waiting for the backend to publish its limits (InitWait).
    WaitBackend,
    /// Ring published; waiting for the backend to connect.
    Initialised,
    /// I/O flows.
    Connected,
    /// Closing on request of the user.
    Closing,
    /// Closed; may reconnect when the backend comes back.
    Closed,
    /// The backend misbehaved; the device is dead.
    Failed(FailReason),
}

/// Why the device failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FailReason {
    /// `rsp_prod` claimed more responses than requests outstanding.
    ResponseOverflow,
    /// A response carried an id not in flight (unknown or repeated).
    BadResponseId,
    /// A response's operation differed from its request's.
    WrongOperation,
    /// The backend kept a grant mapped that it was not allowed to keep.
    GrantStillMapped,
    /// A backend xenstore value was missing or out of range.
    BadBackendValue,
    /// The platform failed (allocation, grant, event channel, xenstore).
    Platform(PlatformError),
}

/// What the backend offered and what we decided, read at every connect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// Persistent grants in use (ours and the backend's willingness).
    pub persistent: bool,
    /// Indirect segments usable per request (0: none).
    pub indirect_segments: u32,
    /// Ring order in use.
    pub ring_order: u32,
    /// Queues (rings) in use.
    pub queues: u32,
    /// `feature-flush-cache`.
    pub flush: bool,
    /// `feature-barrier`.
    pub barrier: bool,
    /// `feature-discard`.
    pub discard: bool,
    /// `discard-secure`.
    pub discard_secure: bool,
    /// `discard-granularity` in bytes.
    pub discard_granularity: u32,
    /// Disk size in 512-byte sectors.
    pub sectors: u64,
    /// Logical sector size.
    pub sector_size: u32,
    /// Physical sector size.
    pub physical_sector_size: u32,
    /// `info` bits.
    pub info: u32,
}

impl Negotiated {
    /// Whether the disk is read-only.
    pub fn read_only(&self) -> bool {
        self.info & blkif::VDISK_READONLY != 0
    }
}

/// An I/O request.
#[derive(Clone, Copy, Debug)]
pub enum Io<'a> {
    /// Read `sectors` 512-byte sectors at `sector`.
    Read {
        /// Start.
        sector: u64,
        /// Length in sectors.
        sectors: u32,
    },
    /// Write `data` (a multiple of 512 bytes) at `sector`.
    Write {
        /// Start.
        sector: u64,
        /// Data.
        data: &'a [u8],
    },
    /// Write barrier with data: every earlier write completes first.
    Barrier {
        /// Start.
        sector: u64,
        /// Data.
        data: &'a [u8],
    },
    /// Flush the disk cache (no data).
    Flush,
    /// Discard a range.
    Discard {
        /// Start.
        sector: u64,
        /// Length in sectors.
        sectors: u64,
        /// Secure discard.
        secure: bool,
    },
}

/// Why a request could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SubmitError {
    /// Ring, ids or pool full: poll for completions and retry.
    Busy,
    /// Not connected (yet, or any more).
    NotConnected,
    /// More data than one request can carry; split it.
    TooLarge,
    /// Length not a multiple of 512, zero, or not aligned to the logical sector size.
    BadLength,
    /// The operation was not offered by the backend.
    Unsupported,
    /// The disk is read-only.
    ReadOnly,
    /// The device failed.
    Failed,
    /// The platform failed.
    Platform(PlatformError),
}

/// Outcome of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Status {
    /// `BLKIF_RSP_OKAY`.
    Ok,
    /// `BLKIF_RSP_ERROR`, an unknown status, or the device failed.
    Error,
    /// `BLKIF_RSP_EOPNOTSUPP`.
    NotSupported,
}

/// Pooled granted pages lent to the caller (zero-copy path).
#[derive(Debug)]
pub struct Buffer {
    pages: heapless::Vec<u16, MAX_DATA_PAGES>,
    /// The queue whose pool the pages come from.
    pool: u8,
}

impl Buffer {
    /// Number of pages.
    #[inline]
    pub fn pages(&self) -> usize {
        self.pages.len()
    }
    /// Capacity in bytes.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.pages.len() * PAGE_SIZE
    }
}

#[derive(Debug)]
enum Data {
    /// Pool pages owned by the request.
    Pool(heapless::Vec<u16, MAX_DATA_PAGES>),
    /// A caller's buffer, returned with the completion.
    Lent(Buffer),
    /// No data.
    None,
}

#[derive(Debug)]
struct Shadow {
    tag: u64,
    kind: ShadowKind,
    sector: u64,
    bytes: u32,
    data: Data,
    indirect: heapless::Vec<u16, MAX_INDIRECT_PAGES>,
    /// Published to the current ring (false: waiting to be (re)issued).
    issued: bool,
    /// The queue it was issued on.
    queue: u8,
    /// The queue whose pool holds its pages (its queue unless a reconnect changed the
    /// number of queues).
    pool: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ShadowKind {
    Rw(RwOp),
    Discard { secure: bool, sectors: u64 },
}

/// A completed request, handed to the [`Frontend::poll`] callback.
pub struct Completion<'a> {
    /// The caller's tag.
    pub tag: u64,
    /// Outcome.
    pub status: Status,
    /// Start sector of the request.
    pub sector: u64,
    /// Bytes the request carried.
    pub bytes: u32,
    pool: &'a FrontPool,
    data: &'a mut Data,
}

impl Completion<'_> {
    /// Copies read data (up to `dst.len()` bytes) out of the pooled pages; returns bytes.
    #[inline]
    pub fn read_data(&self, dst: &mut [u8]) -> usize {
        let pages: &[u16] = match &*self.data {
            Data::Pool(p) => p,
            Data::Lent(b) => &b.pages,
            Data::None => &[],
        };
        copy_out(self.pool, pages, dst, self.bytes as usize)
    }

    /// Takes back a lent buffer (zero-copy path). If not taken, it returns to the pool.
    #[inline]
    pub fn take_buffer(&mut self) -> Option<Buffer> {
        match core::mem::replace(self.data, Data::None) {
            Data::Lent(b) => Some(b),
            other => {
                *self.data = other;
                None
            }
        }
    }
}

#[inline]
fn copy_out(pool: &FrontPool, pages: &[u16], dst: &mut [u8], bytes: usize) -> usize {
    let n = dst.len().min(bytes);
    if let [idx] = pages
        && n <= PAGE_SIZE
    {
        // One page (the common case): the loop below, once.
        if n > 0 {
            pool.page(*idx).copy_to_private(0, &mut dst[..n]);
        }
        return n;
    }
    let mut done = 0;
    for &idx in pages {
        if done >= n {
            break;
        }
        let chunk = (n - done).min(PAGE_SIZE);
        pool.page(idx).copy_to_private(0, &mut dst[done..done + chunk]);
        done += chunk;
    }
    done
}

/// Frontend counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontStats {
    /// Requests queued.
    pub submitted: u64,
    /// Requests completed (any status).
    pub completed: u64,
    /// Requests completed with an error.
    pub errors: u64,
    /// Notifications sent to the backend.
    pub notifies: u64,
    /// Polls that found no response (spurious wake-ups).
    pub spurious: u64,
    /// Connections made.
    pub connects: u64,
    /// Requests re-issued after a reconnect.
    pub reissued: u64,
}

struct RingState {
    ring: FrontRing,
    /// The ring pages: one contiguous region and its frames.
    mem: SharedMem,
    frames: heapless::Vec<u64, 16>,
    grefs: heapless::Vec<GrantRef, 16>,
    port: Port,
    /// Requests written but not yet published.
    unpushed: bool,
}

/// Ring pages the backend still mapped when the ring was torn down: kept (never reused)
/// until every grant in `grefs` (only those whose revoke failed) has been ended.
struct ParkedRing {
    mem: SharedMem,
    frames: heapless::Vec<u64, 16>,
    grefs: heapless::Vec<GrantRef, 16>,
}

/// A blkif frontend for one virtual disk.
pub struct Frontend {
    cfg: FrontendConfig,
    dir: crate::platform::XsPath,
    backend_dir: crate::platform::XsPath,
    backend_id: DomId,
    phase: Phase,
    /// One ring per queue (empty while not connected).
    rings: heapless::Vec<RingState, MAX_QUEUES>,
    /// Next queue to try first (round robin).
    next_queue: usize,
    /// One pool of granted pages per queue (Linux blkfront keeps one per ring): a page
    /// serves one ring only, so each backend ring's persistent cache sees its own pages.
    pools: heapless::Vec<FrontPool, MAX_QUEUES>,
    /// Torn-down rings the backend still mapped (Linux blkback unmaps only once it sees our
    /// Closed, after we tore down); retried while no ring is up.
    parked_rings: heapless::Vec<ParkedRing, MAX_QUEUES>,
    ids: IdTable,
    shadows: heapless::Vec<Option<Shadow>, MAX_IDS>,
    /// Requests waiting to be (re)issued, oldest first (ids into `shadows`).
    backlog: heapless::Deque<u16, MAX_IDS>,
    neg: Negotiated,
    /// [`max_request_pages`](Self::max_request_pages), recomputed by
    /// [`update_limits`](Self::update_limits) whenever what it depends on changes (the
    /// negotiated indirect segments, the pool limit), not at every request.
    max_pages: usize,
    stats: FrontStats,
    watch_token: u32,
    /// The user closed the device: do not reconnect on our own.
    user_closed: bool,
}

/// Why the frontend could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AttachError {
    /// The toolstack keys (`backend`, `backend-id`) are missing or malformed.
    NoBackend,
    /// The platform failed.
    Platform(PlatformError),
}

impl Frontend {
    /// Attaches to the vbd whose frontend directory is `dir` (for example
    /// `/local/domain/5/device/vbd/51712`): reads `backend` and `backend-id`, watches the
    /// backend's `state` (under `watch_token`), and waits for the backend.
    pub fn attach<P: FrontendPlatform>(
        plat: &mut P,
        dir: &str,
        cfg: FrontendConfig,
        watch_token: u32,
    ) -> Result<Frontend, AttachError> {
        let backend_dir = match xs::read_str::<P, 160>(plat, Tx::NONE, dir, keys::BACKEND) {
            Read::Ok(s) => s,
            _ => return Err(AttachError::NoBackend),
        };
        let backend_id = match xs::read_u64(plat, Tx::NONE, dir, keys::BACKEND_ID) {
            Read::Ok(v) if v < 0x7ff0 => DomId(v as u16),
            _ => return Err(AttachError::NoBackend),
        };
        let mut bdir = crate::platform::XsPath::new();
        let _ = bdir.push_str(&backend_dir);
        let mut own = crate::platform::XsPath::new();
        let _ = own.push_str(dir);
        plat.watch(&xs::join(&bdir, keys::STATE), watch_token).map_err(AttachError::Platform)?;
        let mut shadows = heapless::Vec::new();
        for _ in 0..MAX_IDS {
            let _ = shadows.push(None);
        }
        let mut f = Frontend {
            cfg,
            dir: own,
            backend_dir: bdir,
            backend_id,
            phase: Phase::WaitBackend,
            rings: heapless::Vec::new(),
            next_queue: 0,
            pools: (0..MAX_QUEUES).map(|_| FrontPool::new(cfg.pool_grants, backend_id)).collect(),
            parked_rings: heapless::Vec::new(),
            ids: IdTable::new(0),
            shadows,
            backlog: heapless::Deque::new(),
            neg: Negotiated::default(),
            max_pages: 0,
            stats: FrontStats::default(),
            watch_token,
            user_closed: false,
        };
        f.update_limits();
        xs::write_state(plat, &f.dir, XenbusState::Initialising).map_err(AttachError::Platform)?;
        f.on_xenstore(plat);
        Ok(f)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }
    /// What was negotiated at the last connect.
    pub fn negotiated(&self) -> &Negotiated {
        &self.neg
    }
    /// Counters.
    pub fn stats(&self) -> FrontStats {
        self.stats
    }
    /// Pool counters.
    pub fn pool_stats(&self) -> crate::pool::front::PoolStats {
        let mut t = crate::pool::front::PoolStats::default();
        for p in &self.pools {
            let s = p.stats();
            t.grants += s.grants;
            t.revokes += s.revokes;
            t.kept_granted += s.kept_granted;
            t.parked += s.parked;
            t.pages += s.pages;
        }
        t
    }
    /// Requests in flight (issued or waiting to be re-issued).
    pub fn in_flight(&self) -> usize {
        self.ids.in_flight()
    }
    /// The event-channel port of the current ring (of the first queue).
    pub fn port(&self) -> Option<Port> {
        self.rings.first().map(|r| r.port)
    }
    /// The event-channel ports of every queue.
    pub fn ports(&self) -> heapless::Vec<Port, MAX_QUEUES> {
        self.rings.iter().map(|r| r.port).collect()
    }
    /// Requests issued on each queue and not yet answered.
    pub fn queue_in_flight(&self) -> heapless::Vec<usize, MAX_QUEUES> {
        let mut v: heapless::Vec<usize, MAX_QUEUES> = self.rings.iter().map(|_| 0).collect();
        for id in self.ids.iter() {
            if let Some(sh) = self.shadows[id as usize].as_ref()
                && sh.issued
                && let Some(n) = v.get_mut(sh.queue as usize)
            {
                *n += 1;
            }
        }
        v
    }
    /// Whether some queue has a free slot.
    #[inline]
    fn has_room(&self) -> bool {
        if let [r] = self.rings.as_slice() {
            return !r.ring.is_full();
        }
        self.rings.iter().any(|r| !r.ring.is_full())
    }
    /// The pool (queue) for a lent buffer of `pages` pages: round robin over the queues in
    /// use, preferring one whose pool has room.
    fn pick_pool(&mut self, pages: usize) -> usize {
        let n = self.rings.len().max(1);
        for k in 0..n {
            let q = (self.next_queue + k) % n;
            if self.pools[q].available() >= pages {
                self.next_queue = (q + 1) % n;
                return q;
            }
        }
        self.next_queue % n
    }

    /// A queue whose ring has a free slot and whose pool has `pages` pages, round robin.
    #[inline]
    fn pick_room(&mut self, pages: usize) -> Option<usize> {
        let n = self.rings.len();
        if n == 1 {
            // One queue (the common case): the loop below with n = 1, without its divisions.
            if self.rings[0].ring.is_full() || self.pools[0].available() < pages {
                return None;
            }
            self.next_queue = 0;
            return Some(0);
        }
        for k in 0..n {
            let q = (self.next_queue + k) % n;
            if !self.rings[q].ring.is_full() && self.pools[q].available() >= pages {
                self.next_queue = (q + 1) % n;
                return Some(q);
            }
        }
        None
    }

    /// A queue with a free slot, round robin.
    fn pick_queue(&mut self) -> Option<usize> {
        let n = self.rings.len();
        if n == 1 {
            // As the loop below with n = 1.
            if self.rings[0].ring.is_full() {
                return None;
            }
            self.next_queue = 0;
            return Some(0);
        }
        for k in 0..n {
            let q = (self.next_queue + k) % n;
            if !self.rings[q].ring.is_full() {
                self.next_queue = (q + 1) % n;
                return Some(q);
            }
        }
        None
    }
    /// The backend's domain.
    pub fn backend_id(&self) -> DomId {
        self.backend_id
    }
    /// The watch token given at attach.
    pub fn watch_token(&self) -> u32 {
        self.watch_token
    }
    /// Ring slots of the current connection.
    pub fn ring_slots(&self) -> usize {
        self.ids.limit()
    }
    /// Most bytes one request can carry on the current connection.
    pub fn max_request_bytes(&self) -> usize {
        self.max_request_pages() * PAGE_SIZE
    }

    #[inline]
    fn max_request_pages(&self) -> usize {
        debug_assert_eq!(self.max_pages, self.compute_max_request_pages(), "update_limits not called");
        self.max_pages
    }

    /// Recomputes what depends on the negotiated features and the pool limit; call after
    /// every change of `neg` or of a pool's limit.
    fn update_limits(&mut self) {
        self.max_pages = self.compute_max_request_pages();
    }

    fn compute_max_request_pages(&self) -> usize {
        let ind = self.neg.indirect_segments as usize;
        let segs =
            if ind > MAX_SEGMENTS_PER_REQUEST { ind.min(self.cfg.max_segments) } else { MAX_SEGMENTS_PER_REQUEST };
        segs.min(MAX_DATA_PAGES).min(self.pools[0].limit().saturating_sub(self.indirect_pages_for(segs)))
    }

    fn indirect_pages_for(&self, segs: usize) -> usize {
        if segs > MAX_SEGMENTS_PER_REQUEST { segs.div_ceil(SEGMENTS_PER_INDIRECT_PAGE) } else { 0 }
    }

    /// Reacts to the backend's state. Call whenever the watch fires; harmless otherwise.
    pub fn on_xenstore<P: FrontendPlatform>(&mut self, plat: &mut P) {
        if matches!(self.phase, Phase::Failed(_)) {
            return;
        }
        if self.rings.is_empty() {
            self.reap(plat);
        }
        let back = xs::read_state(plat, &self.backend_dir);
        debug!("xenblk front: backend state {}", back as u8);
        match (self.phase, back) {
            (Phase::WaitBackend, XenbusState::InitWait | XenbusState::Connected) => {
                if let Err(e) = self.publish_ring(plat) {
                    self.fail(plat, FailReason::Platform(e));
                    return;
                }
                if back == XenbusState::Connected {
                    // A backend that says Connected before seeing our ring (NetBSD's habit):
                    // connect at once; it maps the ring when it sees Initialised.
                    self.connect(plat);
                }
            }
            (Phase::Initialised, XenbusState::Connected) => self.connect(plat),
            (Phase::Connected, XenbusState::Connected) => self.refresh_size(plat),
            // The backend restarted under us: tear down, keep the requests, start over.
            // (InitWait while we are Initialised is the normal wait for the backend.)
            (Phase::Connected, XenbusState::Initialising | XenbusState::InitWait)
            | (Phase::Initialised, XenbusState::Initialising) => {
                self.disconnect(plat);
                let _ = xs::write_state(plat, &self.dir, XenbusState::Initialising);
                self.phase = Phase::WaitBackend;
                if back == XenbusState::InitWait {
                    self.on_xenstore(plat);
                }
            }
            (
                Phase::Initialised | Phase::Connected | Phase::WaitBackend,
                XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown,
            ) => {
                if back == XenbusState::Unknown && self.phase == Phase::WaitBackend {
                    return;
                }
                self.disconnect(plat);
                let _ = xs::write_state(plat, &self.dir, XenbusState::Closed);
                self.phase = Phase::Closed;
            }
            (Phase::Closing, XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown) => {
                self.disconnect(plat);
                let _ = xs::write_state(plat, &self.dir, XenbusState::Closed);
                self.phase = Phase::Closed;
            }
            // After a close the backend comes back (restart, rebind): reconnect, unless the
            // user closed the device.
            (Phase::Closed, XenbusState::Closed | XenbusState::InitWait | XenbusState::Initialising)
                if !self.user_closed =>
            {
                if back == XenbusState::Closed && self.backend_online(plat) {
                    let _ = xs::write_state(plat, &self.dir, XenbusState::Initialising);
                    self.phase = Phase::WaitBackend;
                } else if back != XenbusState::Closed {
                    let _ = xs::write_state(plat, &self.dir, XenbusState::Initialising);
                    self.phase = Phase::WaitBackend;
                    self.on_xenstore(plat);
                }
            }
            _ => {}
        }
    }

    fn backend_online<P: FrontendPlatform>(&mut self, plat: &mut P) -> bool {
        matches!(xs::read_u64(plat, Tx::NONE, &self.backend_dir, keys::ONLINE), Read::Ok(1))
    }

    /// After the guest was suspended and resumed, or migrated: everything of the old
    /// connection is dead. Tears the rings down (keeping every in-flight request for
    /// re-issue), re-reads `backend` and `backend-id` (the toolstack may have moved the
    /// device to another backend domain), watches the new backend, and negotiates from
    /// scratch: new rings, new event channels, every feature re-read at Connected.
    pub fn resume<P: FrontendPlatform>(&mut self, plat: &mut P) -> Result<(), AttachError> {
        if matches!(self.phase, Phase::Failed(_)) {
            return Err(AttachError::Platform(PlatformError::Invalid));
        }
        self.disconnect(plat);
        let backend_dir = match xs::read_str::<P, 160>(plat, Tx::NONE, &self.dir, keys::BACKEND) {
            Read::Ok(s) => s,
            _ => return Err(AttachError::NoBackend),
        };
        let backend_id = match xs::read_u64(plat, Tx::NONE, &self.dir, keys::BACKEND_ID) {
            Read::Ok(v) if v < 0x7ff0 => DomId(v as u16),
            _ => return Err(AttachError::NoBackend),
        };
        let _ = plat.unwatch(&xs::join(&self.backend_dir, keys::STATE), self.watch_token);
        self.backend_dir.clear();
        let _ = self.backend_dir.push_str(&backend_dir);
        self.backend_id = backend_id;
        for p in self.pools.iter_mut() {
            p.set_peer(backend_id);
        }
        plat.watch(&xs::join(&self.backend_dir, keys::STATE), self.watch_token).map_err(AttachError::Platform)?;
        self.neg = Negotiated::default();
        self.update_limits();
        xs::write_state(plat, &self.dir, XenbusState::Initialising).map_err(AttachError::Platform)?;
        self.phase = Phase::WaitBackend;
        self.on_xenstore(plat);
        Ok(())
    }

    /// Retries what an earlier backend kept mapped (parked pool pages become reusable,
    /// orphaned pages and parked rings are freed once their grants end); returns how many
    /// pages are still held.
    pub fn reap<P: FrontendPlatform>(&mut self, plat: &mut P) -> usize {
        for p in self.pools.iter_mut() {
            p.reap_parked(plat);
        }
        let mut k = 0;
        while k < self.parked_rings.len() {
            let p = &mut self.parked_rings[k];
            p.grefs.retain(|&g| plat.end_access(g) == Err(RevokeError::InUse));
            if p.grefs.is_empty() {
                let p = self.parked_rings.remove(k);
                free_ring_mem(plat, p.mem, &p.frames);
            } else {
                k += 1;
            }
        }
        self.parked_pages()
    }

    /// Pages the backend still mapped at the last teardown: parked and orphaned pool pages
    /// plus the pages of parked rings (retried at every xenstore event while no ring is up).
    pub fn parked_pages(&self) -> usize {
        self.pools.iter().map(|p| p.stats().parked as usize + p.orphans()).sum::<usize>()
            + self.parked_rings.iter().map(|r| r.frames.len()).sum::<usize>()
    }

    /// Asks to close the device (front-initiated). In-flight requests still complete.
    pub fn close<P: FrontendPlatform>(&mut self, plat: &mut P) {
        if matches!(self.phase, Phase::Failed(_) | Phase::Closed) {
            return;
        }
        self.user_closed = true;
        self.phase = Phase::Closing;
        let _ = xs::write_state(plat, &self.dir, XenbusState::Closing);
        self.on_xenstore(plat);
    }

    /// Re-initialises a device closed by [`close`](Self::close) (front-driven re-init: the
    /// backend, seeing Initialising, publishes its limits again). Requests still waiting are
    /// issued on the next connect.
    pub fn reopen<P: FrontendPlatform>(&mut self, plat: &mut P) {
        if self.phase != Phase::Closed {
            return;
        }
        self.user_closed = false;
        let _ = xs::write_state(plat, &self.dir, XenbusState::Initialising);
        self.phase = Phase::WaitBackend;
        self.on_xenstore(plat);
    }

    /// Allocates and grants one ring of `1 << order` pages and an event channel.
    fn alloc_queue<P: FrontendPlatform>(&mut self, plat: &mut P, order: u32) -> Result<RingState, PlatformError> {
        let npages = 1usize << order;
        let (mem, frames_arr) = if npages == 1 {
            let p = plat.alloc_page()?;
            let mut f = [0u64; 16];
            f[0] = p.frame;
            (p.mem, f)
        } else {
            plat.alloc_pages_contiguous(npages)?
        };
        let mut frames: heapless::Vec<u64, 16> = heapless::Vec::new();
        for &fr in &frames_arr[..npages] {
            let _ = frames.push(fr);
        }
        let ring = match FrontRing::init(mem, self.cfg.protocol.abi()) {
            Ok(r) => r,
            Err(_) => {
                free_ring_mem(plat, mem, &frames);
                return Err(PlatformError::Invalid);
            }
        };
        let mut grefs = heapless::Vec::new();
        for &fr in &frames {
            match plat.grant(fr, self.backend_id, false) {
                Ok(g) => {
                    let _ = grefs.push(g);
                }
                Err(e) => {
                    for &g in &grefs {
                        let _ = plat.end_access(g);
                    }
                    free_ring_mem(plat, mem, &frames);
                    return Err(e);
                }
            }
        }
        let port = match plat.alloc_unbound(self.backend_id) {
            Ok(p) => p,
            Err(e) => {
                for &g in &grefs {
                    let _ = plat.end_access(g);
                }
                free_ring_mem(plat, mem, &frames);
                return Err(e);
            }
        };
        Ok(RingState { ring, mem, frames, grefs, port, unpushed: false })
    }

    fn publish_ring<P: FrontendPlatform>(&mut self, plat: &mut P) -> Result<(), PlatformError> {
        // Every key is read afresh: a resumed or migrated guest may face another backend.
        let offered = match xs::read_u64(plat, Tx::NONE, &self.backend_dir, keys::MAX_RING_PAGE_ORDER) {
            Read::Ok(v) => v.min(4) as u32,
            _ => 0,
        };
        let order = offered.min(self.cfg.max_ring_order).min(crate::profile::MAX_RING_ORDER).min(config::RING_ORDER);
        let offered_queues = match xs::read_u64(plat, Tx::NONE, &self.backend_dir, keys::MULTI_QUEUE_MAX_QUEUES) {
            Read::Ok(v) => v.clamp(1, MAX_QUEUES as u64) as u32,
            _ => 1,
        };
        let nq =
            offered_queues.min(self.cfg.queues).min(crate::profile::MAX_QUEUES).clamp(1, MAX_QUEUES as u32) as usize;
        self.drop_ring(plat);
        for _ in 0..nq {
            match self.alloc_queue(plat, order) {
                Ok(r) => {
                    let _ = self.rings.push(r);
                }
                Err(e) => {
                    self.drop_ring(plat);
                    return Err(e);
                }
            }
        }
        let dir = self.dir.clone();
        let persistent = self.cfg.persistent;
        let protocol = self.cfg.protocol;
        let npages = 1usize << order;
        let rings = &self.rings;
        let res = xs::transaction(plat, |x, tx| {
            // Keys of an earlier connection (another order or queue count) must not linger:
            // a backend reads `ring-page-order` and `multi-queue-num-queues` first.
            // Rewritten nodes also take the directory's current permissions (a new backend
            // domain must be able to read them).
            for k in [
                keys::RING_PAGE_ORDER,
                keys::NUM_RING_PAGES,
                keys::MULTI_QUEUE_NUM_QUEUES,
                keys::RING_REF,
                keys::EVENT_CHANNEL,
                keys::PROTOCOL,
                keys::FEATURE_PERSISTENT,
            ] {
                let _ = x.remove(tx, &xs::join(&dir, k));
            }
            for i in 0..16u32 {
                let mut b = [0u8; 32];
                let _ = x.remove(tx, &xs::join(&dir, crate::proto::xenbus::ring_ref_key(i, &mut b)));
            }
            for q in 0..crate::profile::MAX_QUEUES {
                let mut b = [0u8; 32];
                let _ = x.remove(tx, &xs::join(&dir, crate::proto::xenbus::queue_dir(q, &mut b)));
            }
            if nq > 1 {
                xs::write_u64(x, tx, &dir, keys::MULTI_QUEUE_NUM_QUEUES, nq as u64)?;
            }
            // Never `ring-page-order = 0`: one page is a plain `ring-ref`.
            if order > 0 {
                xs::write_u64(x, tx, &dir, keys::RING_PAGE_ORDER, order as u64)?;
                xs::write_u64(x, tx, &dir, keys::NUM_RING_PAGES, npages as u64)?;
            }
            for (q, r) in rings.iter().enumerate() {
                // One queue: keys at the top level (Linux blkfront); more: `queue-<q>/`.
                let qdir = if nq > 1 {
                    let mut b = [0u8; 32];
                    xs::join(&dir, crate::proto::xenbus::queue_dir(q as u32, &mut b))
                } else {
                    dir.clone()
                };
                if order == 0 {
                    xs::write_u64(x, tx, &qdir, keys::RING_REF, r.grefs[0].0 as u64)?;
                } else {
                    for (i, g) in r.grefs.iter().enumerate() {
                        let mut b = [0u8; 32];
                        let k = crate::proto::xenbus::ring_ref_key(i as u32, &mut b);
                        xs::write_u64(x, tx, &qdir, k, g.0 as u64)?;
                    }
                }
                xs::write_u64(x, tx, &qdir, keys::EVENT_CHANNEL, r.port.0 as u64)?;
            }
            xs::write_str(x, tx, &dir, keys::PROTOCOL, protocol.as_str())?;
            xs::write_u64(x, tx, &dir, keys::FEATURE_PERSISTENT, persistent as u64)?;
            xs::write_str(x, tx, &dir, keys::STATE, XenbusState::Initialised.as_str())
        });
        if let Err(e) = res {
            self.drop_ring(plat);
            return Err(e);
        }
        // Keep the ids of requests waiting to be re-issued.
        let slots: usize = self.rings.iter().map(|r| r.ring.size() as usize).sum();
        self.ids.set_limit(slots);
        self.next_queue = 0;
        // The configured pages are shared out over the queues in use.
        let per_queue = (self.cfg.pool_grants / nq).max(1);
        for p in self.pools.iter_mut() {
            p.set_limit(per_queue);
        }
        self.update_limits();
        self.neg.ring_order = order;
        self.neg.queues = nq as u32;
        self.phase = Phase::Initialised;
        info!("xenblk front: ring published, order {}, queues {}", order, nq);
        Ok(())
    }

    fn read_features<P: FrontendPlatform>(&mut self, plat: &mut P) -> Option<Negotiated> {
        let b = self.backend_dir.clone();
        let x = &mut *plat;
        let sectors = xs::read_u64(x, Tx::NONE, &b, keys::SECTORS).ok()?;
        let info = xs::read_u64(x, Tx::NONE, &b, keys::INFO).or_default(0)?;
        let sector_size = xs::read_u64(x, Tx::NONE, &b, keys::SECTOR_SIZE).or_default(512)?;
        if !(512..=65536).contains(&sector_size) || !sector_size.is_power_of_two() {
            return None;
        }
        let pss = xs::read_u64(x, Tx::NONE, &b, keys::PHYSICAL_SECTOR_SIZE).or_default(sector_size)?;
        if pss < sector_size || pss > (1 << 20) || pss % sector_size != 0 {
            return None;
        }
        let persistent = xs::read_bool(x, Tx::NONE, &b, keys::FEATURE_PERSISTENT).or_default(false)?;
        let indirect = xs::read_u64(x, Tx::NONE, &b, keys::FEATURE_MAX_INDIRECT_SEGMENTS).or_default(0)?;
        let flush = xs::read_bool(x, Tx::NONE, &b, keys::FEATURE_FLUSH_CACHE).or_default(false)?;
        let barrier = xs::read_bool(x, Tx::NONE, &b, keys::FEATURE_BARRIER).or_default(false)?;
        let discard = xs::read_bool(x, Tx::NONE, &b, keys::FEATURE_DISCARD).or_default(false)?;
        let discard_secure = xs::read_bool(x, Tx::NONE, &b, keys::DISCARD_SECURE).or_default(false)?;
        let gran = xs::read_u64(x, Tx::NONE, &b, keys::DISCARD_GRANULARITY).or_default(sector_size)?;
        let indirect = if indirect >= crate::profile::FRONTEND_MIN_INDIRECT_SEGMENTS as u64 {
            indirect.min(blkif::MAX_INDIRECT_SEGMENTS as u64) as u32
        } else {
            0
        };
        Some(Negotiated {
            persistent: persistent && self.cfg.persistent,
            indirect_segments: indirect,
            ring_order: self.neg.ring_order,
            queues: self.neg.queues,
            flush,
            barrier,
            discard,
            discard_secure: discard && discard_secure,
            discard_granularity: gran.min(u32::MAX as u64) as u32,
            sectors,
            sector_size: sector_size as u32,
            physical_sector_size: pss as u32,
            info: info as u32,
        })
    }

    fn connect<P: FrontendPlatform>(&mut self, plat: &mut P) {
        let Some(neg) = self.read_features(plat) else {
            self.fail(plat, FailReason::BadBackendValue);
            return;
        };
        self.neg = neg;
        self.update_limits();
        if let Err(e) = xs::write_state(plat, &self.dir, XenbusState::Connected) {
            self.fail(plat, FailReason::Platform(e));
            return;
        }
        self.phase = Phase::Connected;
        self.stats.connects += 1;
        info!(
            "xenblk front: connected, persistent {}, indirect {}, sectors {}",
            neg.persistent, neg.indirect_segments, neg.sectors
        );
        // Re-issue what was in flight before a reconnect.
        self.reissue(plat);
        self.kick(plat);
    }

    fn refresh_size<P: FrontendPlatform>(&mut self, plat: &mut P) {
        if let Read::Ok(s) = xs::read_u64(plat, Tx::NONE, &self.backend_dir, keys::SECTORS) {
            self.neg.sectors = s;
        }
    }

    /// Tears the ring down, keeping in-flight requests for re-issue.
    fn disconnect<P: FrontendPlatform>(&mut self, plat: &mut P) {
        // Every in-flight request goes back to the backlog; its grants are ended below.
        for id in self.ids.iter() {
            let Some(sh) = self.shadows[id as usize].as_mut() else { continue };
            if sh.issued {
                sh.issued = false;
                if !self.backlog.iter().any(|&b| b == id) {
                    let _ = self.backlog.push_back(id);
                }
            }
        }
        self.drop_ring(plat);
        for p in self.pools.iter_mut() {
            p.release_all(plat);
        }
    }

    /// Unbinds the event channel and ends the ring's grants; the ring pages are freed only
    /// if the backend no longer maps any of them (otherwise they are leaked, never reused).
    fn drop_ring<P: FrontendPlatform>(&mut self, plat: &mut P) {
        while let Some(r) = self.rings.pop() {
            plat.unbind(r.port);
            let mut in_use = heapless::Vec::new();
            for &g in &r.grefs {
                if plat.end_access(g) == Err(RevokeError::InUse) {
                    let _ = in_use.push(g);
                }
            }
            if in_use.is_empty() {
                free_ring_mem(plat, r.mem, &r.frames);
            } else {
                // At most one parked ring per queue: a further teardown before the backend
                // let go of the oldest drops that one, whose pages are then leaked, never
                // reused.
                if self.parked_rings.is_full() {
                    self.parked_rings.remove(0);
                }
                let _ = self.parked_rings.push(ParkedRing { mem: r.mem, frames: r.frames, grefs: in_use });
            }
        }
    }

    fn reissue<P: FrontendPlatform>(&mut self, plat: &mut P) {
        let n = self.backlog.len();
        for _ in 0..n {
            let Some(id) = self.backlog.pop_front() else { break };
            if !self.has_room() {
                let _ = self.backlog.push_front(id);
                break;
            }
            match self.issue(plat, id, false) {
                Ok(()) => self.stats.reissued += 1,
                Err(_) => {
                    let _ = self.backlog.push_front(id);
                    break;
                }
            }
        }
    }

    fn fail<P: FrontendPlatform>(&mut self, plat: &mut P, why: FailReason) {
        error!("xenblk front: device failed");
        self.phase = Phase::Failed(why);
        // Stop talking to the backend; pages it may still map are parked by the pool.
        self.drop_ring(plat);
        let _ = xs::write_state(plat, &self.dir, XenbusState::Closed);
    }

    // ------------------------------------------------------------------ data path

    /// Lends `bytes` worth of pooled granted pages for the zero-copy path.
    pub fn alloc_buffer<P: FrontendPlatform>(&mut self, plat: &mut P, bytes: usize) -> Result<Buffer, SubmitError> {
        let n = bytes.div_ceil(PAGE_SIZE).max(1);
        if n > MAX_DATA_PAGES {
            return Err(SubmitError::TooLarge);
        }
        let q = self.pick_pool(n);
        let mut b = Buffer { pages: heapless::Vec::new(), pool: q as u8 };
        for _ in 0..n {
            match self.pools[q].get(plat, false) {
                Ok(i) => {
                    let _ = b.pages.push(i);
                }
                Err(e) => {
                    self.free_buffer(plat, b);
                    return Err(pool_err(e));
                }
            }
        }
        Ok(b)
    }

    /// Page `i` of a lent buffer, to fill or read directly.
    pub fn buffer_page(&self, buf: &Buffer, i: usize) -> SharedMem {
        self.pools[buf.pool as usize].page(buf.pages[i])
    }

    /// Copies `data` into a lent buffer at byte offset `off` (a convenience; the zero-copy
    /// way is to produce the data in [`buffer_page`](Self::buffer_page) directly).
    pub fn buffer_write(&self, buf: &Buffer, off: usize, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let pos = off + done;
            let (pi, po) = (pos / PAGE_SIZE, pos % PAGE_SIZE);
            if pi >= buf.pages.len() {
                break;
            }
            let n = (data.len() - done).min(PAGE_SIZE - po);
            self.pools[buf.pool as usize].page(buf.pages[pi]).copy_from_private(po, &data[done..done + n]);
            done += n;
        }
    }

    /// Copies out of a lent buffer.
    pub fn buffer_read(&self, buf: &Buffer, dst: &mut [u8]) -> usize {
        copy_out(&self.pools[buf.pool as usize], &buf.pages, dst, buf.capacity())
    }

    /// Gives a lent buffer back to the pool.
    pub fn free_buffer<P: FrontendPlatform>(&mut self, plat: &mut P, buf: Buffer) {
        let persistent = self.neg.persistent;
        for &i in &buf.pages {
            if self.pools[buf.pool as usize].put(plat, i, persistent).is_err() {
                self.fail(plat, FailReason::GrantStillMapped);
            }
        }
    }

    /// Submits a read or write on a lent buffer (`bytes` from its start). The buffer comes
    /// back with the completion ([`Completion::take_buffer`]).
    pub fn submit_buffer<P: FrontendPlatform>(
        &mut self,
        plat: &mut P,
        write: bool,
        sector: u64,
        buf: Buffer,
        bytes: usize,
        tag: u64,
    ) -> Result<(), (SubmitError, Buffer)> {
        let op = if write { RwOp::Write } else { RwOp::Read };
        if let Err(e) = self.check_rw(op, sector, bytes) {
            return Err((e, buf));
        }
        if bytes > buf.capacity() {
            return Err((SubmitError::TooLarge, buf));
        }
        let id = match self.ids.alloc() {
            Some(id) => id,
            None => return Err((SubmitError::Busy, buf)),
        };
        if !self.has_room() {
            self.ids.free(id as u64);
            return Err((SubmitError::Busy, buf));
        }
        self.shadows[id as usize] = Some(Shadow {
            tag,
            kind: ShadowKind::Rw(op),
            sector,
            bytes: bytes as u32,
            pool: buf.pool,
            data: Data::Lent(buf),
            indirect: heapless::Vec::new(),
            issued: false,
            queue: 0,
        });
        self.finish_submit(plat, id, false).map_err(|e| {
            let Some(sh) = self.shadows[id as usize].take() else {
                return (e, Buffer { pages: heapless::Vec::new(), pool: 0 });
            };
            // Indirect pages taken for it go back unused (it never reached the ring).
            for &i in &sh.indirect {
                self.pools[sh.pool as usize].put_unused(i);
            }
            match sh.data {
                Data::Lent(b) => {
                    self.ids.free(id as u64);
                    (e, b)
                }
                _ => (e, Buffer { pages: heapless::Vec::new(), pool: 0 }),
            }
        })
    }

    #[inline]
    fn check_rw(&self, op: RwOp, sector: u64, bytes: usize) -> Result<(), SubmitError> {
        match self.phase {
            Phase::Connected => {}
            Phase::Failed(_) => return Err(SubmitError::Failed),
            _ => return Err(SubmitError::NotConnected),
        }
        let ss = self.neg.sector_size.max(512) as usize;
        if bytes == 0 && matches!(op, RwOp::Read | RwOp::Write) {
            return Err(SubmitError::BadLength);
        }
        // In sector units: `sector * 512` overflows for sectors >= 2^55. The sector size is
        // a power of two (read_features refuses any other): masks instead of divisions.
        let per = (ss / SECTOR_SIZE) as u64;
        let aligned = if ss.is_power_of_two() {
            bytes & (ss - 1) == 0 && sector & (per - 1) == 0
        } else {
            bytes.is_multiple_of(ss) && sector.is_multiple_of(per)
        };
        if !aligned {
            return Err(SubmitError::BadLength);
        }
        if bytes > self.max_request_bytes() {
            return Err(SubmitError::TooLarge);
        }
        if op.is_write() && self.neg.read_only() {
            return Err(SubmitError::ReadOnly);
        }
        match op {
            RwOp::Flush if !self.neg.flush => return Err(SubmitError::Unsupported),
            RwOp::WriteBarrier if !self.neg.barrier => return Err(SubmitError::Unsupported),
            _ => {}
        }
        Ok(())
    }

    /// Queues a request (copy path). Write data is copied into pooled granted pages now.
    /// Call [`kick`](Self::kick) (or [`poll`](Self::poll)) to publish it.
    pub fn submit<P: FrontendPlatform>(&mut self, plat: &mut P, io: Io<'_>, tag: u64) -> Result<(), SubmitError> {
        let (kind, sector, bytes, data): (ShadowKind, u64, usize, Option<&[u8]>) = match io {
            Io::Read { sector, sectors } => (ShadowKind::Rw(RwOp::Read), sector, sectors as usize * SECTOR_SIZE, None),
            Io::Write { sector, data } => (ShadowKind::Rw(RwOp::Write), sector, data.len(), Some(data)),
            Io::Barrier { sector, data } => (ShadowKind::Rw(RwOp::WriteBarrier), sector, data.len(), Some(data)),
            Io::Flush => (ShadowKind::Rw(RwOp::Flush), 0, 0, None),
            Io::Discard { sector, sectors, secure } => {
                if self.phase != Phase::Connected {
                    return Err(if matches!(self.phase, Phase::Failed(_)) {
                        SubmitError::Failed
                    } else {
                        SubmitError::NotConnected
                    });
                }
                if !self.neg.discard || (secure && !self.neg.discard_secure) {
                    return Err(SubmitError::Unsupported);
                }
                if self.neg.read_only() {
                    return Err(SubmitError::ReadOnly);
                }
                (ShadowKind::Discard { secure, sectors }, sector, 0, None)
            }
        };
        if let ShadowKind::Rw(op) = kind {
            self.check_rw(op, sector, bytes)?;
        }
        let pages_needed = bytes.div_ceil(PAGE_SIZE);
        let need = pages_needed + self.indirect_pages_for(pages_needed);
        let Some(q) = self.pick_room(need) else { return Err(SubmitError::Busy) };
        let id = self.ids.alloc().ok_or(SubmitError::Busy)?;
        let readonly = crate::profile::FRONTEND_READONLY_WRITE_GRANTS
            && !self.neg.persistent
            && matches!(kind, ShadowKind::Rw(op) if op.is_write());
        // The shadow is built in its slot and the pages are pushed into it there: no page
        // list is built elsewhere and moved.
        let sh = self.shadows[id as usize].insert(Shadow {
            tag,
            kind,
            sector,
            bytes: bytes as u32,
            data: if pages_needed == 0 { Data::None } else { Data::Pool(heapless::Vec::new()) },
            indirect: heapless::Vec::new(),
            issued: false,
            queue: q as u8,
            pool: q as u8,
        });
        if let Data::Pool(pages) = &mut sh.data {
            let pool = &mut self.pools[q];
            for i in 0..pages_needed {
                match pool.get(plat, readonly) {
                    Ok(p) => {
                        if let Some(d) = data {
                            let lo = i * PAGE_SIZE;
                            let hi = (lo + PAGE_SIZE).min(d.len());
                            pool.page(p).copy_from_private(0, &d[lo..hi]);
                        }
                        // Cannot fail: check_rw bounds the request to MAX_DATA_PAGES pages.
                        let _ = pages.push(p);
                    }
                    Err(e) => {
                        for &p in pages.iter() {
                            pool.put_unused(p);
                        }
                        self.shadows[id as usize] = None;
                        self.ids.free(id as u64);
                        return Err(pool_err(e));
                    }
                }
            }
        }
        // The data pages were granted just now by `get`, with the permission `issue` wants.
        if let Err(e) = self.finish_submit(plat, id, true) {
            if let Some(sh) = self.shadows[id as usize].take() {
                if let Data::Pool(p) = &sh.data {
                    for &i in p {
                        self.pools[q].put_unused(i);
                    }
                }
                for &i in &sh.indirect {
                    self.pools[q].put_unused(i);
                }
            }
            self.ids.free(id as u64);
            return Err(e);
        }
        Ok(())
    }

    fn finish_submit<P: FrontendPlatform>(&mut self, plat: &mut P, id: u16, granted: bool) -> Result<(), SubmitError> {
        self.issue(plat, id, granted)?;
        self.stats.submitted += 1;
        Ok(())
    }

    /// Encodes shadow `id` into the ring (granting what needs a grant). `granted`: the data
    /// pages were taken from the pool for this very request just before (their grants are
    /// as wanted, so they are not checked again); false for lent buffers and re-issues.
    #[inline]
    fn issue<P: FrontendPlatform>(&mut self, plat: &mut P, id: u16, granted: bool) -> Result<(), SubmitError> {
        let persistent = self.neg.persistent;
        let indirect_max = self.neg.indirect_segments as usize;
        let Some(sh) = self.shadows[id as usize].as_ref() else { return Err(SubmitError::Failed) };
        let pq = sh.pool as usize;
        if self.rings.is_empty() {
            return Err(SubmitError::NotConnected);
        }
        // A request goes to the ring of its pool's queue (so each backend ring keeps seeing
        // the same pages); only after a reconnect to fewer queues to any ring with room.
        let q = if pq < self.rings.len() {
            if self.rings[pq].ring.is_full() {
                return Err(SubmitError::Busy);
            }
            pq
        } else {
            match self.pick_queue() {
                Some(q) => q,
                None => return Err(SubmitError::Busy),
            }
        };
        let Some(sh) = self.shadows[id as usize].as_mut() else { return Err(SubmitError::Failed) };
        let pool = &mut self.pools[pq];
        let Shadow { kind, sector, bytes, data, indirect, .. } = &mut *sh;
        let bytes = *bytes as usize;
        let all: &[u16] = match data {
            Data::Pool(p) => p,
            Data::Lent(b) => &b.pages,
            Data::None => &[],
        };
        let pages = &all[..bytes.div_ceil(PAGE_SIZE).min(all.len())];
        let write = matches!(kind, ShadowKind::Rw(op) if op.is_write());
        let readonly = crate::profile::FRONTEND_READONLY_WRITE_GRANTS && !persistent && write;
        // Make sure every page is granted (after a reconnect the grants were ended).
        if !granted {
            for &p in pages {
                pool.ensure_granted(plat, p, readonly).map_err(pool_err)?;
            }
        }
        let nseg = pages.len();
        let sector = *sector;
        let ring = &mut self.rings[q].ring;
        let put = match *kind {
            ShadowKind::Rw(op) if nseg <= MAX_SEGMENTS_PER_REQUEST => {
                // The common case goes to the ring from its fields (no Request is built).
                let mut segs = SegList::new();
                for (i, &p) in pages.iter().enumerate() {
                    let _ = segs.push(seg_of(bytes, i, pool.gref(p)));
                }
                ring.put_rw_request(id as u64, 0, sector, op, &segs)
            }
            ShadowKind::Rw(op) => {
                let kind = indirect_kind(plat, pool, indirect, pages, bytes, op, indirect_max, persistent)?;
                ring.put_request(&Request { id: id as u64, handle: 0, sector, kind })
            }
            ShadowKind::Discard { secure, sectors } => ring.put_request(&Request {
                id: id as u64,
                handle: 0,
                sector,
                kind: ReqKind::Discard { secure, nr_sectors: sectors },
            }),
        };
        if !put {
            return Err(SubmitError::Busy);
        }
        self.rings[q].unpushed = true;
        sh.issued = true;
        sh.queue = q as u8;
        Ok(())
    }

    /// Publishes queued requests; notifies the backend if it asked for it.
    pub fn kick<P: FrontendPlatform>(&mut self, plat: &mut P) {
        for r in self.rings.iter_mut() {
            if !r.unpushed {
                continue;
            }
            r.unpushed = false;
            if r.ring.push_requests() {
                self.stats.notifies += 1;
                let _ = plat.notify(r.port);
            }
        }
    }

    /// Publishes queued requests, then consumes every available response, handing each to
    /// `f`. Returns the number completed. After a device failure, every in-flight request
    /// completes with [`Status::Error`] here.
    pub fn poll<P: FrontendPlatform>(&mut self, plat: &mut P, mut f: impl FnMut(&mut Completion<'_>)) -> usize {
        self.kick(plat);
        if matches!(self.phase, Phase::Failed(_)) {
            return self.fail_all(plat, &mut f);
        }
        let mut done = 0;
        let mut q = 0;
        while q < self.rings.len() {
            loop {
                let rsp = match self.rings.get_mut(q).map(|r| r.ring.take_response()) {
                    None => return done,
                    Some(Ok(Some(rsp))) => rsp,
                    Some(Ok(None)) => break,
                    Some(Err(_)) => {
                        self.fail(plat, FailReason::ResponseOverflow);
                        return done + self.fail_all(plat, &mut f);
                    }
                };
                // Validate against our own records (2021 blkfront hardening).
                let Some(sh) = self.ids.is_in_flight(rsp.id).then(|| self.shadows[rsp.id as usize].as_ref()).flatten()
                else {
                    self.fail(plat, FailReason::BadResponseId);
                    return done + self.fail_all(plat, &mut f);
                };
                // An answer on another queue than the request's is as bad as an unknown id.
                if !sh.issued || sh.queue as usize != q {
                    self.fail(plat, FailReason::BadResponseId);
                    return done + self.fail_all(plat, &mut f);
                }
                // The header leaves it open whether an indirect request is answered with its
                // inner op (Linux blkback, which Linux blkfront insists on) or with
                // OP_INDIRECT: accept both.
                let op_ok = match sh.kind {
                    ShadowKind::Discard { .. } => rsp.op == OP_DISCARD,
                    ShadowKind::Rw(op) => rsp.op == op.code() || (!sh.indirect.is_empty() && rsp.op == OP_INDIRECT),
                };
                if !op_ok {
                    self.fail(plat, FailReason::WrongOperation);
                    return done + self.fail_all(plat, &mut f);
                }
                let status = match rsp.status {
                    RSP_OKAY => Status::Ok,
                    RSP_EOPNOTSUPP => Status::NotSupported,
                    RSP_ERROR => Status::Error,
                    _ => Status::Error,
                };
                if !self.complete(plat, rsp.id as u16, status, &mut f) {
                    return done + 1 + self.fail_all(plat, &mut f);
                }
                done += 1;
            }
            match self.rings.get_mut(q).map(|r| r.ring.final_check_for_responses()) {
                Some(Ok(true)) => continue,
                Some(Ok(false)) => q += 1,
                None => break,
                Some(Err(_)) => {
                    self.fail(plat, FailReason::ResponseOverflow);
                    return done + self.fail_all(plat, &mut f);
                }
            }
        }
        if done == 0 {
            self.stats.spurious += 1;
        }
        // Room in the ring again: push re-issues that were waiting.
        if !self.backlog.is_empty() && self.phase == Phase::Connected {
            self.reissue(plat);
            self.kick(plat);
        }
        done
    }

    /// Completes shadow `id`; returns false if the device failed while releasing pages.
    #[inline(always)]
    fn complete<P: FrontendPlatform>(
        &mut self,
        plat: &mut P,
        id: u16,
        status: Status,
        f: &mut impl FnMut(&mut Completion<'_>),
    ) -> bool {
        // The shadow is used where it lies and cleared at the end (not moved out first).
        let Some(sh) = self.shadows[id as usize].as_mut() else { return true };
        let pq = sh.pool as usize;
        self.ids.free(id as u64);
        self.stats.completed += 1;
        if status != Status::Ok {
            self.stats.errors += 1;
        }
        let failed = matches!(self.phase, Phase::Failed(_));
        let persistent = self.neg.persistent && !failed;
        // Pool pages (bounce pages the caller never sees) also keep their grants without
        // persistence on a board whose revoke cannot see the backend's mappings (Linux
        // gntalloc): there ending a grant proves nothing about the backend letting go and
        // costs two page-table changes per page; the data is copied out at completion either
        // way, and the backend still maps per request. Lent buffers (the caller's own pages)
        // are ended without persistence on every board: the revoke at least detaches the
        // caller's view from the granted page.
        let keep = (persistent || !plat.observes_mappings()) && !failed;
        let pool = &mut self.pools[pq];
        let mut ok = true;
        // Release the grants before the caller looks at the data (a non-persistent backend
        // must have let go of every page by now).
        if let Data::Lent(b) = &sh.data {
            for &p in &b.pages {
                if pool.settle(plat, p, persistent).is_err() {
                    ok = false;
                }
            }
        }
        // Pool pages too, unless kept: the caller must not copy read data out of a page the
        // backend can still write, nor see `Ok` for a request whose backend broke the
        // protocol (XSA-396). With persistence the backend keeps the mapping by design.
        if !keep && let Data::Pool(pages) = &sh.data {
            for &p in pages {
                if pool.settle(plat, p, false).is_err() {
                    ok = false;
                }
            }
        }
        {
            let mut c = Completion {
                tag: sh.tag,
                status: if ok { status } else { Status::Error },
                sector: sh.sector,
                bytes: sh.bytes,
                pool: &*pool,
                data: &mut sh.data,
            };
            f(&mut c);
        }
        match &sh.data {
            Data::Pool(p) => {
                for &i in p {
                    if pool.put(plat, i, keep).is_err() {
                        ok = false;
                    }
                }
            }
            Data::Lent(b) => {
                for &i in &b.pages {
                    if pool.put(plat, i, persistent).is_err() {
                        ok = false;
                    }
                }
            }
            Data::None => {}
        }
        for &i in &sh.indirect {
            if pool.put(plat, i, keep).is_err() {
                ok = false;
            }
        }
        self.shadows[id as usize] = None;
        if !ok && !matches!(self.phase, Phase::Failed(_)) {
            self.fail(plat, FailReason::GrantStillMapped);
            return false;
        }
        true
    }

    fn fail_all<P: FrontendPlatform>(&mut self, plat: &mut P, f: &mut impl FnMut(&mut Completion<'_>)) -> usize {
        let mut ids: heapless::Vec<u16, MAX_IDS> = heapless::Vec::new();
        for id in self.ids.iter() {
            let _ = ids.push(id);
        }
        self.backlog.clear();
        for &id in &ids {
            self.complete(plat, id, Status::Error, f);
        }
        ids.len()
    }

    // ------------------------------------------------------------- blocking helpers

    /// Waits until connected (or failed/closed). Returns whether connected.
    pub fn wait_connected<P: FrontendPlatform + Wait>(&mut self, plat: &mut P, max_waits: u32) -> bool {
        for _ in 0..max_waits {
            match self.phase {
                Phase::Connected => return true,
                Phase::Failed(_) => return false,
                _ => {}
            }
            let w = plat.wait(Some(100));
            if w.xenstore || w.timeout {
                self.on_xenstore(plat);
            }
        }
        self.phase == Phase::Connected
    }

    fn run_blocking<P: FrontendPlatform + Wait>(
        &mut self,
        plat: &mut P,
        tag: u64,
        mut on_done: impl FnMut(&Completion<'_>),
    ) -> Status {
        let mut result = None;
        loop {
            self.poll(plat, |c| {
                if c.tag == tag {
                    result = Some(c.status);
                    on_done(c);
                }
            });
            if let Some(s) = result {
                return s;
            }
            if matches!(self.phase, Phase::Failed(_)) && self.in_flight() == 0 {
                return Status::Error;
            }
            let w = plat.wait(Some(1000));
            if w.xenstore || w.timeout {
                self.on_xenstore(plat);
            }
        }
    }

    fn submit_blocking<P: FrontendPlatform + Wait>(
        &mut self,
        plat: &mut P,
        io: Io<'_>,
        tag: u64,
    ) -> Result<(), SubmitError> {
        loop {
            match self.submit(plat, io, tag) {
                Err(SubmitError::Busy) => {
                    if self.poll(plat, |_| {}) == 0 {
                        let w = plat.wait(Some(1000));
                        if w.xenstore || w.timeout {
                            self.on_xenstore(plat);
                        }
                    }
                }
                r => return r,
            }
        }
    }

    /// Reads `buf.len()` bytes (a multiple of 512) at `sector`, waiting for completion.
    /// Splits large reads. Other requests' completions seen meanwhile are dropped, so use it
    /// when nothing else is in flight.
    pub fn read_blocking<P: FrontendPlatform + Wait>(
        &mut self,
        plat: &mut P,
        sector: u64,
        buf: &mut [u8],
    ) -> Result<(), Status> {
        let chunk = self.max_request_bytes().max(PAGE_SIZE);
        let mut off = 0;
        while off < buf.len() {
            let n = (buf.len() - off).min(chunk);
            let s = sector + (off / SECTOR_SIZE) as u64;
            let tag = u64::MAX - 1;
            self.submit_blocking(plat, Io::Read { sector: s, sectors: (n / SECTOR_SIZE) as u32 }, tag)
                .map_err(|_| Status::Error)?;
            let dst = &mut buf[off..off + n];
            let st = self.run_blocking(plat, tag, |c| {
                c.read_data(dst);
            });
            if st != Status::Ok {
                return Err(st);
            }
            off += n;
        }
        Ok(())
    }

    /// Writes `data` (a multiple of 512 bytes) at `sector`, waiting for completion.
    pub fn write_blocking<P: FrontendPlatform + Wait>(
        &mut self,
        plat: &mut P,
        sector: u64,
        data: &[u8],
    ) -> Result<(), Status> {
        let chunk = self.max_request_bytes().max(PAGE_SIZE);
        let mut off = 0;
        while off < data.len() {
            let n = (data.len() - off).min(chunk);
            let s = sector + (off / SECTOR_SIZE) as u64;
            let tag = u64::MAX - 2;
            self.submit_blocking(plat, Io::Write { sector: s, data: &data[off..off + n] }, tag)
                .map_err(|_| Status::Error)?;
            let st = self.run_blocking(plat, tag, |_| {});
            if st != Status::Ok {
                return Err(st);
            }
            off += n;
        }
        Ok(())
    }

    /// Flushes the disk cache, waiting for completion.
    pub fn flush_blocking<P: FrontendPlatform + Wait>(&mut self, plat: &mut P) -> Result<(), Status> {
        let tag = u64::MAX - 3;
        self.submit_blocking(plat, Io::Flush, tag)
            .map_err(|e| if e == SubmitError::Unsupported { Status::NotSupported } else { Status::Error })?;
        match self.run_blocking(plat, tag, |_| {}) {
            Status::Ok => Ok(()),
            s => Err(s),
        }
    }

    /// Frees everything (after Closed): ring pages and pool pages that no backend maps.
    pub fn shutdown<P: FrontendPlatform>(mut self, plat: &mut P) {
        let _ = plat.unwatch(&xs::join(&self.backend_dir, keys::STATE), self.watch_token);
        self.disconnect(plat);
        self.reap(plat);
        for p in self.pools.iter_mut() {
            p.free_pages(plat);
        }
    }
}

fn free_ring_mem<P: FrontendPlatform>(plat: &mut P, mem: SharedMem, frames: &[u64]) {
    if frames.len() == 1 {
        plat.free_page(Page { mem, frame: frames[0] });
    } else {
        plat.free_pages_contiguous(mem, frames);
    }
}

/// Segment `i` of a request of `bytes` bytes starting at the start of its first page.
#[inline]
fn seg_of(bytes: usize, i: usize, g: GrantRef) -> Segment {
    let len = (bytes - i * PAGE_SIZE).min(PAGE_SIZE);
    Segment { gref: g.0, first_sect: 0, last_sect: (len.div_ceil(SECTOR_SIZE) - 1) as u8 }
}

/// The indirect case of [`Frontend::issue`] (out of line: the direct case is the hot one):
/// takes (or re-grants) the indirect pages of a request of `pages`, writes its segment
/// descriptors into them, and returns the request body.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn indirect_kind<P: FrontendPlatform>(
    plat: &mut P,
    pool: &mut FrontPool,
    indirect: &mut heapless::Vec<u16, MAX_INDIRECT_PAGES>,
    pages: &[u16],
    bytes: usize,
    op: RwOp,
    indirect_max: usize,
    persistent: bool,
) -> Result<ReqKind, SubmitError> {
    let nseg = pages.len();
    if nseg > indirect_max || !matches!(op, RwOp::Read | RwOp::Write) {
        return Err(SubmitError::TooLarge);
    }
    // Indirect: segment descriptors in pooled pages. With persistence they are granted
    // read-write like data pages, so the backend can keep them mapped (its persistent
    // mappings are read-write); otherwise read-only.
    let ind_ro = !persistent;
    let npages = nseg.div_ceil(SEGMENTS_PER_INDIRECT_PAGE);
    if indirect.is_empty() {
        for _ in 0..npages {
            match pool.get(plat, ind_ro) {
                Ok(ip) => {
                    let _ = indirect.push(ip);
                }
                Err(e) => {
                    for &ip in indirect.iter() {
                        pool.put_unused(ip);
                    }
                    indirect.clear();
                    return Err(pool_err(e));
                }
            }
        }
    } else {
        for &ip in indirect.iter() {
            pool.ensure_granted(plat, ip, ind_ro).map_err(pool_err)?;
        }
    }
    let mut grefs = heapless::Vec::new();
    for (pi, &ip) in indirect.iter().enumerate() {
        let page = pool.page(ip);
        let first = pi * SEGMENTS_PER_INDIRECT_PAGE;
        let last = (first + SEGMENTS_PER_INDIRECT_PAGE).min(nseg);
        for (k, i) in (first..last).enumerate() {
            page.write_bytes(k * 8, &seg_of(bytes, i, pool.gref(pages[i])).encode());
        }
        let _ = grefs.push(pool.gref(ip).0);
    }
    Ok(ReqKind::Indirect { op, nr_segments: nseg as u16, pages: grefs })
}

fn pool_err(e: PoolError) -> SubmitError {
    match e {
        PoolError::Exhausted => SubmitError::Busy,
        PoolError::Platform(p) => SubmitError::Platform(p),
        PoolError::StillMapped => SubmitError::Failed,
    }
}
