//! The backend: serves one virtual disk to one frontend.
//!
//! The board owns the event loop: it calls [`Backend::on_xenstore`] when a watch fires and
//! [`Backend::process`] when the frontend's event channel does. Requests are served
//! synchronously against a [`Storage`]; every consumed request gets exactly one response.
//!
//! Queues: the backend offers `multi-queue-max-queues` (config `ring.queues` > 1) and serves
//! as many rings as the frontend asks for (`multi-queue-num-queues`, keys under `queue-N/`),
//! each with its own event channel and its own persistent-grant cache; [`Backend::process`]
//! serves every queue ([`Backend::ports`] lists their event channels).
//!
//! Data paths: with persistent grants negotiated, each segment's grant is looked up in the
//! ring's [`GrantCache`] and mapped (read-write, once) on a miss; the mapping is kept. Without
//! persistence every segment is mapped for the request (read-only for writes) and unmapped when
//! it completes. In [`DataPath::Copy`] mode nothing is mapped: the hypervisor copies between the
//! frontend's page and a bounce page of ours (QEMU's way).
//!
//! Hostile frontends: each request is copied out of its slot once (the bytes its header says
//! it uses: header, then its segments or body) and validated on the copy;
//! indirect pages are copied once into private memory before their segments are decoded; a
//! bogus `req_prod` shuts this ring down (the backend then answers nothing more and waits for
//! the frontend to close); a failed map fails only its request (and unmaps what was mapped);
//! event storms are counted and cost one empty check each; the frontend's `state` may flap at
//! will (teardown is idempotent).

use crate::config;
use crate::modes::storage::{Storage, StorageError, StorageInfo};
use crate::platform::{BackendPlatform, CopyOp, CopyPtr, MapRequest, Mapping, Page, PlatformError, Port, Tx};
use crate::pool::back::{GrantBudget, GrantCache, Slot};
use crate::proto::blkif::{
    self, HeadKind, Protocol, RSP_EOPNOTSUPP, RSP_ERROR, RSP_OKAY, RejectReason, Rejected, RequestHead, Response, RwOp,
    SECTOR_SIZE, SEGMENTS_PER_INDIRECT_PAGE, Segment,
};
use crate::proto::grant::{DomId, GntStatus, GrantRef};
use crate::proto::ring::{BackRing, PAGE_SIZE};
use crate::proto::xenbus::{XenbusState, keys};

use super::xs::{self, Read};

/// How data moves between the frontend's pages and the storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DataPath {
    /// Map the frontend's grants (persistently when negotiated).
    Map,
    /// Grant copy through bounce pages; never maps, never offers persistence.
    Copy,
}

/// Backend settings (defaults from the build config).
#[derive(Clone, Copy, Debug)]
pub struct BackendConfig {
    /// Offer persistent grants.
    pub persistent: bool,
    /// Data path.
    pub data_path: DataPath,
    /// Persistent mappings kept per ring.
    pub max_grants: usize,
    /// Indirect segments offered (0: no indirect).
    pub max_indirect_segments: usize,
    /// Ring order offered.
    pub max_ring_order: u32,
    /// Queues (rings) offered (`multi-queue-max-queues`, written when more than 1).
    pub max_queues: u32,
    /// Milliseconds after which an unused persistent mapping is dropped (0: never).
    pub grant_idle_ms: u64,
    /// Budget shared by all backends of this domain.
    pub budget: Option<&'static GrantBudget>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            persistent: config::BACKEND_PERSISTENT,
            data_path: DataPath::Map,
            max_grants: config::BACKEND_MAX_GRANTS,
            max_indirect_segments: config::BACKEND_MAX_INDIRECT_SEGMENTS,
            max_ring_order: config::RING_ORDER.min(crate::profile::MAX_RING_ORDER),
            max_queues: config::RING_QUEUES as u32,
            grant_idle_ms: config::BACKEND_GRANT_IDLE_SECS as u64 * 1000,
            budget: None,
        }
    }
}

/// Segments of one indirect request this backend can hold, fixed by the config.
pub const MAX_BACKEND_SEGMENTS: usize = if config::BACKEND_MAX_INDIRECT_SEGMENTS > blkif::MAX_SEGMENTS_PER_REQUEST {
    config::BACKEND_MAX_INDIRECT_SEGMENTS
} else {
    blkif::MAX_SEGMENTS_PER_REQUEST
};
/// Rings one backend can serve (config `ring.queues`).
pub const MAX_QUEUES: usize = config::RING_QUEUES;
/// Segments mapped per batch.
const CHUNK: usize = 16;

/// Where the backend is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BackPhase {
    /// Limits published; waiting for the frontend's ring.
    InitWait,
    /// Serving.
    Connected,
    /// The frontend broke the ring protocol; nothing more is served until it closes.
    Halted(HaltReason),
    /// Torn down; may reconnect when the frontend re-initialises.
    Closed,
    /// Torn down and the toolstack asked for removal (`online` = 0).
    Removed,
}

/// Why a ring was shut down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HaltReason {
    /// `req_prod` ran past the ring.
    RequestOverflow,
    /// Bad or missing ring keys (refs, event channel, order, protocol).
    BadFrontendKeys,
    /// The ring could not be mapped or the event channel bound.
    Platform(PlatformError),
}

/// What was negotiated at the last connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackNegotiated {
    /// The frontend's protocol.
    pub protocol: Protocol,
    /// Persistent grants in use.
    pub persistent: bool,
    /// Ring order.
    pub ring_order: u32,
    /// Ring slots (per queue).
    pub slots: u32,
    /// Queues (rings) in use.
    pub queues: u32,
}

/// Backend counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackStats {
    /// Requests answered.
    pub requests: u64,
    /// Answered with an error.
    pub errors: u64,
    /// Answered EOPNOTSUPP.
    pub unsupported: u64,
    /// Grant maps done.
    pub maps: u64,
    /// Grant unmaps done.
    pub unmaps: u64,
    /// Grant-copy elements done.
    pub copies: u64,
    /// Failed map elements.
    pub map_failures: u64,
    /// Notifications sent to the frontend.
    pub notifies: u64,
    /// `process` calls that found nothing to do (event storms show here).
    pub spurious: u64,
    /// Connections made.
    pub connects: u64,
    /// Bytes moved.
    pub bytes: u64,
}

/// Why a request was answered with an error status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FailCause {
    /// The request was malformed (decode rejected it).
    Rejected(RejectReason),
    /// The sectors lie (partly) past the end of the disk.
    OutOfRange,
    /// A write (or discard) to a read-only disk.
    ReadOnly,
    /// Not aligned to the disk's logical sector size.
    Misaligned,
    /// An indirect page could not be read or held bad segments.
    IndirectPages,
    /// A grant could not be mapped.
    GrantMap,
    /// A grant copy failed.
    GrantCopy,
    /// The storage failed.
    Storage(StorageError),
}

