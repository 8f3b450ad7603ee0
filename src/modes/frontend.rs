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
//! Hostile backends: each response is copied once; `rsp_prod` is checked against the
//! requests outstanding; the id must be in flight and the operation must match the request;
//! a page the backend keeps mapped without persistence is never reused. Any violation fails
//! the device: every in-flight request completes with an error.

use crate::config;
use crate::platform::{FrontendPlatform, Page, PlatformError, Port, Tx, Wait};
use crate::pool::front::{FrontPool, PoolError};
use crate::pool::ids::IdTable;
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
/// Indirect pages one request may use.
pub const MAX_INDIRECT_PAGES: usize = if config::INDIRECT_PAGES == 0 { 1 } else { config::INDIRECT_PAGES };

/// Frontend settings (defaults from the build config).
#[derive(Clone, Copy, Debug)]
pub struct FrontendConfig {
    /// Offer persistent grants (`feature-persistent`).
    pub persistent: bool,
    /// Largest ring order to use (clamped to the backend's offer and the profile).
    pub max_ring_order: u32,
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
}

impl Buffer {
    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.pages.len()
    }
    /// Capacity in bytes.
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
    pub fn read_data(&self, dst: &mut [u8]) -> usize {
        let pages: &[u16] = match &*self.data {
            Data::Pool(p) => p,
            Data::Lent(b) => &b.pages,
            Data::None => &[],
        };
        copy_out(self.pool, pages, dst, self.bytes as usize)
    }

    /// Takes back a lent buffer (zero-copy path). If not taken, it returns to the pool.
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

