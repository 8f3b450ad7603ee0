//! The traits a board implements: the only way the driver touches the outside world.
//!
//! The driver is poll-driven and single-threaded per ring: a board owns the event loop,
//! waits for event-channel notifications and xenstore watch firings however its platform
//! allows (a hypercall block, `poll(2)` on `/dev/xen/evtchn`, a condition variable in the
//! sim), and calls into the driver, which calls back into these traits. Nothing here blocks
//! except where a trait says so.
//!
//! The shapes follow Xen's own operations so that a bare-metal board implements them with
//! hypercalls and a Linux board with `/dev/xen/{gntdev,gntalloc,evtchn}` and xenstore:
//!
//! | trait | bare metal | Linux userspace |
//! |---|---|---|
//! | [`Pages`] | static frames | `mmap` of anonymous or gntalloc memory |
//! | [`Grants`] | writes to the own grant table | gntalloc |
//! | [`GrantMapper`] | `GNTTABOP_map/unmap/copy` | gntdev ioctls + `mmap` |
//! | [`EventChannels`] | `EVTCHNOP_*` | `/dev/xen/evtchn` |
//! | [`XenStore`] | the xenstore ring | xenstored socket or `/dev/xen/xenbus` |

use crate::proto::grant::{DomId, GntStatus, GrantRef, RevokeError};
use crate::proto::shmem::SharedMem;

/// Error of a platform operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PlatformError {
    /// No such node, port, ref or domain (`ENOENT`).
    NotFound,
    /// Permission denied (`EACCES`/`EPERM`).
    Denied,
    /// Try again; for a transaction: it conflicted and must be retried (`EAGAIN`).
    Again,
    /// Out of memory, grant refs, ports or quota (`ENOMEM`/`ENOSPC`/`EQUOTA`).
    NoSpace,
    /// Invalid argument (`EINVAL`), including a value too long for the caller's buffer.
    Invalid,
    /// The operation is not supported by this board.
    Unsupported,
    /// A grant operation failed with this status.
    Grant(GntStatus),
    /// Any other error, with the platform's errno.
    Errno(i32),
}

/// Result of a platform operation.
pub type Result<T> = core::result::Result<T, PlatformError>;

/// One page (4 KiB) of this domain's memory.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    /// The page's bytes.
    pub mem: SharedMem,
    /// Board-specific identity: a guest frame number on bare metal, an index elsewhere.
    pub frame: u64,
}

/// Page allocation. Every page handed out is zeroed (XSA-403: no stale data may ever be
/// granted).
pub trait Pages {
    /// Allocates one zeroed 4 KiB page.
    fn alloc_page(&mut self) -> Result<Page>;
    /// Allocates `n` zeroed pages that are virtually contiguous (multi-page rings).
    fn alloc_pages_contiguous(&mut self, n: usize) -> Result<(SharedMem, [u64; 16])>;
    /// Returns a page. Must not be called while the page is granted.
    fn free_page(&mut self, page: Page);
    /// Returns a contiguous allocation.
    fn free_pages_contiguous(&mut self, mem: SharedMem, frames: &[u64]);
}

/// The granting side of the grant table (a frontend sharing its pages).
pub trait Grants {
    /// Grants the frame `frame` (see [`Page::frame`]) to `domid`. Returns the reference.
    fn grant(&mut self, frame: u64, domid: DomId, readonly: bool) -> Result<GrantRef>;
    /// Ends foreign access with one atomic compare-exchange of the entry's flags that fails
    /// while the grantee maps the page (`Err(RevokeError::InUse)`); on success the reference
    /// is freed. XSA-396: never a check followed by a separate revoke.
    fn end_access(&mut self, gref: GrantRef) -> core::result::Result<(), RevokeError>;
    /// Whether the grantee currently maps `gref` (advisory: it may change at once).
    fn is_mapped(&mut self, gref: GrantRef) -> bool;
    /// Whether [`end_access`](Self::end_access) can see the grantee's mappings (it can on
    /// every board that owns its grant table). A board that cannot (Linux userspace on
    /// `/dev/xen/gntalloc`: the kernel owns the table, and its revoke never fails but defers
    /// releasing a still-mapped page) returns false; the frontend's pool then grants
    /// read-write only, because changing a grant's permission means ending it, and an ended
    /// reference may be reused for another page while the backend still caches it. (With
    /// persistence negotiated the pool keeps every grant until disconnect on all boards.)
    fn observes_mappings(&self) -> bool {
        true
    }
}

/// One element of a map batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRequest {
    /// The foreign reference.
    pub gref: GrantRef,
    /// Map read-only (the backend will only read the page).
    pub readonly: bool,
}

/// A foreign page mapped into this domain.
#[derive(Clone, Copy, Debug)]
pub struct Mapping {
    /// The mapped bytes.
    pub mem: SharedMem,
    /// Board-specific handle needed to unmap.
    pub handle: u64,
}