/// The last request a backend answered with an error (for logs: what failed and why).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FailedRequest {
    /// Queue (ring) index.
    pub queue: u16,
    /// The operation code as sent (6 for indirect requests).
    pub op: u8,
    /// For indirect requests, the operation inside.
    pub indirect_op: Option<u8>,
    /// First sector.
    pub sector: u64,
    /// Segments (sectors for a discard).
    pub count: u64,
    /// The status sent back.
    pub status: i16,
    /// Why.
    pub cause: FailCause,
}

/// What one [`Backend::process_some`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Processed {
    /// Requests answered.
    pub done: usize,
    /// Some queue still has requests (its budget ran out): call again.
    pub more: bool,
}

/// One ring of a connection (one per queue).
struct Queue {
    ring: BackRing,
    ring_map: Mapping,
    port: Port,
}

struct Conn {
    queues: heapless::Vec<Queue, MAX_QUEUES>,
    neg: BackNegotiated,
}

/// Responses published per push while a batch of requests is served.
const RESPONSE_PUSH_BATCH: usize = 8;

/// A blkif backend for one vbd.
pub struct Backend<S: Storage> {
    cfg: BackendConfig,
    dir: crate::platform::XsPath,
    front_dir: crate::platform::XsPath,
    front_id: DomId,
    handle: u16,
    phase: BackPhase,
    conn: Option<Conn>,
    /// One persistent-grant cache per queue (Linux blkback keeps one per ring).
    caches: heapless::Vec<GrantCache, MAX_QUEUES>,
    /// The queue being served (index into `caches` and the connection's queues).
    cur: usize,
    /// `feature-discard` as offered at the last connect.
    discard_offered: bool,
    /// The toolstack's `physical-device`, as read at the last connect.
    physical_device: Option<PhysicalDevice>,
    storage: S,
    stats: BackStats,
    /// Cause of the error being answered (set where the error is found).
    cause: FailCause,
    last_failure: Option<FailedRequest>,
    /// Requests answered per queue (all connections).
    per_queue: [u64; MAX_QUEUES],
    now_ms: u64,
    watch_token: u32,
    bounce: heapless::Vec<Page, CHUNK>,
    indirect_buf: [u8; PAGE_SIZE],
    /// The segments of the request being served: `segs[..nsegs]` (direct segments are
    /// decoded straight into it, indirect ones loaded from the indirect pages).
    segs: [Segment; MAX_BACKEND_SEGMENTS],
    nsegs: usize,
}

/// Why a backend could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ProbeError {
    /// The toolstack keys (`frontend`, `frontend-id`) are missing or malformed.
    NoFrontend,
    /// The platform failed.
    Platform(PlatformError),
}

struct Seg {
    seg: Segment,
    map: Option<Mapping>,
    slot: Option<Slot>,
    /// Mapped for this request only: unmap when done.
    transient: bool,
}