fn copy_out(pool: &FrontPool, pages: &[u16], dst: &mut [u8], bytes: usize) -> usize {
    let n = dst.len().min(bytes);
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
    ring: Option<RingState>,
    /// A torn-down ring the backend still mapped (Linux blkback unmaps only once it sees
    /// our Closed, after we tore down); retried while no ring is up.
    parked_ring: Option<ParkedRing>,
    pool: FrontPool,
    ids: IdTable,
    shadows: heapless::Vec<Option<Shadow>, { config::RING_SLOTS }>,
    /// Requests waiting to be (re)issued, oldest first (ids into `shadows`).
    backlog: heapless::Deque<u16, { config::RING_SLOTS }>,
    neg: Negotiated,
    stats: FrontStats,
    unpushed: bool,
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
        for _ in 0..config::RING_SLOTS {
            let _ = shadows.push(None);
        }
        let mut f = Frontend {
            cfg,
            dir: own,
            backend_dir: bdir,
            backend_id,
            phase: Phase::WaitBackend,
            ring: None,
            parked_ring: None,
            pool: FrontPool::new(cfg.pool_grants, backend_id),
            ids: IdTable::new(0),
            shadows,
            backlog: heapless::Deque::new(),
            neg: Negotiated::default(),
            stats: FrontStats::default(),
            unpushed: false,
            watch_token,
            user_closed: false,
        };
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
        self.pool.stats()
    }
    /// Requests in flight (issued or waiting to be re-issued).
    pub fn in_flight(&self) -> usize {
        self.ids.in_flight()
    }
    /// The event-channel port of the current ring.
    pub fn port(&self) -> Option<Port> {
        self.ring.as_ref().map(|r| r.port)
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

    fn max_request_pages(&self) -> usize {
        let ind = self.neg.indirect_segments as usize;
        let segs =
            if ind > MAX_SEGMENTS_PER_REQUEST { ind.min(self.cfg.max_segments) } else { MAX_SEGMENTS_PER_REQUEST };
        segs.min(MAX_DATA_PAGES).min(self.pool.limit().saturating_sub(self.indirect_pages_for(segs)))
    }

    fn indirect_pages_for(&self, segs: usize) -> usize {
        if segs > MAX_SEGMENTS_PER_REQUEST { segs.div_ceil(SEGMENTS_PER_INDIRECT_PAGE) } else { 0 }
    }

    /// Reacts to the backend's state. Call whenever the watch fires; harmless otherwise.
    pub fn on_xenstore<P: FrontendPlatform>(&mut self, plat: &mut P) {
        if matches!(self.phase, Phase::Failed(_)) {
            return;
        }
        if self.ring.is_none() {
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

    fn publish_ring<P: FrontendPlatform>(&mut self, plat: &mut P) -> Result<(), PlatformError> {
        let offered = match xs::read_u64(plat, Tx::NONE, &self.backend_dir, keys::MAX_RING_PAGE_ORDER) {
            Read::Ok(v) => v.min(4) as u32,
            _ => 0,
        };
        let order = offered.min(self.cfg.max_ring_order).min(crate::profile::MAX_RING_ORDER).min(config::RING_ORDER);
        let npages = 1usize << order;
        let (mem, frames_arr) = if npages == 1 {
            let p = plat.alloc_page()?;
            let mut f = [0u64; 16];
            f[0] = p.frame;
            (p.mem, f)
        } else {
            plat.alloc_pages_contiguous(npages)?
        };
        let abi = self.cfg.protocol.abi();
        let ring = match FrontRing::init(mem, abi) {
            Ok(r) => r,
            Err(_) => return Err(PlatformError::Invalid),
        };
        let mut frames = heapless::Vec::new();
        let mut grefs = heapless::Vec::new();
        for &fr in &frames_arr[..npages] {
            let _ = frames.push(fr);
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
        let dir = self.dir.clone();
        let persistent = self.cfg.persistent;
        let protocol = self.cfg.protocol;
        let res = xs::transaction(plat, |x, tx| {
            if order == 0 {
                xs::write_u64(x, tx, &dir, keys::RING_REF, grefs[0].0 as u64)?;
            } else {
                xs::write_u64(x, tx, &dir, keys::RING_PAGE_ORDER, order as u64)?;
                xs::write_u64(x, tx, &dir, keys::NUM_RING_PAGES, npages as u64)?;
                for (i, g) in grefs.iter().enumerate() {
                    let mut b = [0u8; 32];
                    let k = crate::proto::xenbus::ring_ref_key(i as u32, &mut b);
                    xs::write_u64(x, tx, &dir, k, g.0 as u64)?;
                }
            }
            xs::write_u64(x, tx, &dir, keys::EVENT_CHANNEL, port.0 as u64)?;
            xs::write_str(x, tx, &dir, keys::PROTOCOL, protocol.as_str())?;
            xs::write_u64(x, tx, &dir, keys::FEATURE_PERSISTENT, persistent as u64)?;
            xs::write_str(x, tx, &dir, keys::STATE, XenbusState::Initialised.as_str())
        });
        if let Err(e) = res {
            plat.unbind(port);
            for &g in &grefs {
                let _ = plat.end_access(g);
            }
            free_ring_mem(plat, mem, &frames);
            return Err(e);
        }
        // Keep the ids of requests waiting to be re-issued.
        self.ids.set_limit(ring.size() as usize);
        self.ring = Some(RingState { ring, mem, frames, grefs, port });
        self.neg.ring_order = order;
        self.phase = Phase::Initialised;
        info!("xenblk front: ring published, order {}", order);
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
        let indirect = if indirect > MAX_SEGMENTS_PER_REQUEST as u64 {
            indirect.min(blkif::MAX_INDIRECT_SEGMENTS as u64) as u32
        } else {
            0
        };
        Some(Negotiated {
            persistent: persistent && self.cfg.persistent,
            indirect_segments: indirect,
            ring_order: self.neg.ring_order,
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
        self.pool.release_all(plat);
        self.unpushed = false;
    }

    /// Unbinds the event channel and ends the ring's grants; the ring pages are freed only
    /// if the backend no longer maps any of them (otherwise they are leaked, never reused).
    fn drop_ring<P: FrontendPlatform>(&mut self, plat: &mut P) {
        let Some(r) = self.ring.take() else { return };
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
            // One ring is parked at a time: a second teardown before the first one's pages
            // were released (the backend never let go) drops the older one, whose pages
            // are then leaked, never reused.
            self.parked_ring = Some(ParkedRing { mem: r.mem, frames: r.frames, grefs: in_use });
        }
    }

    /// Retries what a teardown could not release because the backend still mapped it:
    /// parked pool pages become reusable, a parked ring's pages are freed.
    fn reap<P: FrontendPlatform>(&mut self, plat: &mut P) {
        self.pool.reap_parked(plat);
        if let Some(p) = self.parked_ring.as_mut() {
            p.grefs.retain(|&g| plat.end_access(g) == Err(RevokeError::InUse));
            if p.grefs.is_empty()
                && let Some(p) = self.parked_ring.take()
            {
                free_ring_mem(plat, p.mem, &p.frames);
            }
        }
    }

    /// Pages the backend still mapped at the last teardown (pool pages parked plus the
    /// ring's pages if parked); they are retried at every xenstore event while no ring is up.
    pub fn parked_pages(&self) -> usize {
        self.pool.stats().parked as usize + self.parked_ring.as_ref().map_or(0, |p| p.frames.len())
    }

    fn reissue<P: FrontendPlatform>(&mut self, plat: &mut P) {
        let n = self.backlog.len();
        for _ in 0..n {
            let Some(id) = self.backlog.pop_front() else { break };
            if self.ring.as_ref().is_none_or(|r| r.ring.is_full()) {
                let _ = self.backlog.push_front(id);
                break;
            }
            match self.issue(plat, id) {
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
        let mut b = Buffer { pages: heapless::Vec::new() };
        for _ in 0..n {
            match self.pool.get(plat, false) {
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
        self.pool.page(buf.pages[i])
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
            self.pool.page(buf.pages[pi]).copy_from_private(po, &data[done..done + n]);
            done += n;
        }
    }

    /// Copies out of a lent buffer.
    pub fn buffer_read(&self, buf: &Buffer, dst: &mut [u8]) -> usize {
        copy_out(&self.pool, &buf.pages, dst, buf.capacity())
    }

    /// Gives a lent buffer back to the pool.
    pub fn free_buffer<P: FrontendPlatform>(&mut self, plat: &mut P, buf: Buffer) {
        let persistent = self.neg.persistent;
        for &i in &buf.pages {
            if self.pool.put(plat, i, persistent).is_err() {
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
        if self.ring.as_ref().is_none_or(|r| r.ring.is_full()) {
            self.ids.free(id as u64);
            return Err((SubmitError::Busy, buf));
        }
        self.shadows[id as usize] = Some(Shadow {
            tag,
            kind: ShadowKind::Rw(op),
            sector,
            bytes: bytes as u32,
            data: Data::Lent(buf),
            indirect: heapless::Vec::new(),
            issued: false,
        });
        self.finish_submit(plat, id).map_err(|e| match self.shadows[id as usize].take().map(|s| s.data) {
            Some(Data::Lent(b)) => {
                self.ids.free(id as u64);
                (e, b)
            }
            _ => (e, Buffer { pages: heapless::Vec::new() }),
        })
    }

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
        if !bytes.is_multiple_of(ss) || !(sector * SECTOR_SIZE as u64).is_multiple_of(ss as u64) {
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
        if self.ring.as_ref().is_none_or(|r| r.ring.is_full())
            || self.pool.available() < pages_needed + self.indirect_pages_for(pages_needed)
        {
            return Err(SubmitError::Busy);
        }
        let id = self.ids.alloc().ok_or(SubmitError::Busy)?;
        let readonly = crate::profile::FRONTEND_READONLY_WRITE_GRANTS
            && !self.neg.persistent
            && matches!(kind, ShadowKind::Rw(op) if op.is_write());
        let mut pages: heapless::Vec<u16, MAX_DATA_PAGES> = heapless::Vec::new();
        for i in 0..pages_needed {
            match self.pool.get(plat, readonly) {
                Ok(p) => {
                    if let Some(d) = data {
                        let lo = i * PAGE_SIZE;
                        let hi = (lo + PAGE_SIZE).min(d.len());
                        self.pool.page(p).copy_from_private(0, &d[lo..hi]);
                    }
                    let _ = pages.push(p);
                }
                Err(e) => {
                    for &p in &pages {
                        self.pool.put_unused(p);
                    }
                    self.ids.free(id as u64);
                    return Err(pool_err(e));
                }
            }
        }
        self.shadows[id as usize] = Some(Shadow {
            tag,
            kind,
            sector,
            bytes: bytes as u32,
            data: if pages.is_empty() { Data::None } else { Data::Pool(pages) },
            indirect: heapless::Vec::new(),
            issued: false,
        });
        if let Err(e) = self.finish_submit(plat, id) {
            if let Some(sh) = self.shadows[id as usize].take()
                && let Data::Pool(p) = sh.data
            {
                for &i in &p {
                    self.pool.put_unused(i);
                }
            }
            self.ids.free(id as u64);
            return Err(e);
        }
        Ok(())
    }

    fn finish_submit<P: FrontendPlatform>(&mut self, plat: &mut P, id: u16) -> Result<(), SubmitError> {
        self.issue(plat, id)?;
        self.stats.submitted += 1;
        Ok(())
    }

    /// Encodes shadow `id` into the ring (granting what needs a grant).
    fn issue<P: FrontendPlatform>(&mut self, plat: &mut P, id: u16) -> Result<(), SubmitError> {
        let persistent = self.neg.persistent;
        let indirect_max = self.neg.indirect_segments as usize;
        let Some(sh) = self.shadows[id as usize].as_mut() else { return Err(SubmitError::Failed) };
        let used = (sh.bytes as usize).div_ceil(PAGE_SIZE);
        let pages: heapless::Vec<u16, MAX_DATA_PAGES> = match &sh.data {
            Data::Pool(p) => p.iter().take(used).copied().collect(),
            Data::Lent(b) => b.pages.iter().take(used).copied().collect(),
            Data::None => heapless::Vec::new(),
        };
        let write = matches!(sh.kind, ShadowKind::Rw(op) if op.is_write());
        let readonly = crate::profile::FRONTEND_READONLY_WRITE_GRANTS && !persistent && write;
        // Make sure every page is granted (after a reconnect the grants were ended).
        for &p in &pages {
            self.pool.ensure_granted(plat, p, readonly).map_err(pool_err)?;
        }
        let nseg = pages.len();
        let bytes = sh.bytes as usize;
        let seg_of = |i: usize, g: GrantRef| {
            let len = (bytes - i * PAGE_SIZE).min(PAGE_SIZE);
            Segment { gref: g.0, first_sect: 0, last_sect: (len.div_ceil(SECTOR_SIZE) - 1) as u8 }
        };
        let kind = match sh.kind {
            ShadowKind::Discard { secure, sectors } => ReqKind::Discard { secure, nr_sectors: sectors },
            ShadowKind::Rw(op) if nseg <= MAX_SEGMENTS_PER_REQUEST => {
                let mut segs = SegList::new();
                for (i, &p) in pages.iter().enumerate() {
                    let _ = segs.push(seg_of(i, self.pool.gref(p)));
                }
                ReqKind::Rw { op, segs }
            }
            ShadowKind::Rw(op) => {
                if nseg > indirect_max || !matches!(op, RwOp::Read | RwOp::Write) {
                    return Err(SubmitError::TooLarge);
                }
                // Indirect: segment descriptors in pooled pages (persistent too).
                let npages = nseg.div_ceil(SEGMENTS_PER_INDIRECT_PAGE);
                if sh.indirect.is_empty() {
                    for _ in 0..npages {
                        match self.pool.get(plat, true) {
                            Ok(ip) => {
                                let _ = sh.indirect.push(ip);
                            }
                            Err(e) => {
                                for &ip in &sh.indirect {
                                    self.pool.put_unused(ip);
                                }
                                sh.indirect.clear();
                                return Err(pool_err(e));
                            }
                        }
                    }
                } else {
                    for &ip in &sh.indirect {
                        self.pool.ensure_granted(plat, ip, true).map_err(pool_err)?;
                    }
                }
                let mut grefs = heapless::Vec::new();
                for (pi, &ip) in sh.indirect.iter().enumerate() {
                    let page = self.pool.page(ip);
                    let first = pi * SEGMENTS_PER_INDIRECT_PAGE;
                    let last = (first + SEGMENTS_PER_INDIRECT_PAGE).min(nseg);
                    for (k, i) in (first..last).enumerate() {
                        page.write_bytes(k * 8, &seg_of(i, self.pool.gref(pages[i])).encode());
                    }
                    let _ = grefs.push(self.pool.gref(ip).0);
                }
                ReqKind::Indirect { op, nr_segments: nseg as u16, pages: grefs }
            }
        };
        let req = Request { id: id as u64, handle: 0, sector: sh.sector, kind };
        let Some(r) = self.ring.as_mut() else { return Err(SubmitError::NotConnected) };
        if !r.ring.put_request(&req) {
            return Err(SubmitError::Busy);
        }
        sh.issued = true;
        self.unpushed = true;
        Ok(())
    }

    /// Publishes queued requests; notifies the backend if it asked for it.
    pub fn kick<P: FrontendPlatform>(&mut self, plat: &mut P) {
        if !self.unpushed {
            return;
        }
        self.unpushed = false;
        if let Some(r) = self.ring.as_mut()
            && r.ring.push_requests()
        {
            self.stats.notifies += 1;
            let _ = plat.notify(r.port);
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
        loop {
            loop {
                let rsp = match self.ring.as_mut().map(|r| r.ring.take_response()) {
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
                if !sh.issued {
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
            match self.ring.as_mut().map(|r| r.ring.final_check_for_responses()) {
                Some(Ok(true)) => continue,
                Some(Ok(false)) | None => break,
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
    fn complete<P: FrontendPlatform>(
        &mut self,
        plat: &mut P,
        id: u16,
        status: Status,
        f: &mut impl FnMut(&mut Completion<'_>),
    ) -> bool {
        let Some(mut sh) = self.shadows[id as usize].take() else { return true };
        self.ids.free(id as u64);
        self.stats.completed += 1;
        if status != Status::Ok {
            self.stats.errors += 1;
        }
        let persistent = self.neg.persistent && !matches!(self.phase, Phase::Failed(_));
        let mut ok = true;
        // Release the grants before the caller looks at the data (a non-persistent backend
        // must have let go of every page by now).
        if let Data::Lent(b) = &sh.data {
            for &p in &b.pages {
                if self.pool.settle(plat, p, persistent).is_err() {
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
                pool: &self.pool,
                data: &mut sh.data,
            };
            f(&mut c);
        }
        match sh.data {
            Data::Pool(p) => {
                for &i in &p {
                    if self.pool.put(plat, i, persistent).is_err() {
                        ok = false;
                    }
                }
            }
            Data::Lent(b) => {
                for &i in &b.pages {
                    if self.pool.put(plat, i, persistent).is_err() {
                        ok = false;
                    }
                }
            }
            Data::None => {}
        }
        for &i in &sh.indirect {
            if self.pool.put(plat, i, persistent).is_err() {
                ok = false;
            }
        }
        if !ok && !matches!(self.phase, Phase::Failed(_)) {
            self.fail(plat, FailReason::GrantStillMapped);
            return false;
        }
        true
    }

    fn fail_all<P: FrontendPlatform>(&mut self, plat: &mut P, f: &mut impl FnMut(&mut Completion<'_>)) -> usize {
        let mut ids: heapless::Vec<u16, { config::RING_SLOTS }> = heapless::Vec::new();
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
        self.pool.free_pages(plat);
    }
}

fn free_ring_mem<P: FrontendPlatform>(plat: &mut P, mem: SharedMem, frames: &[u64]) {
    if frames.len() == 1 {
        plat.free_page(Page { mem, frame: frames[0] });
    } else {
        plat.free_pages_contiguous(mem, frames);
    }
}

fn pool_err(e: PoolError) -> SubmitError {
    match e {
        PoolError::Exhausted => SubmitError::Busy,
        PoolError::Platform(p) => SubmitError::Platform(p),
        PoolError::StillMapped => SubmitError::Failed,
    }
}