/// One side of a grant copy.
#[derive(Clone, Copy, Debug)]
pub enum CopyPtr {
    /// A page granted to us by `domid`.
    Foreign {
        /// Granting domain.
        domid: DomId,
        /// Reference.
        gref: GrantRef,
        /// Byte offset in the page.
        offset: u16,
    },
    /// Our own memory (must not cross a 4 KiB boundary for `len`).
    Local {
        /// The local bytes (the copy length is taken from [`CopyOp::len`]).
        mem: SharedMem,
        /// Byte offset in `mem`.
        offset: u16,
    },
}

/// One element of a grant-copy batch. Neither side may cross a 4 KiB boundary.
#[derive(Clone, Copy, Debug)]
pub struct CopyOp {
    /// Source.
    pub src: CopyPtr,
    /// Destination.
    pub dst: CopyPtr,
    /// Bytes to copy.
    pub len: u16,
}

/// The grantee side of the grant table (a backend using a frontend's pages).
pub trait GrantMapper {
    /// Maps a batch of `domid`'s references. `out[i]` receives the mapping or the element's
    /// status; the batch as a whole does not fail because one element did.
    fn map_batch(&mut self, domid: DomId, reqs: &[MapRequest], out: &mut [core::result::Result<Mapping, GntStatus>]);
    /// Unmaps a batch; `status[i]` is the element's status.
    fn unmap_batch(&mut self, maps: &[Mapping], status: &mut [GntStatus]);
    /// Maps `grefs` of `domid` read-write as one virtually contiguous region in that order
    /// (multi-page rings: entries straddle page boundaries).
    fn map_ring(&mut self, domid: DomId, grefs: &[GrantRef]) -> Result<Mapping>;
    /// Unmaps a region from [`map_ring`](Self::map_ring).
    fn unmap_ring(&mut self, map: Mapping);
    /// Performs a batch of grant copies; `status[i]` is the element's status.
    fn copy_batch(&mut self, ops: &[CopyOp], status: &mut [GntStatus]);
}

/// An event-channel port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Port(pub u32);

/// Event channels.
pub trait EventChannels {
    /// Allocates a port that `remote` may bind to (frontend).
    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port>;
    /// Binds to `remote`'s port (backend).
    fn bind_interdomain(&mut self, remote: DomId, remote_port: Port) -> Result<Port>;
    /// Signals the peer.
    fn notify(&mut self, port: Port) -> Result<()>;
    /// Closes a port.
    fn unbind(&mut self, port: Port);
}

/// A xenstore transaction id; [`Tx::NONE`] for a plain operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tx(pub u32);

impl Tx {
    /// No transaction.
    pub const NONE: Tx = Tx(0);
}

/// A xenstore path built without allocation.
pub type XsPath = heapless::String<160>;

/// Xenstore. Watch firings are delivered by the board's event loop (coalesced: at most one
/// pending event per watch, XSA-349), not through this trait.
pub trait XenStore {
    /// Reads `path` into `buf`, returning the value's length. A value longer than `buf` is
    /// `Err(Invalid)`.
    fn read(&mut self, tx: Tx, path: &str, buf: &mut [u8]) -> Result<usize>;
    /// Writes `value` at `path`, creating it.
    fn write(&mut self, tx: Tx, path: &str, value: &[u8]) -> Result<()>;
    /// Removes `path` and everything below it.
    fn remove(&mut self, tx: Tx, path: &str) -> Result<()>;
    /// Starts a transaction.
    fn transaction_start(&mut self) -> Result<Tx>;
    /// Ends a transaction; `Err(Again)` means it conflicted and must be redone.
    fn transaction_end(&mut self, tx: Tx, commit: bool) -> Result<()>;
    /// Watches `path` (and below) under `token`.
    fn watch(&mut self, path: &str, token: u32) -> Result<()>;
    /// Removes a watch.
    fn unwatch(&mut self, path: &str, token: u32) -> Result<()>;
    /// This domain's id.
    fn own_domid(&mut self) -> DomId;
}

/// Everything a frontend needs.
pub trait FrontendPlatform: Pages + Grants + EventChannels + XenStore {}
impl<T: Pages + Grants + EventChannels + XenStore> FrontendPlatform for T {}

/// Everything a backend needs.
pub trait BackendPlatform: Pages + GrantMapper + EventChannels + XenStore {}
impl<T: Pages + GrantMapper + EventChannels + XenStore> BackendPlatform for T {}

/// What woke a [`Wait::wait`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wake {
    /// At least one event-channel notification arrived for this domain.
    pub event: bool,
    /// At least one xenstore watch fired.
    pub xenstore: bool,
    /// The timeout passed (or the board was told to stop).
    pub timeout: bool,
}

/// Blocking wait for the next notification, used by the drivers' blocking conveniences.
/// A board may implement it by blocking, polling or spinning.
pub trait Wait {
    /// Blocks until an event-channel notification or a watch firing arrives, or until
    /// `timeout_ms` passes. Consumes what it reports.
    fn wait(&mut self, timeout_ms: Option<u64>) -> Wake;
}