impl<S: Storage> Backend<S> {
    /// Probes the vbd whose backend directory is `dir` (for example
    /// `/local/domain/0/backend/vbd/5/51712`): reads the toolstack keys, publishes limits,
    /// goes InitWait, and watches the frontend's `state` under `watch_token`.
    pub fn probe<P: BackendPlatform>(
        plat: &mut P,
        dir: &str,
        cfg: BackendConfig,
        storage: S,
        watch_token: u32,
    ) -> Result<Backend<S>, ProbeError> {
        let front_dir = match xs::read_str::<P, 160>(plat, Tx::NONE, dir, keys::FRONTEND) {
            Read::Ok(s) => s,
            _ => return Err(ProbeError::NoFrontend),
        };
        let front_id = match xs::read_u64(plat, Tx::NONE, dir, keys::FRONTEND_ID) {
            Read::Ok(v) if v < 0x7ff0 => DomId(v as u16),
            _ => return Err(ProbeError::NoFrontend),
        };
        // The handle is the device number, the last path component.
        let handle = dir.rsplit('/').next().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0) as u16;
        let mut d = crate::platform::XsPath::new();
        let _ = d.push_str(dir);
        let mut fd = crate::platform::XsPath::new();
        let _ = fd.push_str(&front_dir);
        let mut b = Backend {
            cfg,
            dir: d,
            front_dir: fd,
            front_id,
            handle,
            phase: BackPhase::Closed,
            conn: None,
            caches: heapless::Vec::new(),
            cur: 0,
            discard_offered: false,
            physical_device: None,
            storage,
            stats: BackStats::default(),
            cause: FailCause::Storage(StorageError::Io),
            last_failure: None,
            per_queue: [0; MAX_QUEUES],
            now_ms: 0,
            watch_token,
            bounce: heapless::Vec::new(),
            indirect_buf: [0; PAGE_SIZE],
            segs: [Segment::default(); MAX_BACKEND_SEGMENTS],
            nsegs: 0,
        };
        for _ in 0..MAX_QUEUES {
            let _ = b.caches.push(GrantCache::new(cfg.max_grants));
        }
        if cfg.data_path == DataPath::Copy {
            for _ in 0..CHUNK {
                let p = plat.alloc_page().map_err(ProbeError::Platform)?;
                let _ = b.bounce.push(p);
            }
        }
        plat.watch(&xs::join(&b.front_dir, keys::STATE), watch_token).map_err(ProbeError::Platform)?;
        b.init_wait(plat).map_err(ProbeError::Platform)?;
        b.on_xenstore(plat);
        Ok(b)
    }

    fn max_queues(&self) -> u32 {
        self.cfg.max_queues.clamp(1, MAX_QUEUES as u32).min(crate::profile::MAX_QUEUES)
    }

    fn persistent_offered(&self) -> bool {
        self.cfg.persistent && self.cfg.data_path == DataPath::Map && self.cfg.max_grants > 0
    }

    fn init_wait<P: BackendPlatform>(&mut self, plat: &mut P) -> Result<(), PlatformError> {
        let dir = self.dir.clone();
        let max_ind = self.cfg.max_indirect_segments.min(MAX_BACKEND_SEGMENTS);
        let order = self.cfg.max_ring_order.min(crate::profile::MAX_RING_ORDER).min(config::RING_ORDER);
        let queues = self.max_queues();
        let discard = self.read_discard_offered(plat);
        self.discard_offered = discard;
        xs::transaction(plat, |x, tx| {
            if queues > 1 {
                xs::write_u64(x, tx, &dir, keys::MULTI_QUEUE_MAX_QUEUES, queues as u64)?;
            }
            if max_ind > blkif::MAX_SEGMENTS_PER_REQUEST {
                xs::write_u64(x, tx, &dir, keys::FEATURE_MAX_INDIRECT_SEGMENTS, max_ind as u64)?;
            }
            if order > 0 {
                xs::write_u64(x, tx, &dir, keys::MAX_RING_PAGE_ORDER, order as u64)?;
                xs::write_u64(x, tx, &dir, keys::MAX_RING_PAGES, 1u64 << order)?;
            }
            if crate::profile::BACKEND_CONNECTS_EARLY {
                Self::write_disk_keys_with(x, tx, &dir, &self.storage, self.persistent_offered(), discard)?;
                xs::write_str(x, tx, &dir, keys::STATE, XenbusState::Connected.as_str())
            } else {
                xs::write_str(x, tx, &dir, keys::STATE, XenbusState::InitWait.as_str())
            }
        })?;
        self.phase = BackPhase::InitWait;
        Ok(())
    }

    /// Whether discard may be offered: the storage supports it and the toolstack did not
    /// forbid it (`discard-enable` = 0).
    fn read_discard_offered<P: BackendPlatform>(&self, plat: &mut P) -> bool {
        let enabled = !matches!(xs::read_u64(plat, Tx::NONE, &self.dir, keys::DISCARD_ENABLE), Read::Ok(0));
        enabled && self.storage.info().discard
    }

    fn write_disk_keys_with<X: crate::platform::XenStore + ?Sized>(
        x: &mut X,
        tx: Tx,
        dir: &str,
        storage: &S,
        persistent: bool,
        discard: bool,
    ) -> Result<(), PlatformError> {
        let info = storage.info();
        xs::write_u64(x, tx, dir, keys::FEATURE_FLUSH_CACHE, info.flush as u64)?;
        xs::write_u64(x, tx, dir, keys::FEATURE_BARRIER, 1)?;
        xs::write_u64(x, tx, dir, keys::FEATURE_DISCARD, discard as u64)?;
        if discard {
            xs::write_u64(
                x,
                tx,
                dir,
                keys::DISCARD_GRANULARITY,
                info.discard_granularity.max(info.sector_size) as u64,
            )?;
            xs::write_u64(x, tx, dir, keys::DISCARD_ALIGNMENT, 0)?;
            xs::write_u64(x, tx, dir, keys::DISCARD_SECURE, info.discard_secure as u64)?;
        }
        xs::write_u64(x, tx, dir, keys::FEATURE_PERSISTENT, persistent as u64)?;
        xs::write_u64(x, tx, dir, keys::SECTORS, info.sectors)?;
        xs::write_u64(x, tx, dir, keys::INFO, if info.read_only { blkif::VDISK_READONLY as u64 } else { 0 })?;
        xs::write_u64(x, tx, dir, keys::SECTOR_SIZE, info.sector_size as u64)?;
        xs::write_u64(x, tx, dir, keys::PHYSICAL_SECTOR_SIZE, info.physical_sector_size.max(info.sector_size) as u64)
    }

    /// The current phase.
    pub fn phase(&self) -> BackPhase {
        self.phase
    }
    /// What was negotiated.
    pub fn negotiated(&self) -> Option<BackNegotiated> {
        self.conn.as_ref().map(|c| c.neg)
    }
    /// Counters.
    pub fn stats(&self) -> BackStats {
        self.stats
    }
    /// Requests answered on each queue so far (all connections), up to the offered number
    /// of queues.
    pub fn queue_requests(&self) -> &[u64] {
        &self.per_queue[..self.max_queues() as usize]
    }
    /// The last request answered with an error status (EOPNOTSUPP excluded), if any.
    pub fn last_failure(&self) -> Option<FailedRequest> {
        self.last_failure
    }
    /// Persistent-grant cache counters and size, summed over the queues.
    pub fn cache(&self) -> (crate::pool::back::CacheStats, usize) {
        let mut st = crate::pool::back::CacheStats::default();
        let mut len = 0;
        for c in &self.caches {
            let c_st = c.stats();
            st.hits += c_st.hits;
            st.misses += c_st.misses;
            st.inserted += c_st.inserted;
            st.overflows += c_st.overflows;
            st.evicted += c_st.evicted;
            len += c.len();
        }
        (st, len)
    }
    /// Persistent grants cached by queue `q`.
    pub fn queue_cache_len(&self, q: usize) -> usize {
        self.caches.get(q).map_or(0, |c| c.len())
    }
    /// The storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }
    /// The storage, mutably (resize, fault injection).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }
    /// The event-channel port of the connection (of its first queue).
    pub fn port(&self) -> Option<Port> {
        self.conn.as_ref().and_then(|c| c.queues.first()).map(|q| q.port)
    }
    /// The event-channel ports of every queue of the connection.
    pub fn ports(&self) -> heapless::Vec<Port, MAX_QUEUES> {
        self.conn.as_ref().map(|c| c.queues.iter().map(|q| q.port).collect()).unwrap_or_default()
    }
    /// Whether `port` belongs to this connection (any queue).
    pub fn has_port(&self, port: Port) -> bool {
        self.conn.as_ref().is_some_and(|c| c.queues.iter().any(|q| q.port == port))
    }
    /// The frontend's domain.
    pub fn frontend_id(&self) -> DomId {
        self.front_id
    }
    /// Gives the storage back (after [`shutdown`](Self::shutdown)).
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// Reacts to the frontend's state. Call whenever the watch fires; idempotent.
    pub fn on_xenstore<P: BackendPlatform>(&mut self, plat: &mut P) {
        let front = xs::read_state(plat, &self.front_dir);
        match (self.phase, front) {
            (BackPhase::InitWait, XenbusState::Initialised | XenbusState::Connected) => self.connect(plat),
            (
                BackPhase::Connected | BackPhase::Halted(_) | BackPhase::InitWait,
                XenbusState::Closing | XenbusState::Closed,
            ) => {
                self.disconnect(plat);
                let _ = xs::write_state(
                    plat,
                    &self.dir,
                    if front == XenbusState::Closing { XenbusState::Closing } else { XenbusState::Closed },
                );
                if front == XenbusState::Closed {
                    self.closed(plat);
                } else {
                    self.phase = BackPhase::Closed;
                    let _ = xs::write_state(plat, &self.dir, XenbusState::Closed);
                    self.closed(plat);
                }
            }
            (BackPhase::Connected | BackPhase::Halted(_), XenbusState::Initialising | XenbusState::InitWait) => {
                // The frontend restarted without closing: start over.
                self.disconnect(plat);
                self.phase = BackPhase::Closed;
                self.reprobe(plat);
            }
            (BackPhase::Closed, XenbusState::Initialising | XenbusState::InitWait | XenbusState::Initialised) => {
                self.reprobe(plat)
            }
            (BackPhase::Closed, XenbusState::Unknown) => self.closed(plat),
            (BackPhase::Connected | BackPhase::Halted(_), XenbusState::Unknown) => {
                // The frontend's `state` is gone (the guest was destroyed or crashed) or
                // garbage, without a close. Let go of the ring and every mapping now, or the dead domain
                // stays a zombie and the disk stays open. The state is written only while
                // our own directory still exists (never recreate a removed one).
                self.disconnect(plat);
                if matches!(xs::read_u64(plat, Tx::NONE, &self.dir, keys::ONLINE), Read::Ok(_)) {
                    let _ = xs::write_state(plat, &self.dir, XenbusState::Closed);
                }
                self.closed(plat);
            }
            (BackPhase::InitWait, XenbusState::Unknown)
                if !matches!(xs::read_u64(plat, Tx::NONE, &self.dir, keys::ONLINE), Read::Ok(_)) =>
            {
                // Both directories gone before the frontend ever connected.
                self.phase = BackPhase::Removed;
            }
            _ => {}
        }
    }

    fn reprobe<P: BackendPlatform>(&mut self, plat: &mut P) {
        if !matches!(xs::read_u64(plat, Tx::NONE, &self.dir, keys::ONLINE), Read::Ok(1)) {
            self.phase = BackPhase::Removed;
            return;
        }
        if self.init_wait(plat).is_ok() {
            // A frontend already Initialised connects right away.
            let front = xs::read_state(plat, &self.front_dir);
            if matches!(front, XenbusState::Initialised | XenbusState::Connected) {
                self.connect(plat);
            }
        }
    }

    fn closed<P: BackendPlatform>(&mut self, plat: &mut P) {
        self.phase = BackPhase::Closed;
        if !matches!(xs::read_u64(plat, Tx::NONE, &self.dir, keys::ONLINE), Read::Ok(1)) {
            self.phase = BackPhase::Removed;
        }
    }

    /// Tells the frontend the disk changed size (the storage already has the new size):
    /// rewrites `sectors`, then `state`, so the frontend's watch fires.
    pub fn resize<P: BackendPlatform>(&mut self, plat: &mut P) -> Result<(), PlatformError> {
        xs::write_u64(plat, Tx::NONE, &self.dir, keys::SECTORS, self.storage.info().sectors)?;
        let st = if self.phase == BackPhase::Connected { XenbusState::Connected } else { XenbusState::InitWait };
        xs::write_state(plat, &self.dir, st)
    }

    fn halt(&mut self, why: HaltReason) {
        error!("xenblk back: ring halted");
        self.phase = BackPhase::Halted(why);
    }

    fn connect<P: BackendPlatform>(&mut self, plat: &mut P) {
        self.discard_offered = self.read_discard_offered(plat);
        self.physical_device = match xs::read_str::<P, 32>(plat, Tx::NONE, &self.dir, keys::PHYSICAL_DEVICE) {
            Read::Ok(s) => parse_physical_device(&s),
            _ => None,
        };
        match self.map_frontend_ring(plat) {
            Ok(conn) => {
                let dir = self.dir.clone();
                let persistent = conn.neg.persistent;
                let early = crate::profile::BACKEND_CONNECTS_EARLY;
                let storage = &self.storage;
                let offered = self.persistent_offered();
                let discard = self.discard_offered;
                let res = xs::transaction(plat, |x, tx| {
                    if !early {
                        Self::write_disk_keys_with(x, tx, &dir, storage, offered, discard)?;
                    }
                    xs::write_str(x, tx, &dir, keys::STATE, XenbusState::Connected.as_str())
                });
                info!("xenblk back: connected, persistent {}, order {}", persistent, conn.neg.ring_order);
                self.conn = Some(conn);
                self.stats.connects += 1;
                match res {
                    Ok(()) => self.phase = BackPhase::Connected,
                    Err(e) => {
                        self.phase = BackPhase::Connected;
                        self.halt(HaltReason::Platform(e));
                    }
                }
                // Requests may already be waiting.
                self.process(plat);
            }
            Err(why) => self.halt(why),
        }
    }

    fn map_frontend_ring<P: BackendPlatform>(&mut self, plat: &mut P) -> Result<Conn, HaltReason> {
        let f = self.front_dir.clone();
        let protocol = match xs::read_str::<P, 32>(plat, Tx::NONE, &f, keys::PROTOCOL) {
            Read::Ok(s) => Protocol::parse(&s).ok_or(HaltReason::BadFrontendKeys)?,
            Read::Missing => crate::profile::DEFAULT_PROTOCOL,
            Read::Malformed => return Err(HaltReason::BadFrontendKeys),
        };
        let front_persistent =
            xs::read_bool(plat, Tx::NONE, &f, keys::FEATURE_PERSISTENT).or_default(false).unwrap_or(false);
        let order_key = xs::read_u64(plat, Tx::NONE, &f, keys::RING_PAGE_ORDER);
        let order = match order_key {
            Read::Ok(o) => o,
            Read::Missing => 0,
            Read::Malformed => return Err(HaltReason::BadFrontendKeys),
        };
        let max_order = self.cfg.max_ring_order.min(crate::profile::MAX_RING_ORDER).min(config::RING_ORDER) as u64;
        if order > max_order {
            return Err(HaltReason::BadFrontendKeys);
        }
        // Queues: absent means one (keys at the top level); 0 or more than offered is fatal
        // (as in Linux blkback).
        let nq = match xs::read_u64(plat, Tx::NONE, &f, keys::MULTI_QUEUE_NUM_QUEUES) {
            Read::Ok(n) if n >= 1 && n <= self.max_queues() as u64 => n as usize,
            Read::Missing => 1,
            _ => return Err(HaltReason::BadFrontendKeys),
        };
        let order = order as u32;
        let mut queues: heapless::Vec<Queue, MAX_QUEUES> = heapless::Vec::new();
        for q in 0..nq {
            let mut dir = f.clone();
            if nq > 1 {
                let mut b = [0u8; 32];
                dir = xs::join(&f, crate::proto::xenbus::queue_dir(q as u32, &mut b));
            }
            match self.map_queue(plat, &dir, order, order_key == Read::Missing, protocol) {
                Ok(queue) => {
                    let _ = queues.push(queue);
                }
                Err(e) => {
                    for queue in queues {
                        self.unmap_queue(plat, queue, order);
                    }
                    return Err(e);
                }
            }
        }
        let persistent = front_persistent && self.persistent_offered();
        let limit = if persistent { self.cfg.max_grants } else { 0 };
        for c in self.caches.iter_mut() {
            c.set_limit(limit);
        }
        let slots = queues[0].ring.size();
        Ok(Conn { queues, neg: BackNegotiated { protocol, persistent, ring_order: order, slots, queues: nq as u32 } })
    }

    /// Maps one queue's ring (keys in `dir`) and binds its event channel.
    fn map_queue<P: BackendPlatform>(
        &mut self,
        plat: &mut P,
        dir: &str,
        order: u32,
        single: bool,
        protocol: Protocol,
    ) -> Result<Queue, HaltReason> {
        let npages = 1usize << order;
        let mut grefs: heapless::Vec<GrantRef, 16> = heapless::Vec::new();
        // A single page: `ring-ref` (or `ring-ref0` from frontends that wrote order 0).
        if single {
            let g = match xs::read_u64(plat, Tx::NONE, dir, keys::RING_REF) {
                Read::Ok(g) => g,
                _ => xs::read_u64(plat, Tx::NONE, dir, "ring-ref0").ok().ok_or(HaltReason::BadFrontendKeys)?,
            };
            let _ = grefs.push(GrantRef(u32::try_from(g).map_err(|_| HaltReason::BadFrontendKeys)?));
        } else {
            for i in 0..npages {
                let mut b = [0u8; 32];
                let k = crate::proto::xenbus::ring_ref_key(i as u32, &mut b);
                let g = xs::read_u64(plat, Tx::NONE, dir, k).ok().ok_or(HaltReason::BadFrontendKeys)?;
                let _ = grefs.push(GrantRef(u32::try_from(g).map_err(|_| HaltReason::BadFrontendKeys)?));
            }
        }
        let evtchn = xs::read_u64(plat, Tx::NONE, dir, keys::EVENT_CHANNEL).ok().ok_or(HaltReason::BadFrontendKeys)?;
        let evtchn = u32::try_from(evtchn).map_err(|_| HaltReason::BadFrontendKeys)?;
        let ring_map = plat.map_ring(self.front_id, &grefs).map_err(HaltReason::Platform)?;
        self.stats.maps += npages as u64;
        let ring = match BackRing::attach(ring_map.mem, protocol.abi()) {
            Ok(r) => r,
            Err(_) => {
                plat.unmap_ring(ring_map);
                self.stats.unmaps += npages as u64;
                return Err(HaltReason::BadFrontendKeys);
            }
        };
        let port = match plat.bind_interdomain(self.front_id, Port(evtchn)) {
            Ok(p) => p,
            Err(e) => {
                plat.unmap_ring(ring_map);
                self.stats.unmaps += npages as u64;
                return Err(HaltReason::Platform(e));
            }
        };
        Ok(Queue { ring, ring_map, port })
    }

    fn unmap_queue<P: BackendPlatform>(&mut self, plat: &mut P, q: Queue, order: u32) {
        plat.unbind(q.port);
        plat.unmap_ring(q.ring_map);
        self.stats.unmaps += 1u64 << order;
    }

    /// Unmaps everything of the connection: persistent grants first, then the ring.
    /// Idempotent (XSA-350): safe before a connection exists and on repeated calls.
    fn disconnect<P: BackendPlatform>(&mut self, plat: &mut P) {
        for c in self.caches.iter_mut() {
            let n = c.clear(plat, self.cfg.budget);
            self.stats.unmaps += n as u64;
        }
        if let Some(c) = self.conn.take() {
            for q in c.queues {
                self.unmap_queue(plat, q, c.neg.ring_order);
            }
        }
    }

    /// Tears everything down and frees the bounce pages (the backend is being dropped).
    pub fn shutdown<P: BackendPlatform>(&mut self, plat: &mut P) {
        let _ = plat.unwatch(&xs::join(&self.front_dir, keys::STATE), self.watch_token);
        self.disconnect(plat);
        while let Some(p) = self.bounce.pop() {
            plat.free_page(p);
        }
        self.phase = BackPhase::Removed;
    }

    /// Periodic housekeeping: expires idle persistent mappings and, after an overflow,
    /// evicts least-recently-used ones. `now_ms` is any monotonic clock.
    pub fn tick<P: BackendPlatform>(&mut self, plat: &mut P, now_ms: u64) {
        self.now_ms = now_ms;
        for c in self.caches.iter_mut() {
            let n = c.purge(plat, self.cfg.budget, now_ms, self.cfg.grant_idle_ms);
            self.stats.unmaps += n as u64;
        }
    }

    /// Serves every request available on every queue, then re-arms the events and serves
    /// what arrived meanwhile. Returns the number of requests answered.
    ///
    /// A frontend that keeps refilling its ring keeps this call busy; a board serving
    /// several frontends from one thread should use [`process_some`](Self::process_some).
    pub fn process<P: BackendPlatform>(&mut self, plat: &mut P) -> usize {
        self.process_some(plat, usize::MAX).done
    }

    /// Serves at most `budget` requests per queue. When a queue still has requests after
    /// its budget, its event is not re-armed (the frontend need not notify again) and
    /// [`Processed::more`] is set: the caller must call again without waiting for an event,
    /// after serving its other devices (round robin, so one busy frontend cannot starve the
    /// others). Otherwise the events are re-armed as by [`process`](Self::process).
    pub fn process_some<P: BackendPlatform>(&mut self, plat: &mut P, budget: usize) -> Processed {
        let nq = self.conn.as_ref().map_or(0, |c| c.queues.len());
        let mut out = Processed::default();
        for q in 0..nq {
            let (n, more) = self.process_queue(plat, q, budget.max(1));
            out.done += n;
            out.more |= more;
        }
        if out.done == 0 {
            self.stats.spurious += 1;
        }
        out
    }

    /// Serves up to `budget` requests of queue `q`; true if it stopped with requests left.
    fn process_queue<P: BackendPlatform>(&mut self, plat: &mut P, q: usize, budget: usize) -> (usize, bool) {
        if self.phase != BackPhase::Connected || self.conn.is_none() {
            return (0, false);
        }
        self.cur = q;
        let mut done = 0;
        loop {
            let avail = match self.conn.as_ref().map(|c| c.queues[q].ring.unconsumed_requests()) {
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    self.halt(HaltReason::RequestOverflow);
                    self.push(plat, q);
                    return (done, false);
                }
                None => return (done, false),
            };
            let avail = avail.min(budget.saturating_sub(done).try_into().unwrap_or(u32::MAX));
            let max_ind = self.cfg.max_indirect_segments.min(MAX_BACKEND_SEGMENTS);
            for _ in 0..avail {
                let Some(c) = self.conn.as_mut() else { return (done, false) };
                // Direct segments are decoded straight into `segs` (no segment list built
                // and copied again).
                let req = c.queues[q].ring.take_request_into(max_ind, &mut self.segs);
                let rsp = match req {
                    Ok(r) => {
                        let status = self.serve(plat, r);
                        // An indirect request is answered with its indirect_op: Linux
                        // blkfront (6.1) checks `operation == indirect_op` and disables the
                        // device otherwise ("response has wrong operation (6 instead of 1)",
                        // seen on the Xen rig, boards/linux/NOTES.md).
                        let op = match r.kind {
                            HeadKind::Indirect { op, .. } => op.code(),
                            _ => r.op_code(),
                        };
                        Response { id: r.id, op, status }
                    }
                    Err(rej) => self.rejected(q, &rej),
                };
                self.stats.requests += 1;
                self.per_queue[q] += 1;
                if let Some(c) = self.conn.as_mut() {
                    c.queues[q].ring.put_response(&rsp);
                }
                done += 1;
                // Publish in batches of a quarter ring so the frontend can complete and
                // refill while the rest is served (a whole-ring batch would run the two
                // sides in lock-step: each waiting for the other's full batch).
                if done % RESPONSE_PUSH_BATCH == 0 {
                    self.push(plat, q);
                }
            }
            self.push(plat, q);
            if self.phase != BackPhase::Connected {
                break;
            }
            if done >= budget
                && self.conn.as_ref().is_some_and(|c| c.queues[q].ring.unconsumed_requests().is_ok_and(|n| n > 0))
            {
                // Budget spent with requests left: the event stays disarmed, the caller
                // comes back. (With nothing left, re-arm below as usual.)
                return (done, true);
            }
            match self.conn.as_mut().map(|c| c.queues[q].ring.final_check_for_requests()) {
                Some(Ok(true)) => continue,
                Some(Ok(false)) | None => break,
                Some(Err(_)) => {
                    self.halt(HaltReason::RequestOverflow);
                    break;
                }
            }
        }
        (done, false)
    }

    /// Counts a request that failed validation (and keeps it as the last failure unless it
    /// was only an unknown operation); returns its answer.
    #[cold]
    #[inline(never)]
    fn rejected(&mut self, q: usize, rej: &Rejected) -> Response {
        if rej.reason == RejectReason::UnknownOp {
            self.stats.unsupported += 1;
        } else {
            self.stats.errors += 1;
            self.last_failure = Some(FailedRequest {
                queue: q as u16,
                op: rej.op,
                indirect_op: None,
                sector: 0,
                count: 0,
                status: rej.status(),
                cause: FailCause::Rejected(rej.reason),
            });
        }
        Response { id: rej.id, op: rej.op, status: rej.status() }
    }

    /// Keeps the request being served (on the current queue) as the last failure, with the
    /// noted cause. Takes the request's fields, not a reference to it: a reference would make
    /// the request loop keep every decoded request in memory for this rare call.
    #[cold]
    #[inline(never)]
    fn record_failure(&mut self, op: u8, indirect_op: Option<u8>, sector: u64, count: u64, status: i16) {
        self.last_failure =
            Some(FailedRequest { queue: self.cur as u16, op, indirect_op, sector, count, status, cause: self.cause });
    }

    /// Notes why the request being served fails; returns `RSP_ERROR`.
    fn fail(&mut self, cause: FailCause) -> i16 {
        self.cause = cause;
        RSP_ERROR
    }

    /// The status for a storage result, noting the cause of a failure.
    fn storage_status(&mut self, r: Result<(), StorageError>) -> i16 {
        if let Err(e) = r {
            self.cause = FailCause::Storage(e);
        }
        to_status(r)
    }

    fn push<P: BackendPlatform>(&mut self, plat: &mut P, q: usize) {
        if let Some(c) = self.conn.as_mut()
            && let Some(queue) = c.queues.get_mut(q)
            && queue.ring.push_responses()
        {
            self.stats.notifies += 1;
            let _ = plat.notify(queue.port);
        }
    }

    /// Serves one decoded request; the direct segments of a read/write-class one are already
    /// in `segs`.
    fn serve<P: BackendPlatform>(&mut self, plat: &mut P, r: RequestHead) -> i16 {
        let info = self.storage.info();
        // Read/write-class requests (direct or indirect) have their segments in `segs`, then
        // share one serve_rw.
        let rw = match r.kind {
            HeadKind::Discard { secure, nr_sectors } => {
                Err(if !self.discard_offered || (secure && !info.discard_secure) {
                    RSP_EOPNOTSUPP
                } else if info.read_only {
                    self.fail(FailCause::ReadOnly)
                } else if r.sector.checked_add(nr_sectors).is_none_or(|end| end > info.sectors) {
                    self.fail(FailCause::OutOfRange)
                } else {
                    let st = self.storage.discard(r.sector, nr_sectors, secure);
                    self.storage_status(st)
                })
            }
            HeadKind::Rw { op, nr_segments } => {
                self.nsegs = nr_segments as usize;
                Ok(op)
            }
            HeadKind::Indirect { op, nr_segments, pages } => {
                let npages = (nr_segments as usize).div_ceil(SEGMENTS_PER_INDIRECT_PAGE).min(pages.len());
                match self.load_indirect(plat, nr_segments as usize, &pages[..npages]) {
                    Ok(()) => Ok(op),
                    Err(()) => Err(self.fail(FailCause::IndirectPages)),
                }
            }
        };
        let status = match rw {
            Ok(op) => self.serve_rw(plat, op, r.sector, &info),
            Err(status) => status,
        };
        match status {
            RSP_OKAY => {}
            RSP_EOPNOTSUPP => self.stats.unsupported += 1,
            _ => {
                self.stats.errors += 1;
                let (indirect_op, count) = match r.kind {
                    HeadKind::Discard { nr_sectors, .. } => (None, nr_sectors),
                    HeadKind::Rw { nr_segments, .. } => (None, nr_segments as u64),
                    HeadKind::Indirect { op, nr_segments, .. } => (Some(op.code()), nr_segments as u64),
                };
                self.record_failure(r.op_code(), indirect_op, r.sector, count, status);
            }
        }
        status
    }

    /// Copies each indirect page once into private memory and decodes its segments.
    #[inline(never)]
    fn load_indirect<P: BackendPlatform>(&mut self, plat: &mut P, n: usize, pages: &[u32]) -> Result<(), ()> {
        self.nsegs = 0;
        let mut loaded = 0;
        if n > MAX_BACKEND_SEGMENTS {
            return Err(());
        }
        for (pi, &g) in pages.iter().enumerate() {
            let gref = GrantRef(g);
            let count = (n - pi * SEGMENTS_PER_INDIRECT_PAGE).min(SEGMENTS_PER_INDIRECT_PAGE);
            if self.cfg.data_path == DataPath::Copy {
                let Some(bp) = self.bounce.first().copied() else { return Err(()) };
                let op = CopyOp {
                    src: CopyPtr::Foreign { domid: self.front_id, gref, offset: 0 },
                    dst: CopyPtr::Local { mem: bp.mem, offset: 0 },
                    len: (count * 8) as u16,
                };
                let mut st = [GntStatus::Okay];
                plat.copy_batch(&[op], &mut st);
                self.stats.copies += 1;
                if st[0] != GntStatus::Okay {
                    return Err(());
                }
                bp.mem.read_bytes(0, &mut self.indirect_buf[..count * 8]);
            } else {
                let (map, slot, transient) = self.acquire(plat, gref, false).map_err(|_| ())?;
                map.mem.read_bytes(0, &mut self.indirect_buf[..count * 8]);
                self.release(plat, map, slot, transient);
            }
            for k in 0..count {
                match blkif::decode_indirect_segment(&self.indirect_buf[..count * 8], k) {
                    Some(s) => {
                        let Some(slot) = self.segs.get_mut(loaded) else { return Err(()) };
                        *slot = s;
                        loaded += 1;
                    }
                    None => return Err(()),
                }
            }
        }
        self.nsegs = loaded;
        Ok(())
    }

    fn persistent(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.neg.persistent)
    }

    /// Gets a mapping for one grant: from the cache, or freshly mapped (and cached when
    /// persistence allows). Returns (mapping, cache slot, transient).
    /// Gets a mapping for one grant: from the cache, or freshly mapped (and cached when
    /// persistence allows). `need_write` says whether we will write into the page. Returns
    /// (mapping, cache slot, transient).
    fn acquire<P: BackendPlatform>(
        &mut self,
        plat: &mut P,
        gref: GrantRef,
        need_write: bool,
    ) -> Result<(Mapping, Option<Slot>, bool), GntStatus> {
        let persistent = self.persistent();
        if persistent && let Some((slot, map)) = self.caches[self.cur].get(gref, self.now_ms) {
            return Ok((map, Some(slot), false));
        }
        // Persistent mappings are always read-write (a page written now may be read into later).
        let map = match self.map_one(plat, gref, !need_write && !persistent) {
            Ok(m) => m,
            // A frontend that grants read-only pages we only read (NetBSD's habit for write
            // data and indirect pages) cannot be kept persistently: map it for this use.
            Err(GntStatus::PermissionDenied) if persistent && !need_write => {
                return self.map_one(plat, gref, true).map(|m| (m, None, true));
            }
            Err(e) => return Err(e),
        };
        if persistent && let Some(slot) = self.caches[self.cur].insert(gref, map, self.now_ms, self.cfg.budget) {
            return Ok((map, Some(slot), false));
        }
        Ok((map, None, true))
    }

    fn map_one<P: BackendPlatform>(
        &mut self,
        plat: &mut P,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<Mapping, GntStatus> {
        let mut out = [Err(GntStatus::GeneralError)];
        plat.map_batch(self.front_id, &[MapRequest { gref, readonly }], &mut out);
        match out[0] {
            Ok(m) => {
                self.stats.maps += 1;
                Ok(m)
            }
            Err(e) => {
                self.stats.map_failures += 1;
                Err(e)
            }
        }
    }

    fn release<P: BackendPlatform>(&mut self, plat: &mut P, map: Mapping, slot: Option<Slot>, transient: bool) {
        if let Some(s) = slot {
            self.caches[self.cur].release(s);
        }
        if transient {
            let mut st = [GntStatus::Okay];
            plat.unmap_batch(&[map], &mut st);
            self.stats.unmaps += 1;
        }
    }

    /// Serves the read/write-class request whose segments are `segs[..nsegs]`; `info` is the
    /// storage's, read once for the request.
    #[inline(always)]
    fn serve_rw<P: BackendPlatform>(&mut self, plat: &mut P, op: RwOp, sector: u64, info: &StorageInfo) -> i16 {
        let write = op.is_write();
        let nsect: u64 = self.segs[..self.nsegs].iter().map(|s| s.sectors() as u64).sum();
        // FLUSH_DISKCACHE is only valid when `feature-flush-cache` was offered.
        if op == RwOp::Flush && !info.flush {
            return RSP_EOPNOTSUPP;
        }
        if write && nsect > 0 && info.read_only {
            return self.fail(FailCause::ReadOnly);
        }
        // Without data the sector number means nothing: Linux blkfront sends an empty flush
        // with sector_number = u64::MAX (the block layer's "no position"), seen on the rig
        // as ext4's journal flushes. Only data is range- and alignment-checked.
        if nsect > 0 {
            if sector.checked_add(nsect).is_none_or(|end| end > info.sectors) {
                return self.fail(FailCause::OutOfRange);
            }
            let ss = (info.sector_size.max(512) / SECTOR_SIZE as u32) as u64;
            if ss > 1 && (!sector.is_multiple_of(ss) || !nsect.is_multiple_of(ss)) {
                return self.fail(FailCause::Misaligned);
            }
        }
        // Barrier: every earlier write is durable before this one; flush: before answering.
        if matches!(op, RwOp::WriteBarrier)
            && info.flush
            && let Err(e) = self.storage.flush()
        {
            return self.storage_status(Err(e));
        }
        let mut status = RSP_OKAY;
        let mut disk = sector;
        let total = self.nsegs;
        let mut i = 0;
        while i < total {
            let end = (i + CHUNK).min(total);
            let st = if self.cfg.data_path == DataPath::Copy {
                self.chunk_copy(plat, write, i, end, disk)
            } else {
                self.chunk_map(plat, write, i, end, disk)
            };
            if st != RSP_OKAY {
                status = st;
                break;
            }
            if end < total {
                for s in &self.segs[i..end] {
                    disk += s.sectors() as u64;
                }
            }
            i = end;
        }
        if status == RSP_OKAY && matches!(op, RwOp::Flush | RwOp::WriteBarrier) && info.flush {
            let r = self.storage.flush();
            status = self.storage_status(r);
        }
        status
    }

    fn chunk_map<P: BackendPlatform>(&mut self, plat: &mut P, write: bool, from: usize, to: usize, disk: u64) -> i16 {
        let persistent = self.persistent();
        // Fast path, the steady state of a persistent frontend: one segment whose grant is
        // cached. The same steps as below (look up, move the data, release), without the
        // batch bookkeeping. On a miss the general path goes on without a second lookup.
        let mut first_missed = false;
        if persistent && to == from + 1 {
            let s = self.segs[from];
            let cache = &mut self.caches[self.cur];
            match cache.get(GrantRef(s.gref), self.now_ms) {
                Some((slot, m)) => {
                    let region = m.mem.slice(s.offset(), s.len());
                    let r = if write { self.storage.write(disk, region) } else { self.storage.read(disk, region) };
                    cache.release(slot);
                    if r.is_err() {
                        return self.storage_status(r);
                    }
                    self.stats.bytes += s.len() as u64;
                    return RSP_OKAY;
                }
                None => first_missed = true,
            }
        }
        self.chunk_map_batch(plat, write, from, to, disk, first_missed)
    }

    /// [`chunk_map`](Self::chunk_map) for any number of segments: cache lookups (skipped for
    /// the first segment when `first_missed`: it was looked up already), one batch of maps
    /// for the misses, the data, then releases and one batch of unmaps.
    #[inline(never)]
    fn chunk_map_batch<P: BackendPlatform>(
        &mut self,
        plat: &mut P,
        write: bool,
        from: usize,
        to: usize,
        mut disk: u64,
        first_missed: bool,
    ) -> i16 {
        let persistent = self.persistent();
        let mut segs: heapless::Vec<Seg, CHUNK> = heapless::Vec::new();
        let mut misses: heapless::Vec<MapRequest, CHUNK> = heapless::Vec::new();
        for (k, s) in self.segs[from..to].iter().enumerate() {
            let mut e = Seg { seg: *s, map: None, slot: None, transient: true };
            if persistent
                && !(k == 0 && first_missed)
                && let Some((slot, map)) = self.caches[self.cur].get(GrantRef(s.gref), self.now_ms)
            {
                e.map = Some(map);
                e.slot = Some(slot);
                e.transient = false;
            }
            if e.map.is_none() {
                // Writes only read the frontend's page; persistent mappings are always RW.
                let _ = misses.push(MapRequest { gref: GrantRef(s.gref), readonly: write && !persistent });
            }
            let _ = segs.push(e);
        }
        let mut ok = true;
        if !misses.is_empty() {
            let mut out = [Err(GntStatus::GeneralError); CHUNK];
            plat.map_batch(self.front_id, &misses, &mut out[..misses.len()]);
            for (k, e) in segs.iter_mut().filter(|e| e.map.is_none()).enumerate() {
                match out[k] {
                    Ok(m) => {
                        self.stats.maps += 1;
                        e.map = Some(m);
                        if persistent
                            && let Some(slot) =
                                self.caches[self.cur].insert(GrantRef(e.seg.gref), m, self.now_ms, self.cfg.budget)
                        {
                            e.slot = Some(slot);
                            e.transient = false;
                        }
                    }
                    Err(GntStatus::PermissionDenied) if persistent && write => {
                        // A read-only grant of write data (NetBSD's habit): usable for this
                        // request, not persistently.
                        self.stats.map_failures += 1;
                        match self.map_one(plat, GrantRef(e.seg.gref), true) {
                            Ok(m) => e.map = Some(m),
                            Err(_) => ok = false,
                        }
                    }
                    Err(_) => {
                        self.stats.map_failures += 1;
                        ok = false;
                    }
                }
            }
        }
        let mut status = if ok { RSP_OKAY } else { self.fail(FailCause::GrantMap) };
        if ok {
            for e in &segs {
                let Some(m) = e.map else { continue };
                let region = m.mem.slice(e.seg.offset(), e.seg.len());
                let r = if write { self.storage.write(disk, region) } else { self.storage.read(disk, region) };
                if r.is_err() {
                    status = self.storage_status(r);
                    break;
                }
                self.stats.bytes += e.seg.len() as u64;
                disk += e.seg.sectors() as u64;
            }
        }
        // Release: cached entries become inactive; transient mappings go in one batch.
        let mut unmap: heapless::Vec<Mapping, CHUNK> = heapless::Vec::new();
        for e in &segs {
            if let Some(s) = e.slot {
                self.caches[self.cur].release(s);
            }
            if e.transient
                && let Some(m) = e.map
            {
                let _ = unmap.push(m);
            }
        }
        if !unmap.is_empty() {
            let mut st = [GntStatus::Okay; CHUNK];
            plat.unmap_batch(&unmap, &mut st[..unmap.len()]);
            self.stats.unmaps += unmap.len() as u64;
        }
        status
    }

    #[inline(never)]
    fn chunk_copy<P: BackendPlatform>(
        &mut self,
        plat: &mut P,
        write: bool,
        from: usize,
        to: usize,
        mut disk: u64,
    ) -> i16 {
        let n = to - from;
        if self.bounce.len() < n {
            return self.fail(FailCause::GrantCopy);
        }
        let mut ops: heapless::Vec<CopyOp, CHUNK> = heapless::Vec::new();
        for (k, s) in self.segs[from..to].iter().enumerate() {
            let local = CopyPtr::Local { mem: self.bounce[k].mem, offset: s.offset() as u16 };
            let foreign = CopyPtr::Foreign { domid: self.front_id, gref: GrantRef(s.gref), offset: s.offset() as u16 };
            let _ = ops.push(if write {
                CopyOp { src: foreign, dst: local, len: s.len() as u16 }
            } else {
                CopyOp { src: local, dst: foreign, len: s.len() as u16 }
            });
        }
        let mut st = [GntStatus::Okay; CHUNK];
        if write {
            plat.copy_batch(&ops, &mut st[..n]);
            self.stats.copies += n as u64;
            if st[..n].iter().any(|s| *s != GntStatus::Okay) {
                return self.fail(FailCause::GrantCopy);
            }
            for (k, s) in self.segs[from..to].iter().enumerate() {
                let region = self.bounce[k].mem.slice(s.offset(), s.len());
                if let Err(e) = self.storage.write(disk, region) {
                    return self.storage_status(Err(e));
                }
                self.stats.bytes += s.len() as u64;
                disk += s.sectors() as u64;
            }
        } else {
            for (k, s) in self.segs[from..to].iter().enumerate() {
                let region = self.bounce[k].mem.slice(s.offset(), s.len());
                if let Err(e) = self.storage.read(disk, region) {
                    return self.storage_status(Err(e));
                }
                self.stats.bytes += s.len() as u64;
                disk += s.sectors() as u64;
            }
            plat.copy_batch(&ops, &mut st[..n]);
            self.stats.copies += n as u64;
            if st[..n].iter().any(|s| *s != GntStatus::Okay) {
                return self.fail(FailCause::GrantCopy);
            }
        }
        RSP_OKAY
    }

    /// The hotplug script's `physical-device` as read at the last connect (None: absent or
    /// malformed; the backend does not need it, it only reports it).
    pub fn physical_device(&self) -> Option<PhysicalDevice> {
        self.physical_device
    }

    /// The device handle (vbd number) used in requests.
    pub fn handle(&self) -> u16 {
        self.handle
    }
}

fn to_status(r: Result<(), StorageError>) -> i16 {
    match r {
        Ok(()) => RSP_OKAY,
        Err(StorageError::Unsupported) => RSP_EOPNOTSUPP,
        Err(_) => RSP_ERROR,
    }
}

/// The `physical-device` key a hotplug script writes for the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PhysicalDevice {
    /// Linux scripts: hex `MAJ:MIN`.
    MajorMinor(u32, u32),
    /// NetBSD scripts: the decimal `dev_t` (`stat -f %r`).
    DevT(u64),
}

/// Parses `physical-device` in either dialect: hex `MAJ:MIN` (Linux), or a decimal `dev_t`
/// (NetBSD). None when it is neither.
pub fn parse_physical_device(s: &str) -> Option<PhysicalDevice> {
    fn hex(s: &str) -> Option<u32> {
        if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(s, 16).ok()
    }
    let s = s.trim_end_matches(['\n', '\0']);
    match s.split_once(':') {
        Some((maj, min)) => Some(PhysicalDevice::MajorMinor(hex(maj)?, hex(min)?)),
        None => crate::proto::xenbus::parse_u64(s.as_bytes()).map(PhysicalDevice::DevT),
    }
}
